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

// src/throttle.ts
var TWENTY_HZ_MS = 50;
var Throttle = class {
  constructor(intervalMs, emit, now = () => performance.now()) {
    this.intervalMs = intervalMs;
    this.emit = emit;
    this.now = now;
  }
  intervalMs;
  emit;
  now;
  last = Number.NEGATIVE_INFINITY;
  pending = null;
  timer = null;
  push(value) {
    const wait = this.last + this.intervalMs - this.now();
    if (wait <= 0 && this.timer === null) {
      this.fire(value);
      return;
    }
    this.pending = { value };
    this.timer ??= setTimeout(() => {
      this.timer = null;
      const pending = this.pending;
      this.pending = null;
      if (pending !== null) {
        this.fire(pending.value);
      }
    }, wait);
  }
  /** Drop the value waiting for its slot, if any. */
  cancel() {
    if (this.timer !== null) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    this.pending = null;
  }
  fire(value) {
    this.last = this.now();
    this.emit(value);
  }
};

// src/drag.ts
var REGRAB_AFTER_MS = 2e3;
var TokenDrag = class {
  constructor(tokenId, port) {
    this.tokenId = tokenId;
    this.port = port;
    this.moves = new Throttle(TWENTY_HZ_MS, ({ x, y }) => {
      this.lastSent = performance.now();
      port.move(tokenId, x, y);
    });
    this.regrab = setInterval(() => {
      if (performance.now() - this.lastSent >= REGRAB_AFTER_MS) {
        this.grab();
      }
    }, REGRAB_AFTER_MS);
    this.grab();
  }
  tokenId;
  port;
  live = true;
  lastSent = performance.now();
  moves;
  regrab;
  get active() {
    return this.live;
  }
  move(x, y) {
    if (this.live) {
      this.moves.push({ x, y });
    }
    return this.live;
  }
  end(x, y) {
    if (!this.live) {
      return;
    }
    this.moves.cancel();
    if (x !== void 0 && y !== void 0) {
      this.port.move(this.tokenId, x, y);
    }
    this.cancel();
  }
  cancel() {
    if (!this.live) {
      return;
    }
    this.stop();
    this.port.send("token.release", this.tokenId);
  }
  /** After a frame: the token gone, or another user holding its lock, ends this drag. */
  observe(tokens, locks, userId) {
    const holder = locks[this.tokenId];
    const taken = holder !== void 0 && userId !== null && holder !== userId;
    if (this.live && (taken || tokens !== void 0 && !(this.tokenId in tokens))) {
      this.stop();
    }
  }
  /** Stop without telling the server: the token is gone, or the client closed. */
  stop() {
    this.live = false;
    this.moves.cancel();
    clearInterval(this.regrab);
    this.port.done(this);
  }
  /** Ask for the lock (again): at the start, when held still, and after a reconnect. */
  grab() {
    this.lastSent = performance.now();
    this.port.send("token.grab", this.tokenId);
  }
};

