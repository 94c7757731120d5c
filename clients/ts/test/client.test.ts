import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { WebSocket as NodeWebSocket } from "ws";
import { backoffDelay, connect, socketUrl, type ConnectOptions, type Failure, type Status, type VTTClient } from "../src/client.ts";
import type { CampaignState, ServerMessage, Token } from "../src/protocol.ts";
import { JwksServer } from "./jwks.ts";
import { TcpProxy, TestServer, waitFor, WebSocketImpl } from "./server.ts";

// Roles from SQL, as with Clerk; the test's SQLite has no campaigns table, so everyone plays.
const EVERYONE_PLAYS = "SELECT 'player' WHERE :campaign_id IS NOT NULL AND :user_id IS NOT NULL";

// A full join's frames: the table, the map library, the chat, who is here, and this arrival.
const GREETING = ["state.sync", "map.list", "chat.history", "presence.sync", "presence.join"];

let server: TestServer;
const clients: VTTClient[] = [];
let campaignCount = 0;

beforeAll(async () => {
  server = await TestServer.start();
  // Minting starts a Python process: mint the tokens the tests use up front, in one.
  await server.tokens([
    { user: "alice", role: "gm" },
    ...["bob", "carol", "dave", "erin", "frank", "hana"].map((user) => ({ user })),
    { user: "dave", campaign: "somewhere-else" },
  ]);
});

afterAll(async () => {
  await server.dispose();
});

afterEach(() => {
  for (const client of clients.splice(0)) {
    client.close();
  }
});

function campaign(): string {
  campaignCount += 1;
  return `client-test-${campaignCount}`;
}

/** A client plus everything it reported: statuses, close failures, frames, getToken calls. */
interface Observed {
  client: VTTClient;
  statuses: Status[];
  failures: Failure[];
  frames: ServerMessage[];
  tokenCalls: () => number;
}

function open(options: Partial<ConnectOptions> & Pick<ConnectOptions, "campaignId" | "getToken">): Observed {
  let calls = 0;
  const getToken = options.getToken;
  const client = connect({
    url: server.url,
    WebSocket: WebSocketImpl,
    initialDelayMs: 50,
    maxDelayMs: 400,
    busyDelayMs: 200,
    ...options,
    getToken: () => {
      calls += 1;
      return getToken();
    },
  });
  clients.push(client);
  const observed: Observed = { client, statuses: [], failures: [], frames: [], tokenCalls: () => calls };
  client.subscribe(() => {
    const view = client.view();
    if (observed.statuses.at(-1) !== view.status) {
      observed.statuses.push(view.status);
    }
    if (view.failure !== null && observed.failures.at(-1) !== view.failure) {
      observed.failures.push(view.failure);
    }
  });
  client.onFrame((frame) => observed.frames.push(frame));
  return observed;
}

async function member(campaignId: string, user: string, role: "gm" | "player" = "player", extra: Partial<ConnectOptions> = {}): Promise<Observed> {
  const token = await server.token(user, role);
  const observed = open({ campaignId, getToken: () => token, ...extra });
  // A fresh join's greeting is state.sync, then map.list.
  await waitFor(() => observed.client.view().maps !== null, 10_000, `${user} to join`);
  return observed;
}

function token(token_id: string, fields: Partial<Token> = {}): Token {
  return { token_id, name: `Token ${token_id}`, x: 0, y: 0, width: 1, height: 1, visible: true, ...fields };
}

function tokensOf(observed: Observed): Record<string, Token> {
  return observed.client.view().state?.tokens ?? {};
}

/** When a JWT expires, in ms since the epoch. */
function expiry(jwt: string): number {
  const claims = JSON.parse(Buffer.from(jwt.split(".")[1] ?? "", "base64url").toString()) as { exp: number };
  return claims.exp * 1_000;
}

/** The state as a comparison should see it: the epoch and seq are the connection's business. */
function comparable(state: CampaignState | null): Omit<CampaignState, "seq" | "epoch"> | null {
  if (state === null) {
    return null;
  }
  const { seq: _seq, epoch: _epoch, ...rest } = state;
  return rest;
}

