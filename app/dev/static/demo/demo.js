// The demo table: plain JavaScript on the client's ES module build (vtt-client.js).
// Page URL: /demo/?campaign=demo&user=alice&role=gm (or role=player).
// Token x, y are map pixels; width, height are grid squares.
import { connect } from "./vtt-client.js";

const SVG = "http://www.w3.org/2000/svg";
// A press held this long without moving pings the spot; the ping shows for PING_MS.
const HOLD_MS = 500;
const HOLD_SLOP = 6;
const PING_MS = 3000;
const DEFAULT_COLUMNS = 20;
const DEFAULT_ROWS = 14;
const COLORS = ["#c0504d", "#4f81bd", "#9bbb59", "#8064a2", "#f79646", "#4bacc6", "#d16ba5", "#7f8c8d"];

const params = new URLSearchParams(location.search);
const campaign = params.get("campaign") || "demo";
const user = params.get("user") || "alice";
const role = params.get("role") === "player" ? "player" : "gm";
const isGm = role === "gm";

// Every frame this page received, for the browser tests (and for curious developers).
window.__vttFrames = [];

const board = document.getElementById("board");
const tokenList = document.getElementById("token-list");
const statusBadge = document.getElementById("status");
const errorLine = document.getElementById("error");
const memberList = document.getElementById("members");
const chatLog = document.getElementById("chat-log");
const chatForm = document.getElementById("chat-form");
const chatInput = document.getElementById("chat-input");
const chatRecipient = document.getElementById("chat-recipient");
const chatGmOnly = document.getElementById("chat-gm-only");
document.body.dataset.role = role;
document.getElementById("campaign").textContent = campaign;
document.getElementById("user").textContent = user;
document.getElementById("role").textContent = isGm ? "GM" : "player";
const other = new URL(location.href);
other.searchParams.set("role", isGm ? "player" : "gm");
other.searchParams.set("user", isGm ? "bob" : "alice");
const otherLink = document.getElementById("other-role");
otherLink.href = other.toString();
otherLink.textContent = isGm ? "as player bob" : "as GM alice";
if (isGm) {
  document.getElementById("gm-tools").hidden = false;
} else {
  // Not hidden but absent: a player's page has no GM controls at all.
  document.getElementById("gm-tools").remove();
}

async function fetchToken() {
  const query = new URLSearchParams({ user, role, campaign });
  const response = await fetch(`token?${query}`, { cache: "no-store" });
  if (!response.ok) {
    throw new Error(`token endpoint answered ${response.status}`);
  }
  return (await response.json()).token;
}

const client = connect({
  url: `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`,
  campaignId: campaign,
  getToken: fetchToken,
  pingLifetimeMs: PING_MS,
});
window.__vtt = client;
client.onFrame((frame) => window.__vttFrames.push(frame));

// --- layers -----------------------------------------------------------------------------------

function svg(name, attributes = {}, parent = null) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) {
    element.setAttribute(key, String(value));
  }
  parent?.append(element);
  return element;
}

const mapLayer = svg("g", { class: "map" }, board);
const gridLayer = svg("g", { class: "grid" }, board);
const tokenLayer = svg("g", { class: "tokens" }, board);
const fogLayer = svg("g", { class: "fog-layer" }, board);
const draftLayer = svg("g", { class: "drafts" }, board);
const pingLayer = svg("g", { class: "pings" }, board);
const cursorLayer = svg("g", { class: "cursors" }, board);
// Players see fog above the tokens; the GM sees through it to place tokens under it.
if (isGm) {
  board.insertBefore(fogLayer, tokenLayer);
}

const tokenElements = new Map();
let selected = null;
let drag = null;
let drawingFog = false;
let fogDraft = null;
let hold = null;
let myPing = null;

function gridSize(state) {
  return state.grid_size > 0 ? state.grid_size : 64;
}

function boardSize(state) {
  const grid = gridSize(state);
  return {
    width: state.map_width > 0 ? state.map_width : DEFAULT_COLUMNS * grid,
    height: state.map_height > 0 ? state.map_height : DEFAULT_ROWS * grid,
  };
}

function colorOf(tokenId) {
  let hash = 0;
  for (const char of tokenId) {
    hash = (hash * 31 + char.charCodeAt(0)) >>> 0;
  }
  return COLORS[hash % COLORS.length];
}

// --- rendering --------------------------------------------------------------------------------

let drawnBoard = "";

