// Who holds which token's drag lock, from token.grabbed and token.released (never numbered).
import type { Members } from "./presence.ts";

/** The holder's user id by token id. */
export type Locks = Readonly<Record<string, string>>;

export const NO_LOCKS: Locks = Object.freeze({});

export function withLock(locks: Locks, tokenId: string, userId: string): Locks {
  return locks[tokenId] === userId ? locks : { ...locks, [tokenId]: userId };
}

/** A lock ended (token.released) or its token is gone (token.remove, hidden from a player). */
export function withoutLock(locks: Locks, tokenId: string): Locks {
  if (!(tokenId in locks)) {
    return locks;
  }
  const { [tokenId]: _released, ...rest } = locks;
  return rest;
}

/** Only the locks of tokens still in `tokens` (a state.sync after map.switch replaced them). */
export function locksOn(locks: Locks, tokens: Readonly<Record<string, unknown>>): Locks {
  const kept = Object.entries(locks).filter(([tokenId]) => tokenId in tokens);
  return kept.length === Object.keys(locks).length ? locks : Object.fromEntries(kept);
}

/** Whether `userId` would get `tokenId`'s lock: it is free or theirs, or they are a GM and a player holds it. */
export function mayGrab(locks: Locks, members: Members, userId: string | null, tokenId: string): boolean {
  const holder = locks[tokenId];
  if (holder === undefined || holder === userId) {
    return true;
  }
  return userId !== null && members[userId]?.role === "gm" && members[holder]?.role !== "gm";
}
