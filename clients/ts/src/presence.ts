// Who is at the table: presence.sync replaces, presence.join adds, presence.leave removes.
import type { ServerFrame } from "./protocol.ts";

type Member = ServerFrame<"presence.sync">["payload"]["members"][number];
type Join = ServerFrame<"presence.join">["payload"];

/** The members by user id; `connections` is 0 for a user inside the grace after their last left. */
export type Members = Readonly<Record<string, Member>>;

export const NO_MEMBERS: Members = Object.freeze({});

/** The members presence.sync lists, by user id. */
export function membersFrom(sync: ServerFrame<"presence.sync">["payload"]): Members {
  return Object.fromEntries(sync.members.map((member) => [member.user_id, member]));
}

/**
 * A user's first connection arrived. A user already listed (the joiner itself, say) keeps their
 * connection count; presence sends no frame for a second connection, so a new one counts 1.
 */
export function withJoin(members: Members, join: Join): Members {
  const known = members[join.user_id];
  return { ...members, [join.user_id]: { ...join, connections: known === undefined ? 1 : Math.max(known.connections, 1) } };
}

/** A user left (their last connection has been gone for the grace). */
export function withoutUser<T>(byUser: Readonly<Record<string, T>>, userId: string): Readonly<Record<string, T>> {
  if (!(userId in byUser)) {
    return byUser;
  }
  const { [userId]: _gone, ...rest } = byUser;
  return rest;
}
