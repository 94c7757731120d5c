import { describe, expect, it } from "vitest";
import { TableMirror } from "../src/mirror.ts";
import type { CampaignState, ChatMessage, ServerMessage, Token } from "../src/protocol.ts";

const envelope = { campaign_id: "c1", user_id: "u1" };

function state(seq: number, tokens: Record<string, Token> = {}): CampaignState {
  return {
    campaign_id: "c1",
    grid_size: 64,
    map_width: 0,
    map_height: 0,
    darkness_level: 0,
    tokens,
    fog_zones: [],
    seq,
    epoch: "e1",
  };
}

function token(token_id: string, x = 0, y = 0): Token {
  return { token_id, name: token_id, x, y, width: 1, height: 1, visible: true };
}

function synced(seq = 3): TableMirror {
  const mirror = new TableMirror();
  mirror.apply({ ...envelope, type: "state.sync", seq, payload: state(seq, { t1: token("t1") }) });
  return mirror;
}

describe("the table mirror", () => {
  it("replaces everything on state.sync and remembers its seq and epoch", () => {
    const mirror = synced(3);
    expect(mirror.view.seq).toBe(3);
    expect(mirror.view.epoch).toBe("e1");
    mirror.apply({ ...envelope, type: "state.sync", seq: 1, payload: { ...state(1), epoch: "e2" } });
    expect(mirror.view).toMatchObject({ seq: 1, epoch: "e2" });
    expect(mirror.view.state?.tokens).toEqual({});
  });

  it("applies numbered events in order and ignores any at or below the last seq", () => {
    const mirror = synced(3);
    const move = (seq: number, x: number): ServerMessage => ({
      ...envelope,
      type: "token.move",
      seq,
      payload: { token_id: "t1", x, y: 0 },
    });
    expect(mirror.apply(move(4, 10))).toBe("applied");
    expect(mirror.apply(move(4, 99))).toBe("ignored");
    expect(mirror.apply(move(2, 99))).toBe("ignored");
    expect(mirror.apply(move(7, 20))).toBe("applied");
    expect(mirror.view.state?.tokens.t1?.x).toBe(20);
    expect(mirror.view.seq).toBe(7);
  });

  it("treats frames without a seq as replies that never move the seq", () => {
    const mirror = synced(3);
    expect(mirror.apply({ ...envelope, type: "pong", payload: {} })).toBe("ignored");
    expect(mirror.apply({ ...envelope, type: "error", payload: { code: "forbidden", message: "no" } })).toBe("ignored");
    mirror.apply({ ...envelope, type: "map.list", payload: { maps: [], active_map_id: "" } });
    mirror.apply({ ...envelope, type: "state.saved", payload: { seq: 3 } });
    expect(mirror.view).toMatchObject({ seq: 3, savedSeq: 3, maps: { maps: [] } });
  });

  it("produces a new view object on every change and keeps it otherwise", () => {
    const mirror = synced(3);
    const before = mirror.view;
    mirror.apply({ ...envelope, type: "pong", payload: {} });
    expect(mirror.view).toBe(before);
    mirror.apply({ ...envelope, type: "token.add", seq: 4, payload: token("t2") });
    expect(mirror.view).not.toBe(before);
    expect(before.state?.tokens.t2).toBeUndefined();
  });

  it("merges token updates, removes tokens and replaces fog and darkness", () => {
    const mirror = synced(3);
    mirror.apply({ ...envelope, type: "token.update", seq: 4, payload: { token_id: "t1", name: "Orc", visible: false } });
    expect(mirror.view.state?.tokens.t1).toMatchObject({ name: "Orc", visible: false, x: 0 });
    mirror.apply({ ...envelope, type: "fog.update", seq: 5, payload: { zones: [{ x: 0, y: 0, w: 64, h: 64, visible: true }] } });
    mirror.apply({ ...envelope, type: "scene.darkness", seq: 6, payload: { darkness_level: 0.5 } });
    mirror.apply({ ...envelope, type: "token.remove", seq: 7, payload: { token_id: "t1" } });
    expect(mirror.view.state).toMatchObject({ tokens: {}, darkness_level: 0.5, fog_zones: [{ w: 64 }] });
  });

  it("accepts a resume that continues it and reports one that does not", () => {
    const resume = (from_seq: number, epoch: string): ServerMessage => ({
      ...envelope,
      type: "state.resume",
      seq: 9,
      payload: { from_seq, to_seq: 9, epoch },
    });
    expect(synced(3).apply(resume(4, "e1"))).toBe("ignored");
    expect(synced(3).apply(resume(4, "e2"))).toBe("desync");
    expect(synced(3).apply(resume(6, "e1"))).toBe("desync");
    expect(new TableMirror().apply(resume(1, "e1"))).toBe("desync");
  });

  it("keeps the seq of a resume marker for the replayed events to advance", () => {
    const mirror = synced(3);
    mirror.apply({ ...envelope, type: "state.resume", seq: 5, payload: { from_seq: 4, to_seq: 5, epoch: "e1" } });
    expect(mirror.view.seq).toBe(3);
    expect(mirror.apply({ ...envelope, type: "token.move", seq: 5, payload: { token_id: "t1", x: 3, y: 3 } })).toBe("applied");
  });
});

