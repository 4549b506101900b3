import { useEffect, useMemo, useState } from "react";
import { analyseValue, hexDump, highlightJson, kubernetesView, toYaml, ViewKind } from "../lib/decode";

const LABELS: Record<ViewKind, string> = {
  text: "Text",
  json: "JSON",
  yaml: "YAML",
  hex: "Hex",
  kubernetes: "Kubernetes",
};

function JsonBlock({ value }: { value: unknown }) {
  const tokens = useMemo(() => highlightJson(JSON.stringify(value, null, 2)), [value]);
  return (
    <pre className="value json" data-testid="value-json">
      {tokens.map((token, index) => (
        <span key={index} className={`tok-${token.kind}`}>
          {token.text}
        </span>
      ))}
    </pre>
  );
}

/** Shows a value in each view that suits it: text, JSON, YAML, hex or decoded Kubernetes. */
export function ValueViewer({ bytes }: { bytes: Uint8Array }) {
  const views = useMemo(() => analyseValue(bytes), [bytes]);
  const [kind, setKind] = useState<ViewKind>(views.kinds[0]);
  useEffect(() => setKind(views.kinds[0]), [views]);
  const shown = views.kinds.includes(kind) ? kind : views.kinds[0];

  let body;
  switch (shown) {
    case "json":
      body = <JsonBlock value={views.json} />;
      break;
    case "yaml":
      body = (
        <pre className="value" data-testid="value-yaml">
          {views.json !== undefined ? toYaml(views.json) : views.text}
        </pre>
      );
      break;
    case "kubernetes":
      body = views.kubernetes && (
        <pre className="value" data-testid="value-kubernetes">
          {toYaml(kubernetesView(views.kubernetes))}
        </pre>
      );
      break;
    case "hex":
      body = <pre className="value mono">{hexDump(bytes)}</pre>;
      break;
    default:
      body = (
        <pre className="value" data-testid="value-text">
          {views.text}
        </pre>
      );
  }
  return (
    <div className="value-viewer">
      <div className="tabs" role="tablist">
        {views.kinds.map((candidate) => (
          <button
            key={candidate}
            role="tab"
            aria-selected={candidate === shown}
            className={candidate === shown ? "tab active" : "tab"}
            onClick={() => setKind(candidate)}
          >
            {LABELS[candidate]}
          </button>
        ))}
        <span className="muted">{bytes.length} bytes</span>
      </div>
      {body}
    </div>
  );
}