describe("connect()", () => {
  it("joins, mirrors the state.sync and map list, and sees another member's changes", async () => {
    const id = campaign();
    const gm = await member(id, "alice", "gm");
    const player = await member(id, "bob");
    expect(gm.frames.map((frame) => frame.type).slice(0, 2)).toEqual(["state.sync", "map.list"]);
    expect(player.client.view().maps).toEqual({ maps: [], active_map_id: "" });
    gm.client.send("token.add", token("t1", { x: 64, y: 128 }));
    await waitFor(() => tokensOf(player).t1?.y === 128, 5_000, "the player to see the token");
    player.client.send("token.move", { token_id: "t1", x: 192, y: 64 });
    await waitFor(() => tokensOf(gm).t1?.x === 192, 5_000, "the GM to see the move");
    expect(tokensOf(gm).t1).toMatchObject({ owner_id: "alice", x: 192, y: 64 });
  });

  it("queues sends made before the join and flushes them in order once joined", async () => {
    const id = campaign();
    const gmToken = await server.token("alice", "gm");
    const gm = open({ campaignId: id, getToken: () => gmToken });
    expect(gm.client.view().status).toBe("connecting");
    expect(gm.client.send("token.add", token("early", { x: 1 }))).toBe(true);
    expect(gm.client.send("token.move", { token_id: "early", x: 2, y: 3 })).toBe(true);
    expect(gm.client.send("ping")).toBe(true);
    await waitFor(() => gm.frames.some((frame) => frame.type === "pong"), 10_000, "the pong");
    expect(tokensOf(gm).early).toMatchObject({ x: 2, y: 3 });
    expect(gm.frames.map((frame) => frame.type)).toEqual([...GREETING, "token.add", "token.move", "pong"]);
  });

  it("reports error replies without changing the mirror", async () => {
    const id = campaign();
    const player = await member(id, "bob");
    player.client.send("fog.update", { zones: [{ x: 0, y: 0, w: 10, h: 10, visible: true }] });
    await waitFor(() => player.client.view().lastError !== null, 5_000, "the error reply");
    expect(player.client.view().lastError?.code).toBe("forbidden");
    expect(player.client.view().state?.fog_zones).toEqual([]);
  });

  it("keeps hidden tokens out of a player's mirror and follows hide and reveal", async () => {
    const id = campaign();
    const gm = await member(id, "alice", "gm");
    const player = await member(id, "bob");
    gm.client.send("token.add", token("secret", { visible: false }));
    gm.client.send("token.add", token("open"));
    await waitFor(() => "open" in tokensOf(player), 5_000, "the visible token");
    expect(tokensOf(gm).secret?.visible).toBe(false);
    expect(tokensOf(player).secret).toBeUndefined();
    gm.client.send("token.update", { token_id: "secret", visible: true });
    await waitFor(() => tokensOf(player).secret?.visible === true, 5_000, "the reveal");
    gm.client.send("token.update", { token_id: "open", visible: false });
    await waitFor(() => !("open" in tokensOf(player)), 5_000, "the hide");
    expect(tokensOf(gm).open?.visible).toBe(false);
  });

  it("keeps a mirror equal to a fresh state.sync through a run of every kind of change", async () => {
    const id = campaign();
    const gm = await member(id, "alice", "gm");
    const player = await member(id, "bob");
    const { client } = gm;
    client.send("map.set", { map_id: "m1", image_url: "https://cdn.example/m1.webp", grid_size: 50, width: 1000, height: 800, name: "Crypt" });
    client.send("token.add", token("a", { x: 50 }));
    client.send("token.add", token("b", { visible: false, image_url: "/img/b.png" }));
    client.send("token.move", { token_id: "a", x: 100, y: 150 });
    client.send("token.update", { token_id: "a", name: "Archer", width: 2 });
    client.send("fog.update", { zones: [{ x: 0, y: 0, w: 500, h: 400, visible: true }] });
    client.send("scene.darkness", { darkness_level: 0.25 });
    client.send("map.set", { map_id: "m2", image_url: "https://cdn.example/m2.webp", grid_size: 64, width: 640, height: 640 });
    client.send("token.add", token("c", { x: 64, y: 64 }));
    client.send("map.rename", { map_id: "m1", new_name: "Old crypt" });
    client.send("token.remove", { token_id: "c" });
    client.send("token.add", token("d"));
    client.send("ping");
    await waitFor(() => gm.frames.some((frame) => frame.type === "pong"), 5_000, "the GM's changes");
    await waitFor(() => player.client.view().seq === gm.client.view().seq, 5_000, "the player to catch up");
    expect(gm.frames.filter((frame) => frame.type === "error")).toEqual([]);
    for (const [old, user, role] of [
      [gm, "alice", "gm"],
      [player, "bob", "player"],
    ] as const) {
      const fresh = await member(id, user, role);
      expect(comparable(old.client.view().state)).toEqual(comparable(fresh.client.view().state));
      expect(old.client.view().maps).toEqual(fresh.client.view().maps);
    }
    expect(Object.keys(tokensOf(gm))).toEqual(["d"]);
    expect(gm.client.view().state?.saved_maps?.m1?.tokens.a?.name).toBe("Archer");
    expect(player.client.view().state?.saved_maps).toBeUndefined();
  });
});

