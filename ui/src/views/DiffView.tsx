import { diffLines, diffStats } from "../lib/diff";

/** Line diff of two values as text: removed lines red, added green. */
export function DiffView({ before, after }: { before: string; after: string }) {
  const lines = diffLines(before, after);
  const { added, removed } = diffStats(lines);
  return (
    <div className="diff" data-testid="diff">
      <div className="diff-stats">
        <span className="added">+{added}</span> <span className="removed">−{removed}</span>
      </div>
      <pre>
        {lines.map((line, index) => (
          <div key={index} className={`diff-line ${line.op}`}>
            {line.op === "add" ? "+ " : line.op === "remove" ? "- " : "  "}
            {line.text}
          </div>
        ))}
      </pre>
    </div>
  );
}
