// Clients of a test's campaign members, each recording its frames; closed after every test.
import { connect, type ConnectOptions, type VTTClient } from "../src/client.ts";
import type { ServerFrame, ServerMessage, ServerMessageType } from "../src/protocol.ts";
import { waitFor, WebSocketImpl, type Role, type TestServer } from "./server.ts";

/** A member's client and every frame it received. */
export class Seat {
  readonly frames: ServerMessage[] = [];

  constructor(
    readonly user: string,
    readonly client: VTTClient,
  ) {
    client.onFrame((frame) => this.frames.push(frame));
  }

  /** The frames of `type` received so far. */
  all<K extends ServerMessageType>(type: K): ServerFrame<K>[] {
    return this.frames.filter((frame): frame is ServerFrame<K> => frame.type === type);
  }

  /** Wait until a frame of `type` matching `where` has arrived; the first such. */
  async frame<K extends ServerMessageType>(type: K, where: (frame: ServerFrame<K>) => boolean = () => true, what: string = type): Promise<ServerFrame<K>> {
    let found: ServerFrame<K> | undefined;
    await waitFor(
      () => {
        found = this.all(type).find(where);
        return found !== undefined;
      },
      10_000,
      `${this.user}: ${what}`,
    );
    return found as ServerFrame<K>;
  }
}

export class Members {
  private readonly clients: VTTClient[] = [];
  private campaigns = 0;

  constructor(
    private readonly server: () => TestServer,
    private readonly prefix: string,
  ) {}

  /** A campaign id of its own for one test. */
  campaign(): string {
    this.campaigns += 1;
    return `${this.prefix}-${this.campaigns}`;
  }

  /** Connect `user` and wait for the frame that ends a full join (`greeting`). */
  async join(
    campaignId: string,
    user: string,
    role: Role = "player",
    greeting: ServerMessageType = "chat.history",
    options: Partial<ConnectOptions> = {},
  ): Promise<Seat> {
    const token = await this.server().token(user, role);
    const client = connect({
      url: this.server().url,
      campaignId,
      getToken: () => token,
      WebSocket: WebSocketImpl,
      initialDelayMs: 50,
      maxDelayMs: 400,
      ...options,
    });
    this.clients.push(client);
    const seat = new Seat(user, client);
    await seat.frame(greeting, undefined, `the join (${greeting})`);
    return seat;
  }

  closeAll(): void {
    for (const client of this.clients.splice(0)) {
      client.close();
    }
  }
}
