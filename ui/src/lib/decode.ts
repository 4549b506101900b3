// Turning a key's raw value into the views the value viewer offers.

import { Decoded, asText, decodeKubernetes, isKubernetesProtobuf, KubernetesObject } from "./protobuf";

export type ViewKind = "text" | "json" | "yaml" | "hex" | "kubernetes";

export function base64ToBytes(base64: string): Uint8Array {
  const binary = atob(base64);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

export function bytesToBase64(bytes: Uint8Array): string {
  let binary = "";
  // Chunks keep String.fromCharCode's argument list short for large values.
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

export function textToBase64(text: string): string {
  return bytesToBase64(new TextEncoder().encode(text));
}

/** A short readable form of a value for lists and diffs: text as is, binary as hex. */
export function valueAsText(bytes: Uint8Array): string {
  if (isKubernetesProtobuf(bytes)) {
    try {
      return toYaml(kubernetesView(decodeKubernetes(bytes)));
    } catch {
      return hexDump(bytes);
    }
  }
  const text = asText(bytes);
  if (text === null) return hexDump(bytes);
  const json = parseJson(text);
  return json === undefined ? text : JSON.stringify(json, null, 2);
}

function parseJson(text: string): unknown {
  const trimmed = text.trim();
  if (!(trimmed.startsWith("{") || trimmed.startsWith("["))) return undefined;
  try {
    return JSON.parse(trimmed);
  } catch {
    return undefined;
  }
}

/** Lines of "key: value" or "- item" mark YAML text (as Kubernetes manifests are). */
function looksLikeYaml(text: string): boolean {
  const lines = text.split("\n").filter((line) => line.trim() !== "" && !line.trim().startsWith("#"));
  return lines.length > 0 && lines.every((line) => /^\s*(- |[\w.\-/"']+:(\s|$))/.test(line));
}

export interface ValueViews {
  /** The views that make sense for this value, the best one first. */
  kinds: ViewKind[];
  text: string | null;
  json: unknown;
  kubernetes: KubernetesObject | null;
  bytes: Uint8Array;
}

export function analyseValue(bytes: Uint8Array): ValueViews {
  if (isKubernetesProtobuf(bytes)) {
    try {
      return { kinds: ["kubernetes", "hex"], text: null, json: undefined, kubernetes: decodeKubernetes(bytes), bytes };
    } catch {
      return { kinds: ["hex"], text: null, json: undefined, kubernetes: null, bytes };
    }
  }
  const text = asText(bytes);
  if (text === null) return { kinds: ["hex"], text: null, json: undefined, kubernetes: null, bytes };
  const json = parseJson(text);
  if (json !== undefined) {
    return { kinds: ["json", "yaml", "text", "hex"], text, json, kubernetes: null, bytes };
  }
  const kinds: ViewKind[] = looksLikeYaml(text) ? ["yaml", "text", "hex"] : ["text", "hex"];
  return { kinds, text, json: undefined, kubernetes: null, bytes };
}

/** The Kubernetes object as a manifest: apiVersion and kind first, as kubectl prints it. */
export function kubernetesView(object: KubernetesObject): { [name: string]: Decoded } {
  return { apiVersion: object.apiVersion, kind: object.kind, ...object.object };
}

/** `offset  hex bytes  |ascii|`, 16 bytes a line. */
export function hexDump(bytes: Uint8Array): string {
  const lines: string[] = [];
  for (let offset = 0; offset < bytes.length; offset += 16) {
    const chunk = bytes.subarray(offset, offset + 16);
    const hex = Array.from(chunk, (b) => b.toString(16).padStart(2, "0")).join(" ");
    const ascii = Array.from(chunk, (b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : ".")).join("");
    lines.push(`${offset.toString(16).padStart(8, "0")}  ${hex.padEnd(47)}  |${ascii}|`);
  }
  return lines.join("\n");
}

function yamlScalar(value: unknown): string {
  if (value === null || value === undefined) return "null";
  if (typeof value === "number" || typeof value === "boolean") return String(value);
  const text = String(value);
  // Quote whatever YAML would read as something other than this string.
  const plain = /^[A-Za-z0-9_./][\w ./@-]*$/.test(text) && !/^(true|false|null|yes|no|on|off|~|[\d.+-]+)$/i.test(text);
  return plain && !text.endsWith(" ") ? text : JSON.stringify(text);
}

/** Prints JSON-like data as block-style YAML. */
export function toYaml(value: unknown, indent = 0): string {
  const pad = " ".repeat(indent);
  if (Array.isArray(value)) {
    if (value.length === 0) return "[]";
    return value
      .map((item) => {
        if (item !== null && typeof item === "object" && Object.keys(item).length > 0) {
          return `${pad}- ${toYaml(item, indent + 2).trimStart()}`;
        }
        return `${pad}- ${yamlScalar(item)}`;
      })
      .join("\n");
  }
  if (value !== null && typeof value === "object") {
    const entries = Object.entries(value);
    if (entries.length === 0) return "{}";
    return entries
      .map(([key, item]) => {
        const name = yamlScalar(key);
        if (item !== null && typeof item === "object" && (Array.isArray(item) ? item.length : Object.keys(item).length) > 0) {
          return `${pad}${name}:\n${toYaml(item, indent + 2)}`;
        }
        if (typeof item === "string" && item.includes("\n")) {
          const body = item.replace(/\n$/, "").split("\n").map((line) => `${pad}  ${line}`).join("\n");
          return `${pad}${name}: |${item.endsWith("\n") ? "" : "-"}\n${body}`;
        }
        const empty = Array.isArray(item) ? "[]" : item !== null && typeof item === "object" ? "{}" : yamlScalar(item);
        return `${pad}${name}: ${empty}`;
      })
      .join("\n");
  }
  return pad + yamlScalar(value);
}

export type JsonTokenKind = "key" | "string" | "number" | "literal" | "punct" | "space";

export interface JsonToken {
  kind: JsonTokenKind;
  text: string;
}

/** Splits pretty-printed JSON into tokens for highlighting; joining them gives the input. */
export function highlightJson(json: string): JsonToken[] {
  const tokens: JsonToken[] = [];
  const pattern = /("(?:\\.|[^"\\])*")(\s*:)?|(-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)|(true|false|null)|([{}[\],:])|(\s+)/g;
  let match: RegExpExecArray | null;
  let last = 0;
  while ((match = pattern.exec(json)) !== null) {
    if (match.index > last) tokens.push({ kind: "punct", text: json.slice(last, match.index) });
    if (match[1] !== undefined) {
      tokens.push({ kind: match[2] ? "key" : "string", text: match[1] });
      if (match[2]) tokens.push({ kind: "punct", text: match[2] });
    } else if (match[3] !== undefined) tokens.push({ kind: "number", text: match[3] });
    else if (match[4] !== undefined) tokens.push({ kind: "literal", text: match[4] });
    else if (match[5] !== undefined) tokens.push({ kind: "punct", text: match[5] });
    else tokens.push({ kind: "space", text: match[6] });
    last = pattern.lastIndex;
  }
  if (last < json.length) tokens.push({ kind: "punct", text: json.slice(last) });
  return tokens;
}