describe("reconnecting", () => {
  it("resumes after a dropped connection with since and epoch and replays what it missed", async () => {
    const id = campaign();
    const proxy = await TcpProxy.start(server.port);
    try {
      const gm = await member(id, "alice", "gm");
      gm.client.send("token.add", token("t1"));
      const playerToken = await server.token("bob");
      const player = open({ campaignId: id, getToken: () => playerToken, url: proxy.url, initialDelayMs: 1_500, maxDelayMs: 1_500 });
      await waitFor(() => "t1" in tokensOf(player), 10_000, "the player to join");
      const seqBefore = player.client.view().seq ?? 0;
      const framesBefore = player.frames.length;
      proxy.cut();
      await waitFor(() => player.client.view().status === "waiting", 5_000, "the drop to be noticed");
      gm.client.send("token.move", { token_id: "t1", x: 640, y: 64 });
      gm.client.send("token.add", token("t2", { visible: false }));
      gm.client.send("token.add", token("t3"));
      await waitFor(() => player.client.view().status === "open", 10_000, "the player to come back");
      await waitFor(() => "t3" in tokensOf(player), 5_000, "the replay");
      // After the replay, who is here now (presence is never replayed).
      await waitFor(() => player.frames.at(-1)?.type === "presence.sync", 5_000, "the presence after the replay");
      const after = player.frames.slice(framesBefore);
      expect(after[0]?.type).toBe("state.resume");
      expect(after[0]?.type === "state.resume" && after[0].payload.from_seq).toBe(seqBefore + 1);
      expect(after.map((frame) => frame.type)).not.toContain("state.sync");
      expect(after.map((frame) => frame.type)).toEqual(["state.resume", "token.move", "token.add", "presence.sync"]);
      expect(tokensOf(player).t1).toMatchObject({ x: 640, y: 64 });
      expect(tokensOf(player).t2).toBeUndefined();
      expect(player.tokenCalls()).toBe(2);
      expect(player.failures[0]?.code).toBe(1006);
    } finally {
      await proxy.close();
    }
  });

  it("retries after a 4401 with a fresh token", async () => {
    const id = campaign();
    const good = await server.token("carol");
    const tokens = ["not-a-jwt", good];
    const observed = open({ campaignId: id, getToken: () => tokens.shift() ?? good });
    await waitFor(() => observed.client.view().status === "open", 10_000, "the join with the second token");
    expect(observed.tokenCalls()).toBe(2);
    expect(observed.failures.map((failure) => failure.code)).toEqual([4401]);
  });

  it.each([
    ["4400 for a malformed campaign id", "not a campaign!", undefined, 4400],
    ["4403 for a token scoped to another campaign", "client-test-elsewhere", "somewhere-else", 4403],
  ])("stops for good and reports %s", async (_name, campaignId, scope, code) => {
    const token = await server.token("dave", "player", scope);
    const observed = open({ campaignId, getToken: () => token });
    await waitFor(() => observed.client.view().status === "stopped", 10_000, "the client to stop");
    expect(observed.client.view().failure?.code).toBe(code);
    // A retry would come within initialDelayMs (50 ms); give it ten times that to show up.
    await new Promise((done) => setTimeout(done, 500));
    expect(observed.tokenCalls()).toBe(1);
    expect(observed.client.send("ping")).toBe(false);
  });

  it("stops on 1009 after sending a frame over the size limit", async () => {
    const id = campaign();
    const observed = await member(id, "erin");
    observed.client.send("token.add", token("big", { name: "x".repeat(600 * 1024) }));
    await waitFor(() => observed.client.view().status === "stopped", 10_000, "the close");
    expect(observed.client.view().failure?.code).toBe(1009);
  });

  it("waits after 4429 and gets in once a connection is freed", async () => {
    const id = campaign();
    const token = await server.token("frank");
    const url = socketUrl(server.url, id, token, null, null);
    const sockets = await Promise.all(
      Array.from({ length: 8 }, async () => {
        const socket = new NodeWebSocket(url);
        await new Promise((done, fail) => {
          socket.once("message", done);
          socket.once("error", fail);
        });
        return socket;
      }),
    );
    const observed = open({ campaignId: id, getToken: () => token });
    await waitFor(() => observed.failures.some((failure) => failure.code === 4429), 10_000, "the 4429");
    expect(observed.client.view().status).not.toBe("open");
    sockets.pop()?.close();
    await waitFor(() => observed.client.view().status === "open", 10_000, "the retry to get in");
    for (const socket of sockets) {
      socket.close();
    }
  });

  it("reconnects after a server restart (1012) with a fresh token and a full state.sync", async () => {
    const own = await TestServer.start();
    try {
      const gmToken = await own.token("gina", "gm");
      const id = campaign();
      const observed = open({ campaignId: id, getToken: () => gmToken, url: own.url, maxDelayMs: 200 });
      await waitFor(() => observed.client.view().status === "open", 10_000, "the join");
      observed.client.send("token.add", token("kept", { x: 5 }));
      await waitFor(() => "kept" in tokensOf(observed), 5_000, "the token");
      const epoch = observed.client.view().epoch;
      await own.restart();
      await waitFor(() => observed.client.view().status === "open" && observed.client.view().epoch !== epoch, 20_000, "the rejoin");
      expect(observed.failures[0]?.code).toBe(1012);
      expect(observed.tokenCalls()).toBeGreaterThanOrEqual(2);
      expect(observed.frames.filter((frame) => frame.type === "state.sync")).toHaveLength(2);
      expect(tokensOf(observed).kept).toMatchObject({ x: 5 });
    } finally {
      await own.dispose();
    }
  });

  it("retries with backoff and a fresh token after 1013 (signing keys unavailable) and joins once keys load", async () => {
    const jwks = await JwksServer.start();
    const own = await TestServer.start({ CLERK_JWKS_URL: jwks.url, CLERK_ISSUER: jwks.issuer, VTT_JWKS_TTL: "1", VTT_ROLE_SQL: EVERYONE_PLAYS });
    try {
      const attempts: number[] = [];
      const observed = open({
        campaignId: campaign(),
        url: own.url,
        random: () => 1,
        getToken: () => {
          attempts.push(performance.now());
          return jwks.token("kim");
        },
      });
      // Three refusals while the key set is down: enough to see the delay double each time.
      await waitFor(() => observed.failures.length >= 3, 10_000, "three 1013 closes");
      jwks.serving = true;
      // state.sync opens the client; the rest of the greeting may not be read yet.
      await waitFor(
        () => observed.client.view().status === "open" && observed.frames.some((frame) => frame.type === "presence.join"),
        15_000,
        "the whole greeting once the keys are loaded",
      );
      for (const failure of observed.failures) {
        expect(failure).toEqual({ code: 1013, reason: "signing keys unavailable" });
      }
      expect(observed.statuses).not.toContain("stopped");
      expect(observed.tokenCalls()).toBe(observed.failures.length + 1);
      observed.failures.forEach((_failure, retry) => {
        const waited = (attempts[retry + 1] ?? 0) - (attempts[retry] ?? 0);
        expect(waited).toBeGreaterThanOrEqual(backoffDelay(retry, 50, 400, () => 1));
      });
      expect(observed.frames.map((frame) => frame.type)).toEqual(GREETING);
      expect(observed.client.view().state).toMatchObject({ tokens: {}, fog_zones: [] });
      expect(observed.client.view().failure).toBeNull();
    } finally {
      await own.dispose();
      await jwks.close();
    }
  });

  it("never reconnects once closed", async () => {
    const id = campaign();
    const observed = await member(id, "hana");
    await waitFor(async () => (await server.health()).clients >= 1, 5_000, "the server to count the client");
    observed.client.close();
    expect(observed.client.view().status).toBe("stopped");
    expect(observed.client.send("ping")).toBe(false);
    await waitFor(async () => (await server.health()).clients === 0, 5_000, "the server to see the client leave");
    await new Promise((done) => setTimeout(done, 500));
    expect(observed.tokenCalls()).toBe(1);
    expect((await server.health()).clients).toBe(0);
  });
});