function renderBoard(state) {
  const { width, height } = boardSize(state);
  const grid = gridSize(state);
  const key = `${width}x${height}@${grid}|${state.map_url ?? ""}`;
  if (key === drawnBoard) {
    return;
  }
  drawnBoard = key;
  board.setAttribute("width", width);
  board.setAttribute("height", height);
  board.setAttribute("viewBox", `0 0 ${width} ${height}`);
  mapLayer.replaceChildren();
  if (state.map_url) {
    svg("image", { href: state.map_url, x: 0, y: 0, width, height, preserveAspectRatio: "none" }, mapLayer);
  }
  gridLayer.replaceChildren();
  for (let x = 0; x <= width; x += grid) {
    svg("line", { x1: x, y1: 0, x2: x, y2: height }, gridLayer);
  }
  for (let y = 0; y <= height; y += grid) {
    svg("line", { x1: 0, y1: y, x2: width, y2: y }, gridLayer);
  }
}

function nameOf(view, userId) {
  const member = view.members[userId];
  return member?.username ?? userId;
}

function tokenElement(token) {
  let element = tokenElements.get(token.token_id);
  if (element === undefined) {
    element = svg("g", { class: "token", "data-token-id": token.token_id }, tokenLayer);
    svg("circle", { fill: colorOf(token.token_id) }, element);
    svg("text", { class: "name" }, element);
    svg("text", { class: "lock" }, element);
    element.addEventListener("pointerdown", (event) => startDrag(event, token.token_id));
    tokenElements.set(token.token_id, element);
  }
  return element;
}

function renderTokens(view) {
  const { state, locks } = view;
  const grid = gridSize(state);
  for (const [tokenId, element] of tokenElements) {
    if (!(tokenId in state.tokens)) {
      element.remove();
      tokenElements.delete(tokenId);
    }
  }
  for (const token of Object.values(state.tokens)) {
    const element = tokenElement(token);
    const dragging = drag !== null && drag.tokenId === token.token_id;
    const x = dragging ? drag.x : token.x;
    const y = dragging ? drag.y : token.y;
    const size = Math.max(token.width, token.height) * grid;
    element.setAttribute("transform", `translate(${x} ${y})`);
    element.dataset.x = String(token.x);
    element.dataset.y = String(token.y);
    element.classList.toggle("hidden", !token.visible);
    element.classList.toggle("selected", token.token_id === selected);
    // Someone else's drag: visibly locked, and not draggable here (unless a GM may take it).
    const holder = locks[token.token_id];
    const theirs = holder !== undefined && holder !== view.userId;
    element.classList.toggle("held", holder !== undefined && holder === view.userId);
    element.classList.toggle("locked", theirs && !client.mayGrab(token.token_id));
    if (holder === undefined) {
      delete element.dataset.lockedBy;
    } else {
      element.dataset.lockedBy = holder;
    }
    const circle = element.querySelector("circle");
    circle.setAttribute("cx", size / 2);
    circle.setAttribute("cy", size / 2);
    circle.setAttribute("r", size / 2 - 3);
    const label = element.querySelector("text.name");
    label.setAttribute("x", size / 2);
    label.setAttribute("y", size + 14);
    label.textContent = token.visible ? token.name : `${token.name} (hidden)`;
    const lock = element.querySelector("text.lock");
    lock.setAttribute("x", size / 2);
    lock.setAttribute("y", -4);
    lock.textContent = theirs ? `locked by ${nameOf(view, holder)}` : "";
  }
}

function renderCursors(view) {
  cursorLayer.replaceChildren();
  for (const [userId, at] of Object.entries(view.cursors)) {
    const cursor = svg("g", { class: "cursor", "data-user-id": userId, "data-x": at.x, "data-y": at.y, transform: `translate(${at.x} ${at.y})` }, cursorLayer);
    svg("path", { d: "M0 0 L0 16 L4 12 L8 20 L11 19 L7 11 L13 11 Z" }, cursor);
    svg("text", { x: 14, y: 24 }, cursor).textContent = nameOf(view, userId);
  }
}

