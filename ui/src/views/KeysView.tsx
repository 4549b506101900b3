import { useCallback, useEffect, useMemo, useRef, useState } from "react";
import { api, asCommandError, CommandError } from "../lib/api";
import { textToBase64 } from "../lib/decode";
import { ancestorsOf, KeyTree, visibleRows } from "../lib/tree";
import { ConfirmDialog } from "./ConfirmDialog";
import { KeyPanel } from "./KeyPanel";
import { VirtualList } from "./VirtualList";

/** Keys per Range request: big enough that 100,000 keys take 20 round trips, small enough
 * that the first page shows at once. */
const PAGE_SIZE = 5000;
const ROW_HEIGHT = 24;

interface LoadState {
  loaded: number;
  complete: boolean;
  /** Milliseconds to the first rows and to the last page, from the connect click for the
   * first listing and from the start of the listing after that. */
  firstPageMs: number | null;
  allKeysMs: number | null;
}

interface Props {
  /** Whether the view is shown: its keyboard shortcuts only work then. */
  active: boolean;
  /** performance.now() when the user clicked Connect, for the load timings. */
  connectedAt: number;
  onError: (error: CommandError) => void;
}

export function KeysView({ active, connectedAt, onError }: Props) {
  const [prefix, setPrefix] = useState("");
  const [search, setSearch] = useState("");
  const [mode, setMode] = useState<"tree" | "flat">("tree");
  const [tree, setTree] = useState(() => new KeyTree());
  const [treeVersion, setTreeVersion] = useState(0);
  const [expanded, setExpanded] = useState<Set<string>>(() => new Set(["/"]));
  const [selected, setSelected] = useState<string | null>(null);
  const [load, setLoad] = useState<LoadState>({ loaded: 0, complete: false, firstPageMs: null, allKeysMs: null });
  const [creating, setCreating] = useState(false);
  const [newKey, setNewKey] = useState("");
  const [newValue, setNewValue] = useState("");
  const [confirmPrefix, setConfirmPrefix] = useState(false);
  const loadGeneration = useRef(0);
  // The first listing is timed from the connect click; later ones (search, reload) from
  // their own start.
  const listedOnce = useRef(false);
  const searchBox = useRef<HTMLInputElement>(null);

  const reload = useCallback(async () => {
    const generation = ++loadGeneration.current;
    const startedAt = listedOnce.current ? performance.now() : connectedAt;
    listedOnce.current = true;
    const fresh = new KeyTree();
    setTree(fresh);
    setTreeVersion(fresh.version);
    setLoad({ loaded: 0, complete: false, firstPageMs: null, allKeysMs: null });
    let after: string | null = null;
    let revision: number | null = null;
    let firstPageMs: number | null = null;
    try {
      for (;;) {
        const page = await api.listKeys(prefix, after, PAGE_SIZE, revision);
        if (generation !== loadGeneration.current) return;
        fresh.addKeys(page.keys);
        revision = page.revision;
        after = page.keys.length > 0 ? page.keys[page.keys.length - 1] : after;
        firstPageMs ??= Math.round(performance.now() - startedAt);
        const done = !page.more || page.keys.length === 0;
        setTreeVersion(fresh.version);
        setLoad({
          loaded: fresh.keys.length,
          complete: done,
          firstPageMs,
          allKeysMs: done ? Math.round(performance.now() - startedAt) : null,
        });
        if (done) return;
      }
    } catch (error) {
      if (generation === loadGeneration.current) onError(asCommandError(error));
    }
  }, [prefix, connectedAt, onError]);

  useEffect(() => {
    void reload();
  }, [reload]);

  // A search opens the directories down to the prefix, so its keys show at once.
  useEffect(() => {
    setExpanded((current) => new Set([...current, "/", ...ancestorsOf(prefix)]));
  }, [prefix]);

  useEffect(() => {
    if (!active) return;
    const onKey = (event: KeyboardEvent) => {
      const mod = event.ctrlKey || event.metaKey;
      if (mod && event.key === "k") {
        event.preventDefault();
        searchBox.current?.focus();
      } else if (mod && event.key === "n") {
        event.preventDefault();
        setCreating(true);
      } else if (event.key === "F5" || (mod && event.key === "r")) {
        event.preventDefault();
        void reload();
      }
    };
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
  }, [reload, active]);

  const rows = useMemo(
    () => (mode === "tree" ? visibleRows(tree, expanded) : []),
    // treeVersion stands for the tree's contents, which change in place as pages arrive.
    [tree, treeVersion, expanded, mode],
  );
  const rowCount = mode === "tree" ? rows.length : tree.keys.length;

  function toggle(path: string) {
    setExpanded((current) => {
      const next = new Set(current);
      if (next.has(path)) next.delete(path);
      else next.add(path);
      return next;
    });
  }

  function reveal(key: string) {
    setExpanded((current) => new Set([...current, ...ancestorsOf(key)]));
    setSelected(key);
  }

  async function create() {
    try {
      const created = await api.putKey(newKey, textToBase64(newValue), 0);
      if (created.key.startsWith(prefix) && !tree.has(created.key)) {
        tree.addKeys([created.key]);
        setTreeVersion(tree.version);
        setLoad((current) => ({ ...current, loaded: tree.keys.length }));
      }
      setCreating(false);
      setNewKey("");
      setNewValue("");
      reveal(created.key);
    } catch (error) {
      onError(asCommandError(error));
    }
  }

  async function deletePrefix() {
    setConfirmPrefix(false);
    try {
      await api.deleteKeysWithPrefix(prefix);
      setSelected(null);
      void reload();
    } catch (error) {
      onError(asCommandError(error));
    }
  }

  const renderRow = (index: number) => {
    if (mode === "flat") {
      const key = tree.keys[index];
      return (
        <div
          className={key === selected ? "key-row selected" : "key-row"}
          data-key={key}
          onClick={() => setSelected(key)}
        >
          {key}
        </div>
      );
    }
    const { node, depth } = rows[index];
    const open = expanded.has(node.path);
    return (
      <div
        className={node.path === selected ? "key-row selected" : "key-row"}
        style={{ paddingLeft: 8 + depth * 16 }}
        data-key={node.isDir ? undefined : node.path}
        data-dir={node.isDir ? node.path : undefined}
        onClick={() => (node.isDir ? toggle(node.path) : setSelected(node.path))}
      >
        {node.isDir ? (
          <>
            <span className="twisty">{open ? "▾" : "▸"}</span>
            <span className="dir">{node.label}</span>
            <span className="count">{node.keyCount}</span>
          </>
        ) : (
          <span className="leaf">{node.label === "" ? "(empty name)" : node.label}</span>
        )}
      </div>
    );
  };

  return (
    <div className="keys-view">
      <div className="toolbar">
        <form
          className="search"
          onSubmit={(event) => {
            event.preventDefault();
            setPrefix(search);
          }}
        >
          <input
            ref={searchBox}
            placeholder="Key prefix, e.g. /registry/pods/  (Ctrl+K)"
            value={search}
            onChange={(event) => setSearch(event.target.value)}
            data-testid="prefix-input"
          />
          <button type="submit">Search</button>
        </form>
        <div className="segmented">
          <button className={mode === "tree" ? "active" : ""} onClick={() => setMode("tree")}>
            Tree
          </button>
          <button className={mode === "flat" ? "active" : ""} onClick={() => setMode("flat")} data-testid="flat-mode">
            List
          </button>
        </div>
        <button onClick={() => void reload()} title="Reload (F5)">
          Reload
        </button>
        <button className="primary" onClick={() => setCreating(true)} title="New key (Ctrl+N)" data-testid="new-key">
          New key
        </button>
        <button className="danger" disabled={prefix === ""} onClick={() => setConfirmPrefix(true)} data-testid="delete-prefix">
          Delete prefix…
        </button>
      </div>
      <div
        className="load-status muted"
        data-testid="load-status"
        data-loaded={load.loaded}
        data-complete={String(load.complete)}
        data-first-page-ms={load.firstPageMs ?? ""}
        data-all-keys-ms={load.allKeysMs ?? ""}
      >
        {load.loaded.toLocaleString()} {load.loaded === 1 ? "key" : "keys"}{prefix && <> under <code>{prefix}</code></>}
        {load.complete ? "" : " · loading…"}
        {load.allKeysMs !== null && ` · loaded in ${(load.allKeysMs / 1000).toFixed(2)} s`}
      </div>
      <div className="split">
        <div className="key-list">
          <VirtualList rowCount={rowCount} rowHeight={ROW_HEIGHT} renderRow={renderRow} testId="key-list" />
        </div>
        <div className="detail">
          {creating && (
            <form
              className="create-form"
              data-testid="create-form"
              onSubmit={(event) => {
                event.preventDefault();
                void create();
              }}
            >
              <h3>New key</h3>
              <input placeholder="/app/config" value={newKey} onChange={(e) => setNewKey(e.target.value)} data-testid="new-key-name" autoFocus />
              <textarea placeholder="value" value={newValue} onChange={(e) => setNewValue(e.target.value)} data-testid="new-key-value" />
              <div className="actions">
                <button type="button" onClick={() => setCreating(false)}>
                  Cancel
                </button>
                <button type="submit" className="primary" data-testid="create-key">
                  Create
                </button>
              </div>
            </form>
          )}
          {selected ? (
            <KeyPanel
              key={selected}
              keyName={selected}
              active={active}
              onError={onError}
              onDeleted={(key) => {
                tree.removeKey(key);
                setTreeVersion(tree.version);
                setLoad((current) => ({ ...current, loaded: tree.keys.length }));
                setSelected(null);
              }}
            />
          ) : (
            !creating && <div className="empty muted">Select a key to see its value, metadata and history.</div>
          )}
        </div>
      </div>
      {confirmPrefix && (
        <ConfirmDialog
          title="Delete every key under a prefix"
          confirmLabel={`Delete ${load.loaded.toLocaleString()} keys`}
          onConfirm={() => void deletePrefix()}
          onCancel={() => setConfirmPrefix(false)}
        >
          Delete every key that starts with <code>{prefix}</code> ({load.loaded.toLocaleString()} keys listed)? This cannot be undone.
        </ConfirmDialog>
      )}
    </div>
  );
}
