import { describe, expect, it } from "vitest";
import { diffLines, diffStats } from "../src/lib/diff";

describe("line diff", () => {
  it("marks changed lines as a removal and an addition, keeping the rest", () => {
    const lines = diffLines("a\nb\nc\nd", "a\nB\nc\nd\ne");
    expect(lines).toEqual([
      { op: "equal", text: "a" },
      { op: "remove", text: "b" },
      { op: "add", text: "B" },
      { op: "equal", text: "c" },
      { op: "equal", text: "d" },
      { op: "add", text: "e" },
    ]);
    expect(diffStats(lines)).toEqual({ added: 2, removed: 1 });
  });

  it("treats a created value as all additions and a deleted one as all removals", () => {
    expect(diffLines("", "x\ny")).toEqual([
      { op: "add", text: "x" },
      { op: "add", text: "y" },
    ]);
    expect(diffLines("x", "")).toEqual([{ op: "remove", text: "x" }]);
  });

  it("finds the longest common subsequence, not just a common prefix", () => {
    const lines = diffLines("x\na\nb\nc", "a\nb\nc\ny");
    expect(lines.map((l) => `${l.op[0]}${l.text}`)).toEqual(["rx", "ea", "eb", "ec", "ay"]);
  });

  it("applying the diff's equal and add lines gives the new text", () => {
    const before = "one\ntwo\nthree\nfour\nfive";
    const after = "zero\none\nthree\nfour!\nfive\nsix";
    const rebuilt = diffLines(before, after)
      .filter((l) => l.op !== "remove")
      .map((l) => l.text)
      .join("\n");
    expect(rebuilt).toBe(after);
  });
});
