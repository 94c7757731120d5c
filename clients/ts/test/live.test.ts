import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { REGRAB_AFTER_MS, TokenDrag, type DragPort } from "../src/drag.ts";
import { mayGrab } from "../src/locks.ts";
import { TableMirror } from "../src/mirror.ts";
import type { CampaignState, ServerMessage } from "../src/protocol.ts";
import { Throttle } from "../src/throttle.ts";

const envelope = { campaign_id: "c1", user_id: "alice" };

function state(seq: number, tokenIds: string[]): CampaignState {
  const tokens = Object.fromEntries(tokenIds.map((token_id) => [token_id, { token_id, name: token_id, x: 0, y: 0, width: 1, height: 1, visible: true }]));
  return { campaign_id: "c1", grid_size: 64, map_width: 0, map_height: 0, darkness_level: 0, tokens, fog_zones: [], seq, epoch: "e1" };
}

/** A mirror joined as alice (GM) with bob and carol (players) at the table and tokens t1, t2. */
function joined(): TableMirror {
  const mirror = new TableMirror();
  mirror.apply({ ...envelope, type: "state.sync", seq: 1, payload: state(1, ["t1", "t2"]) });
  mirror.apply({
    ...envelope,
    type: "presence.sync",
    payload: {
      members: [
        { user_id: "alice", role: "gm", connections: 1 },
        { user_id: "bob", role: "player", connections: 2 },
      ],
    },
  });
  return mirror;
}

function from(user_id: string, frame: Omit<ServerMessage, "campaign_id" | "user_id">): ServerMessage {
  return { ...frame, campaign_id: "c1", user_id } as ServerMessage;
}

describe("the live mirror", () => {
  it("follows presence: sync replaces, join adds with one connection, leave removes the user and their pointers", () => {
    const mirror = joined();
    expect(mirror.view.members.bob).toEqual({ user_id: "bob", role: "player", connections: 2 });
    mirror.apply(from("alice", { type: "presence.join", payload: { user_id: "carol", role: "player", username: "Carol" } }));
    expect(mirror.view.members.carol).toEqual({ user_id: "carol", role: "player", username: "Carol", connections: 1 });
    mirror.apply(from("alice", { type: "presence.join", payload: { user_id: "bob", role: "player" } }));
    expect(mirror.view.members.bob?.connections).toBe(2);
    mirror.apply(from("carol", { type: "cursor.move", payload: { x: 1, y: 2 } }));
    mirror.apply(from("carol", { type: "ruler.update", payload: { points: [{ x: 0, y: 0 }] } }));
    mirror.apply(from("carol", { type: "pointer.ping", payload: { x: 5, y: 5 } }), 1_000);
    mirror.apply(from("alice", { type: "presence.leave", payload: { user_id: "carol" } }));
    expect(Object.keys(mirror.view.members)).toEqual(["alice", "bob"]);
    expect(mirror.view).toMatchObject({ cursors: {}, rulers: {}, pings: {} });
  });

  it("keeps the latest cursor, ruler and ping per user, and cursor.hide and ruler.clear remove them", () => {
    const mirror = joined();
    mirror.apply(from("bob", { type: "cursor.move", payload: { x: 1, y: 1 } }));
    mirror.apply(from("bob", { type: "cursor.move", payload: { x: 9, y: 8 } }));
    mirror.apply(from("alice", { type: "cursor.move", payload: { x: 3, y: 3 } }));
    expect(mirror.view.cursors).toEqual({ bob: { x: 9, y: 8 }, alice: { x: 3, y: 3 } });
    mirror.apply(from("bob", { type: "cursor.hide", payload: {} }));
    expect(mirror.view.cursors).toEqual({ alice: { x: 3, y: 3 } });
    mirror.apply(from("bob", { type: "ruler.update", payload: { points: [{ x: 0, y: 0 }, { x: 64, y: 0 }] } }));
    expect(mirror.view.rulers.bob?.points).toHaveLength(2);
    mirror.apply(from("bob", { type: "ruler.clear", payload: {} }));
    expect(mirror.view.rulers).toEqual({});
    mirror.apply(from("bob", { type: "pointer.ping", payload: { x: 1, y: 1 } }), 1_000);
    mirror.apply(from("bob", { type: "pointer.ping", payload: { x: 7, y: 7 } }), 2_000);
    expect(mirror.view.pings).toEqual({ bob: { x: 7, y: 7, at: 2_000 } });
  });

  it("drops pings once their lifetime is over", () => {
    const mirror = joined();
    mirror.apply(from("bob", { type: "pointer.ping", payload: { x: 1, y: 1 } }), 1_000);
    mirror.apply(from("carol", { type: "pointer.ping", payload: { x: 2, y: 2 } }), 2_000);
    expect(mirror.expirePings(3_999, 3_000)).toBe(false);
    expect(mirror.expirePings(4_000, 3_000)).toBe(true);
    expect(Object.keys(mirror.view.pings)).toEqual(["carol"]);
    const before = mirror.view;
    expect(mirror.expirePings(4_999, 3_000)).toBe(false);
    expect(mirror.view).toBe(before);
  });

  it("tracks who holds each lock, and drops a lock when its token goes or the map changes", () => {
    const mirror = joined();
    mirror.apply(from("bob", { type: "token.grabbed", payload: { token_id: "t1", user_id: "bob" } }));
    mirror.apply(from("alice", { type: "token.grabbed", payload: { token_id: "t2", user_id: "alice" } }));
    expect(mirror.view.locks).toEqual({ t1: "bob", t2: "alice" });
    mirror.apply(from("alice", { type: "token.released", payload: { token_id: "t2" } }));
    expect(mirror.view.locks).toEqual({ t1: "bob" });
    mirror.apply({ ...envelope, type: "token.remove", seq: 2, payload: { token_id: "t1" } });
    expect(mirror.view.locks).toEqual({});
    mirror.apply(from("bob", { type: "token.grabbed", payload: { token_id: "t2", user_id: "bob" } }));
    mirror.apply({ ...envelope, type: "state.sync", seq: 3, payload: state(3, ["t9"]) });
    expect(mirror.view.locks).toEqual({});
  });

  it("starts every connection's locks and pointers afresh at its presence.sync", () => {
    const mirror = joined();
    mirror.apply(from("bob", { type: "token.grabbed", payload: { token_id: "t1", user_id: "bob" } }));
    mirror.apply(from("bob", { type: "cursor.move", payload: { x: 1, y: 1 } }));
    mirror.apply({ ...envelope, type: "presence.sync", payload: { members: [{ user_id: "alice", role: "gm", connections: 1 }] } });
    expect(mirror.view).toMatchObject({ locks: {}, cursors: {}, members: { alice: { role: "gm" } } });
  });

  it("says who may take a lock: anyone a free one, the holder theirs, a GM a player's", () => {
    const { members } = joined().view;
    const locks = { t1: "bob", t2: "alice" };
    expect(mayGrab(locks, members, "bob", "t1")).toBe(true);
    expect(mayGrab(locks, members, "bob", "t2")).toBe(false);
    expect(mayGrab(locks, members, "bob", "t3")).toBe(true);
    expect(mayGrab(locks, members, "alice", "t1")).toBe(true);
    expect(mayGrab(locks, { ...members, dana: { user_id: "dana", role: "gm", connections: 1 } }, "dana", "t2")).toBe(false);
  });
});

