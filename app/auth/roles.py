"""Where a user's campaign role comes from: the app's tables in production, the token in dev."""

from __future__ import annotations

import logging
from typing import Protocol

from app.auth.keys import DEV_CAMPAIGN_CLAIM, DEV_ROLE_CLAIM
from app.auth.tokens import Identity
from app.errors import CloseCode, CloseConnection
from app.model import Role
from app.persistence.roles import RoleQueryBroken, RoleQueryUnavailable, RoleSource

log = logging.getLogger("vtt.auth")


class RoleResolver(Protocol):
    """Where a user's campaign role comes from."""

    async def role(self, campaign_id: str, identity: Identity) -> Role:
        """The role, or CloseConnection 4403 (not a member) / 1013 (cannot tell now)."""
        ...


class DevClaimRoles:
    """Dev auth's roles: read from the token's own claims (never used in production)."""

    async def role(self, campaign_id: str, identity: Identity) -> Role:
        """The role the dev token carries, if it is for this campaign."""
        scoped = identity.claims.get(DEV_CAMPAIGN_CLAIM)
        if scoped is not None and scoped != campaign_id:
            raise CloseConnection(CloseCode.FORBIDDEN, "not a member of this campaign")
        role = identity.claims.get(DEV_ROLE_CLAIM)
        if role == "gm":
            return "gm"
        if role == "player":
            return "player"
        raise CloseConnection(CloseCode.FORBIDDEN, "token carries no campaign role")


class SqlRoles:
    """Campaign roles from the app's own tables: VTT_ROLE_SQL with bound parameters only."""

    def __init__(self, query: RoleSource) -> None:
        self.query = query

    async def role(self, campaign_id: str, identity: Identity) -> Role:
        """'gm' or 'player' from the first column of the first row; anything else is 4403."""
        try:
            value = await self.query.first_value(campaign_id, identity.user_id)
        except RoleQueryUnavailable as failure:
            log.warning(
                "campaign role lookup failed: database unavailable", extra={"reason": failure.cause}
            )
            raise CloseConnection(CloseCode.TRY_AGAIN_LATER, "campaign roles unavailable") from None
        except RoleQueryBroken as failure:
            # Neither the client nor a retry can fix this: the deployment's VTT_ROLE_SQL is.
            log.error(
                "campaign role query failed; check VTT_ROLE_SQL", extra={"reason": failure.cause}
            )
            raise CloseConnection(
                CloseCode.INTERNAL_ERROR, "campaign roles cannot be resolved"
            ) from None
        if value == "gm":
            return "gm"
        if value == "player":
            return "player"
        raise CloseConnection(CloseCode.FORBIDDEN, "not a member of this campaign")
