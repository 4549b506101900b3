import { describe, expect, it } from "vitest";
import {
  analyseValue,
  base64ToBytes,
  bytesToBase64,
  hexDump,
  highlightJson,
  kubernetesView,
  textToBase64,
  toYaml,
  valueAsText,
} from "../src/lib/decode";
import { decodeKubernetes, readFields, WireFormatError } from "../src/lib/protobuf";
import { kubernetesConfigMap, kubernetesPod } from "./protobuf-writer";

const utf8 = (text: string) => new TextEncoder().encode(text);

describe("value views", () => {
  it("offers JSON first for a JSON object and keeps text and hex", () => {
    const views = analyseValue(utf8('{"replicas": 3}'));
    expect(views.kinds).toEqual(["json", "yaml", "text", "hex"]);
    expect(views.json).toEqual({ replicas: 3 });
  });

  it("recognises YAML text and plain text", () => {
    expect(analyseValue(utf8("port: 8080\nhosts:\n  - a\n")).kinds[0]).toBe("yaml");
    expect(analyseValue(utf8("hello world")).kinds).toEqual(["text", "hex"]);
  });

  it("shows binary values only as hex", () => {
    const views = analyseValue(Uint8Array.from([0, 1, 2, 0xff]));
    expect(views.kinds).toEqual(["hex"]);
    expect(hexDump(Uint8Array.from([0x41, 0x00, 0xff]))).toBe(
      "00000000  41 00 ff" + " ".repeat(39) + "  |A..|",
    );
  });

  it("round-trips base64 of binary and unicode values", () => {
    const bytes = Uint8Array.from([0, 255, 128, 10]);
    expect(base64ToBytes(bytesToBase64(bytes))).toEqual(bytes);
    expect(new TextDecoder().decode(base64ToBytes(textToBase64("grüße ✓")))).toBe("grüße ✓");
  });
});

describe("Kubernetes protobuf values", () => {
  it("decodes a ConfigMap stored by kube-apiserver to named fields", () => {
    const value = kubernetesConfigMap();
    expect(analyseValue(value).kinds).toEqual(["kubernetes", "hex"]);
    const decoded = decodeKubernetes(value);
    expect(decoded.apiVersion).toBe("v1");
    expect(decoded.kind).toBe("ConfigMap");
    expect(decoded.contentType).toBe("application/vnd.kubernetes.protobuf");
    expect(decoded.object).toEqual({
      metadata: {
        name: "app-settings",
        namespace: "prod",
        uid: "6f1c2a9e-1111-4c3b-9a8e-2a2b2c2d2e2f",
        resourceVersion: "4711",
        creationTimestamp: "2023-11-14T22:13:20Z",
        labels: { app: "shop", tier: "web" },
        finalizers: ["example.com/cleanup"],
      },
      data: { LOG_LEVEL: "debug", "config.yaml": "port: 8080\nworkers: 4\n" },
      binaryData: { "logo.bin": "0xff0010" },
      immutable: true,
    });
  });

  it("prints the object as a manifest with apiVersion and kind first", () => {
    const yaml = toYaml(kubernetesView(decodeKubernetes(kubernetesConfigMap())));
    expect(yaml.split("\n").slice(0, 4)).toEqual(["apiVersion: v1", "kind: ConfigMap", "metadata:", "  name: app-settings"]);
    expect(yaml).toContain("  config.yaml: |\n    port: 8080\n    workers: 4");
    expect(valueAsText(kubernetesConfigMap())).toBe(yaml);
  });

  it("names metadata, spec and status of other kinds and shows deeper fields by number", () => {
    const decoded = decodeKubernetes(kubernetesPod());
    expect(decoded.kind).toBe("Pod");
    expect(decoded.object.metadata).toEqual({ name: "web-0", namespace: "default" });
    expect(decoded.object.spec).toEqual({ "#2": { "#1": "nginx", "#2": "nginx:1.27" }, "#9": "Always" });
    expect(decoded.object.status).toEqual({ "#1": "Running" });
  });

  it("rejects truncated wire data instead of guessing", () => {
    expect(() => readFields(Uint8Array.from([0x0a, 0x05, 0x61]))).toThrow(WireFormatError);
    const truncated = kubernetesConfigMap().subarray(0, 20);
    expect(analyseValue(truncated).kinds).toEqual(["hex"]);
  });
});

describe("YAML and JSON rendering", () => {
  it("quotes strings YAML would misread and prints nested lists", () => {
    expect(toYaml({ a: "true", b: "8080", c: "plain", d: [1, { e: "x" }], f: [] })).toBe(
      'a: "true"\nb: "8080"\nc: plain\nd:\n  - 1\n  - e: x\nf: []',
    );
  });

  it("tokenises pretty JSON so that the tokens join back to the input", () => {
    const json = JSON.stringify({ name: "x", n: -1.5, ok: true, list: [null] }, null, 2);
    const tokens = highlightJson(json);
    expect(tokens.map((t) => t.text).join("")).toBe(json);
    expect(tokens.filter((t) => t.kind === "key").map((t) => t.text)).toEqual(['"name"', '"n"', '"ok"', '"list"']);
    expect(tokens.find((t) => t.kind === "number")?.text).toBe("-1.5");
    expect(tokens.filter((t) => t.kind === "literal").map((t) => t.text)).toEqual(["true", "null"]);
  });
});
