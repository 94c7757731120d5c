"""The auth middleware: verifies every /ws handshake's token before the endpoint runs."""

from __future__ import annotations

from starlette.datastructures import Headers, QueryParams
from starlette.types import ASGIApp, Receive, Scope, Send

from app.auth.tokens import Identity, Rejected, TokenVerifier
from app.errors import CloseConnection

# Where the middleware leaves its outcome in a WebSocket scope: an Identity or a Rejected.
HANDSHAKE_KEY = "vtt.handshake"


class AuthMiddleware:
    """Verifies the token of every /ws handshake and leaves the outcome in the scope.

    The outcome is an Identity, or a Rejected naming the close code: browsers cannot read an
    HTTP status from a failed upgrade, so the endpoint accepts and then closes with the code.
    The token comes from `?token=` or an `Authorization: Bearer` header.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Authenticate WebSocket scopes; pass everything else through untouched."""
        if scope["type"] == "websocket":
            verifier: TokenVerifier = scope["state"]["verifier"]
            outcome: Identity | Rejected
            try:
                outcome = await verifier.verify(bearer_token(scope))
            except CloseConnection as failure:
                outcome = Rejected(failure.code, failure.reason)
            scope[HANDSHAKE_KEY] = outcome
        await self.app(scope, receive, send)


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
