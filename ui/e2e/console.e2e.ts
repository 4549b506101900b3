// End-to-end test of the built Cairn Console: the real binary, driven through tauri-driver
// and WebKitWebDriver, against a real cairn node started here. Screenshots of each view go
// to docs/console/, and the 100,000-key load figures to docs/console/measurements.json.

import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Managed, Node, run, startCairn, startTauriDriver } from "./processes";
import { Session } from "./webdriver";

function required(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`set ${name} (scripts/test-console does)`);
  return value;
}

const SCREENSHOTS = resolve(process.env.SCREENSHOT_DIR ?? fileURLToPath(new URL("../../docs/console", import.meta.url)));
/** WebDriver's code for the Enter key. */
const ENTER = "\uE007";
const SEED_KEYS = Number(process.env.SEED_KEYS ?? 100_000);

let node: Node;
let driver: { process: Managed; url: string };
let app: Session;

async function screenshot(name: string): Promise<void> {
  mkdirSync(SCREENSHOTS, { recursive: true });
  // WebKitWebDriver's snapshot waits for the next paint; a page with nothing changing
  // (no caret blinking, no live chart) may not paint for a minute. A 1-pixel, almost
  // transparent mark that flips every frame keeps paints coming while it is taken.
  await app.execute(`
    const mark = document.createElement("div");
    mark.id = "e2e-paint-mark";
    Object.assign(mark.style, { position: "fixed", right: "0", bottom: "0", width: "1px", height: "1px" });
    document.body.appendChild(mark);
    let on = false;
    const flip = () => {
      if (!mark.isConnected) return;
      on = !on;
      mark.style.background = on ? "rgba(0,0,0,0.01)" : "transparent";
      requestAnimationFrame(flip);
    };
    requestAnimationFrame(flip);
  `);
  const started = Date.now();
  const png = await app.screenshot();
  await app.execute('document.getElementById("e2e-paint-mark")?.remove()');
  writeFileSync(join(SCREENSHOTS, `${name}.png`), png);
  console.log(`screenshot ${name}.png in ${Date.now() - started} ms`);
}

/** Replaces a field's text: clear it, then type as a user does (key events that React sees). */
async function replaceText(css: string, text: string): Promise<void> {
  const field = await app.waitFor(css);
  await field.clear();
  await field.type(text);
}

async function view(name: "keys" | "watch" | "cluster"): Promise<void> {
  await (await app.find(`[data-testid="view-${name}"]`)).click();
}

beforeAll(async () => {
  node = await startCairn(required("CAIRN_BIN"));
  // A fresh config dir, and no keychain: the test must not touch the user's.
  const env = {
    ...process.env,
    XDG_CONFIG_HOME: mkdtempSync(join(tmpdir(), "cairn-console-config-")),
    CAIRN_CONSOLE_NO_KEYCHAIN: "1",
  };
  driver = await startTauriDriver(required("TAURI_DRIVER"), required("WEBKIT_DRIVER"), env);
  try {
    app = await Session.create(driver.url, {
      browserName: "wry",
      "tauri:options": { application: required("CONSOLE_BIN") },
    });
  } catch (error) {
    throw new Error(`no WebDriver session: ${String(error)}; tauri-driver said: ${driver.process.output.join("")}`);
  }
  await app.setWindowSize(1280, 800);
  // Screenshots in the light theme whatever the machine prefers; one test switches to dark.
  await app.waitFor('[data-testid="toggle-theme"]');
  await app.execute('localStorage.setItem("theme", "light"); location.reload();');
}, 120_000);

afterAll(async () => {
  await app?.close().catch(() => undefined);
  await driver?.process.stop();
  await node?.process.stop();
});

