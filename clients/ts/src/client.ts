// One reconnecting connection to a campaign's table: tokens, backoff, resume, queue and mirror.
import { reconnectAfter } from "./closecodes.generated.ts";
import { TokenDrag, type Drag } from "./drag.ts";
import { mayGrab } from "./locks.ts";
import { TableMirror, type TableView } from "./mirror.ts";
import { nextPingExpiry } from "./pointers.ts";
import type { ClientMessageType, ClientPayload, ErrorPayload, ServerMessage } from "./protocol.ts";
import { Throttle, TWENTY_HZ_MS } from "./throttle.ts";

/** The part of the browser's WebSocket this client uses (the `ws` package's fits too). */
export interface SocketLike {
  readonly readyState: number;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: never) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type SocketFactory = new (url: string) => SocketLike;

/** A token, or nothing when the user is signed out; may be async (Clerk's `getToken`). */
export type TokenSource = () => Promise<string | null | undefined> | string | null | undefined;

export interface ConnectOptions {
  /** The server, e.g. `wss://vtt.example` or `ws://127.0.0.1:8080/ws` (`/ws` is added to a bare host). */
  url: string;
  campaignId: string;
  /** Called before every connection attempt, so an expired token is never reused. */
  getToken: TokenSource;
  /** The WebSocket constructor (default: the global one). */
  WebSocket?: SocketFactory;
  /** Backoff between attempts: the first delay is up to `initialMs`, doubling to `maxMs`. */
  initialDelayMs?: number;
  maxDelayMs?: number;
  /** The least wait after 4429 (too many connections). */
  busyDelayMs?: number;
  /** How often to send `auth.refresh` with a fresh token while connected; 0 never. */
  refreshIntervalMs?: number;
  /** How many messages may wait for the connection; `send` returns false beyond it. */
  maxQueued?: number;
  /** How long another member's ping stays in the view. */
  pingLifetimeMs?: number;
  /** Jitter source, for tests. */
  random?: () => number;
}

/**
 * - `connecting`: getting a token, opening the socket, or waiting for the server's greeting;
 * - `open`: joined (state.sync or state.resume received); sends go straight out;
 * - `waiting`: backing off before the next attempt;
 * - `stopped`: closed by `close()` or by a close code that must not be retried (see `failure`).
 */
export type Status = "connecting" | "open" | "waiting" | "stopped";

/** Why the connection last ended, as the server (or the client) said. */
export interface Failure {
  readonly code: number;
  readonly reason: string;
}

export interface ClientView extends TableView {
  readonly status: Status;
  /** The last close (or token failure); after `stopped`, why it stopped. */
  readonly failure: Failure | null;
  /** The last `error` reply (the server did not apply a message of ours). */
  readonly lastError: ErrorPayload | null;
  /** This client's user, as the server stamped its greeting; null before the first join. */
  readonly userId: string | null;
}

export type SendArgs<K extends ClientMessageType> =
  undefined extends ClientPayload<K> ? [payload?: ClientPayload<K>] : [payload: ClientPayload<K>];

export interface VTTClient {
  /** The current view; a new object whenever something in it changed. */
  view(): ClientView;
  /** Send now when joined, else queue until the next join; false when stopped or the queue is full. */
  send<K extends ClientMessageType>(type: K, ...payload: SendArgs<K>): boolean;
  /** Send a chat message (queued like `send`); a `roll` is rolled by the server. */
  sendChat(message: ClientPayload<"chat.send">): boolean;
  /** "Look here" to the others; only while joined (never queued), false otherwise. */
  pingAt(x: number, y: number): boolean;
  /** Show the others this user's cursor; at most 20 per second go out, the latest winning; never queued. */
  moveCursor(x: number, y: number): void;
  /** Take this user's cursor off the others' tables. */
  hideCursor(): void;
  /** Show the others this user's ruler; throttled and never queued, like the cursor. */
  updateRuler(ruler: ClientPayload<"ruler.update">): void;
  clearRuler(): void;
  /** Whether this user would get `tokenId`'s drag lock now (free, theirs, or a GM over a player). */
  mayGrab(tokenId: string): boolean;
  /**
   * Start dragging a token: token.grab, then `move()`s at most 20 per second (the latest winning),
   * then token.release on `end()`. Null when another user holds its lock or the token is unknown.
   */
  beginDrag(tokenId: string): Drag | null;
  /** Called after every change of the view; returns the unsubscribe function. */
  subscribe(listener: () => void): () => void;
  /** Called with every frame received, replies included, before it is applied. */
  onFrame(listener: (frame: ServerMessage) => void): () => void;
  /** Drop the current socket and connect again now (resuming). */
  reconnect(): void;
  /** Stop for good: close the socket, cancel every timer, drop the queue. */
  close(): void;
}

