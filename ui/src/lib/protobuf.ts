// Protocol-buffer wire-format reading, and Kubernetes' storage envelope on top of it.
//
// Kubernetes stores objects in etcd as "k8s\0" followed by a runtime.Unknown message
// {typeMeta{apiVersion, kind}, raw, contentEncoding, contentType}, where raw is the object
// itself in protobuf. Without the .proto files the field names are not in the bytes, so
// this decoder knows the names of the envelope, TypeMeta, ObjectMeta (every object's
// field 1), the ConfigMap and Secret fields, and the spec/status convention (fields 2
// and 3) of other kinds; anything deeper is shown by field number with a best guess of
// its type (nested message, text or bytes).

export const K8S_MAGIC = [0x6b, 0x38, 0x73, 0x00]; // "k8s\0"

export type WireValue =
  | { wire: "varint"; value: bigint }
  | { wire: "fixed64"; value: bigint }
  | { wire: "fixed32"; value: number }
  | { wire: "bytes"; value: Uint8Array };

export interface WireField {
  number: number;
  field: WireValue;
}

export class WireFormatError extends Error {}

class Reader {
  private pos = 0;
  constructor(private readonly bytes: Uint8Array) {}

  get done(): boolean {
    return this.pos >= this.bytes.length;
  }

  varint(): bigint {
    let result = 0n;
    let shift = 0n;
    for (;;) {
      if (this.pos >= this.bytes.length) throw new WireFormatError("truncated varint");
      const byte = this.bytes[this.pos++];
      result |= BigInt(byte & 0x7f) << shift;
      if ((byte & 0x80) === 0) return result;
      shift += 7n;
      if (shift > 63n) throw new WireFormatError("varint too long");
    }
  }

  take(length: number): Uint8Array {
    if (length < 0 || this.pos + length > this.bytes.length) {
      throw new WireFormatError("length past the end");
    }
    const slice = this.bytes.subarray(this.pos, this.pos + length);
    this.pos += length;
    return slice;
  }
}

