import { CommandError } from "../lib/api";

export function ErrorBanner({ error, onClose }: { error: CommandError | null; onClose: () => void }) {
  if (!error) return null;
  return (
    <div className={`banner banner-${error.kind === "conflict" ? "warning" : "error"}`} role="alert" data-testid="error-banner">
      <span>{error.message}</span>
      {error.detail && (
        <details>
          <summary>Details</summary>
          <code>{error.detail}</code>
        </details>
      )}
      <button className="ghost" onClick={onClose} aria-label="Dismiss">
        ×
      </button>
    </div>
  );
}
