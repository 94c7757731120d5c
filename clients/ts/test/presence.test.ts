import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { Token } from "../src/protocol.ts";
import { Members, type Seat } from "./members.ts";
import { TcpProxy, TestServer, waitFor } from "./server.ts";

let server: TestServer;
const members = new Members(() => server, "presence-test");

beforeAll(async () => {
  // A short grace on leaving, so that a departure shows within the test.
  server = await TestServer.start({ VTT_PRESENCE_GRACE: "0.3" });
  await server.tokens([{ user: "alice", role: "gm" }, { user: "bob" }, { user: "carol" }]);
});

afterAll(async () => {
  await server.dispose();
});

afterEach(() => {
  members.closeAll();
});

/** Joined once presence.sync arrived (after the state, the map list and the chat history). */
function join(campaignId: string, user: string, role: "gm" | "player" = "player"): Promise<Seat> {
  return members.join(campaignId, user, role, "presence.sync");
}

function token(token_id: string, fields: Partial<Token> = {}): Token {
  return { token_id, name: token_id, x: 0, y: 0, width: 1, height: 1, visible: true, ...fields };
}

async function hasToken(seat: Seat, tokenId: string): Promise<void> {
  await waitFor(() => seat.client.view().state?.tokens[tokenId] !== undefined, 5_000, `${seat.user} to see ${tokenId}`);
}

function placeOf(seat: Seat, tokenId: string): [number, number] | undefined {
  const found = seat.client.view().state?.tokens[tokenId];
  return found === undefined ? undefined : [found.x, found.y];
}

describe("presence", () => {
  it("lists the members with their roles and connections, and follows a user's arrival and departure", async () => {
    const id = members.campaign();
    const gm = await join(id, "alice", "gm");
    expect(gm.client.view().userId).toBe("alice");
    expect(Object.keys(gm.client.view().members)).toEqual(["alice"]);
    expect(gm.client.view().members.alice).toMatchObject({ user_id: "alice", role: "gm", connections: 1 });
    const player = await join(id, "bob");
    await waitFor(() => "bob" in gm.client.view().members, 5_000, "the GM to see bob arrive");
    expect(gm.client.view().members.bob).toMatchObject({ role: "player", connections: 1 });
    expect(Object.keys(player.client.view().members).sort()).toEqual(["alice", "bob"]);
    const secondTab = await join(id, "bob");
    expect(secondTab.client.view().members.bob?.connections).toBe(2);
    // Everyone hears of a first connection, the joiner included.
    expect(gm.all("presence.join").map((frame) => frame.payload.user_id)).toEqual(["alice", "bob"]);

    player.client.moveCursor(10, 10);
    await waitFor(() => "bob" in gm.client.view().cursors, 5_000, "bob's cursor");
    player.client.close();
    secondTab.client.close();
    await waitFor(() => !("bob" in gm.client.view().members), 5_000, "bob to leave");
    expect(gm.client.view().cursors).toEqual({});
  });
});

describe("cursors, rulers and pings", () => {
  it("shows the others this user's latest cursor at most 20 times a second, and hides it", async () => {
    const id = members.campaign();
    const gm = await join(id, "alice", "gm");
    const player = await join(id, "bob");
    const started = performance.now();
    for (let i = 1; i <= 200; i += 1) {
      gm.client.moveCursor(i, 2 * i);
    }
    await waitFor(() => player.client.view().cursors.alice?.x === 200, 5_000, "the last cursor position");
    const elapsed = performance.now() - started;
    expect(player.client.view().cursors.alice).toEqual({ x: 200, y: 400 });
    // The first move at once, then at most one per 50 ms slot.
    expect(player.all("cursor.move").length).toBeLessThanOrEqual(2 + elapsed / 50);
    expect(gm.client.view().cursors).toEqual({});
    gm.client.hideCursor();
    await waitFor(() => !("alice" in player.client.view().cursors), 5_000, "the cursor to go");
  });

  it("shows the others this user's ruler and clears it", async () => {
    const id = members.campaign();
    const gm = await join(id, "alice", "gm");
    const player = await join(id, "bob");
    const points = [
      { x: 0, y: 0 },
      { x: 128, y: 64 },
    ];
    player.client.updateRuler({ points });
    await waitFor(() => "bob" in gm.client.view().rulers, 5_000, "the ruler");
    expect(gm.client.view().rulers.bob?.points).toEqual(points);
    player.client.clearRuler();
    await waitFor(() => !("bob" in gm.client.view().rulers), 5_000, "the ruler to clear");
  });

  it("shows a ping to the others for the ping lifetime, and never queues one before the join", async () => {
    const id = members.campaign();
    const gm = await join(id, "alice", "gm");
    const player = await members.join(id, "bob", "player", "presence.sync", { pingLifetimeMs: 400 });
    expect(gm.client.pingAt(320, 192)).toBe(true);
    await waitFor(() => "alice" in player.client.view().pings, 5_000, "the ping");
    expect(player.client.view().pings.alice).toMatchObject({ x: 320, y: 192 });
    await waitFor(() => !("alice" in player.client.view().pings), 5_000, "the ping to fade");
    expect(gm.client.view().pings).toEqual({});
    gm.client.close();
    expect(gm.client.pingAt(1, 1)).toBe(false);
  });
});

