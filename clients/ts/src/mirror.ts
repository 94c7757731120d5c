// The local copy of one campaign's table, kept by applying the server's frames in seq order.
import { chatFromHistory, NO_CHAT, withMessage, type ChatView } from "./chat.ts";
import { locksOn, NO_LOCKS, withLock, withoutLock, type Locks } from "./locks.ts";
import { livePings, NO_POINTERS, type Pointers } from "./pointers.ts";
import { membersFrom, NO_MEMBERS, withJoin, withoutUser, type Members } from "./presence.ts";
import type { CampaignState, MapList, SavedMap, ServerFrame, ServerMessage, Token } from "./protocol.ts";

/** What applying one frame did. */
export type Applied =
  /** The mirror changed. */
  | "applied"
  /** Nothing to do: a reply, a frame at or below the last applied seq, or about no known token. */
  | "ignored"
  /** A resume that does not continue this mirror: reconnect without `since` to get a state.sync. */
  | "desync";

/** An immutable view of the mirror; a new object whenever anything in it changes. */
export interface TableView extends Pointers {
  /** The state as this client may see it (hidden tokens for GMs only), or null before the first state.sync. */
  readonly state: CampaignState | null;
  /** The map library as the last map.list showed it. */
  readonly maps: MapList | null;
  /** The highest seq applied (the server's numbering; a player may see gaps). */
  readonly seq: number | null;
  /** The epoch of the state the mirror holds; `since`/`epoch` of a resume. */
  readonly epoch: string | null;
  /** The highest seq the server reported durable (state.saved). */
  readonly savedSeq: number | null;
  /** The chat this client may see: the join's history, then live (and replayed) messages. */
  readonly chat: ChatView;
  /** Who is at the table (presence), by user id; this client's user included. */
  readonly members: Members;
  /** Who holds each token's drag lock: user id by token id. */
  readonly locks: Locks;
}

/** The frames that change the table itself (numbered; applied once, in seq order). */
type TableEvent = ServerFrame<"token.add" | "token.move" | "token.remove" | "token.update" | "fog.update" | "scene.darkness" | "map.set">;

export const EMPTY_TABLE: TableView = Object.freeze({
  state: null,
  maps: null,
  seq: null,
  epoch: null,
  savedSeq: null,
  chat: NO_CHAT,
  members: NO_MEMBERS,
  locks: NO_LOCKS,
  ...NO_POINTERS,
});

/** Applies server frames to a copy of the table; every change yields a new `view`. */
export class TableMirror {
  view: TableView = EMPTY_TABLE;

  /** Forget everything (the next connection will get a whole state.sync). */
  reset(): void {
    this.view = EMPTY_TABLE;
  }

  /**
   * Apply one frame; state.sync always replaces, numbered events apply once, in order. `now`
   * (`Date.now()`) stamps a ping's arrival.
   */
  apply(frame: ServerMessage, now = Date.now()): Applied {
    switch (frame.type) {
      case "state.sync":
        this.view = {
          ...this.view,
          state: frame.payload,
          seq: frame.seq,
          epoch: frame.payload.epoch ?? this.view.epoch,
          locks: locksOn(this.view.locks, frame.payload.tokens),
        };
        return "applied";
      case "state.resume": {
        const { from_seq, epoch } = frame.payload;
        if (this.view.state === null || epoch !== this.view.epoch || from_seq !== (this.view.seq ?? 0) + 1) {
          return "desync";
        }
        return "ignored";
      }
      case "state.saved":
        this.view = { ...this.view, savedSeq: frame.payload.seq };
        return "applied";
      case "pong":
      case "error":
        return "ignored";
      case "map.list":
        if (frame.seq !== undefined && !this.advance(frame.seq)) {
          return "ignored";
        }
        this.view = { ...this.view, maps: frame.payload, state: renameLibrary(this.view.state, frame.payload) };
        return "applied";
      case "chat.history":
        this.view = { ...this.view, chat: chatFromHistory(frame.payload) };
        return "applied";
      case "chat.message":
        if (this.view.state === null || !this.advance(frame.seq)) {
          return "ignored";
        }
        this.view = { ...this.view, chat: withMessage(this.view.chat, frame.payload) };
        return "applied";
      case "presence.sync":
        // A new connection's picture: the locks held now follow it, cursors come with the next move.
        this.view = { ...this.view, members: membersFrom(frame.payload), locks: NO_LOCKS, ...NO_POINTERS };
        return "applied";
      case "presence.join":
        this.view = { ...this.view, members: withJoin(this.view.members, frame.payload) };
        return "applied";
      case "presence.leave":
        return this.forgetUser(frame.payload.user_id);
      case "token.grabbed":
        this.view = { ...this.view, locks: withLock(this.view.locks, frame.payload.token_id, frame.payload.user_id) };
        return "applied";
      case "token.released":
        this.view = { ...this.view, locks: withoutLock(this.view.locks, frame.payload.token_id) };
        return "applied";
      case "pointer.ping":
        this.view = { ...this.view, pings: { ...this.view.pings, [frame.user_id]: { x: frame.payload.x, y: frame.payload.y, at: now } } };
        return "applied";
      case "cursor.move":
        this.view = { ...this.view, cursors: { ...this.view.cursors, [frame.user_id]: frame.payload } };
        return "applied";
      case "cursor.hide":
        this.view = { ...this.view, cursors: withoutUser(this.view.cursors, frame.user_id) };
        return "applied";
      case "ruler.update":
        this.view = { ...this.view, rulers: { ...this.view.rulers, [frame.user_id]: frame.payload } };
        return "applied";
      case "ruler.clear":
        this.view = { ...this.view, rulers: withoutUser(this.view.rulers, frame.user_id) };
        return "applied";
      default:
        return this.applyEvent(frame);
    }
  }

