// One drag of one token: token.grab, the moves at 20 Hz, the final move, token.release.
import type { Locks } from "./locks.ts";
import { Throttle, TWENTY_HZ_MS } from "./throttle.ts";

/** A lock ends after 5 s without a move (PROTOCOL.md, "Drag locks"): a still drag re-grabs sooner. */
export const REGRAB_AFTER_MS = 2_000;

export interface Drag {
  readonly tokenId: string;
  /** True until `end()` or `cancel()`, or until the lock went to another user (a GM may take it). */
  readonly active: boolean;
  /** Move the token: sent at once, or as the latest position at the next 20 Hz slot; false once inactive. */
  move(x: number, y: number): boolean;
  /** Drop it: the final position (when given) goes out at once, then token.release. */
  end(x?: number, y?: number): void;
  /** Let go without a final move (the last one sent stands), then token.release. */
  cancel(): void;
}

/** How a drag reaches the connection. */
export interface DragPort {
  /** Send (or queue, as VTTClient.send does) a drag frame. */
  send(type: "token.grab" | "token.release", tokenId: string): void;
  move(tokenId: string, x: number, y: number): void;
  /** The drag is over: forget it. */
  done(drag: TokenDrag): void;
}

export class TokenDrag implements Drag {
  private live = true;
  private lastSent = performance.now();
  private readonly moves: Throttle<{ x: number; y: number }>;
  private readonly regrab: ReturnType<typeof setInterval>;

  constructor(
    readonly tokenId: string,
    private readonly port: DragPort,
  ) {
    this.moves = new Throttle(TWENTY_HZ_MS, ({ x, y }) => {
      this.lastSent = performance.now();
      port.move(tokenId, x, y);
    });
    // Moves renew the lock; a pointer held still would lose it, and a reconnect drops it.
    this.regrab = setInterval(() => {
      if (performance.now() - this.lastSent >= REGRAB_AFTER_MS) {
        this.grab();
      }
    }, REGRAB_AFTER_MS);
    this.grab();
  }

  get active(): boolean {
    return this.live;
  }

  move(x: number, y: number): boolean {
    if (this.live) {
      this.moves.push({ x, y });
    }
    return this.live;
  }

  end(x?: number, y?: number): void {
    if (!this.live) {
      return;
    }
    this.moves.cancel();
    if (x !== undefined && y !== undefined) {
      this.port.move(this.tokenId, x, y);
    }
    this.cancel();
  }

  cancel(): void {
    if (!this.live) {
      return;
    }
    this.stop();
    this.port.send("token.release", this.tokenId);
  }

  /** After a frame: the token gone, or another user holding its lock, ends this drag. */
  observe(tokens: Readonly<Record<string, unknown>> | undefined, locks: Locks, userId: string | null): void {
    const holder = locks[this.tokenId];
    const taken = holder !== undefined && userId !== null && holder !== userId;
    if (this.live && (taken || (tokens !== undefined && !(this.tokenId in tokens)))) {
      this.stop();
    }
  }

  /** Stop without telling the server: the token is gone, or the client closed. */
  stop(): void {
    this.live = false;
    this.moves.cancel();
    clearInterval(this.regrab);
    this.port.done(this);
  }

  /** Ask for the lock (again): at the start, when held still, and after a reconnect. */
  grab(): void {
    this.lastSent = performance.now();
    this.port.send("token.grab", this.tokenId);
  }
}
