// The local copy of one campaign's table, kept by applying the server's frames in seq order.
import { chatFromHistory, NO_CHAT, withMessage, type ChatView } from "./chat.ts";
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
export interface TableView {
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
});

/** Applies server frames to a copy of the table; every change yields a new `view`. */
export class TableMirror {
  view: TableView = EMPTY_TABLE;

  /** Forget everything (the next connection will get a whole state.sync). */
  reset(): void {
    this.view = EMPTY_TABLE;
  }

  /** Apply one frame; state.sync always replaces, numbered events apply once, in order. */
  apply(frame: ServerMessage): Applied {
    switch (frame.type) {
      case "state.sync":
        this.view = {
          ...this.view,
          state: frame.payload,
          seq: frame.seq,
          epoch: frame.payload.epoch ?? this.view.epoch,
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
      default:
        return this.applyEvent(frame);
    }
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