function chat(id: string, content: string, fields: Partial<ChatMessage> = {}): ChatMessage {
  return { id, campaign_id: "c1", user_id: "u1", message_type: "text", content, gm_only: false, created_at: "2025-01-01T00:00:00Z", ...fields };
}

function said(mirror: TableMirror): string[] {
  return mirror.view.chat.messages.map((message) => String(message.content));
}

describe("the chat mirror", () => {
  it("starts from a full join's history, then appends live messages in seq order", () => {
    const mirror = synced(3);
    mirror.apply({ ...envelope, type: "chat.history", payload: { messages: [chat("a", "hello"), chat("b", "hi")] } });
    expect(mirror.apply({ ...envelope, type: "chat.message", seq: 4, payload: chat("c", "ready?") })).toBe("applied");
    expect(mirror.apply({ ...envelope, type: "chat.message", seq: 4, payload: chat("d", "replayed twice") })).toBe("ignored");
    mirror.apply({ ...envelope, type: "token.move", seq: 5, payload: { token_id: "t1", x: 1, y: 1 } });
    mirror.apply({ ...envelope, type: "chat.message", seq: 7, payload: chat("e", "after a gap") });
    expect(said(mirror)).toEqual(["hello", "hi", "ready?", "after a gap"]);
    expect(mirror.view.seq).toBe(7);
    expect(mirror.view.chat.incomplete).toBe(false);
  });

  it("keeps one copy of each message id, from the history or live", () => {
    const mirror = synced(3);
    mirror.apply({ ...envelope, type: "chat.history", payload: { messages: [chat("a", "hello"), chat("a", "hello")] } });
    const before = mirror.view.chat;
    mirror.apply({ ...envelope, type: "chat.message", seq: 4, payload: chat("a", "hello") });
    expect(mirror.view.chat).toBe(before);
    expect(said(mirror)).toEqual(["hello"]);
  });

  it("keeps its chat through a resume and a map switch's state.sync, and replaces it on the next history", () => {
    const mirror = synced(3);
    mirror.apply({ ...envelope, type: "chat.history", payload: { messages: [chat("a", "hello")] } });
    mirror.apply({ ...envelope, type: "state.resume", seq: 5, payload: { from_seq: 4, to_seq: 5, epoch: "e1" } });
    mirror.apply({ ...envelope, type: "chat.message", seq: 4, payload: chat("b", "missed") });
    mirror.apply({ ...envelope, type: "state.sync", seq: 6, payload: state(6) });
    expect(said(mirror)).toEqual(["hello", "missed"]);
    mirror.apply({ ...envelope, type: "chat.history", payload: { messages: [chat("z", "as a player now")], incomplete: true } });
    expect(said(mirror)).toEqual(["as a player now"]);
    expect(mirror.view.chat.incomplete).toBe(true);
  });

  it("ignores chat messages before the first state.sync and forgets the chat on reset", () => {
    const mirror = new TableMirror();
    expect(mirror.apply({ ...envelope, type: "chat.message", seq: 1, payload: chat("a", "too early") })).toBe("ignored");
    const joined = synced(3);
    joined.apply({ ...envelope, type: "chat.history", payload: { messages: [chat("a", "hello")] } });
    joined.reset();
    expect(joined.view.chat.messages).toEqual([]);
  });
});