describe("long connections", () => {
  let strict: TestServer;

  beforeAll(async () => {
    strict = await TestServer.start({ VTT_TOKEN_REFRESH_REQUIRED: "1", VTT_TOKEN_GRACE: "0" });
  });

  afterAll(async () => {
    await strict.dispose();
  });

  it("sends auth.refresh with a fresh token so that an expiring token does not end the connection", async () => {
    const [long, short] = await strict.tokens([
      { user: "ivan", ttlSeconds: 600 },
      { user: "ivan", ttlSeconds: 4 },
    ]);
    const tokens = [short];
    const observed = open({ campaignId: campaign(), url: strict.url, getToken: () => tokens.shift() ?? long, refreshIntervalMs: 300 });
    await waitFor(() => observed.client.view().status === "open", 10_000, "the join");
    await waitFor(() => Date.now() > expiry(short) + 1_000, 10_000, "the first token to expire");
    expect(observed.failures).toEqual([]);
    expect(observed.client.view().status).toBe("open");
    expect(observed.tokenCalls()).toBeGreaterThanOrEqual(2);
  });

  it("without refreshing, is closed with 4401 at expiry and reconnects with a fresh token", async () => {
    const [long, short] = await strict.tokens([
      { user: "judy", ttlSeconds: 600 },
      { user: "judy", ttlSeconds: 4 },
    ]);
    const tokens = [short];
    const observed = open({ campaignId: campaign(), url: strict.url, getToken: () => tokens.shift() ?? long, refreshIntervalMs: 0 });
    await waitFor(() => observed.client.view().status === "open", 10_000, "the join");
    await waitFor(() => observed.failures.some((failure) => failure.code === 4401), 10_000, "the expiry close");
    expect(Date.now()).toBeGreaterThanOrEqual(expiry(short));
    await waitFor(() => observed.client.view().status === "open", 10_000, "the rejoin");
    expect(observed.tokenCalls()).toBe(2);
    expect(observed.frames.filter((frame) => frame.type === "state.sync")).toHaveLength(2);
  });
});

describe("backoff", () => {
  it("doubles up to the cap with jitter in the upper half", () => {
    const low = (attempt: number) => backoffDelay(attempt, 500, 30_000, () => 0);
    const high = (attempt: number) => backoffDelay(attempt, 500, 30_000, () => 1);
    expect([0, 1, 2, 3].map(low)).toEqual([250, 500, 1_000, 2_000]);
    expect([0, 1, 2, 3].map(high)).toEqual([500, 1_000, 2_000, 4_000]);
    expect(high(20)).toBe(30_000);
    expect(low(1_000)).toBe(15_000);
  });

  it("builds the socket URL with the campaign, token and resume point", () => {
    expect(socketUrl("https://vtt.example", "c1", "tok", 7, "ep")).toBe("wss://vtt.example/ws?campaign=c1&token=tok&since=7&epoch=ep");
    expect(socketUrl("ws://127.0.0.1:8080/ws", "c 1", "t", null, null)).toBe("ws://127.0.0.1:8080/ws?campaign=c+1&token=t");
  });
});
