"""The seams between the table and the cluster, and what one machine without Redis runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from app.errors import CloseCode, CloseConnection


@dataclass(frozen=True, slots=True)
class Owner:
    """A campaign's live owner, another machine: its node id and WebSocket base URL."""

    node: str
    url: str


@dataclass(frozen=True, slots=True)
class Claim:
    """This machine's claim on a campaign: the fence its writes carry, and the claim's value.

    `token` is what the claim key holds while the claim stands (the op log's appends check
    it); `epoch` the campaign's epoch as the previous owners left it (None: unknown, so a
    new one is minted).
    """

    fence: int
    token: str = ""
    epoch: str | None = None


class Owned(Exception):
    """Another machine owns the campaign: reach it there."""

    def __init__(self, owner: Owner) -> None:
        super().__init__(owner.node)
        self.owner = owner


def unavailable(reason: str = "cluster coordination unavailable; retry") -> CloseConnection:
    """The refusal of a join that cannot be claimed now (Redis away, lease not held)."""
    return CloseConnection(CloseCode.TRY_AGAIN_LATER, reason)


class LeaseListener(Protocol):
    """Told when this machine's lease is gone, or about to be: it must stop writing now."""

    async def lease_lost(self) -> None:
        """Every session stops taking edits, is flushed under its fence and dropped."""
        ...


class Coordinator(Protocol):
    """Who owns which campaign. One per process, built by `Services.build`."""

    @property
    def clustered(self) -> bool:
        """False on one machine without Redis: this machine owns everything."""
        ...

    @property
    def node_id(self) -> str:
        """This machine's id."""
        ...

    def writable(self) -> bool:
        """Whether this machine may write now: its lease held, its local deadline ahead."""
        ...

    async def start(self, listener: LeaseListener) -> None:
        """Take the node lease (waiting for a predecessor's to lapse) and keep renewing it."""
        ...

    async def close(self) -> None:
        """Stop renewing and give the lease up, so other machines may claim at once."""
        ...

    async def owner(self, campaign_id: str) -> Owner | None:
        """The campaign's live owner when it is another machine; None: here or nobody."""
        ...

    async def claim(self, campaign_id: str, floor: int = 0) -> Claim:
        """Claim the campaign with a fence above `floor` (and above every earlier claim's).

        Owned when another machine's claim is alive; CloseConnection 1013 when Redis cannot
        be reached or this machine's lease is not held.
        """
        ...

    async def release(self, campaign_id: str, claim: Claim) -> None:
        """Give the claim up, unless another machine's has replaced it (never raises)."""
        ...

    async def problem(self) -> str | None:
        """Why this machine cannot take campaigns now (for /ready); None when it can."""
        ...


class LocalCoordinator:
    """One machine without Redis: it owns every campaign, at fence 0, and always may write."""

    clustered = False
    node_id = "local"

    def writable(self) -> bool:
        """Always."""
        return True

    async def start(self, listener: LeaseListener) -> None:
        """Nothing to take."""

    async def close(self) -> None:
        """Nothing to give up."""

    async def owner(self, campaign_id: str) -> Owner | None:
        """Nobody else."""
        return None

    async def claim(self, campaign_id: str, floor: int = 0) -> Claim:
        """Fence 0, which every row accepts."""
        return Claim(0)

    async def release(self, campaign_id: str, claim: Claim) -> None:
        """Nothing to give up."""

    async def problem(self) -> str | None:
        """None."""
        return None
