import { defineConfig } from "vitest/config";

// The end-to-end run: one app, tests in order, long timeouts for the real processes.
export default defineConfig({
  test: {
    include: ["e2e/**/*.e2e.ts"],
    environment: "node",
    testTimeout: 60_000,
    hookTimeout: 120_000,
    fileParallelism: false,
    sequence: { concurrent: false },
  },
});