describe("throttling and drags", () => {
  beforeEach(() => {
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout", "setInterval", "clearInterval", "performance", "Date"] });
  });

  afterEach(() => {
    vi.useRealTimers();
  });

  it("sends the first value at once, then the latest one per interval, and the last one always", () => {
    const sent: number[] = [];
    const throttle = new Throttle<number>(50, (value) => sent.push(value));
    throttle.push(1);
    throttle.push(2);
    throttle.push(3);
    expect(sent).toEqual([1]);
    vi.advanceTimersByTime(50);
    expect(sent).toEqual([1, 3]);
    throttle.push(4);
    vi.advanceTimersByTime(49);
    expect(sent).toEqual([1, 3]);
    vi.advanceTimersByTime(1);
    expect(sent).toEqual([1, 3, 4]);
    vi.advanceTimersByTime(100);
    throttle.push(5);
    expect(sent).toEqual([1, 3, 4, 5]);
    throttle.push(6);
    throttle.cancel();
    vi.advanceTimersByTime(100);
    expect(sent).toEqual([1, 3, 4, 5]);
  });

  function recorder(): { port: DragPort; sent: string[]; done: TokenDrag[] } {
    const sent: string[] = [];
    const done: TokenDrag[] = [];
    return {
      sent,
      done,
      port: {
        send: (type, tokenId) => sent.push(`${type} ${tokenId}`),
        move: (tokenId, x, y) => sent.push(`token.move ${tokenId} ${x},${y}`),
        done: (drag) => done.push(drag),
      },
    };
  }

  it("grabs, moves at 20 Hz with the drop always landing, then releases", () => {
    const { port, sent, done } = recorder();
    const drag = new TokenDrag("t1", port);
    for (let x = 1; x <= 10; x += 1) {
      drag.move(x, 0);
    }
    vi.advanceTimersByTime(50);
    drag.move(11, 0);
    drag.end(64, 0);
    expect(sent).toEqual(["token.grab t1", "token.move t1 1,0", "token.move t1 10,0", "token.move t1 64,0", "token.release t1"]);
    expect(drag.active).toBe(false);
    expect(done).toEqual([drag]);
    drag.end(1, 1);
    expect(drag.move(2, 2)).toBe(false);
    vi.advanceTimersByTime(10_000);
    expect(sent).toHaveLength(5);
  });

  it("grabs again while held still, so that the lock outlives the server's idle timeout", () => {
    const { port, sent } = recorder();
    const drag = new TokenDrag("t1", port);
    drag.move(1, 1);
    vi.advanceTimersByTime(REGRAB_AFTER_MS * 3);
    expect(sent.filter((frame) => frame === "token.grab t1").length).toBeGreaterThanOrEqual(3);
    drag.cancel();
    expect(sent.at(-1)).toBe("token.release t1");
  });

  it("stops without a release when another user takes the lock or the token goes", () => {
    const { port, sent } = recorder();
    const taken = new TokenDrag("t1", port);
    taken.observe({ t1: {} }, { t1: "bob" }, "bob");
    expect(taken.active).toBe(true);
    taken.move(5, 5);
    taken.move(6, 6);
    taken.observe({ t1: {} }, { t1: "alice" }, "bob");
    expect(taken.active).toBe(false);
    vi.advanceTimersByTime(100);
    expect(sent).toEqual(["token.grab t1", "token.move t1 5,5"]);
    const gone = new TokenDrag("t2", port);
    gone.observe({}, {}, "bob");
    expect(gone.active).toBe(false);
  });
});
