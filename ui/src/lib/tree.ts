// The key tree: keys split on "/" into directories, built incrementally as pages arrive
// from the server, and flattened into only the rows the user has expanded so the list
// component can render a window of them.

export interface TreeNode {
  /** Shown in the row: a directory's label ends with "/". */
  label: string;
  /** A directory's prefix (ending in "/"), or a leaf's whole key. */
  path: string;
  isDir: boolean;
  /** Keys at or below this node. */
  keyCount: number;
  /** A directory's children by label; leaves have none (100,000 empty maps cost seconds). */
  children: Map<string, TreeNode> | null;
  /** Children in display order, rebuilt only after an insert. */
  sorted: TreeNode[] | null;
}

export interface TreeRow {
  node: TreeNode;
  depth: number;
}

/** The children of a directory node (only directories are walked). */
function entries(dir: TreeNode): Map<string, TreeNode> {
  if (!dir.children) throw new Error(`${dir.path} is a key, not a directory`);
  return dir.children;
}

function makeNode(label: string, path: string, isDir: boolean): TreeNode {
  return { label, path, isDir, keyCount: 0, children: isDir ? new Map() : null, sorted: isDir ? [] : null };
}

export class KeyTree {
  readonly root: TreeNode = makeNode("", "", true);
  /** Every key, in the server's (byte) order, for the flat list. */
  readonly keys: string[] = [];
  /** Bumped on every change, so views can memoise on it. */
  version = 0;

  addKeys(keys: readonly string[]): void {
    for (const key of keys) {
      this.insert(key);
      this.keys.push(key);
    }
    this.version++;
  }

  /** The directories of the last key inserted: the server sends keys in order, so the
   * next key is usually a sibling and skips the walk from the root. */
  private lastTrail: TreeNode[] = [];

  private insert(key: string): void {
    const parent = this.lastTrail[this.lastTrail.length - 1];
    if (parent && key.startsWith(parent.path) && key.indexOf("/", parent.path.length) < 0) {
      for (const dir of this.lastTrail) dir.keyCount++;
      this.addLeaf(parent, key.slice(parent.path.length), key);
      return;
    }
    const segments = key.split("/");
    let node = this.root;
    node.keyCount++;
    const trail = [node];
    let prefix = "";
    for (let i = 0; i < segments.length - 1; i++) {
      prefix += segments[i] + "/";
      const label = segments[i] + "/";
      let child = entries(node).get(label);
      if (!child) {
        child = makeNode(label, prefix, true);
        entries(node).set(label, child);
        node.sorted = null;
      }
      child.keyCount++;
      node = child;
      trail.push(node);
    }
    this.lastTrail = trail;
    this.addLeaf(node, segments[segments.length - 1], key);
  }

  private addLeaf(dir: TreeNode, label: string, key: string): void {
    if (entries(dir).has(label)) return;
    const leaf = makeNode(label, key, false);
    entries(dir).set(label, leaf);
    // Keys in order append at the end of the display order; anything else re-sorts later.
    const sorted = dir.sorted;
    const last = sorted?.[sorted.length - 1];
    if (sorted && (!last || last.isDir || last.label < label)) sorted.push(leaf);
    else dir.sorted = null;
  }

  /** Removes a key (after a delete), pruning directories left empty. */
  removeKey(key: string): void {
    const index = this.keys.indexOf(key);
    if (index < 0) return;
    this.keys.splice(index, 1);
    const segments = key.split("/");
    const trail: TreeNode[] = [this.root];
    let node = this.root;
    for (let i = 0; i < segments.length - 1; i++) {
      const child = entries(node).get(segments[i] + "/");
      if (!child) return;
      trail.push(child);
      node = child;
    }
    entries(node).delete(segments[segments.length - 1]);
    node.sorted = null;
    this.lastTrail = [];
    for (let i = trail.length - 1; i >= 0; i--) {
      const current = trail[i];
      current.keyCount--;
      if (i > 0 && current.keyCount === 0) {
        entries(trail[i - 1]).delete(current.label);
        trail[i - 1].sorted = null;
      }
    }
    this.version++;
  }

  has(key: string): boolean {
    return this.keys.includes(key);
  }
}

function sortedChildren(node: TreeNode): TreeNode[] {
  if (!node.sorted) {
    // Directories first, then keys, each by label; plain code-unit order matches how
    // the server orders the keys within one directory.
    node.sorted = [...entries(node).values()].sort((a, b) => {
      if (a.isDir !== b.isDir) return a.isDir ? -1 : 1;
      return a.label < b.label ? -1 : a.label > b.label ? 1 : 0;
    });
  }
  return node.sorted;
}

/** The rows shown: the root's children and, below each expanded directory, its own. */
export function visibleRows(tree: KeyTree, expanded: ReadonlySet<string>): TreeRow[] {
  const rows: TreeRow[] = [];
  const walk = (node: TreeNode, depth: number): void => {
    for (const child of sortedChildren(node)) {
      rows.push({ node: child, depth });
      if (child.isDir && expanded.has(child.path)) walk(child, depth + 1);
    }
  };
  walk(tree.root, 0);
  return rows;
}

/** The directory prefixes to expand so that `key`'s row is visible. */
export function ancestorsOf(key: string): string[] {
  const segments = key.split("/");
  const prefixes: string[] = [];
  let prefix = "";
  for (let i = 0; i < segments.length - 1; i++) {
    prefix += segments[i] + "/";
    prefixes.push(prefix);
  }
  return prefixes;
}

/** The window of rows to render for a scroll position, with a few extra above and below. */
export function windowOf(
  rowCount: number,
  rowHeight: number,
  scrollTop: number,
  viewportHeight: number,
  overscan = 8,
): { start: number; end: number } {
  const first = Math.floor(scrollTop / rowHeight);
  const visible = Math.ceil(viewportHeight / rowHeight);
  return {
    start: Math.max(0, first - overscan),
    end: Math.min(rowCount, first + visible + overscan),
  };
}
