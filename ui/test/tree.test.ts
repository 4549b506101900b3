import { describe, expect, it } from "vitest";
import { ancestorsOf, KeyTree, visibleRows, windowOf } from "../src/lib/tree";

const labels = (tree: KeyTree, expanded: string[]) =>
  visibleRows(tree, new Set(expanded)).map((row) => "  ".repeat(row.depth) + row.node.label);

describe("key tree", () => {
  it("splits keys on / into directories, directories first, counting keys", () => {
    const tree = new KeyTree();
    tree.addKeys(["/registry/pods/default/web-0", "/registry/pods/default/web-1", "/registry/services/api", "/top"]);
    tree.addKeys(["plain", "/registry/a-key"]);
    expect(labels(tree, ["/", "/registry/", "/registry/pods/"])).toEqual([
      "/",
      "  registry/",
      "    pods/",
      "      default/",
      "    services/",
      "    a-key",
      "  top",
      "plain",
    ]);
    expect(tree.root.keyCount).toBe(6);
    expect(tree.root.children?.get("/")?.children?.get("registry/")?.keyCount).toBe(4);
    expect(tree.keys).toHaveLength(6);
  });

  it("keeps a key and a directory of the same name apart", () => {
    const tree = new KeyTree();
    tree.addKeys(["/a", "/a/b"]);
    expect(labels(tree, ["/", "/a/"])).toEqual(["/", "  a/", "    b", "  a"]);
  });

  it("removes a key and prunes directories left empty", () => {
    const tree = new KeyTree();
    tree.addKeys(["/x/y/z", "/x/w"]);
    tree.removeKey("/x/y/z");
    expect(labels(tree, ["/", "/x/"])).toEqual(["/", "  x/", "    w"]);
    expect(tree.has("/x/y/z")).toBe(false);
    expect(tree.root.keyCount).toBe(1);
  });

  it("builds 100,000 keys page by page and flattens an expanded directory", () => {
    const keys = Array.from({ length: 100_000 }, (_, i) => `/bench/${String(i).padStart(6, "0")}`);
    const tree = new KeyTree();
    for (let i = 0; i < keys.length; i += 5000) tree.addKeys(keys.slice(i, i + 5000));
    const rows = visibleRows(tree, new Set(["/", "/bench/"]));
    expect(rows).toHaveLength(100_002);
    expect(rows[2].node.path).toBe("/bench/000000");
    expect(rows[rows.length - 1].node.path).toBe("/bench/099999");
  });

  it("lists the directories to open to reveal a key", () => {
    expect(ancestorsOf("/a/b/c")).toEqual(["/", "/a/", "/a/b/"]);
    expect(ancestorsOf("top")).toEqual([]);
  });
});

describe("virtual window", () => {
  it("renders only the rows in view plus overscan", () => {
    expect(windowOf(100_000, 24, 24 * 5000, 480, 8)).toEqual({ start: 4992, end: 5028 });
    expect(windowOf(10, 24, 0, 480, 8)).toEqual({ start: 0, end: 10 });
  });
});
