// Other members' pings, cursors and rulers: the latest of each per user, never stored or replayed.
import type { ServerFrame } from "./protocol.ts";

type Position = ServerFrame<"cursor.move">["payload"];
type Ruler = ServerFrame<"ruler.update">["payload"];

/** A "look here" of another member: where, and when it arrived (`Date.now()` milliseconds). */
export interface Ping {
  readonly x: number;
  readonly y: number;
  readonly at: number;
}

/** Each member's latest cursor, ruler and ping, by user id (this client's own are not echoed). */
export interface Pointers {
  readonly cursors: Readonly<Record<string, Position>>;
  readonly rulers: Readonly<Record<string, Ruler>>;
  /** Pings younger than the client's `pingLifetimeMs`. */
  readonly pings: Readonly<Record<string, Ping>>;
}

export const NO_POINTERS: Pointers = Object.freeze({ cursors: Object.freeze({}), rulers: Object.freeze({}), pings: Object.freeze({}) });

/** The pings still younger than `lifetimeMs` at `now`; the same object when none expired. */
export function livePings(pings: Pointers["pings"], now: number, lifetimeMs: number): Pointers["pings"] {
  const live = Object.entries(pings).filter(([, ping]) => now - ping.at < lifetimeMs);
  return live.length === Object.keys(pings).length ? pings : Object.fromEntries(live);
}

/** When the oldest ping expires, or null with none. */
export function nextPingExpiry(pings: Pointers["pings"], lifetimeMs: number): number | null {
  const times = Object.values(pings).map((ping) => ping.at + lifetimeMs);
  return times.length === 0 ? null : Math.min(...times);
}
