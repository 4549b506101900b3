import { describe, expect, it } from "vitest";
import { asCommandError } from "../src/lib/api";

describe("command errors", () => {
  it("passes the backend's error through unchanged", () => {
    const error = { kind: "conflict", message: "The key /a was changed by someone else", detail: "expected 4, found 5" };
    expect(asCommandError(error)).toBe(error);
  });

  it("wraps anything else as a server error with the original text as detail", () => {
    expect(asCommandError("IPC failed")).toEqual({
      kind: "server",
      message: "Something went wrong inside the app.",
      detail: "IPC failed",
    });
  });
});