export { FINAL_CLOSE_CODES } from "./closecodes.generated.ts";
const OPEN = 1;
// A close code of ours, for the socket we drop on reconnect() and close().
const CLIENT_GOING_AWAY = 1000;

function ignore(): void {}

function encode(type: ClientMessageType, payload: unknown): string {
  return JSON.stringify(payload === undefined ? { type } : { type, payload });
}

/** The delay before retry `attempt` (0-based): exponential with "equal jitter", capped. */
export function backoffDelay(attempt: number, initialMs: number, maxMs: number, random: () => number): number {
  const ceiling = Math.min(maxMs, initialMs * 2 ** Math.min(attempt, 30));
  return ceiling / 2 + random() * (ceiling / 2);
}

/** The /ws URL of one attempt. */
export function socketUrl(base: string, campaignId: string, token: string, seq: number | null, epoch: string | null): string {
  const url = new URL(base);
  if (url.protocol === "http:" || url.protocol === "https:") {
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  }
  if (url.pathname === "" || url.pathname === "/") {
    url.pathname = "/ws";
  }
  url.searchParams.set("campaign", campaignId);
  url.searchParams.set("token", token);
  if (seq !== null && epoch !== null) {
    url.searchParams.set("since", String(seq));
    url.searchParams.set("epoch", epoch);
  }
  return url.toString();
}

/** Connect to a campaign; the client keeps reconnecting until `close()` or a final close code. */
export function connect(options: ConnectOptions): VTTClient {
  return new Connection(options);
}

class Connection implements VTTClient {
  private readonly options: Required<Omit<ConnectOptions, "WebSocket">> & { WebSocket: SocketFactory };
  private readonly mirror = new TableMirror();
  private readonly listeners = new Set<() => void>();
  private readonly frameListeners = new Set<(frame: ServerMessage) => void>();
  private queue: string[] = [];
  private socket: SocketLike | null = null;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private refresher: ReturnType<typeof setInterval> | null = null;
  // Bumped whenever an attempt is abandoned, so late callbacks of an old attempt do nothing.
  private attemptId = 0;
  private failures = 0;
  private unauthorizedInARow = 0;
  private current: ClientView;
  // --- what this user shows the others
  private readonly cursor = new Throttle<{ x: number; y: number }>(TWENTY_HZ_MS, (at) => {
    this.cursorShown = this.sendNow("cursor.move", at) || this.cursorShown;
  });
  private cursorShown = false;
  private readonly ruler = new Throttle<ClientPayload<"ruler.update">>(TWENTY_HZ_MS, (ruler) => {
    this.rulerShown = this.sendNow("ruler.update", ruler) || this.rulerShown;
  });
  private rulerShown = false;
  private readonly drags = new Set<TokenDrag>();
  private pingTimer: ReturnType<typeof setTimeout> | null = null;

  constructor(options: ConnectOptions) {
    const WebSocketImpl = options.WebSocket ?? (globalThis as { WebSocket?: SocketFactory }).WebSocket;
    if (WebSocketImpl === undefined) {
      throw new Error("no WebSocket implementation: pass options.WebSocket");
    }
    this.options = {
      initialDelayMs: 500,
      maxDelayMs: 30_000,
      busyDelayMs: 5_000,
      refreshIntervalMs: 45_000,
      maxQueued: 1_000,
      pingLifetimeMs: 3_000,
      random: Math.random,
      ...options,
      WebSocket: WebSocketImpl,
    };
    this.current = { ...this.mirror.view, status: "connecting", failure: null, lastError: null, userId: null };
    void this.attempt();
  }

  view(): ClientView {
    return this.current;
  }

  send<K extends ClientMessageType>(type: K, ...payload: SendArgs<K>): boolean {
    if (this.current.status === "stopped") {
      return false;
    }
    const text = encode(type, payload[0]);
    if (this.sendText(text)) {
      return true;
    }
    if (this.queue.length >= this.options.maxQueued) {
      return false;
    }
    this.queue.push(text);
    return true;
  }

  sendChat(message: ClientPayload<"chat.send">): boolean {
    return this.send("chat.send", message);
  }

  pingAt(x: number, y: number): boolean {
    return this.sendNow("pointer.ping", { x, y });
  }

  moveCursor(x: number, y: number): void {
    this.cursor.push({ x, y });
  }

