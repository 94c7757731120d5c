// @vitest-environment happy-dom
import { createElement, useEffect, useState } from "react";
import { createRoot, type Root } from "react-dom/client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { useVTT, VTTProvider, type VTTConfig } from "../src/react.ts";
import { TestServer, waitFor, WebSocketImpl } from "./server.ts";

let server: TestServer;
let gmToken: string;

beforeAll(async () => {
  // Updates arrive from the network, outside act(); the tests poll the DOM instead.
  (globalThis as { IS_REACT_ACT_ENVIRONMENT?: boolean }).IS_REACT_ACT_ENVIRONMENT = false;
  server = await TestServer.start();
  gmToken = await server.token("alice", "gm");
});

afterAll(async () => {
  await server.dispose();
});

/** A toolbar that sends from its own mount effect, which runs before its parent's effects. */
function Toolbar(props: { onMount: () => void }) {
  useEffect(props.onMount, []);
  return null;
}

function Table(props: { campaignId: string }) {
  const { state, status, send } = useVTT(props.campaignId);
  const names = Object.values(state?.tokens ?? {})
    .map((token) => token.name)
    .sort();
  return createElement(
    "div",
    null,
    createElement("p", { id: "status" }, status),
    createElement("p", { id: "tokens" }, names.join(",")),
    createElement(Toolbar, {
      onMount: () => {
        send("token.add", { token_id: `hello-${props.campaignId}`, name: "Hello", x: 0, y: 0, width: 1, height: 1, visible: true });
      },
    }),
  );
}

function mount(element: Parameters<Root["render"]>[0]): { container: HTMLElement; root: Root } {
  const container = document.createElement("div");
  document.body.append(container);
  const root = createRoot(container);
  root.render(element);
  return { container, root };
}

function text(container: HTMLElement, id: string): string {
  return container.querySelector(`#${id}`)?.textContent ?? "";
}

/** The chat as the hook gives it, with a message sent from a child's mount effect. */
function ChatLog(props: { campaignId: string }) {
  const { chat, sendChat } = useVTT(props.campaignId);
  return createElement(
    "div",
    null,
    createElement("p", { id: "chat" }, chat.messages.map((message) => `${message.user_id}: ${String(message.content)}`).join("|")),
    createElement(Toolbar, { onMount: () => void sendChat({ content: "hello from the mount" }) }),
  );
}

describe("useVTT", () => {
  it("connects, renders the live table and delivers sends made before the connection existed", async () => {
    let calls = 0;
    const config: VTTConfig = {
      url: server.url,
      WebSocket: WebSocketImpl,
      getToken: () => {
        calls += 1;
        return gmToken;
      },
    };
    const { container, root } = mount(createElement(VTTProvider, { config }, createElement(Table, { campaignId: "react-1" })));
    await waitFor(() => text(container, "tokens") === "Hello", 10_000, "the token sent on mount to render");
    expect(text(container, "status")).toBe("open");
    expect(calls).toBe(1);
    root.unmount();
  });

  it("closes on unmount and never reconnects afterwards", async () => {
    let calls = 0;
    const config: VTTConfig = {
      url: server.url,
      WebSocket: WebSocketImpl,
      initialDelayMs: 20,
      getToken: () => {
        calls += 1;
        return gmToken;
      },
    };
    const { container, root } = mount(createElement(VTTProvider, { config }, createElement(Table, { campaignId: "react-2" })));
    await waitFor(() => text(container, "status") === "open", 10_000, "the join");
    await waitFor(async () => (await server.health()).clients === 1, 5_000, "the server to count the client");
    root.unmount();
    await waitFor(async () => (await server.health()).clients === 0, 5_000, "the server to see the client leave");
    // The old hook reconnected 2 s after every close; a retry here would come within 20-40 ms.
    await new Promise((done) => setTimeout(done, 500));
    expect((await server.health()).clients).toBe(0);
    expect(calls).toBe(1);
  });

  it("moves to a new campaign when campaignId changes and keeps one connection on re-renders", async () => {
    let calls = 0;
    let setCampaign: (id: string) => void = () => undefined;
    let rerender: () => void = () => undefined;
    function App() {
      const [campaignId, set] = useState("react-3");
      const [, tick] = useState(0);
      setCampaign = set;
      rerender = () => tick((n) => n + 1);
      // A new getToken function on every render, as Clerk's useAuth() gives.
      const config: VTTConfig = {
        url: server.url,
        WebSocket: WebSocketImpl,
        getToken: () => {
          calls += 1;
          return gmToken;
        },
      };
      return createElement(VTTProvider, { config }, createElement(Table, { campaignId }));
    }
    const { container, root } = mount(createElement(App));
    await waitFor(() => text(container, "tokens") === "Hello", 10_000, "the first campaign");
    for (let i = 0; i < 5; i += 1) {
      rerender();
    }
    await waitFor(() => text(container, "status") === "open", 5_000, "the re-renders");
    expect(calls).toBe(1);
    setCampaign("react-4");
    await waitFor(() => calls === 2 && text(container, "status") === "open", 10_000, "the second campaign");
    await waitFor(async () => (await server.health()).clients === 1, 5_000, "the first connection to close");
    root.unmount();
  });

  it("gives the chat and sends a chat message made before the connection existed", async () => {
    const config: VTTConfig = { url: server.url, WebSocket: WebSocketImpl, getToken: () => gmToken };
    const { container, root } = mount(createElement(VTTProvider, { config }, createElement(ChatLog, { campaignId: "react-chat" })));
    await waitFor(() => text(container, "chat") === "alice: hello from the mount", 10_000, "the chat message to render");
    root.unmount();
  });
});
