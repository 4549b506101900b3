// The processes the end-to-end test runs: a cairn node and tauri-driver, on free ports,
// each waited for with a deadline and stopped at the end.

import { ChildProcess, spawn } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { createServer, Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

function portOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = new Socket();
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
    socket.connect(port, "127.0.0.1");
  });
}

export async function waitUntil(what: string, timeoutMs: number, check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`${what} not ready after ${timeoutMs} ms`);
}

export class Managed {
  readonly output: string[] = [];
  constructor(
    readonly name: string,
    readonly child: ChildProcess,
  ) {
    const keep = (chunk: Buffer) => {
      this.output.push(chunk.toString());
      if (this.output.length > 200) this.output.shift();
    };
    child.stdout?.on("data", keep);
    child.stderr?.on("data", keep);
  }

  get exited(): boolean {
    return this.child.exitCode !== null || this.child.signalCode !== null;
  }

  async stop(): Promise<void> {
    if (this.exited) return;
    const done = new Promise((resolve) => this.child.once("exit", resolve));
    this.child.kill("SIGTERM");
    const timer = setTimeout(() => this.child.kill("SIGKILL"), 5000);
    await done;
    clearTimeout(timer);
  }
}

export interface Node {
  process: Managed;
  clientUrl: string;
}

export async function startCairn(bin: string): Promise<Node> {
  const dataDir = mkdtempSync(join(tmpdir(), "cairn-console-e2e-"));
  const [clientPort, peerPort] = [await freePort(), await freePort()];
  const clientUrl = `http://127.0.0.1:${clientPort}`;
  const peerUrl = `http://127.0.0.1:${peerPort}`;
  const child = spawn(
    bin,
    [
      "--data-dir", join(dataDir, "data"),
      "--listen-client-urls", clientUrl,
      "--advertise-client-urls", clientUrl,
      "--listen-peer-urls", peerUrl,
      "--initial-advertise-peer-urls", peerUrl,
      "--initial-cluster", `default=${peerUrl}`,
    ],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  const process = new Managed("cairn", child);
  await waitUntil("cairn", 30_000, async () => {
    if (process.exited) throw new Error(`cairn exited: ${process.output.join("")}`);
    return portOpen(clientPort);
  });
  return { process, clientUrl };
}

export async function startTauriDriver(tauriDriver: string, nativeDriver: string, env: NodeJS.ProcessEnv): Promise<{ process: Managed; url: string }> {
  const [port, nativePort] = [await freePort(), await freePort()];
  const child = spawn(
    tauriDriver,
    ["--port", String(port), "--native-port", String(nativePort), "--native-driver", nativeDriver],
    { stdio: ["ignore", "pipe", "pipe"], env },
  );
  const process = new Managed("tauri-driver", child);
  const url = `http://127.0.0.1:${port}`;
  // tauri-driver listens before the WebKitWebDriver it starts does, and drops a new-session
  // request that arrives in between: wait for both ports.
  await waitUntil("tauri-driver and WebKitWebDriver", 30_000, async () => {
    if (process.exited) throw new Error(`tauri-driver exited: ${process.output.join("")}`);
    return (await portOpen(port)) && (await portOpen(nativePort));
  });
  return { process, url };
}

export function run(bin: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, { stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on("data", (chunk: Buffer) => (output += chunk.toString()));
    child.once("exit", (code) => (code === 0 ? resolve(output) : reject(new Error(`${bin} failed (${code}): ${output}`))));
  });
}
