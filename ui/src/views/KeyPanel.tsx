import { useCallback, useEffect, useState } from "react";
import { api, asCommandError, CommandError, KeyDetail, KeyVersion } from "../lib/api";
import { analyseValue, base64ToBytes, textToBase64, valueAsText } from "../lib/decode";
import { ConfirmDialog } from "./ConfirmDialog";
import { DiffView } from "./DiffView";
import { ValueViewer } from "./ValueViewer";

interface Props {
  keyName: string;
  /** Whether the panel is shown: Ctrl+E only edits then. */
  active: boolean;
  onError: (error: CommandError) => void;
  onDeleted: (key: string) => void;
}

/** One key: metadata, value views, edit with a compare on mod_revision, delete, history. */
export function KeyPanel({ keyName, active, onError, onDeleted }: Props) {
  const [detail, setDetail] = useState<KeyDetail | null>(null);
  const [draft, setDraft] = useState<string | null>(null);
  const [history, setHistory] = useState<KeyVersion[] | null>(null);
  const [compareAt, setCompareAt] = useState(1);
  const [confirmingDelete, setConfirmingDelete] = useState(false);

  const load = useCallback(async () => {
    try {
      setDetail(await api.getKey(keyName));
      setDraft(null);
      setHistory(null);
    } catch (error) {
      setDetail(null);
      onError(asCommandError(error));
    }
  }, [keyName, onError]);

  useEffect(() => {
    void load();
  }, [load]);

  useEffect(() => {
    const onKey = (event: KeyboardEvent) => {
      if (active && (event.ctrlKey || event.metaKey) && event.key === "e" && detail && draft === null) {
        event.preventDefault();
        startEdit();
      }
    };
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
  });

  if (!detail) return <div className="key-panel empty">Loading {keyName}…</div>;
  const bytes = base64ToBytes(detail.value);
  const editable = analyseValue(bytes).text !== null;

  function startEdit() {
    if (!detail) return;
    const views = analyseValue(base64ToBytes(detail.value));
    setDraft(views.text ?? "");
  }

  async function save() {
    if (draft === null || !detail) return;
    try {
      // The write only happens if nobody changed the key since it was loaded.
      setDetail(await api.putKey(detail.key, textToBase64(draft), detail.modRevision));
      setDraft(null);
      setHistory(null);
    } catch (error) {
      onError(asCommandError(error));
    }
  }

  async function remove() {
    setConfirmingDelete(false);
    if (!detail) return;
    try {
      await api.deleteKey(detail.key, detail.modRevision);
      onDeleted(detail.key);
    } catch (error) {
      onError(asCommandError(error));
    }
  }

  async function showHistory() {
    try {
      const versions = await api.keyHistory(detail!.key);
      setHistory(versions);
      setCompareAt(versions.length > 1 ? 1 : 0);
    } catch (error) {
      onError(asCommandError(error));
    }
  }

  return (
    <div className="key-panel" data-testid="key-panel">
      <div className="key-title">
        <h2 data-testid="key-name">{detail.key}</h2>
        <div className="actions">
          {draft === null ? (
            <>
              <button onClick={startEdit} disabled={!editable} title="Edit (Ctrl+E)" data-testid="edit-key">
                Edit
              </button>
              <button onClick={() => void showHistory()} data-testid="show-history">
                History
              </button>
              <button onClick={() => void load()} title="Reload">
                Reload
              </button>
              <button className="danger" onClick={() => setConfirmingDelete(true)} data-testid="delete-key">
                Delete
              </button>
            </>
          ) : (
            <>
              <button className="primary" onClick={() => void save()} title="Save (Ctrl+S)" data-testid="save-key">
                Save
              </button>
              <button onClick={() => setDraft(null)}>Cancel</button>
            </>
          )}
        </div>
      </div>
      <dl className="meta" data-testid="key-meta">
        <dt>create revision</dt>
        <dd>{detail.createRevision}</dd>
        <dt>mod revision</dt>
        <dd data-testid="mod-revision">{detail.modRevision}</dd>
        <dt>version</dt>
        <dd>{detail.version}</dd>
        <dt>lease</dt>
        <dd>{detail.lease === 0 ? "none" : detail.lease.toString(16)}</dd>
      </dl>
      {draft === null ? (
        <ValueViewer bytes={bytes} />
      ) : (
        <textarea
          className="editor"
          data-testid="value-editor"
          value={draft}
          autoFocus
          onChange={(event) => setDraft(event.target.value)}
          onKeyDown={(event) => {
            if ((event.ctrlKey || event.metaKey) && event.key === "s") {
              event.preventDefault();
              void save();
            }
            if (event.key === "Escape") setDraft(null);
          }}
        />
      )}
      {confirmingDelete && (
        <ConfirmDialog
          title="Delete key"
          confirmLabel="Delete"
          onConfirm={() => void remove()}
          onCancel={() => setConfirmingDelete(false)}
        >
          Delete <code>{detail.key}</code>? Its history stays until the next compaction.
        </ConfirmDialog>
      )}
      {history && (
        <section className="history" data-testid="history">
          <h3>History ({history.length} versions kept)</h3>
          <div className="history-list">
            {history.map((version, index) => (
              <button
                key={version.modRevision}
                className={index === compareAt ? "tab active" : "tab"}
                onClick={() => setCompareAt(index)}
              >
                v{version.version} @ {version.modRevision}
              </button>
            ))}
          </div>
          {history.length > 0 && (
            <>
              <p className="muted">
                Changes from v{history[compareAt].version} (revision {history[compareAt].modRevision}) to the current value
              </p>
              <DiffView
                before={valueAsText(base64ToBytes(history[compareAt].value))}
                after={valueAsText(bytes)}
              />
            </>
          )}
        </section>
      )}
    </div>
  );
}
