// A small W3C WebDriver client over fetch: enough to drive the app through tauri-driver
// without a browser-automation framework.

// The W3C web element identifier: the key under which a found element's id comes back.
const ELEMENT = "element-6066-11e4-a52e-4f735466cecf";

export class WebDriverError extends Error {}

export class Session {
  private constructor(
    private readonly base: string,
    readonly id: string,
  ) {}

  static async create(driverUrl: string, capabilities: object): Promise<Session> {
    const response = await call(driverUrl, "POST", "/session", { capabilities: { alwaysMatch: capabilities } });
    const value = response as { sessionId: string };
    return new Session(driverUrl, value.sessionId);
  }

  private command(method: string, path: string, body?: object): Promise<unknown> {
    return call(this.base, method, `/session/${this.id}${path}`, body);
  }

  async find(css: string): Promise<Element> {
    const found = (await this.command("POST", "/element", { using: "css selector", value: css })) as Record<string, string>;
    return new Element(this, found[ELEMENT]);
  }

  async findAll(css: string): Promise<Element[]> {
    const found = (await this.command("POST", "/elements", { using: "css selector", value: css })) as Record<string, string>[];
    return found.map((entry) => new Element(this, entry[ELEMENT]));
  }

  /** Polls until `css` matches an element (and `accept` holds for it) or the deadline passes. */
  async waitFor(css: string, timeoutMs = 15_000, accept?: (element: Element) => Promise<boolean>): Promise<Element> {
    const deadline = Date.now() + timeoutMs;
    let lastError: unknown = null;
    while (Date.now() < deadline) {
      try {
        const element = await this.find(css);
        if (!accept || (await accept(element))) return element;
      } catch (error) {
        lastError = error;
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    throw new WebDriverError(`timed out after ${timeoutMs} ms waiting for ${css}: ${String(lastError ?? "condition not met")}`);
  }

  async waitForText(css: string, text: string, timeoutMs = 15_000): Promise<Element> {
    return this.waitFor(css, timeoutMs, async (element) => (await element.text()).includes(text));
  }

  execute<T>(script: string, args: unknown[] = []): Promise<T> {
    return this.command("POST", "/execute/sync", { script, args }) as Promise<T>;
  }

  async screenshot(): Promise<Buffer> {
    const base64 = (await this.command("GET", "/screenshot")) as string;
    return Buffer.from(base64, "base64");
  }

  async setWindowSize(width: number, height: number): Promise<void> {
    await this.command("POST", "/window/rect", { width, height });
  }

  async close(): Promise<void> {
    await call(this.base, "DELETE", `/session/${this.id}`);
  }

  elementCommand(method: string, element: string, path: string, body?: object): Promise<unknown> {
    return this.command(method, `/element/${element}${path}`, body);
  }
}

export class Element {
  constructor(
    private readonly session: Session,
    readonly id: string,
  ) {}

  async click(): Promise<void> {
    await this.session.elementCommand("POST", this.id, "/click", {});
  }

  async clear(): Promise<void> {
    await this.session.elementCommand("POST", this.id, "/clear", {});
  }

  async type(text: string): Promise<void> {
    await this.session.elementCommand("POST", this.id, "/value", { text });
  }

  async text(): Promise<string> {
    return (await this.session.elementCommand("GET", this.id, "/text")) as string;
  }

  async attribute(name: string): Promise<string | null> {
    return (await this.session.elementCommand("GET", this.id, `/attribute/${name}`)) as string | null;
  }
}

async function call(base: string, method: string, path: string, body?: object): Promise<unknown> {
  const response = await fetch(base + path, {
    method,
    headers: body ? { "content-type": "application/json" } : undefined,
    body: body ? JSON.stringify(body) : undefined,
  });
  const payload = (await response.json()) as { value: unknown };
  if (!response.ok) {
    const value = payload.value as { error?: string; message?: string };
    throw new WebDriverError(`${method} ${path}: ${value?.error ?? response.status} ${value?.message ?? ""}`);
  }
  return payload.value;
}
