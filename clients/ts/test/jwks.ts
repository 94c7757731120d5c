// A stand-in for Clerk: a local HTTP endpoint serving one RSA key as a JWKS, switched on and off
// by the test (503 while off), and RS256 session tokens signed with that key.
import { generateKeyPairSync, sign, type KeyObject } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

const JWKS_PATH = "/.well-known/jwks.json";
const KID = "test-key";

function segment(value: object): string {
  return Buffer.from(JSON.stringify(value)).toString("base64url");
}

export class JwksServer {
  /** Whether the endpoint answers with the key set; while false it answers 503. */
  serving = false;
  private readonly server: Server = createServer((request, response) => this.answer(request, response));

  private constructor(
    private readonly privateKey: KeyObject,
    private readonly publicKey: object,
  ) {}

  /** Listen on a free port of 127.0.0.1, not serving yet. */
  static async start(): Promise<JwksServer> {
    const { privateKey, publicKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
    const jwks = new JwksServer(privateKey, { ...publicKey.export({ format: "jwk" }), kid: KID, use: "sig", alg: "RS256" });
    await new Promise<void>((done) => jwks.server.listen(0, "127.0.0.1", done));
    return jwks;
  }

  private answer(request: IncomingMessage, response: ServerResponse): void {
    if (request.url !== JWKS_PATH) {
      response.writeHead(404).end();
    } else if (!this.serving) {
      response.writeHead(503).end();
    } else {
      response.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ keys: [this.publicKey] }));
    }
  }

  /** The origin, which the server takes as the issuer of a JWKS URL ending in JWKS_PATH. */
  get issuer(): string {
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  get url(): string {
    return `${this.issuer}${JWKS_PATH}`;
  }

  /** A Clerk-shaped session token for `user`, valid for an hour, signed with the served key. */
  token(user: string): string {
    const now = Math.floor(Date.now() / 1_000);
    const input = `${segment({ alg: "RS256", typ: "JWT", kid: KID })}.${segment({ sub: user, iss: this.issuer, iat: now, nbf: now, exp: now + 3600 })}`;
    return `${input}.${sign("sha256", Buffer.from(input), this.privateKey).toString("base64url")}`;
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise((done) => this.server.close(done));
  }
}
