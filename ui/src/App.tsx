import { useCallback, useEffect, useState } from "react";
import { api, asCommandError, ClusterSummary, CommandError, ConnectionProfile } from "./lib/api";
import { ClusterView } from "./views/ClusterView";
import { ConnectionsPanel } from "./views/ConnectionsPanel";
import { ErrorBanner } from "./views/ErrorBanner";
import { KeysView } from "./views/KeysView";
import { WatchView } from "./views/WatchView";

type View = "keys" | "watch" | "cluster";
type Theme = "light" | "dark";

const VIEWS: { id: View; label: string; shortcut: string }[] = [
  { id: "keys", label: "Keys", shortcut: "Ctrl+1" },
  { id: "watch", label: "Watch", shortcut: "Ctrl+2" },
  { id: "cluster", label: "Cluster", shortcut: "Ctrl+3" },
];

function initialTheme(): Theme {
  const saved = localStorage.getItem("theme");
  if (saved === "light" || saved === "dark") return saved;
  return window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
}

export function App() {
  const [connections, setConnections] = useState<ConnectionProfile[] | null>(null);
  const [summary, setSummary] = useState<ClusterSummary | null>(null);
  const [connectedAt, setConnectedAt] = useState(0);
  const [connecting, setConnecting] = useState(false);
  const [view, setView] = useState<View>("keys");
  const [theme, setTheme] = useState<Theme>(initialTheme);
  const [error, setError] = useState<CommandError | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  const [showHelp, setShowHelp] = useState(false);

  const onError = useCallback((failure: CommandError) => setError(failure), []);

  const refreshConnections = useCallback(() => {
    api.listConnections().then(setConnections, (failure) => onError(asCommandError(failure)));
  }, [onError]);

  useEffect(refreshConnections, [refreshConnections]);

  useEffect(() => {
    document.documentElement.dataset.theme = theme;
    localStorage.setItem("theme", theme);
  }, [theme]);

  const connect = useCallback(
    async (id: string) => {
      setConnecting(true);
      setError(null);
      const started = performance.now();
      try {
        const connected = await api.connect(id);
        setConnectedAt(started);
        setSummary(connected);
      } catch (failure) {
        onError(asCommandError(failure));
      } finally {
        setConnecting(false);
      }
    },
    [onError],
  );

  useEffect(() => {
    const onKey = (event: KeyboardEvent) => {
      const mod = event.ctrlKey || event.metaKey;
      if (mod && ["1", "2", "3"].includes(event.key)) {
        event.preventDefault();
        setView(VIEWS[Number(event.key) - 1].id);
      } else if (mod && event.shiftKey && event.key.toLowerCase() === "l") {
        event.preventDefault();
        setTheme((current) => (current === "dark" ? "light" : "dark"));
      } else if (event.key === "?" && !(event.target instanceof HTMLInputElement) && !(event.target instanceof HTMLTextAreaElement)) {
        setShowHelp((shown) => !shown);
      } else if (event.key === "Escape") {
        setShowHelp(false);
        setError(null);
      }
    };
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
  }, []);

  const activeName = connections?.find((profile) => profile.id === summary?.connectionId)?.name;

  return (
    <div className="app">
      <aside className="sidebar">
        <div className="brand">Cairn Console</div>
        {connections && (
          <ConnectionsPanel
            connections={connections}
            activeId={summary?.connectionId ?? null}
            onChanged={refreshConnections}
            onConnect={(id) => void connect(id)}
            onError={onError}
            onNotice={setNotice}
          />
        )}
        <nav className="views">
          {VIEWS.map((candidate) => (
            <button
              key={candidate.id}
              className={candidate.id === view ? "active" : ""}
              onClick={() => setView(candidate.id)}
              disabled={!summary}
              title={candidate.shortcut}
              data-testid={`view-${candidate.id}`}
            >
              {candidate.label}
            </button>
          ))}
        </nav>
        <div className="sidebar-footer">
          <button className="ghost" onClick={() => setTheme(theme === "dark" ? "light" : "dark")} title="Ctrl+Shift+L" data-testid="toggle-theme">
            {theme === "dark" ? "☀ Light" : "☾ Dark"}
          </button>
          <button className="ghost" onClick={() => setShowHelp(true)} title="?">
            Shortcuts
          </button>
        </div>
      </aside>
      <main className="main">
        <header className="topbar">
          {summary ? (
            <span data-testid="connected">
              Connected to <strong>{activeName}</strong> · cluster <code>{summary.clusterId}</code> · API {summary.version} · revision {summary.revision} when connected
            </span>
          ) : (
            <span className="muted">{connecting ? "Connecting…" : "Not connected. Choose or add a cluster on the left."}</span>
          )}
        </header>
        <ErrorBanner error={error} onClose={() => setError(null)} />
        {notice && (
          <div className="banner banner-info" role="status">
            <span>{notice}</span>
            <button className="ghost" onClick={() => setNotice(null)} aria-label="Dismiss">
              ×
            </button>
          </div>
        )}
        {summary && (
          <div className="view" key={summary.connectionId + connectedAt}>
            {/* Keys and Watch stay mounted while hidden: the key list keeps its place and
                watches keep running while the user edits keys; a watch stops with Stop,
                on disconnect or when the app closes. */}
            <div className={view === "keys" ? "view-pane" : "view-pane hidden"}>
              <KeysView active={view === "keys"} connectedAt={connectedAt} onError={onError} />
            </div>
            <div className={view === "watch" ? "view-pane" : "view-pane hidden"}>
              <WatchView onError={onError} />
            </div>
            {view === "cluster" && <ClusterView theme={theme} onError={onError} />}
          </div>
        )}
      </main>
      {showHelp && (
        <div className="modal-backdrop" onClick={() => setShowHelp(false)}>
          <div className="modal" role="dialog" aria-label="Keyboard shortcuts">
            <h3>Keyboard shortcuts</h3>
            <table className="shortcuts">
              <tbody>
                {[
                  ["Ctrl+1 / 2 / 3", "Keys, Watch, Cluster view"],
                  ["Ctrl+K", "Search keys by prefix"],
                  ["Ctrl+N", "New key"],
                  ["Ctrl+E", "Edit the selected key"],
                  ["Ctrl+S", "Save the edit"],
                  ["F5 / Ctrl+R", "Reload the key list"],
                  ["Ctrl+Shift+L", "Light / dark theme"],
                  ["Esc", "Close dialogs and messages"],
                  ["?", "This list"],
                ].map(([keys, action]) => (
                  <tr key={keys}>
                    <td>
                      <kbd>{keys}</kbd>
                    </td>
                    <td>{action}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        </div>
      )}
    </div>
  );
}