// src/locks.ts
var NO_LOCKS = Object.freeze({});
function withLock(locks, tokenId, userId) {
  return locks[tokenId] === userId ? locks : { ...locks, [tokenId]: userId };
}
function withoutLock(locks, tokenId) {
  if (!(tokenId in locks)) {
    return locks;
  }
  const { [tokenId]: _released, ...rest } = locks;
  return rest;
}
function locksOn(locks, tokens) {
  const kept = Object.entries(locks).filter(([tokenId]) => tokenId in tokens);
  return kept.length === Object.keys(locks).length ? locks : Object.fromEntries(kept);
}
function mayGrab(locks, members, userId, tokenId) {
  const holder = locks[tokenId];
  if (holder === void 0 || holder === userId) {
    return true;
  }
  return userId !== null && members[userId]?.role === "gm" && members[holder]?.role !== "gm";
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

// src/pointers.ts
var NO_POINTERS = Object.freeze({ cursors: Object.freeze({}), rulers: Object.freeze({}), pings: Object.freeze({}) });
function livePings(pings, now, lifetimeMs) {
  const live = Object.entries(pings).filter(([, ping]) => now - ping.at < lifetimeMs);
  return live.length === Object.keys(pings).length ? pings : Object.fromEntries(live);
}
function nextPingExpiry(pings, lifetimeMs) {
  const times = Object.values(pings).map((ping) => ping.at + lifetimeMs);
  return times.length === 0 ? null : Math.min(...times);
}

// src/presence.ts
var NO_MEMBERS = Object.freeze({});
function membersFrom(sync) {
  return Object.fromEntries(sync.members.map((member) => [member.user_id, member]));
}
function withJoin(members, join) {
  const known = members[join.user_id];
  return { ...members, [join.user_id]: { ...join, connections: known === void 0 ? 1 : Math.max(known.connections, 1) } };
}
function withoutUser(byUser, userId) {
  if (!(userId in byUser)) {
    return byUser;
  }
  const { [userId]: _gone, ...rest } = byUser;
  return rest;
}

// src/mirror.ts
var EMPTY_TABLE = Object.freeze({
  state: null,
  maps: null,
  seq: null,
  epoch: null,
  savedSeq: null,
  chat: NO_CHAT,
  members: NO_MEMBERS,
  locks: NO_LOCKS,
  ...NO_POINTERS
});
var TableMirror = class {
  view = EMPTY_TABLE;
  /** Forget everything (the next connection will get a whole state.sync). */
  reset() {
    this.view = EMPTY_TABLE;
  }
  /**
   * Apply one frame; state.sync always replaces, numbered events apply once, in order. `now`
   * (`Date.now()`) stamps a ping's arrival.
   */
  apply(frame, now = Date.now()) {
    switch (frame.type) {
      case "state.sync":
        this.view = {
          ...this.view,
          state: frame.payload,
          seq: frame.seq,
          epoch: frame.payload.epoch ?? this.view.epoch,
          locks: locksOn(this.view.locks, frame.payload.tokens)
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
      case "presence.sync":
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
  expirePings(now, lifetimeMs) {
    const pings = livePings(this.view.pings, now, lifetimeMs);
    if (pings === this.view.pings) {
      return false;
    }
    this.view = { ...this.view, pings };
    return true;
  }
  forgetUser(userId) {
    const { members, cursors, rulers, pings } = this.view;
    this.view = {
      ...this.view,
      members: withoutUser(members, userId),
      cursors: withoutUser(cursors, userId),
      rulers: withoutUser(rulers, userId),
      pings: withoutUser(pings, userId)
    };
    return "applied";
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
function encode(type, payload) {
  return JSON.stringify(payload === void 0 ? { type } : { type, payload });
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
  // --- what this user shows the others
  cursor = new Throttle(TWENTY_HZ_MS, (at) => {
    this.cursorShown = this.sendNow("cursor.move", at) || this.cursorShown;
  });
  cursorShown = false;
  ruler = new Throttle(TWENTY_HZ_MS, (ruler) => {
    this.rulerShown = this.sendNow("ruler.update", ruler) || this.rulerShown;
  });
  rulerShown = false;
  drags = /* @__PURE__ */ new Set();
  pingTimer = null;
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
      pingLifetimeMs: 3e3,
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
  sendChat(message) {
    return this.send("chat.send", message);
  }
  pingAt(x, y) {
    return this.sendNow("pointer.ping", { x, y });
  }
  moveCursor(x, y) {
    this.cursor.push({ x, y });
  }
  hideCursor() {
    this.cursor.cancel();
    if (this.cursorShown) {
      this.cursorShown = !this.sendNow("cursor.hide");
    }
  }
  updateRuler(ruler) {
    this.ruler.push(ruler);
  }
  clearRuler() {
    this.ruler.cancel();
    if (this.rulerShown) {
      this.rulerShown = !this.sendNow("ruler.clear");
    }
  }
  mayGrab(tokenId) {
    const { locks, members, userId } = this.current;
    return mayGrab(locks, members, userId, tokenId);
  }
  beginDrag(tokenId) {
    const tokens = this.current.state?.tokens;
    if (this.current.status === "stopped" || tokens !== void 0 && !(tokenId in tokens) || !this.mayGrab(tokenId)) {
      return null;
    }
    for (const drag2 of this.drags) {
      if (drag2.tokenId === tokenId) {
        drag2.stop();
      }
    }
    const drag = new TokenDrag(tokenId, {
      send: (type, token_id) => this.send(type, { token_id }),
      move: (token_id, x, y) => this.send("token.move", { token_id, x, y }),
      done: (ended) => this.drags.delete(ended)
    });
    this.drags.add(drag);
    return drag;
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
      this.observed(frame);
    }
  }
  /** After an applied frame: drags follow the locks and tokens; pings get their expiry. */
  observed(frame) {
    const { state, locks, userId } = this.current;
    for (const drag of this.drags) {
      drag.observe(state?.tokens, locks, userId);
    }
    if (frame.type === "pointer.ping" && this.pingTimer === null) {
      this.expirePings();
    }
  }
  /** Drop the pings that have had their time, then wait for the next to expire. */
  expirePings() {
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
  joined(userId) {
    this.failures = 0;
    this.unauthorizedInARow = 0;
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
  sendNow(type, ...payload) {
    return this.sendText(encode(type, payload[0]));
  }
  sendText(text) {
    if (this.current.status !== "open" || this.socket?.readyState !== OPEN) {
      return false;
    }
    this.socket.send(text);
    return true;
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
  "chat.send",
  "token.grab",
  "token.release",
  "pointer.ping",
  "cursor.move",
  "cursor.hide",
  "ruler.update",
  "ruler.clear"
];
var SERVER_MESSAGE_TYPES = [
  "token.add",
  "token.move",
  "token.remove",
  "token.update",
  "fog.update",
  "map.set",
  "scene.darkness",
  "pointer.ping",
  "cursor.move",
  "cursor.hide",
  "ruler.update",
  "ruler.clear",
  "state.sync",
  "state.resume",
  "state.saved",
  "map.list",
  "pong",
  "error",
  "chat.message",
  "chat.history",
  "presence.sync",
  "presence.join",
  "presence.leave",
  "token.grabbed",
  "token.released"
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
  "pointer.ping",
  "cursor.move",
  "cursor.hide",
  "ruler.update",
  "ruler.clear",
  "state.saved",
  "pong",
  "error",
  "chat.history",
  "presence.sync",
  "presence.join",
  "presence.leave",
  "token.grabbed",
  "token.released"
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
