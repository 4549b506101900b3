// A minimal protobuf encoder for the tests: it builds real Kubernetes storage values
// field by field, independently of the decoder under test.

export class Writer {
  private readonly parts: number[] = [];

  private varint(value: number): void {
    let v = value;
    while (v > 0x7f) {
      this.parts.push((v & 0x7f) | 0x80);
      v = Math.floor(v / 128);
    }
    this.parts.push(v);
  }

  private tag(field: number, wire: number): void {
    this.varint(field * 8 + wire);
  }

  uint(field: number, value: number): this {
    this.tag(field, 0);
    this.varint(value);
    return this;
  }

  bool(field: number, value: boolean): this {
    return this.uint(field, value ? 1 : 0);
  }

  bytes(field: number, value: Uint8Array): this {
    this.tag(field, 2);
    this.varint(value.length);
    this.parts.push(...value);
    return this;
  }

  string(field: number, value: string): this {
    return this.bytes(field, new TextEncoder().encode(value));
  }

  message(field: number, build: (w: Writer) => void): this {
    const inner = new Writer();
    build(inner);
    return this.bytes(field, inner.finish());
  }

  /** A map<string, string|bytes> entry: key = 1, value = 2. */
  mapEntry(field: number, key: string, value: string | Uint8Array): this {
    return this.message(field, (entry) => {
      entry.string(1, key);
      if (typeof value === "string") entry.string(2, value);
      else entry.bytes(2, value);
    });
  }

  finish(): Uint8Array {
    return Uint8Array.from(this.parts);
  }
}

/** What kube-apiserver writes for a v1 ConfigMap (field numbers from k8s.io/api core/v1). */
export function kubernetesConfigMap(): Uint8Array {
  const configMap = new Writer()
    .message(1, (meta) =>
      meta
        .string(1, "app-settings")
        .string(3, "prod")
        .string(5, "6f1c2a9e-1111-4c3b-9a8e-2a2b2c2d2e2f")
        .string(6, "4711")
        .message(8, (time) => time.uint(1, 1_700_000_000))
        .mapEntry(11, "app", "shop")
        .mapEntry(11, "tier", "web")
        .string(14, "example.com/cleanup"),
    )
    .mapEntry(2, "LOG_LEVEL", "debug")
    .mapEntry(2, "config.yaml", "port: 8080\nworkers: 4\n")
    .mapEntry(3, "logo.bin", Uint8Array.from([0xff, 0x00, 0x10]))
    .bool(4, true)
    .finish();
  const unknown = new Writer()
    .message(1, (typeMeta) => typeMeta.string(1, "v1").string(2, "ConfigMap"))
    .bytes(2, configMap)
    .string(3, "")
    .string(4, "application/vnd.kubernetes.protobuf")
    .finish();
  return Uint8Array.from([0x6b, 0x38, 0x73, 0x00, ...unknown]);
}

/** A Pod-shaped object: known metadata, spec and status by field number only. */
export function kubernetesPod(): Uint8Array {
  const pod = new Writer()
    .message(1, (meta) => meta.string(1, "web-0").string(3, "default"))
    .message(2, (spec) => spec.message(2, (container) => container.string(1, "nginx").string(2, "nginx:1.27")).string(9, "Always"))
    .message(3, (status) => status.string(1, "Running"))
    .finish();
  const unknown = new Writer()
    .message(1, (typeMeta) => typeMeta.string(1, "v1").string(2, "Pod"))
    .bytes(2, pod)
    .string(4, "application/vnd.kubernetes.protobuf")
    .finish();
  return Uint8Array.from([0x6b, 0x38, 0x73, 0x00, ...unknown]);
}