  hideCursor(): void {
    this.cursor.cancel();
    if (this.cursorShown) {
      this.cursorShown = !this.sendNow("cursor.hide");
    }
  }

  updateRuler(ruler: ClientPayload<"ruler.update">): void {
    this.ruler.push(ruler);
  }

  clearRuler(): void {
    this.ruler.cancel();
    if (this.rulerShown) {
      this.rulerShown = !this.sendNow("ruler.clear");
    }
  }

  mayGrab(tokenId: string): boolean {
    const { locks, members, userId } = this.current;
    return mayGrab(locks, members, userId, tokenId);
  }

  beginDrag(tokenId: string): Drag | null {
    const tokens = this.current.state?.tokens;
    if (this.current.status === "stopped" || (tokens !== undefined && !(tokenId in tokens)) || !this.mayGrab(tokenId)) {
      return null;
    }
    for (const drag of this.drags) {
      if (drag.tokenId === tokenId) {
        drag.stop();
      }
    }
    const drag = new TokenDrag(tokenId, {
      send: (type, token_id) => this.send(type, { token_id }),
      move: (token_id, x, y) => this.send("token.move", { token_id, x, y }),
      done: (ended) => this.drags.delete(ended),
    });
    this.drags.add(drag);
    return drag;
  }

  subscribe(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  onFrame(listener: (frame: ServerMessage) => void): () => void {
    this.frameListeners.add(listener);
    return () => this.frameListeners.delete(listener);
  }

  reconnect(): void {
    if (this.current.status === "stopped") {
      return;
    }
    this.abandon();
    void this.attempt();
  }

  close(): void {
    if (this.current.status === "stopped") {
      return;
    }
    this.abandon();
    this.queue = [];
    this.cursor.cancel();
    this.ruler.cancel();
    for (const drag of this.drags) {
      drag.stop();
    }
    if (this.pingTimer !== null) {
      clearTimeout(this.pingTimer);
      this.pingTimer = null;
    }
    this.update({ status: "stopped" });
    this.listeners.clear();
    this.frameListeners.clear();
  }

  /** Cancel timers and drop the socket of the current attempt; its late callbacks are ignored. */
  private abandon(): void {
    this.attemptId += 1;
    if (this.timer !== null) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    this.stopRefreshing();
    const socket = this.socket;
    this.socket = null;
    if (socket !== null) {
      socket.onmessage = socket.onclose = null;
      socket.onerror = ignore;
      socket.close(CLIENT_GOING_AWAY, "client reconnecting or closing");
    }
  }

  private async attempt(): Promise<void> {
    const id = ++this.attemptId;
    this.update({ status: "connecting" });
    let token: string | null | undefined;
    try {
      token = await this.options.getToken();
    } catch (error) {
      token = null;
      if (id === this.attemptId) {
        this.update({ failure: { code: 0, reason: `getToken failed: ${String(error)}` } });
      }
    }
    if (id !== this.attemptId) {
      return;
    }
    if (!token) {
      this.retryLater(this.nextBackoff(), this.current.failure ?? { code: 0, reason: "no token" });
      return;
    }
    const { seq, epoch } = this.mirror.view;
    let socket: SocketLike;
    try {
      socket = new this.options.WebSocket(socketUrl(this.options.url, this.options.campaignId, token, seq, epoch));
    } catch (error) {
      this.attemptId += 1;
      this.update({ status: "stopped", failure: { code: 0, reason: `cannot open a socket: ${String(error)}` } });
      return;
    }
    this.socket = socket;
    // Browsers follow an error with a close event; without a handler Node's `ws` would throw.
    socket.onerror = ignore;
    socket.onmessage = (event) => {
      if (id === this.attemptId && typeof event.data === "string") {
        this.receive(event.data);
      }
    };
    socket.onclose = (event) => {
      if (id === this.attemptId) {
        this.closed({ code: event.code, reason: event.reason });
      }
    };
  }

  private receive(data: string): void {
    let frame: ServerMessage;
    try {
      frame = JSON.parse(data) as ServerMessage;
    } catch {
      return;
    }
    if (typeof frame !== "object" || frame === null || typeof frame.type !== "string") {
      return;
    }
    for (const listener of this.frameListeners) {
      listener(frame);
    }
    const applied = this.mirror.apply(frame);
    if (applied === "desync") {
      this.mirror.reset();
      this.reconnect();
      return;
    }
    if (frame.type === "state.sync" || frame.type === "state.resume") {
      if (this.current.status !== "open") {
        this.joined(frame.user_id);
        return;
      }
    }
    if (frame.type === "error") {
      this.update({ lastError: frame.payload });
    } else if (applied === "applied") {
      this.update({});
      this.observed(frame);
    }
  }

  /** After an applied frame: drags follow the locks and tokens; pings get their expiry. */
  private observed(frame: ServerMessage): void {
    const { state, locks, userId } = this.current;
    for (const drag of this.drags) {
      drag.observe(state?.tokens, locks, userId);
    }
    if (frame.type === "pointer.ping" && this.pingTimer === null) {
      this.expirePings();
    }
  }

  /** Drop the pings that have had their time, then wait for the next to expire. */
  private expirePings(): void {
    this.pingTimer = null;
    const lifetime = this.options.pingLifetimeMs;
    if (this.mirror.expirePings(Date.now(), lifetime)) {
      this.update({});
    }
    const next = nextPingExpiry(this.mirror.view.pings, lifetime);
    if (next !== null) {
      this.pingTimer = setTimeout(() => this.expirePings(), Math.max(0, next - Date.now()));
    }
  }

  /** The server's greeting arrived: the join succeeded, so flush what waited for it. */
  private joined(userId: string): void {
    this.failures = 0;
    this.unauthorizedInARow = 0;
    // A new connection: the server shows nothing of ours yet, and holds none of our locks.
    this.cursorShown = this.rulerShown = false;
    const socket = this.socket;
    const queued = this.queue;
    this.queue = [];
    for (const text of queued) {
      socket?.send(text);
    }
    this.startRefreshing();
    this.update({ status: "open", failure: null, userId });
    for (const drag of this.drags) {
      drag.grab();
    }
  }

  /** Send only when joined: what is stale by the next join (cursors, rulers, pings) is never queued. */
  private sendNow<K extends ClientMessageType>(type: K, ...payload: SendArgs<K>): boolean {
    return this.sendText(encode(type, payload[0]));
  }

  private sendText(text: string): boolean {
    if (this.current.status !== "open" || this.socket?.readyState !== OPEN) {
      return false;
    }
    this.socket.send(text);
    return true;
  }

  private closed(failure: Failure): void {
    this.socket = null;
    this.stopRefreshing();
    const reconnect = reconnectAfter(failure.code);
    if (reconnect === "never") {
      this.attemptId += 1;
      this.queue = [];
      this.update({ status: "stopped", failure });
      return;
    }
    let delay: number;
    if (reconnect === "fresh-token") {
      // The token was refused: the next attempt gets a fresh one, and a full state.sync, since a
      // changed role changes what this client may see. Retry at once unless it keeps failing.
      this.mirror.reset();
      this.unauthorizedInARow += 1;
      delay = this.unauthorizedInARow === 1 ? 0 : this.nextBackoff();
    } else if (reconnect === "later") {
      delay = Math.max(this.options.busyDelayMs, this.nextBackoff());
    } else if (reconnect === "soon") {
      // A deploy: another machine may already answer; jitter spreads the reconnecting crowd.
      this.failures += 1;
      delay = this.options.random() * this.options.initialDelayMs;
    } else {
      delay = this.nextBackoff();
    }
    this.retryLater(delay, failure);
  }

  private nextBackoff(): number {
    const { initialDelayMs, maxDelayMs, random } = this.options;
    const delay = backoffDelay(this.failures, initialDelayMs, maxDelayMs, random);
    this.failures += 1;
    return delay;
  }

  private retryLater(delay: number, failure: Failure): void {
    const id = this.attemptId;
    this.update({ status: "waiting", failure });
    this.timer = setTimeout(() => {
      this.timer = null;
      if (id === this.attemptId) {
        void this.attempt();
      }
    }, delay);
  }

  private startRefreshing(): void {
    const every = this.options.refreshIntervalMs;
    if (every <= 0) {
      return;
    }
    const id = this.attemptId;
    this.refresher = setInterval(() => {
      void this.refresh(id);
    }, every);
  }

  private async refresh(id: number): Promise<void> {
    let token: string | null | undefined;
    try {
      token = await this.options.getToken();
    } catch {
      return;
    }
    if (token && id === this.attemptId && this.socket?.readyState === OPEN) {
      this.socket.send(JSON.stringify({ type: "auth.refresh", payload: { token } }));
    }
  }

  private stopRefreshing(): void {
    if (this.refresher !== null) {
      clearInterval(this.refresher);
      this.refresher = null;
    }
  }

  private update(change: Partial<ClientView>): void {
    this.current = { ...this.current, ...this.mirror.view, ...change };
    for (const listener of this.listeners) {
      listener();
    }
  }
}
