// The React entry: useVTT(campaignId), one reconnecting client per mounted campaign.
import {
  createContext,
  createElement,
  useCallback,
  useContext,
  useEffect,
  useMemo,
  useRef,
  useState,
  useSyncExternalStore,
  type ReactNode,
} from "react";
import { connect, type ClientView, type ConnectOptions, type SendArgs, type VTTClient } from "./client.ts";
import { EMPTY_TABLE } from "./mirror.ts";
import type { ClientMessageType } from "./protocol.ts";

/** How to reach the server: everything connect() takes except the campaign. */
export type VTTConfig = Omit<ConnectOptions, "campaignId">;

const VTTContext = createContext<Partial<VTTConfig> | null>(null);

/** Provides the server URL and token source to every useVTT below it. */
export function VTTProvider(props: { config: Partial<VTTConfig>; children?: ReactNode }): ReactNode {
  return createElement(VTTContext.Provider, { value: props.config }, props.children);
}

/** What the hook adds to VTTClient's methods: stable functions, usable before the client exists. */
type Actions = Pick<
  VTTClient,
  "send" | "sendChat" | "pingAt" | "moveCursor" | "hideCursor" | "updateRuler" | "clearRuler" | "mayGrab" | "beginDrag"
>;

/**
 * The view and the client's methods. Before the client exists, `send` and `sendChat` wait for it
 * (answering true), the pointer methods do nothing, `mayGrab` is false and `beginDrag` null.
 */
export interface VTTHandle extends ClientView, Actions {
  /** The underlying client, or null before the first effect ran. */
  client: VTTClient | null;
}

const IDLE: ClientView = Object.freeze({ ...EMPTY_TABLE, status: "connecting", failure: null, lastError: null, userId: null });

function noSubscription(): () => void {
  return () => undefined;
}

/**
 * The live table of `campaignId`: connects after mount, reconnects as the client decides, and
 * closes for good on unmount or when `campaignId` (or the url) changes; `config` overrides the
 * provider's. Sends made before the connection exists wait for it.
 */
export function useVTT(campaignId: string, config?: Partial<VTTConfig>): VTTHandle {
  const options: Partial<VTTConfig> = { ...useContext(VTTContext), ...config };
  // Read at connection time, so a new getToken identity on each render (Clerk's) or new
  // option values do not tear the connection down.
  const latest = useRef(options);
  useEffect(() => {
    latest.current = options;
  });
  const clientRef = useRef<VTTClient | null>(null);
  const early = useRef<Array<[ClientMessageType, unknown]>>([]);
  const [client, setClient] = useState<VTTClient | null>(null);
  const { url } = options;

  useEffect(() => {
    const { getToken, ...rest } = latest.current;
    if (url === undefined || getToken === undefined) {
      throw new Error("useVTT needs a url and getToken: wrap it in <VTTProvider> or pass them");
    }
    const created = connect({ ...rest, url, campaignId, getToken: () => (latest.current.getToken ?? getToken)() });
    clientRef.current = created;
    setClient(created);
    for (const [type, payload] of early.current.splice(0)) {
      (created.send as (type: ClientMessageType, payload?: unknown) => boolean)(type, payload);
    }
    return () => {
      created.close();
      clientRef.current = null;
      early.current = [];
    };
  }, [campaignId, url]);

  const subscribe = useCallback((listener: () => void) => client?.subscribe(listener) ?? noSubscription(), [client]);
  const view = useSyncExternalStore(
    subscribe,
    () => client?.view() ?? IDLE,
    () => IDLE,
  );
  const actions = useMemo((): Actions => {
    const send = <K extends ClientMessageType>(type: K, ...payload: SendArgs<K>): boolean => {
      const current = clientRef.current;
      if (current === null) {
        early.current.push([type, payload[0]]);
        return true;
      }
      return current.send(type, ...payload);
    };
    return {
      send,
      sendChat: (message) => send("chat.send", message),
      pingAt: (x, y) => clientRef.current?.pingAt(x, y) ?? false,
      moveCursor: (x, y) => clientRef.current?.moveCursor(x, y),
      hideCursor: () => clientRef.current?.hideCursor(),
      updateRuler: (ruler) => clientRef.current?.updateRuler(ruler),
      clearRuler: () => clientRef.current?.clearRuler(),
      mayGrab: (tokenId) => clientRef.current?.mayGrab(tokenId) ?? false,
      beginDrag: (tokenId) => clientRef.current?.beginDrag(tokenId) ?? null,
    };
  }, []);

  return { ...view, ...actions, client };
}
