"""The auth middleware: verifies every /ws handshake's token before the endpoint runs."""

from __future__ import annotations

import time

from starlette.datastructures import Headers, QueryParams
from starlette.types import ASGIApp, Receive, Scope, Send

from app.auth.tokens import Identity, Rejected, TokenVerifier
from app.errors import CloseConnection

# Where the middleware leaves its outcome in a WebSocket scope: an Identity or a Rejected.
HANDSHAKE_KEY = "vtt.handshake"
# Set (True) in a scope whose Identity another machine of the cluster relayed, signed.
RELAYED_KEY = "vtt.relayed"
# The header a relaying machine signs the identity into (app.coord.relay.RELAY_HEADER).
RELAY_HEADER = b"x-vtt-relay"
# What a relaying machine without a cluster secret sends beside the client's own token: it
# only says "do not route this on" (a client sending it is served or refused, never routed).
RELAYED_HEADER = b"x-vtt-relayed"


class AuthMiddleware:
    """Verifies the token of every /ws handshake and leaves the outcome in the scope.

    The outcome is an Identity, or a Rejected naming the close code: browsers cannot read an
    HTTP status from a failed upgrade, so the endpoint accepts and then closes with the code.
    The token comes from `?token=` or an `Authorization: Bearer` header.

    In a cluster (the lifespan put its secret under `relay_secret` in the state), a
    handshake carrying the `x-vtt-relay` header is another machine relaying its client: the
    outcome is the identity it signed, verified with the secret, and no token is read. With
    no secret configured the header means nothing.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Authenticate WebSocket scopes; pass everything else through untouched."""
        if scope["type"] == "websocket":
            state = scope["state"]
            secret: str | None = state.get("relay_secret")
            relayed = None if secret is None else _relay_value(scope)
            outcome: Identity | Rejected
            try:
                if secret is not None and relayed is not None:
                    outcome = _relayed(scope, secret, relayed)
                else:
                    verifier: TokenVerifier = state["verifier"]
                    outcome = await verifier.verify(bearer_token(scope))
            except CloseConnection as failure:
                outcome = Rejected(failure.code, failure.reason)
            scope[HANDSHAKE_KEY] = outcome
            if any(name == RELAYED_HEADER for name, _ in scope["headers"]):
                scope[RELAYED_KEY] = True
        await self.app(scope, receive, send)


def _relay_value(scope: Scope) -> str | None:
    """The relay header's value, when the request has one."""
    for name, value in scope["headers"]:
        if name == RELAY_HEADER:
            text: str = value.decode("latin-1")
            return text
    return None


def _relayed(scope: Scope, secret: str, value: str) -> Identity:
    """The identity a relaying machine signed for this campaign, or CloseConnection(4401)."""
    # Only a clustered server gets here: one machine never imports the relay at all.
    from app.coord.relay import verify_identity

    campaign_id = QueryParams(scope["query_string"]).get("campaign", "")
    identity = verify_identity(secret, value, campaign_id, time.time())
    scope[RELAYED_KEY] = True
    return identity


def handshake_outcome(scope: Scope) -> Identity | Rejected | None:
    """What the middleware decided for this scope's token (None: it never ran)."""
    outcome = scope.get(HANDSHAKE_KEY)
    return outcome if isinstance(outcome, Identity | Rejected) else None


def bearer_token(scope: Scope) -> str | None:
    """The token of a request: `?token=` first, else `Authorization: Bearer`."""
    token = QueryParams(scope["query_string"]).get("token")
    if token:
        return token
    header = Headers(scope=scope).get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None