describe("Cairn Console against a real cairn node", () => {
  it("connects to the node through a new saved connection", async () => {
    await app.waitFor('[data-testid="connection-form"]');
    await (await app.find('[data-testid="connection-name"]')).type("local cairn");
    await replaceText('[data-testid="connection-endpoints"]', node.clientUrl);
    await screenshot("connection");
    await (await app.find('[data-testid="save-and-connect"]')).click();
    const connected = await app.waitForText('[data-testid="connected"]', "local cairn");
    expect(await connected.text()).toContain("API 3.5.13");
  });

  it("watches a prefix that the edits below will change", async () => {
    await view("watch");
    await replaceText('[data-testid="watch-key"]', "/e2e/");
    await (await app.find('[data-testid="start-watch"]')).click();
    await app.waitForText('[data-testid="watch-status"]', "Watching /e2e/");
  });

  it("creates a key and shows it in the tree with its value", async () => {
    await view("keys");
    await (await app.waitFor('[data-testid="new-key"]')).click();
    await (await app.waitFor('[data-testid="new-key-name"]')).type("/e2e/app/config");
    await (await app.find('[data-testid="new-key-value"]')).type('{"replicas": 1, "image": "nginx:1.27"}');
    await (await app.find('[data-testid="create-key"]')).click();
    await app.waitFor('[data-key="/e2e/app/config"]');
    await app.waitForText('[data-testid="key-name"]', "/e2e/app/config");
    const value = await app.waitFor('[data-testid="value-json"]');
    expect(await value.text()).toContain('"replicas": 1');
    // The count under the search box follows the new key without a reload.
    await app.waitFor('[data-testid="load-status"]', 10_000, async (element) => {
      return Number(await element.attribute("data-loaded")) === 1;
    });
    await screenshot("keys");
  });

  it("edits the key with a compare on its mod revision", async () => {
    const before = Number(await (await app.find('[data-testid="mod-revision"]')).text());
    await (await app.find('[data-testid="edit-key"]')).click();
    await replaceText('[data-testid="value-editor"]', '{"replicas": 3, "image": "nginx:1.27"}');
    await (await app.find('[data-testid="save-key"]')).click();
    await app.waitFor('[data-testid="mod-revision"]', 10_000, async (element) => Number(await element.text()) > before);
    expect(await (await app.waitFor('[data-testid="value-json"]')).text()).toContain('"replicas": 3');
    await (await app.find('[data-testid="show-history"]')).click();
    await app.waitForText('[data-testid="history"]', "2 versions");
    await screenshot("key-history");
  });

  it("shows the edit arriving in the watch view with prev → new", async () => {
    await view("watch");
    // The newest event is the first row. Its cell is cut off with an ellipsis, which
    // WebDriver's visible text leaves out, so read the cell's content.
    const newestValue = () =>
      app.execute<string>('return document.querySelector(\'[data-testid="event-value"]\')?.textContent ?? ""');
    await app.waitFor("tr.event.put", 10_000, async () => (await newestValue()).includes("→"));
    expect((await app.findAll("tr.event.put")).length).toBe(2);
    const text = await newestValue();
    expect(text).toContain('"replicas": 1');
    expect(text).toContain("→");
    expect(text).toContain('"replicas": 3');
    await (await app.find("tr.event.put .badge")).click();
    await app.waitFor('[data-testid="diff"]');
    await screenshot("watch");
  });

  it("shows the member as leader with no lag in the cluster view", async () => {
    await view("cluster");
    const role = await app.waitForText('[data-testid="member-role"]', "leader", 15_000);
    expect(await role.text()).toBe("leader");
    expect(await (await app.find('[data-testid="member-lag"]')).text()).toBe("0");
    await app.waitForText('[data-testid="cluster-health"]', "Healthy");
    // A few samples so the chart has a line.
    await app.waitFor('[data-testid="lag-chart"] canvas', 10_000);
    await new Promise((done) => setTimeout(done, 3000));
    await screenshot("cluster");
  });

  it("switches to the dark theme", async () => {
    await view("keys");
    await (await app.find('[data-testid="toggle-theme"]')).click();
    await app.waitFor('[data-key="/e2e/app/config"]');
    await (await app.find('[data-key="/e2e/app/config"]')).click();
    await app.waitFor('[data-testid="value-json"]');
    await screenshot("keys-dark");
    await (await app.find('[data-testid="toggle-theme"]')).click();
  });

  it("decodes a Kubernetes protobuf value to readable fields", async () => {
    await run(required("SEED_BIN"), [node.clientUrl, "kubernetes"]);
    await replaceText('[data-testid="prefix-input"]', `/registry/configmaps/prod/${ENTER}`);
    const row = await app.waitFor('[data-key="/registry/configmaps/prod/app-settings"]');
    await row.click();
    const decoded = await app.waitFor('[data-testid="value-kubernetes"]');
    const text = await decoded.text();
    expect(text).toContain("kind: ConfigMap");
    expect(text).toContain("name: app-settings");
    expect(text).toContain("LOG_LEVEL: debug");
    await screenshot("kubernetes-value");
  });

  it(`loads ${SEED_KEYS.toLocaleString("en")} keys and scrolls to the last one`, async () => {
    const seeded = await run(required("SEED_BIN"), [node.clientUrl, String(SEED_KEYS)]);
    // Reconnecting starts the timing: connect, then the pages of keys.
    const clicked = Date.now();
    await (await app.find('[data-testid="connect"]')).click();
    const status = await app.waitFor('[data-testid="load-status"]', 180_000, async (element) => {
      return (await element.attribute("data-complete")) === "true" && Number(await element.attribute("data-loaded")) >= SEED_KEYS;
    });
    const wallClockMs = Date.now() - clicked;
    const firstPageMs = Number(await status.attribute("data-first-page-ms"));
    const allKeysMs = Number(await status.attribute("data-all-keys-ms"));

    // Scroll the flat list to its end and wait for the last key's row to be drawn.
    await (await app.find('[data-testid="flat-mode"]')).click();
    const scrollStarted = Date.now();
    await app.execute(
      'const list = document.querySelector(\'[data-testid="key-list"]\'); list.scrollTop = list.scrollHeight;',
    );
    const lastKey = `/registry/configmaps/ns-${String((SEED_KEYS - 1) % 100).padStart(3, "0")}/cm-${String(SEED_KEYS - 1).padStart(6, "0")}`;
    await app.waitFor(`[data-key="${lastKey}"]`, 10_000);
    const scrollMs = Date.now() - scrollStarted;
    const rendered = await app.findAll(".virtual-row");
    expect(rendered.length).toBeLessThan(100);
    await screenshot("keys-100k");

    const figures = {
      keys: SEED_KEYS,
      pageSize: 5000,
      connectToFirstRowsMs: firstPageMs,
      connectToAllKeysMs: allKeysMs,
      clickToAllKeysWallClockMs: wallClockMs,
      scrollToLastKeyMs: scrollMs,
      rowsInDom: rendered.length,
      seeding: seeded.trim(),
      measuredAt: new Date().toISOString(),
    };
    console.log(`100k figures: ${JSON.stringify(figures)}`);
    writeFileSync(join(SCREENSHOTS, "measurements.json"), `${JSON.stringify(figures, null, 2)}\n`);
  }, 240_000);
});
