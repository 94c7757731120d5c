import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { ChatMessage } from "../src/protocol.ts";
import { Members, type Seat } from "./members.ts";
import { TcpProxy, TestServer, waitFor } from "./server.ts";

let server: TestServer;
const members = new Members(() => server, "chat-test");

beforeAll(async () => {
  server = await TestServer.start();
  await server.tokens([{ user: "alice", role: "gm" }, { user: "bob" }, { user: "carol" }]);
});

afterAll(async () => {
  await server.dispose();
});

afterEach(() => {
  members.closeAll();
});

function said(seat: Seat): unknown[] {
  return seat.client.view().chat.messages.map((message) => message.content);
}

/** Wait until `seat`'s chat holds a message saying `content`; that message. */
async function sees(seat: Seat, content: string): Promise<ChatMessage> {
  await waitFor(() => said(seat).includes(content), 5_000, `${seat.user} to see "${content}"`);
  return seat.client.view().chat.messages.find((message) => message.content === content) as ChatMessage;
}

describe("chat", () => {
  it("delivers messages and server-rolled dice to every member in order, and a later join gets them as history", async () => {
    const id = members.campaign();
    const gm = await members.join(id, "alice", "gm");
    const player = await members.join(id, "bob");
    expect(player.client.sendChat({ content: "hello" })).toBe(true);
    player.client.sendChat({ content: "/roll 2d20kh1+5 # attack", message_type: "roll", roll: "/roll 2d20kh1+5 # attack" });
    // One sender's messages keep their order; the GM answers what it saw.
    const roll = (await sees(gm, "/roll 2d20kh1+5 # attack")).roll;
    gm.client.sendChat({ content: "welcome" });
    await sees(player, "welcome");
    await sees(gm, "welcome");
    expect(said(gm)).toEqual(["hello", "/roll 2d20kh1+5 # attack", "welcome"]);
    expect(said(player)).toEqual(said(gm));
    expect(roll).toMatchObject({ expression: "2d20kh1+5", label: "attack" });
    const [dice, bonus] = roll?.terms ?? [];
    expect(dice?.dice?.filter((die) => die.kept)).toHaveLength(1);
    expect(bonus).toMatchObject({ constant: 5, value: 5 });
    expect(roll?.total).toBe((dice?.value ?? 0) + 5);
    expect(player.client.view().chat.messages[0]).toMatchObject({ user_id: "bob", gm_only: false, message_type: "" });

    const late = await members.join(id, "carol");
    expect(late.client.view().chat.messages).toEqual(gm.client.view().chat.messages);
    expect(late.client.view().chat.incomplete).toBe(false);
  });

  it("shows a player's GM-only roll to the GM and the sender only, and a whisper to the two alone", async () => {
    const id = members.campaign();
    const gm = await members.join(id, "alice", "gm");
    const bob = await members.join(id, "bob");
    const carol = await members.join(id, "carol");
    bob.client.sendChat({ content: "secret roll", roll: "1d20", gm_only: true });
    bob.client.sendChat({ content: "psst", recipient_id: "carol" });
    bob.client.sendChat({ content: "for all" });
    for (const seat of [gm, bob, carol]) {
      await sees(seat, "for all");
    }
    expect(said(gm)).toEqual(["secret roll", "for all"]);
    expect(said(bob)).toEqual(["secret roll", "psst", "for all"]);
    expect(said(carol)).toEqual(["psst", "for all"]);
    expect((await sees(gm, "secret roll")).roll?.total).toBe((await sees(bob, "secret roll")).roll?.total);
    expect(JSON.stringify(carol.frames)).not.toContain("secret roll");
    expect(JSON.stringify(gm.frames)).not.toContain("psst");

    const lateGm = await members.join(id, "alice", "gm");
    const lateCarol = await members.join(id, "carol");
    expect(said(lateGm)).toEqual(said(gm));
    expect(said(lateCarol)).toEqual(said(carol));
  });

  it("reports a bad roll as an error and sends nothing", async () => {
    const id = members.campaign();
    const player = await members.join(id, "bob");
    player.client.sendChat({ content: "oops", roll: "2d0" });
    await waitFor(() => player.client.view().lastError !== null, 5_000, "the error reply");
    expect(player.client.view().lastError?.code).toBe("invalid_payload");
    player.client.sendChat({ content: "after" });
    await sees(player, "after");
    expect(said(player)).toEqual(["after"]);
  });

  it("keeps the chat through a resume and appends the messages it missed, each once", async () => {
    const id = members.campaign();
    const proxy = await TcpProxy.start(server.port);
    try {
      const gm = await members.join(id, "alice", "gm");
      gm.client.sendChat({ content: "before" });
      const player = await members.join(id, "bob", "player", "chat.history", { url: proxy.url, initialDelayMs: 1_500, maxDelayMs: 1_500 });
      await sees(player, "before");
      proxy.cut();
      await waitFor(() => player.client.view().status === "waiting", 5_000, "the drop to be noticed");
      gm.client.sendChat({ content: "while away" });
      gm.client.sendChat({ content: "GMs only, while away", gm_only: true });
      gm.client.sendChat({ content: "still away" });
      await sees(gm, "still away");
      await sees(player, "still away");
      expect(player.all("state.resume")).toHaveLength(1);
      expect(player.all("chat.history")).toHaveLength(1);
      expect(said(player)).toEqual(["before", "while away", "still away"]);
    } finally {
      await proxy.close();
    }
  });
});
