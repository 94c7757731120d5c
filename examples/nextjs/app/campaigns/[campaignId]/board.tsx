// The table as useVTT keeps it: map, grid, tokens (dragged, dropped on the grid), fog, who is
// at the table and the chat. Token x, y are map pixels and width, height grid squares; one map
// pixel is one CSS pixel. useVTT is called once here (each call is a connection).
import type { CampaignState, Drag as TokenDrag } from "@wtsfs/vtt-client";
import { useVTT } from "@wtsfs/vtt-client/react";
import { useState, type PointerEvent } from "react";
import { Chat } from "./chat";
import { AtTheTable } from "./members";

const DEFAULT_GRID = 64;
const DEFAULT_COLUMNS = 20;
const DEFAULT_ROWS = 14;

/** A token being dragged: its lock and moves, where the pointer holds it, where it is drawn. */
interface Drag {
  handle: TokenDrag;
  tokenId: string;
  pointerId: number;
  dx: number;
  dy: number;
  x: number;
  y: number;
}

function boardSize(state: CampaignState): { grid: number; width: number; height: number } {
  const grid = state.grid_size > 0 ? state.grid_size : DEFAULT_GRID;
  return {
    grid,
    width: state.map_width > 0 ? state.map_width : DEFAULT_COLUMNS * grid,
    height: state.map_height > 0 ? state.map_height : DEFAULT_ROWS * grid,
  };
}

function boardPoint(event: PointerEvent<SVGSVGElement>): { x: number; y: number } {
  const box = event.currentTarget.getBoundingClientRect();
  return { x: event.clientX - box.left, y: event.clientY - box.top };
}

function snap(value: number, grid: number): number {
  return Math.round(value / grid) * grid;
}

export function Board({ campaignId, isGm }: { campaignId: string; isGm: boolean }) {
  const { state, status, failure, lastError, send, sendChat, beginDrag, chat, members, locks, userId } = useVTT(campaignId);
  const [drag, setDrag] = useState<Drag | null>(null);
  const heading = (
    <header style={{ padding: 8 }}>
      {campaignId} as {isGm ? "GM" : "player"}: <output data-status={status}>{status}</output>
      {failure !== null && status !== "open" && ` (${failure.code} ${failure.reason})`}
      {lastError !== null && ` error: ${lastError.code} ${lastError.message}`}
    </header>
  );
  if (state === null) {
    return <main>{heading}</main>;
  }
  const { grid, width, height } = boardSize(state);
  const byId = state.tokens;
  const tokens = Object.values(byId);

  function addToken() {
    const name = `Token ${tokens.length + 1}`;
    send("token.add", { token_id: crypto.randomUUID(), name, x: grid, y: grid, width: 1, height: 1, visible: true });
  }

  function grab(event: PointerEvent<SVGSVGElement>) {
    const held = (event.target as Element).closest<SVGGElement>("[data-token-id]")?.dataset.tokenId;
    const token = held === undefined ? undefined : byId[held];
    if (token === undefined) {
      return;
    }
    // token.grab, the moves (at most 20 a second), token.release; null while another user drags it.
    const handle = beginDrag(token.token_id);
    if (handle === null) {
      return;
    }
    const at = boardPoint(event);
    event.currentTarget.setPointerCapture(event.pointerId);
    const { token_id: tokenId, x, y } = token;
    setDrag({ handle, tokenId, pointerId: event.pointerId, dx: at.x - x, dy: at.y - y, x, y });
  }

  function pull(event: PointerEvent<SVGSVGElement>) {
    if (drag?.pointerId === event.pointerId) {
      const at = boardPoint(event);
      const x = at.x - drag.dx;
      const y = at.y - drag.dy;
      drag.handle.move(Math.round(x), Math.round(y));
      setDrag({ ...drag, x, y });
    }
  }

  function drop(event: PointerEvent<SVGSVGElement>) {
    if (drag?.pointerId === event.pointerId) {
      drag.handle.end(snap(drag.x, grid), snap(drag.y, grid));
      setDrag(null);
    }
  }

  return (
    <main>
      {heading}
      {isGm && (
        <button type="button" onClick={addToken} style={{ margin: 8 }}>
          Add token
        </button>
      )}
      <div style={{ display: "flex", gap: 12, alignItems: "flex-start" }}>
        <svg
          width={width}
          height={height}
          viewBox={`0 0 ${width} ${height}`}
          style={{ display: "block", flex: "none", background: "#eee", touchAction: "none" }}
          onPointerDown={grab}
          onPointerMove={pull}
          onPointerUp={drop}
          onPointerCancel={drop}
        >
          {state.map_url !== undefined && (
            <image className="map" href={state.map_url} width={width} height={height} preserveAspectRatio="none" />
          )}
          <g stroke="#0002">
            {Array.from({ length: Math.floor(width / grid) + 1 }, (_, i) => (
              <line key={`x${i}`} x1={i * grid} y1={0} x2={i * grid} y2={height} />
            ))}
            {Array.from({ length: Math.floor(height / grid) + 1 }, (_, i) => (
              <line key={`y${i}`} x1={0} y1={i * grid} x2={width} y2={i * grid} />
            ))}
          </g>
          {tokens.map((token) => {
            const size = Math.max(token.width, token.height) * grid;
            // Drawn where this user drags it, unless the lock went to someone else meanwhile.
            const held = drag?.tokenId === token.token_id && drag.handle.active ? drag : token;
            const holder = locks[token.token_id];
            return (
              <g
                key={token.token_id}
                className="token"
                data-token-id={token.token_id}
                data-x={token.x}
                data-y={token.y}
                data-locked-by={holder}
                transform={`translate(${held.x} ${held.y})`}
                opacity={token.visible ? 1 : 0.5}
              >
                <circle
                  cx={size / 2}
                  cy={size / 2}
                  r={size / 2 - 3}
                  fill="#4f81bd"
                  stroke={holder !== undefined && holder !== userId ? "#c0504d" : "none"}
                  strokeWidth={4}
                />
                <text x={size / 2} y={size + 14} textAnchor="middle" fontSize={12}>
                  {token.name}
                </text>
              </g>
            );
          })}
          {state.fog_zones
            .filter((zone) => zone.visible)
            .map((zone, i) => (
              <rect
                key={i}
                className="fog"
                x={zone.x}
                y={zone.y}
                width={zone.w}
                height={zone.h}
                fill="#000"
                opacity={isGm ? 0.4 : 1}
                pointerEvents="none"
              />
            ))}
        </svg>
        <aside style={{ width: 320, flex: "none" }}>
          <AtTheTable members={members} userId={userId} />
          <Chat messages={chat.messages} send={sendChat} />
        </aside>
      </div>
    </main>
  );
}