function renderPings(view) {
  pingLayer.replaceChildren();
  const pings = Object.entries(view.pings).map(([userId, ping]) => ({ userId, ...ping, mine: false }));
  if (myPing !== null) {
    pings.push({ userId: view.userId ?? user, ...myPing, mine: true });
  }
  for (const ping of pings) {
    const mark = svg("g", { class: ping.mine ? "ping mine" : "ping", "data-user-id": ping.userId, "data-x": ping.x, "data-y": ping.y, transform: `translate(${ping.x} ${ping.y})` }, pingLayer);
    svg("circle", { r: 6 }, mark);
    svg("text", { x: 10, y: -10 }, mark).textContent = nameOf(view, ping.userId);
  }
}

let listedMembers = null;

function renderMembers(view) {
  if (view.members === listedMembers) {
    return;
  }
  listedMembers = view.members;
  memberList.replaceChildren();
  const chosen = chatRecipient.value;
  chatRecipient.replaceChildren(new Option("to everyone", ""));
  for (const member of Object.values(view.members)) {
    const item = document.createElement("li");
    item.dataset.userId = member.user_id;
    item.classList.toggle("away", member.connections === 0);
    const you = member.user_id === view.userId ? " (you)" : "";
    const away = member.connections === 0 ? ", reconnecting" : member.connections > 1 ? `, ${member.connections} tabs` : "";
    item.textContent = `${member.username ?? member.user_id}${you} `;
    const roleNote = document.createElement("span");
    roleNote.className = "role";
    roleNote.textContent = `${member.role === "gm" ? "GM" : "player"}${away}`;
    item.append(roleNote);
    memberList.append(item);
    if (member.user_id !== view.userId) {
      chatRecipient.append(new Option(`whisper to ${member.username ?? member.user_id}`, member.user_id));
    }
  }
  chatRecipient.value = [...chatRecipient.options].some((option) => option.value === chosen) ? chosen : "";
}

function audienceOf(view, message) {
  if (message.gm_only) {
    return "GM only";
  }
  if (message.recipient_id !== undefined) {
    return message.user_id === view.userId ? `whisper to ${nameOf(view, message.recipient_id)}` : "whisper";
  }
  return null;
}

function rollElement(roll) {
  const block = document.createElement("span");
  block.className = "roll";
  const parts = [];
  for (const term of roll.terms) {
    const sign = term.sign < 0 ? "- " : parts.length > 0 ? "+ " : "";
    if (term.dice === undefined) {
      parts.push(document.createTextNode(`${sign}${term.constant} `));
      continue;
    }
    parts.push(document.createTextNode(`${sign}[`));
    term.dice.forEach((die, i) => {
      const face = document.createElement("span");
      face.className = die.kept ? "die" : "die dropped";
      face.textContent = String(die.value);
      parts.push(...(i > 0 ? [document.createTextNode(", ")] : []), face);
    });
    parts.push(document.createTextNode("] "));
  }
  const total = document.createElement("span");
  total.className = "total";
  total.textContent = String(roll.total);
  block.append(`${roll.expression}: `, ...parts, "= ", total, roll.label ? ` (${roll.label})` : "", roll.capped ? " (capped)" : "");
  return block;
}

let listedChat = null;

function renderChat(view) {
  if (view.chat.messages === listedChat) {
    return;
  }
  listedChat = view.chat.messages;
  chatLog.replaceChildren();
  for (const message of view.chat.messages) {
    const item = document.createElement("li");
    item.className = "chat-message";
    item.dataset.id = message.id;
    item.classList.toggle("gm-only", message.gm_only);
    item.classList.toggle("whisper", message.recipient_id !== undefined);
    const author = document.createElement("span");
    author.className = "author";
    author.textContent = message.username ?? message.user_id;
    item.append(author);
    const audience = audienceOf(view, message);
    if (audience !== null) {
      const badge = document.createElement("span");
      badge.className = "badge audience";
      badge.textContent = audience;
      item.append(badge);
    }
    const content = document.createElement("span");
    content.className = "content";
    content.textContent = `: ${typeof message.content === "string" ? message.content : JSON.stringify(message.content)}`;
    item.append(content);
    if (message.roll !== undefined) {
      item.append(rollElement(message.roll));
    }
    chatLog.append(item);
  }
  chatLog.scrollTop = chatLog.scrollHeight;
}

let drawnFog = null;

function renderFog(state) {
  if (state.fog_zones === drawnFog) {
    return;
  }
  drawnFog = state.fog_zones;
  fogLayer.replaceChildren();
  for (const zone of state.fog_zones) {
    if (zone.visible) {
      svg("rect", { class: "fog", x: zone.x, y: zone.y, width: zone.w, height: zone.h }, fogLayer);
    }
  }
}