describe("drag locks", () => {
  it("grabs around a drag: the other player sees the lock, cannot drag, and can once it is released", async () => {
    const id = members.campaign();
    const gm = await join(id, "alice", "gm");
    const bob = await join(id, "bob");
    const carol = await join(id, "carol");
    gm.client.send("token.add", token("t1"));
    await hasToken(bob, "t1");
    await hasToken(carol, "t1");

    const drag = bob.client.beginDrag("t1");
    expect(drag).not.toBeNull();
    await waitFor(() => carol.client.view().locks.t1 === "bob", 5_000, "carol to see bob's lock");
    expect(bob.client.view().locks).toEqual({ t1: "bob" });
    expect(carol.client.mayGrab("t1")).toBe(false);
    expect(carol.client.beginDrag("t1")).toBeNull();
    expect(gm.client.mayGrab("t1")).toBe(true);
    for (let i = 1; i <= 100; i += 1) {
      drag?.move(i, i);
    }
    drag?.end(192, 128);
    expect(drag?.active).toBe(false);
    expect(drag?.move(1, 1)).toBe(false);
    await waitFor(() => !("t1" in carol.client.view().locks), 5_000, "the release");
    expect(placeOf(carol, "t1")).toEqual([192, 128]);
    expect(placeOf(gm, "t1")).toEqual([192, 128]);
    // Throttled: far fewer moves than pointer events reached the server.
    expect(carol.all("token.move").length).toBeLessThan(20);
    expect(bob.all("error")).toEqual([]);

    const next = carol.client.beginDrag("t1");
    next?.end(64, 64);
    await waitFor(() => placeOf(bob, "t1")?.[0] === 64, 5_000, "carol's drag to land");
  });

  it("lets a GM take a player's lock, which ends the player's drag", async () => {
    const id = members.campaign();
    const gm = await join(id, "alice", "gm");
    const bob = await join(id, "bob");
    gm.client.send("token.add", token("t2"));
    await hasToken(bob, "t2");
    const playerDrag = bob.client.beginDrag("t2");
    await waitFor(() => gm.client.view().locks.t2 === "bob", 5_000, "the GM to see bob's lock");
    const gmDrag = gm.client.beginDrag("t2");
    expect(gmDrag).not.toBeNull();
    await waitFor(() => playerDrag?.active === false, 5_000, "bob's drag to end");
    expect(bob.client.view().locks.t2).toBe("alice");
    expect(playerDrag?.move(999, 999)).toBe(false);
    gmDrag?.end(320, 320);
    await waitFor(() => placeOf(bob, "t2")?.[0] === 320, 5_000, "the GM's drop");
    expect(bob.all("error")).toEqual([]);
  });

  it("keeps the lock of a drag held still past the server's 5 s idle timeout", async () => {
    const id = members.campaign();
    const gm = await join(id, "alice", "gm");
    const bob = await join(id, "bob");
    gm.client.send("token.add", token("t3"));
    await hasToken(bob, "t3");
    const drag = bob.client.beginDrag("t3");
    drag?.move(64, 0);
    await waitFor(() => gm.client.view().locks.t3 === "bob", 5_000, "the lock");
    const since = Date.now();
    await waitFor(() => Date.now() - since > 6_500, 8_000, "the idle timeout to pass");
    expect(gm.all("token.released")).toEqual([]);
    expect(gm.client.view().locks.t3).toBe("bob");
    drag?.end(128, 0);
    await waitFor(() => !("t3" in gm.client.view().locks), 5_000, "the release");
    expect(placeOf(gm, "t3")).toEqual([128, 0]);
  });

  it("ends a drag whose token is removed", async () => {
    const id = members.campaign();
    const gm = await join(id, "alice", "gm");
    const bob = await join(id, "bob");
    gm.client.send("token.add", token("t4"));
    await hasToken(bob, "t4");
    const drag = bob.client.beginDrag("t4");
    await waitFor(() => gm.client.view().locks.t4 === "bob", 5_000, "the lock");
    // Only the holder may remove a locked token.
    bob.client.send("token.remove", { token_id: "t4" });
    await waitFor(() => drag?.active === false, 5_000, "the drag to end");
    expect(bob.client.view().locks).toEqual({});
    expect(bob.client.beginDrag("t4")).toBeNull();
  });

  it("grabs the lock again after a reconnect in the middle of a drag", async () => {
    const id = members.campaign();
    const proxy = await TcpProxy.start(server.port);
    try {
      const gm = await join(id, "alice", "gm");
      const bob = await members.join(id, "bob", "player", "presence.sync", { url: proxy.url });
      gm.client.send("token.add", token("t5"));
      await hasToken(bob, "t5");
      const drag = bob.client.beginDrag("t5");
      await waitFor(() => gm.client.view().locks.t5 === "bob", 5_000, "the lock");
      proxy.cut();
      // The server ends a connection's locks when it goes.
      await waitFor(() => !("t5" in gm.client.view().locks), 5_000, "the lock to end with the connection");
      await waitFor(() => gm.client.view().locks.t5 === "bob", 10_000, "bob's drag to grab it again");
      expect(drag?.active).toBe(true);
      drag?.end(256, 64);
      await waitFor(() => placeOf(gm, "t5")?.[0] === 256, 5_000, "the drop");
      await waitFor(() => !("t5" in gm.client.view().locks), 5_000, "the release");
    } finally {
      await proxy.close();
    }
  });
});
