// A real vtt-realtime server for the tests: `python -m app` on a free port, dev tokens
// minted with the server's own dev keys, and a TCP proxy that can cut every connection at once.
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { get } from "node:http";
import { createServer, Socket, type AddressInfo, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import { WebSocket as NodeWebSocket } from "ws";
import type { SocketFactory } from "../src/client.ts";

const run = promisify(execFile);
const REPO = resolve(import.meta.dirname, "../../..");
const PYTHON = join(REPO, ".venv/bin/python");

// The dev token minting of `python -m app.dev.devtoken` (same keys, same claims), many at a time.
const MINT = `
import json, sys
from app.auth import DevKeys
from app.config import Settings
keys = DevKeys(Settings.from_env().dev_key_dir)
specs = json.loads(sys.argv[1])
print(json.dumps([keys.mint(u, r, campaign=c, ttl=t) for u, r, c, t in specs]))
`;

export type Role = "gm" | "player";

export interface TokenSpec {
  user: string;
  role?: Role;
  campaign?: string | undefined;
  ttlSeconds?: number;
}

/** The `ws` package's WebSocket, which behaves as the browser's for what the client uses. */
export const WebSocketImpl = NodeWebSocket as unknown as SocketFactory;

/** Resolve when `check` holds, polling; reject after `timeoutMs`. */
export async function waitFor(check: () => boolean | Promise<boolean>, timeoutMs = 10_000, what = "condition"): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    }
    await new Promise((done) => setTimeout(done, 10));
  }
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((done) => server.listen(0, "127.0.0.1", done));
  const { port } = server.address() as AddressInfo;
  await new Promise((done) => server.close(done));
  return port;
}

export class TestServer {
  private process: ChildProcess | null = null;
  private readonly minted = new Map<string, string>();

  private constructor(
    readonly port: number,
    private readonly dir: string,
    private readonly env: Record<string, string>,
  ) {}

  /** Start a server with its own SQLite file and dev keys, plus `env`. */
  static async start(env: Record<string, string> = {}): Promise<TestServer> {
    const dir = await mkdtemp(join(tmpdir(), "vtt-ts-"));
    const server = new TestServer(await freePort(), dir, {
      VTT_DEV_KEY_DIR: join(dir, "keys"),
      VTT_SQLITE_PATH: join(dir, "vtt.db"),
      VTT_ENV: "test",
      LOG_LEVEL: "warning",
      HOST: "127.0.0.1",
      ...env,
    });
    await server.boot();
    return server;
  }

  get url(): string {
    return `ws://127.0.0.1:${this.port}`;
  }

  private get processEnv(): NodeJS.ProcessEnv {
    return { ...process.env, ...this.env, PORT: String(this.port) };
  }

  private async boot(): Promise<void> {
    const child = spawn(PYTHON, ["-m", "app"], { cwd: REPO, env: this.processEnv, stdio: ["ignore", "ignore", "inherit"] });
    this.process = child;
    await waitFor(
      async () => {
        if (child.exitCode !== null) {
          throw new Error(`server exited with ${child.exitCode}`);
        }
        return (await this.health().catch(() => null)) !== null;
      },
      30_000,
      "the server to answer /health",
    );
  }

  /** GET /health (with node:http: a DOM test environment replaces the global fetch). */
  health(): Promise<{ sessions: number; clients: number }> {
    return new Promise((done, fail) => {
      const request = get(`http://127.0.0.1:${this.port}/health`, { timeout: 2_000 }, (response) => {
        let body = "";
        response.setEncoding("utf8");
        response.on("data", (chunk: string) => (body += chunk));
        response.on("end", () => {
          try {
            done(JSON.parse(body) as { sessions: number; clients: number });
          } catch (error) {
            fail(error);
          }
        });
      });
      request.on("timeout", () => request.destroy(new Error("health timed out")));
      request.on("error", fail);
    });
  }

  /** A dev token (cached per user, role, campaign and lifetime). */
  async token(user: string, role: Role = "player", campaign?: string, ttlSeconds = 3600): Promise<string> {
    const [token] = await this.tokens([{ user, role, campaign, ttlSeconds }]);
    return token;
  }

  /** Dev tokens, minted together by one Python process (each start costs a second or more). */
  async tokens<T extends TokenSpec[]>(specs: [...T]): Promise<{ [K in keyof T]: string }> {
    const keyOf = ({ user, role = "player", campaign, ttlSeconds = 3600 }: TokenSpec) => JSON.stringify([user, role, campaign ?? null, ttlSeconds]);
    const missing = [...new Set(specs.map(keyOf).filter((key) => !this.minted.has(key)))];
    if (missing.length > 0) {
      const { stdout } = await run(PYTHON, ["-c", MINT, `[${missing.join(",")}]`], { cwd: REPO, env: this.processEnv, timeout: 60_000 });
      const tokens = JSON.parse(stdout) as string[];
      missing.forEach((key, i) => this.minted.set(key, tokens[i] as string));
    }
    return specs.map((spec) => this.minted.get(keyOf(spec)) as string) as { [K in keyof T]: string };
  }

  /** Stop the process (SIGTERM: the server drains, closing sockets with 1012, and flushes). */
  async stop(): Promise<void> {
    const child = this.process;
    this.process = null;
    if (child === null || child.exitCode !== null) {
      return;
    }
    const exited = new Promise((done) => child.once("exit", done));
    child.kill("SIGTERM");
    const killer = setTimeout(() => child.kill("SIGKILL"), 25_000);
    await exited;
    clearTimeout(killer);
  }

  /** Stop and start again on the same port and files (the campaign gets a new epoch). */
  async restart(): Promise<void> {
    await this.stop();
    await this.boot();
  }

  /** Stop and delete the server's files. */
  async dispose(): Promise<void> {
    await this.stop();
    await rm(this.dir, { recursive: true, force: true });
  }
}

/** A TCP proxy in front of a server; `cut()` drops every connection as a network failure would. */
export class TcpProxy {
  private constructor(
    private readonly server: Server,
    private readonly sockets: Set<Socket>,
  ) {}

  static async start(targetPort: number): Promise<TcpProxy> {
    const sockets = new Set<Socket>();
    const server = createServer((inbound) => {
      const outbound = new Socket();
      outbound.connect(targetPort, "127.0.0.1");
      for (const [a, b] of [
        [inbound, outbound],
        [outbound, inbound],
      ] as const) {
        sockets.add(a);
        a.on("data", (chunk) => b.write(chunk));
        a.on("error", () => b.destroy());
        a.on("close", () => {
          sockets.delete(a);
          b.destroy();
        });
      }
    });
    await new Promise<void>((done) => server.listen(0, "127.0.0.1", done));
    return new TcpProxy(server, sockets);
  }

  get url(): string {
    return `ws://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  /** Destroy every proxied connection at once. */
  cut(): void {
    for (const socket of this.sockets) {
      socket.destroy();
    }
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise((done) => this.server.close(done));
  }
}