let listedTokens = null;

function renderList(state) {
  if (state.tokens === listedTokens) {
    return;
  }
  listedTokens = state.tokens;
  tokenList.replaceChildren();
  for (const token of Object.values(state.tokens).sort((a, b) => a.name.localeCompare(b.name))) {
    const item = document.createElement("li");
    item.dataset.tokenId = token.token_id;
    item.classList.toggle("hidden", !token.visible);
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = token.name;
    item.append(name);
    if (isGm) {
      const toggle = document.createElement("button");
      toggle.dataset.action = "toggle-visibility";
      toggle.textContent = token.visible ? "Hide" : "Reveal";
      toggle.addEventListener("click", () => client.send("token.update", { token_id: token.token_id, visible: !token.visible }));
      const remove = document.createElement("button");
      remove.dataset.action = "remove";
      remove.textContent = "Remove";
      remove.addEventListener("click", () => client.send("token.remove", { token_id: token.token_id }));
      item.append(toggle, remove);
    }
    tokenList.append(item);
  }
}

function render() {
  const view = client.view();
  statusBadge.dataset.status = view.status;
  statusBadge.textContent = view.failure && view.status !== "open" ? `${view.status}: ${view.failure.code} ${view.failure.reason}` : view.status;
  errorLine.textContent = view.lastError ? `${view.lastError.code}: ${view.lastError.message}` : "";
  renderMembers(view);
  renderChat(view);
  if (view.state === null) {
    return;
  }
  // The lock went to someone else (a GM may take it): the token goes back to the server's place.
  if (drag !== null && !drag.handle.active) {
    drag = null;
  }
  renderBoard(view.state);
  renderTokens(view);
  renderFog(view.state);
  renderList(view.state);
  renderCursors(view);
  renderPings(view);
}

client.subscribe(render);
render();

// --- interaction ------------------------------------------------------------------------------

function boardPoint(event) {
  const matrix = board.getScreenCTM().inverse();
  const point = new DOMPoint(event.clientX, event.clientY).matrixTransform(matrix);
  return { x: point.x, y: point.y };
}

function snap(value, grid) {
  return Math.round(value / grid) * grid;
}

function startDrag(event, tokenId) {
  const state = client.view().state;
  const token = state?.tokens[tokenId];
  if (token === undefined || drawingFog) {
    return;
  }
  event.preventDefault();
  event.stopPropagation();
  // token.grab, then the moves (at most 20 a second), then token.release: null when locked.
  const handle = client.beginDrag(tokenId);
  if (handle === null) {
    return;
  }
  selected = tokenId;
  const start = boardPoint(event);
  drag = { handle, tokenId, pointerId: event.pointerId, dx: start.x - token.x, dy: start.y - token.y, x: token.x, y: token.y };
  event.currentTarget.setPointerCapture(event.pointerId);
  render();
}

board.addEventListener("pointermove", (event) => {
  const point = boardPoint(event);
  client.moveCursor(Math.round(point.x), Math.round(point.y));
  if (hold !== null && Math.hypot(point.x - hold.x, point.y - hold.y) > HOLD_SLOP) {
    cancelHold();
  }
  if (drag !== null && event.pointerId === drag.pointerId) {
    drag.x = point.x - drag.dx;
    drag.y = point.y - drag.dy;
    drag.handle.move(Math.round(drag.x), Math.round(drag.y));
    render();
  } else if (fogDraft !== null) {
    updateDraft(point);
  }
});

board.addEventListener("pointerleave", () => client.hideCursor());

function endDrag(event) {
  cancelHold();
  if (drag === null || event.pointerId !== drag.pointerId) {
    return;
  }
  // The drop lands on the grid, then the lock is released.
  const grid = gridSize(client.view().state);
  drag.handle.end(snap(drag.x, grid), snap(drag.y, grid));
  drag = null;
  render();
}

board.addEventListener("pointerup", endDrag);
board.addEventListener("pointercancel", endDrag);

// --- pings: click and hold on the map --------------------------------------------------------

function cancelHold() {
  if (hold !== null) {
    clearTimeout(hold.timer);
    hold = null;
  }
}

board.addEventListener("pointerdown", (event) => {
  if (drawingFog || event.button !== 0) {
    return;
  }
  const at = boardPoint(event);
  cancelHold();
  hold = { x: at.x, y: at.y, timer: setTimeout(() => ping(at), HOLD_MS) };
});

