import { defineConfig } from "vitest/config";

// No React plugin: esbuild compiles the JSX, which is all a Tauri build needs (the React
// plugin only adds fast refresh for `vite dev`).
export default defineConfig({
  esbuild: { jsx: "automatic" },
  clearScreen: false,
  server: { port: 5173, strictPort: true },
  build: { target: "safari16", outDir: "dist", emptyOutDir: true },
  test: { include: ["test/**/*.test.ts"], environment: "node" },
});
