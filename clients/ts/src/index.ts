// The framework-free entry: connect(), the state mirror and every wire type.
export {
  backoffDelay,
  connect,
  FINAL_CLOSE_CODES,
  socketUrl,
  type ClientView,
  type ConnectOptions,
  type Failure,
  type SendArgs,
  type SocketFactory,
  type SocketLike,
  type Status,
  type TokenSource,
  type VTTClient,
} from "./client.ts";
export type { ChatView } from "./chat.ts";
export type { Drag } from "./drag.ts";
export type { Locks } from "./locks.ts";
export { TableMirror, type Applied, type TableView } from "./mirror.ts";
export type { Ping, Pointers } from "./pointers.ts";
export type { Members } from "./presence.ts";
export * from "./protocol.ts";