function ping(at) {
  hold = null;
  const x = Math.round(at.x);
  const y = Math.round(at.y);
  if (!client.pingAt(x, y)) {
    return;
  }
  const mine = { x, y };
  myPing = mine;
  setTimeout(() => {
    if (myPing === mine) {
      myPing = null;
      render();
    }
  }, PING_MS);
  render();
}

// --- chat -------------------------------------------------------------------------------------

chatGmOnly.addEventListener("change", () => {
  if (chatGmOnly.checked) {
    chatRecipient.value = "";
  }
});

chatRecipient.addEventListener("change", () => {
  if (chatRecipient.value !== "") {
    chatGmOnly.checked = false;
  }
});

chatForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = chatInput.value.trim();
  if (text === "") {
    return;
  }
  // "/roll 2d20kh1+5 # attack": the server rolls it (and strips the "/roll ").
  const isRoll = /^\/r(oll)?\s/i.test(text);
  const message = { content: text, message_type: isRoll ? "roll" : "text" };
  if (isRoll) {
    message.roll = text;
  }
  if (chatRecipient.value !== "") {
    message.recipient_id = chatRecipient.value;
  } else if (chatGmOnly.checked) {
    message.gm_only = true;
  }
  if (client.sendChat(message)) {
    chatInput.value = "";
  }
});

// --- GM tools ---------------------------------------------------------------------------------

function freeCell(state) {
  const grid = gridSize(state);
  const { width, height } = boardSize(state);
  const taken = new Set(Object.values(state.tokens).map((token) => `${snap(token.x, grid)},${snap(token.y, grid)}`));
  for (let y = grid; y < height; y += grid) {
    for (let x = grid; x < width; x += grid) {
      if (!taken.has(`${x},${y}`)) {
        return { x, y };
      }
    }
  }
  return { x: 0, y: 0 };
}

if (isGm) {
  const nameInput = document.getElementById("token-name");
  const drawButton = document.getElementById("draw-fog");
  let added = 0;

  document.getElementById("add-token").addEventListener("click", () => {
    const state = client.view().state;
    if (state === null) {
      return;
    }
    added += 1;
    const name = nameInput.value.trim() || `Token ${Object.keys(state.tokens).length + 1}`;
    const tokenId = `tok-${Date.now().toString(36)}-${added}`;
    client.send("token.add", { token_id: tokenId, name, ...freeCell(state), width: 1, height: 1, visible: true });
    nameInput.value = "";
  });

  drawButton.addEventListener("click", () => {
    drawingFog = !drawingFog;
    drawButton.setAttribute("aria-pressed", String(drawingFog));
    document.body.classList.toggle("drawing-fog", drawingFog);
  });

  document.getElementById("clear-fog").addEventListener("click", () => client.send("fog.update", { zones: [] }));

  board.addEventListener("pointerdown", (event) => {
    if (!drawingFog) {
      selected = null;
      render();
      return;
    }
    const start = boardPoint(event);
    fogDraft = { start, element: svg("rect", { class: "fog-draft", x: start.x, y: start.y, width: 0, height: 0 }, draftLayer) };
    board.setPointerCapture(event.pointerId);
  });

  board.addEventListener("pointerup", (event) => {
    if (fogDraft === null) {
      return;
    }
    const zone = draftZone(boardPoint(event));
    fogDraft.element.remove();
    fogDraft = null;
    const state = client.view().state;
    if (state !== null && zone.w > 0 && zone.h > 0) {
      client.send("fog.update", { zones: [...state.fog_zones, { ...zone, visible: true }] });
    }
  });
}

function draftZone(point) {
  const grid = gridSize(client.view().state);
  const x1 = snap(Math.min(fogDraft.start.x, point.x), grid);
  const y1 = snap(Math.min(fogDraft.start.y, point.y), grid);
  const x2 = snap(Math.max(fogDraft.start.x, point.x), grid);
  const y2 = snap(Math.max(fogDraft.start.y, point.y), grid);
  return { x: x1, y: y1, w: x2 - x1, h: y2 - y1 };
}

function updateDraft(point) {
  const zone = draftZone(point);
  fogDraft.element.setAttribute("x", zone.x);
  fogDraft.element.setAttribute("y", zone.y);
  fogDraft.element.setAttribute("width", zone.w);
  fogDraft.element.setAttribute("height", zone.h);
}
