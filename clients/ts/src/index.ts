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
export { TableMirror, type Applied, type TableView } from "./mirror.ts";
export * from "./protocol.ts";