/** Splits a message into its fields; throws WireFormatError if the bytes are not one. */
export function readFields(bytes: Uint8Array): WireField[] {
  const reader = new Reader(bytes);
  const fields: WireField[] = [];
  while (!reader.done) {
    const tag = reader.varint();
    const number = Number(tag >> 3n);
    if (number === 0) throw new WireFormatError("field number 0");
    switch (Number(tag & 7n)) {
      case 0:
        fields.push({ number, field: { wire: "varint", value: reader.varint() } });
        break;
      case 1: {
        const b = reader.take(8);
        const view = new DataView(b.buffer, b.byteOffset, 8);
        fields.push({ number, field: { wire: "fixed64", value: view.getBigUint64(0, true) } });
        break;
      }
      case 2:
        fields.push({ number, field: { wire: "bytes", value: reader.take(Number(reader.varint())) } });
        break;
      case 5: {
        const b = reader.take(4);
        const view = new DataView(b.buffer, b.byteOffset, 4);
        fields.push({ number, field: { wire: "fixed32", value: view.getUint32(0, true) } });
        break;
      }
      default:
        throw new WireFormatError(`unsupported wire type ${Number(tag & 7n)}`);
    }
  }
  return fields;
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

/** Text if the bytes are UTF-8 without control characters other than tab and newlines. */
export function asText(bytes: Uint8Array): string | null {
  try {
    const text = utf8.decode(bytes);
    // Control characters mean binary data that merely happens to be valid UTF-8.
    for (let i = 0; i < text.length; i++) {
      const code = text.charCodeAt(i);
      if (code < 0x20 && code !== 0x09 && code !== 0x0a && code !== 0x0d) return null;
    }
    return text;
  } catch {
    return null;
  }
}

export function toHex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** A decoded value: plain JSON-like data so the viewer can print it as YAML. */
export type Decoded = string | number | boolean | Decoded[] | { [name: string]: Decoded };

/** How to read the fields of one message type. */
interface Schema {
  [fieldNumber: number]: FieldSchema;
}

type FieldSchema =
  | { name: string; type: "string" | "bytes" | "bool" | "int" }
  | { name: string; type: "message"; schema: Schema }
  | { name: string; type: "time" }
  | { name: string; type: "map"; valueType: "string" | "bytes" }
  | { name: string; type: "repeated-string" };

const OWNER_REFERENCE: Schema = {
  1: { name: "kind", type: "string" },
  3: { name: "name", type: "string" },
  4: { name: "uid", type: "string" },
  5: { name: "apiVersion", type: "string" },
  6: { name: "controller", type: "bool" },
  7: { name: "blockOwnerDeletion", type: "bool" },
};

const OBJECT_META: Schema = {
  1: { name: "name", type: "string" },
  2: { name: "generateName", type: "string" },
  3: { name: "namespace", type: "string" },
  4: { name: "selfLink", type: "string" },
  5: { name: "uid", type: "string" },
  6: { name: "resourceVersion", type: "string" },
  7: { name: "generation", type: "int" },
  8: { name: "creationTimestamp", type: "time" },
  9: { name: "deletionTimestamp", type: "time" },
  10: { name: "deletionGracePeriodSeconds", type: "int" },
  11: { name: "labels", type: "map", valueType: "string" },
  12: { name: "annotations", type: "map", valueType: "string" },
  13: { name: "ownerReferences", type: "message", schema: OWNER_REFERENCE },
  14: { name: "finalizers", type: "repeated-string" },
};

const KIND_SCHEMAS: Record<string, Schema> = {
  ConfigMap: {
    1: { name: "metadata", type: "message", schema: OBJECT_META },
    2: { name: "data", type: "map", valueType: "string" },
    3: { name: "binaryData", type: "map", valueType: "bytes" },
    4: { name: "immutable", type: "bool" },
  },
  Secret: {
    1: { name: "metadata", type: "message", schema: OBJECT_META },
    2: { name: "data", type: "map", valueType: "bytes" },
    3: { name: "type", type: "string" },
    4: { name: "stringData", type: "map", valueType: "string" },
    5: { name: "immutable", type: "bool" },
  },
};

/** Kinds without a schema here still follow the metadata / spec / status convention. */
const CONVENTIONAL_OBJECT: Schema = {
  1: { name: "metadata", type: "message", schema: OBJECT_META },
  2: { name: "spec", type: "message", schema: {} },
  3: { name: "status", type: "message", schema: {} },
};

const TYPE_META: Schema = {
  1: { name: "apiVersion", type: "string" },
  2: { name: "kind", type: "string" },
};

/** Best guess for a length-delimited field with no schema: message, text, or bytes. */
function guessBytes(bytes: Uint8Array): Decoded {
  if (bytes.length > 0) {
    const text = asText(bytes);
    // Short printable strings often also parse as messages; prefer text for them.
    if (text !== null && /^[\x20-\x7e\t\n\r]*$/.test(text)) return text;
    try {
      return decodeMessage(bytes, {});
    } catch {
      if (text !== null) return text;
    }
  }
  return bytes.length === 0 ? "" : `0x${toHex(bytes)}`;
}

function timeOf(bytes: Uint8Array): string {
  const fields = readFields(bytes);
  const seconds = fields.find((f) => f.number === 1);
  const value = seconds && seconds.field.wire === "varint" ? Number(seconds.field.value) : 0;
  return new Date(value * 1000).toISOString().replace(".000Z", "Z");
}

function mapEntry(bytes: Uint8Array, valueType: "string" | "bytes"): [string, Decoded] {
  let key = "";
  let value: Decoded = "";
  for (const { number, field } of readFields(bytes)) {
    if (field.wire !== "bytes") continue;
    if (number === 1) key = utf8.decode(field.value);
    if (number === 2) {
      value = valueType === "string" ? utf8.decode(field.value) : (asText(field.value) ?? `0x${toHex(field.value)}`);
    }
  }
  return [key, value];
}

function scalar(field: WireValue): Decoded {
  switch (field.wire) {
    case "varint":
    case "fixed64":
      return field.value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(field.value) : field.value.toString();
    case "fixed32":
      return field.value;
    case "bytes":
      return guessBytes(field.value);
  }
}

/** Decodes a message with a schema; fields the schema does not name appear as "#<number>". */
export function decodeMessage(bytes: Uint8Array, schema: Schema): { [name: string]: Decoded } {
  const out: { [name: string]: Decoded } = {};
  const append = (name: string, value: Decoded, repeated: boolean): void => {
    const existing = out[name];
    if (existing === undefined) out[name] = repeated ? [value] : value;
    else if (Array.isArray(existing)) existing.push(value);
    else out[name] = [existing, value];
  };
  for (const { number, field } of readFields(bytes)) {
    const known = schema[number];
    if (!known) {
      append(`#${number}`, scalar(field), false);
      continue;
    }
    if (known.type === "bool" || known.type === "int") {
      const value = field.wire === "varint" ? field.value : 0n;
      append(known.name, known.type === "bool" ? value !== 0n : Number(value), false);
      continue;
    }
    if (field.wire !== "bytes") {
      append(known.name, scalar(field), false);
      continue;
    }
    switch (known.type) {
      case "string":
        append(known.name, utf8.decode(field.value), false);
        break;
      case "bytes":
        append(known.name, asText(field.value) ?? `0x${toHex(field.value)}`, false);
        break;
      case "time":
        append(known.name, timeOf(field.value), false);
        break;
      case "repeated-string":
        append(known.name, utf8.decode(field.value), true);
        break;
      case "message":
        append(known.name, decodeMessage(field.value, known.schema), known.schema === OWNER_REFERENCE);
        break;
      case "map": {
        const [key, value] = mapEntry(field.value, known.valueType);
        const map = (out[known.name] ??= {}) as { [name: string]: Decoded };
        map[key] = value;
        break;
      }
    }
  }
  return out;
}

export interface KubernetesObject {
  apiVersion: string;
  kind: string;
  contentType: string;
  /** The object's fields, named where this decoder knows the kind. */
  object: { [name: string]: Decoded };
}

export function isKubernetesProtobuf(bytes: Uint8Array): boolean {
  return bytes.length >= 4 && K8S_MAGIC.every((b, i) => bytes[i] === b);
}

/** Decodes a value Kubernetes stored in etcd as protobuf. */
export function decodeKubernetes(bytes: Uint8Array): KubernetesObject {
  if (!isKubernetesProtobuf(bytes)) throw new WireFormatError("no k8s\\0 prefix");
  let typeMeta: { [name: string]: Decoded } = {};
  let raw: Uint8Array = new Uint8Array();
  let contentType = "";
  for (const { number, field } of readFields(bytes.subarray(4))) {
    if (field.wire !== "bytes") continue;
    if (number === 1) typeMeta = decodeMessage(field.value, TYPE_META);
    if (number === 2) raw = field.value;
    if (number === 4) contentType = utf8.decode(field.value);
  }
  const kind = typeof typeMeta.kind === "string" ? typeMeta.kind : "";
  const apiVersion = typeof typeMeta.apiVersion === "string" ? typeMeta.apiVersion : "";
  return {
    apiVersion,
    kind,
    contentType,
    object: decodeMessage(raw, KIND_SCHEMAS[kind] ?? CONVENTIONAL_OBJECT),
  };
}
