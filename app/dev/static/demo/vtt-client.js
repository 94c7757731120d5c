// Generated from clients/ts/src by `npm run build:demo` (esbuild); do not edit.

// src/closecodes.generated.ts
var RECONNECT = {
  4400: "never",
  4401: "fresh-token",
  4403: "never",
  4429: "later",
  1008: "backoff",
  1009: "never",
  1011: "backoff",
  1012: "soon",
  1013: "backoff"
};
var FINAL_CLOSE_CODES = /* @__PURE__ */ new Set([4400, 4403, 1009]);
function reconnectAfter(code) {
  const known = RECONNECT;
  return known[code] ?? "backoff";
}

// src/chat.ts
var NO_CHAT = Object.freeze({ messages: Object.freeze([]), incomplete: false });
function chatFromHistory(history) {
  const seen = /* @__PURE__ */ new Set();
  const messages = history.messages.filter((message) => !seen.has(message.id) && seen.add(message.id));
  return { messages, incomplete: history.incomplete === true };
}
function withMessage(chat, message) {
  if (chat.messages.some((held) => held.id === message.id)) {
    return chat;
  }
  return { ...chat, messages: [...chat.messages, message] };
}

// src/mirror.ts
var EMPTY_TABLE = Object.freeze({
  state: null,
  maps: null,
  seq: null,
  epoch: null,
  savedSeq: null,
  chat: NO_CHAT
});
var TableMirror = class {
  view = EMPTY_TABLE;
  /** Forget everything (the next connection will get a whole state.sync). */
  reset() {
    this.view = EMPTY_TABLE;
  }
  /** Apply one frame; state.sync always replaces, numbered events apply once, in order. */
  apply(frame) {
    switch (frame.type) {
      case "state.sync":
        this.view = {
          ...this.view,
          state: frame.payload,
          seq: frame.seq,
          epoch: frame.payload.epoch ?? this.view.epoch
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
        if (frame.seq !== void 0 && !this.advance(frame.seq)) {
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
  advance(seq) {
    if (this.view.seq !== null && seq <= this.view.seq) {
      return false;
    }
    this.view = { ...this.view, seq };
    return true;
  }
  applyEvent(frame) {
    const state = this.view.state;
    if (state === null || !this.advance(frame.seq)) {
      return "ignored";
    }
    let next;
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
};
function renameLibrary(state, list) {
  if (state === null || state.saved_maps === void 0) {
    return state;
  }
  const library = {};
  for (const { map_id, name } of list.maps) {
    const entry = state.saved_maps[map_id];
    if (entry !== void 0) {
      library[map_id] = entry.name === name ? entry : { ...entry, name };
    }
  }
  return { ...state, saved_maps: library };
}
function defined(changes) {
  return Object.fromEntries(Object.entries(changes).filter(([, value]) => value !== void 0));
}
function withToken(state, tokenId, change) {
  const token = state.tokens[tokenId];
  if (token === void 0) {
    return state;
  }
  return { ...state, tokens: { ...state.tokens, [tokenId]: change(token) } };
}
function setMap(state, map) {
  let library = state.saved_maps;
  if (library !== void 0) {
    library = { ...library };
    if (state.map_id !== void 0 && state.map_url !== void 0) {
      library[state.map_id] = {
        name: library[state.map_id]?.name ?? `Map ${Object.keys(library).length + 1}`,
        image_url: state.map_url,
        grid_size: state.grid_size,
        width: state.map_width || 1,
        height: state.map_height || 1,
        tokens: state.tokens,
        fog_zones: state.fog_zones,
        ...state.map_metadata === void 0 ? {} : { map_metadata: state.map_metadata }
      };
    }
    library[map.map_id] = {
      name: map.name ?? `Map ${Object.keys(library).length + 1}`,
      image_url: map.image_url,
      grid_size: map.grid_size,
      width: map.width,
      height: map.height,
      tokens: {},
      fog_zones: [],
      ...map.map_metadata === void 0 ? {} : { map_metadata: map.map_metadata }
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
    ...map.map_metadata === void 0 ? {} : { map_metadata: map.map_metadata },
    ...library === void 0 ? {} : { saved_maps: library }
  };
}

// src/client.ts
var OPEN = 1;
var CLIENT_GOING_AWAY = 1e3;
function ignore() {
}
function backoffDelay(attempt, initialMs, maxMs, random) {
  const ceiling = Math.min(maxMs, initialMs * 2 ** Math.min(attempt, 30));
  return ceiling / 2 + random() * (ceiling / 2);
}
function socketUrl(base, campaignId, token, seq, epoch) {
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
function connect(options) {
  return new Connection(options);
}
var Connection = class {
  options;
  mirror = new TableMirror();
  listeners = /* @__PURE__ */ new Set();
  frameListeners = /* @__PURE__ */ new Set();
  queue = [];
  socket = null;
  timer = null;
  refresher = null;
  // Bumped whenever an attempt is abandoned, so late callbacks of an old attempt do nothing.
  attemptId = 0;
  failures = 0;
  unauthorizedInARow = 0;
  current;
  constructor(options) {
    const WebSocketImpl = options.WebSocket ?? globalThis.WebSocket;
    if (WebSocketImpl === void 0) {
      throw new Error("no WebSocket implementation: pass options.WebSocket");
    }
    this.options = {
      initialDelayMs: 500,
      maxDelayMs: 3e4,
      busyDelayMs: 5e3,
      refreshIntervalMs: 45e3,
      maxQueued: 1e3,
      random: Math.random,
      ...options,
      WebSocket: WebSocketImpl
    };
    this.current = { ...this.mirror.view, status: "connecting", failure: null, lastError: null, userId: null };
    void this.attempt();
  }
  view() {
    return this.current;
  }
  send(type, ...payload) {
    if (this.current.status === "stopped") {
      return false;
    }
    const text = JSON.stringify(payload[0] === void 0 ? { type } : { type, payload: payload[0] });
    if (this.current.status === "open" && this.socket?.readyState === OPEN) {
      this.socket.send(text);
      return true;
    }
    if (this.queue.length >= this.options.maxQueued) {
      return false;
    }
    this.queue.push(text);
    return true;
  }
  sendChat(message) {
    return this.send("chat.send", message);
  }
  subscribe(listener) {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
  onFrame(listener) {
    this.frameListeners.add(listener);
    return () => this.frameListeners.delete(listener);
  }
  reconnect() {
    if (this.current.status === "stopped") {
      return;
    }
    this.abandon();
    void this.attempt();
  }
  close() {
    if (this.current.status === "stopped") {
      return;
    }
    this.abandon();
    this.queue = [];
    this.update({ status: "stopped" });
    this.listeners.clear();
    this.frameListeners.clear();
  }
  /** Cancel timers and drop the socket of the current attempt; its late callbacks are ignored. */
  abandon() {
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
  async attempt() {
    const id = ++this.attemptId;
    this.update({ status: "connecting" });
    let token;
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
    let socket;
    try {
      socket = new this.options.WebSocket(socketUrl(this.options.url, this.options.campaignId, token, seq, epoch));
    } catch (error) {
      this.attemptId += 1;
      this.update({ status: "stopped", failure: { code: 0, reason: `cannot open a socket: ${String(error)}` } });
      return;
    }
    this.socket = socket;
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
  receive(data) {
    let frame;
    try {
      frame = JSON.parse(data);
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
    }
  }
  /** The server's greeting arrived: the join succeeded, so flush what waited for it. */
  joined(userId) {
    this.failures = 0;
    this.unauthorizedInARow = 0;
    const socket = this.socket;
    const queued = this.queue;
    this.queue = [];
    for (const text of queued) {
      socket?.send(text);
    }
    this.startRefreshing();
    this.update({ status: "open", failure: null, userId });
  }
  closed(failure) {
    this.socket = null;
    this.stopRefreshing();
    const reconnect = reconnectAfter(failure.code);
    if (reconnect === "never") {
      this.attemptId += 1;
      this.queue = [];
      this.update({ status: "stopped", failure });
      return;
    }
    let delay;
    if (reconnect === "fresh-token") {
      this.mirror.reset();
      this.unauthorizedInARow += 1;
      delay = this.unauthorizedInARow === 1 ? 0 : this.nextBackoff();
    } else if (reconnect === "later") {
      delay = Math.max(this.options.busyDelayMs, this.nextBackoff());
    } else if (reconnect === "soon") {
      this.failures += 1;
      delay = this.options.random() * this.options.initialDelayMs;
    } else {
      delay = this.nextBackoff();
    }
    this.retryLater(delay, failure);
  }
  nextBackoff() {
    const { initialDelayMs, maxDelayMs, random } = this.options;
    const delay = backoffDelay(this.failures, initialDelayMs, maxDelayMs, random);
    this.failures += 1;
    return delay;
  }
  retryLater(delay, failure) {
    const id = this.attemptId;
    this.update({ status: "waiting", failure });
    this.timer = setTimeout(() => {
      this.timer = null;
      if (id === this.attemptId) {
        void this.attempt();
      }
    }, delay);
  }
  startRefreshing() {
    const every = this.options.refreshIntervalMs;
    if (every <= 0) {
      return;
    }
    const id = this.attemptId;
    this.refresher = setInterval(() => {
      void this.refresh(id);
    }, every);
  }
  async refresh(id) {
    let token;
    try {
      token = await this.options.getToken();
    } catch {
      return;
    }
    if (token && id === this.attemptId && this.socket?.readyState === OPEN) {
      this.socket.send(JSON.stringify({ type: "auth.refresh", payload: { token } }));
    }
  }
  stopRefreshing() {
    if (this.refresher !== null) {
      clearInterval(this.refresher);
      this.refresher = null;
    }
  }
  update(change) {
    this.current = { ...this.current, ...this.mirror.view, ...change };
    for (const listener of this.listeners) {
      listener();
    }
  }
};

// src/protocol.ts
var CLIENT_MESSAGE_TYPES = [
  "token.add",
  "token.move",
  "token.remove",
  "token.update",
  "fog.update",
  "map.set",
  "map.switch",
  "map.rename",
  "map.delete",
  "scene.darkness",
  "ping",
  "auth.refresh",
  "chat.send"
];
var SERVER_MESSAGE_TYPES = [
  "token.add",
  "token.move",
  "token.remove",
  "token.update",
  "fog.update",
  "map.set",
  "scene.darkness",
  "state.sync",
  "state.resume",
  "state.saved",
  "map.list",
  "pong",
  "error",
  "chat.message",
  "chat.history"
];
var GM_ONLY_MESSAGE_TYPES = [
  "fog.update",
  "map.set",
  "map.switch",
  "map.rename",
  "map.delete",
  "scene.darkness"
];
var UNNUMBERED_SERVER_TYPES = [
  "state.saved",
  "pong",
  "error",
  "chat.history"
];
export {
  CLIENT_MESSAGE_TYPES,
  FINAL_CLOSE_CODES,
  GM_ONLY_MESSAGE_TYPES,
  SERVER_MESSAGE_TYPES,
  TableMirror,
  UNNUMBERED_SERVER_TYPES,
  backoffDelay,
  connect,
  socketUrl
};