  /** Drop the pings older than `lifetimeMs` at `now`; whether any was dropped. */
  expirePings(now: number, lifetimeMs: number): boolean {
    const pings = livePings(this.view.pings, now, lifetimeMs);
    if (pings === this.view.pings) {
      return false;
    }
    this.view = { ...this.view, pings };
    return true;
  }

  private forgetUser(userId: string): Applied {
    const { members, cursors, rulers, pings } = this.view;
    this.view = {
      ...this.view,
      members: withoutUser(members, userId),
      cursors: withoutUser(cursors, userId),
      rulers: withoutUser(rulers, userId),
      pings: withoutUser(pings, userId),
    };
    return "applied";
  }

  private advance(seq: number): boolean {
    if (this.view.seq !== null && seq <= this.view.seq) {
      return false;
    }
    this.view = { ...this.view, seq };
    return true;
  }

  private applyEvent(frame: TableEvent): Applied {
    const state = this.view.state;
    if (state === null || !this.advance(frame.seq)) {
      return "ignored";
    }
    let next: CampaignState;
    switch (frame.type) {
      case "token.add":
        next = { ...state, tokens: { ...state.tokens, [frame.payload.token_id]: frame.payload } };
        break;
      case "token.move": {
        const { token_id, x, y } = frame.payload;
        next = withToken(state, token_id, (token) => ({ ...token, x, y }));
        break;
      }
      case "token.update": {
        const { token_id, ...changes } = frame.payload;
        next = withToken(state, token_id, (token) => ({ ...token, ...defined(changes) }));
        break;
      }
      case "token.remove": {
        const { [frame.payload.token_id]: _removed, ...tokens } = state.tokens;
        next = { ...state, tokens };
        this.view = { ...this.view, locks: withoutLock(this.view.locks, frame.payload.token_id) };
        break;
      }
      case "fog.update":
        next = { ...state, fog_zones: frame.payload.zones };
        break;
      case "scene.darkness":
        next = { ...state, darkness_level: frame.payload.darkness_level };
        break;
      case "map.set":
        next = setMap(state, frame.payload);
        break;
    }
    this.view = { ...this.view, state: next };
    return "applied";
  }
}

/** A GM's library after map.rename or map.delete, which the server reports as map.list only. */
function renameLibrary(state: CampaignState | null, list: MapList): CampaignState | null {
  if (state === null || state.saved_maps === undefined) {
    return state;
  }
  const library: Record<string, SavedMap> = {};
  for (const { map_id, name } of list.maps) {
    const entry = state.saved_maps[map_id];
    if (entry !== undefined) {
      library[map_id] = entry.name === name ? entry : { ...entry, name };
    }
  }
  return { ...state, saved_maps: library };
}

function defined<T extends object>(changes: T): Partial<T> {
  return Object.fromEntries(Object.entries(changes).filter(([, value]) => value !== undefined)) as Partial<T>;
}

function withToken(state: CampaignState, tokenId: string, change: (token: Token) => Token): CampaignState {
  const token = state.tokens[tokenId];
  if (token === undefined) {
    return state;
  }
  return { ...state, tokens: { ...state.tokens, [tokenId]: change(token) } };
}

/** A map.set broadcast: the server sends it only for a map new to the library. */
function setMap(state: CampaignState, map: Extract<ServerMessage, { type: "map.set" }>["payload"]): CampaignState {
  let library = state.saved_maps;
  if (library !== undefined) {
    library = { ...library };
    if (state.map_id !== undefined && state.map_url !== undefined) {
      library[state.map_id] = {
        name: library[state.map_id]?.name ?? `Map ${Object.keys(library).length + 1}`,
        image_url: state.map_url,
        grid_size: state.grid_size,
        width: state.map_width || 1,
        height: state.map_height || 1,
        tokens: state.tokens,
        fog_zones: state.fog_zones,
        ...(state.map_metadata === undefined ? {} : { map_metadata: state.map_metadata }),
      } satisfies SavedMap;
    }
    library[map.map_id] = {
      name: map.name ?? `Map ${Object.keys(library).length + 1}`,
      image_url: map.image_url,
      grid_size: map.grid_size,
      width: map.width,
      height: map.height,
      tokens: {},
      fog_zones: [],
      ...(map.map_metadata === undefined ? {} : { map_metadata: map.map_metadata }),
    };
  }
  const { map_metadata: _previous, saved_maps: _library, ...rest } = state;
  return {
    ...rest,
    map_id: map.map_id,
    map_url: map.image_url,
    grid_size: map.grid_size,
    map_width: map.width,
    map_height: map.height,
    tokens: {},
    fog_zones: [],
    ...(map.map_metadata === undefined ? {} : { map_metadata: map.map_metadata }),
    ...(library === undefined ? {} : { saved_maps: library }),
  };
}
