"""Campaign id -> live Session: single-flight loads, the flush loop, idle eviction, shutdown.

A campaign's recent chat is loaded with its state, in the same single-flight load, so a join
never asks the database for history. A chat load that fails does not refuse the join (the
state loaded): the log says `incomplete` until a later join's retry (at most one per
CHAT_RETRY_SECONDS) loads it. The manager is also the ChatPublisher of POST
/internal/broadcast: a message for a campaign live here is published through its session.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, overload

import msgspec

from app.auth import RoleResolver
from app.chat import CampaignChat
from app.config import Settings
from app.coord.base import Claim, Coordinator, LocalCoordinator
from app.coord.forward import forward_chat, forward_secret
from app.errors import CloseCode, CloseConnection
from app.metrics import Metrics
from app.persistence.chat import ChatStore
from app.persistence.store import Store, StoreUnavailable
from app.protocol import ChatMessage, decode_stored_state
from app.rules import new_state
from app.session import Member, Session, SessionClosed, Snapshot

if TYPE_CHECKING:
    from app.coord.oplog import RedisOpLog

log = logging.getLogger("vtt.manager")

MAX_FLUSH_BACKOFF = 60.0
# A flush takes snapshots (encoding each state) and sends state.saved in slices of about
# this much work, letting the event loop run between them, so that thousands of dirty
# sessions never hold it long: a slice is cut by time, as states and audiences vary in size.
FLUSH_SLICE_SECONDS = 0.001
# A flush writes this many sessions at a time. The lists a chunk builds are young for the
# garbage collector until a collection promotes them, and that collection reads every object
# they hold (cold, scattered in memory): a tick of 10,000 campaigns in one piece made one
# collection stall the loop 2.5-4.5 ms.
FLUSH_CHUNK = 1000
# A campaign whose chat rows could not be loaded tries again on a join at most this often.
CHAT_RETRY_SECONDS = 10.0


class Slices:
    """Cuts a long run of work into slices of `budget` seconds, yielding to the loop between."""

    def __init__(self, budget: float) -> None:
        self.budget = budget
        self._deadline = time.perf_counter() + budget

    def restart(self) -> None:
        """Begin a fresh slice (after an await that let the loop run anyway)."""
        self._deadline = time.perf_counter() + self.budget

    async def pause(self) -> None:
        """Let the event loop run other work once this slice has used its budget."""
        if time.perf_counter() >= self._deadline:
            await asyncio.sleep(0)
            self.restart()


class Rows(Sequence[tuple[str, bytes]]):
    """Snapshots as the store's (campaign_id, state) rows, each pair made only when asked for."""

    def __init__(self, snapshots: list[Snapshot]) -> None:
        self._snapshots = snapshots

    def __len__(self) -> int:
        return len(self._snapshots)

    @overload
    def __getitem__(self, index: int) -> tuple[str, bytes]: ...

    @overload
    def __getitem__(self, index: slice) -> list[tuple[str, bytes]]: ...

    def __getitem__(self, index: int | slice) -> tuple[str, bytes] | list[tuple[str, bytes]]:
        if isinstance(index, slice):
            return [(s.campaign_id, s.data) for s in self._snapshots[index]]
        snapshot = self._snapshots[index]
        return snapshot.campaign_id, snapshot.data


class SessionManager:
    """Owns every live Session of this process."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        metrics: Metrics,
        chat_store: ChatStore,
        roles: RoleResolver,
        coordinator: Coordinator | None = None,
    ) -> None:
        self.settings = settings
        # Who owns which campaign; on one machine without Redis, this one owns them all.
        self.coordinator: Coordinator = coordinator or LocalCoordinator()
        # Clustered only: where sessions write ahead (set once built, as it calls back here).
        self.oplog: RedisOpLog | None = None
        self._claims: dict[str, Claim] = {}
        self.store = store
        self.metrics = metrics
        self.chat_store = chat_store
        self.roles = roles
        self.sessions: dict[str, Session] = {}
        self._loading: dict[str, asyncio.Task[Session]] = {}
        self._evicting: dict[str, asyncio.Task[None]] = {}
        # Sessions whose claim was found gone, being written before they are closed.
        self._writing: set[asyncio.Task[None]] = set()
        self._flush_lock = asyncio.Lock()
        self._flusher: asyncio.Task[None] | None = None
        self._outage_since: float | None = None
        self.closing = False
        metrics.watch_sessions(
            live=lambda: len(self.sessions),
            dirty=lambda: sum(1 for s in self.sessions.values() if s.dirty),
        )

    # --- sessions -------------------------------------------------------------------------------

    async def join(
        self, campaign_id: str, member: Member, since: int | None = None, epoch: str | None = None
    ) -> tuple[Session, bool]:
        """Join `member` to its campaign's session; True in the pair when it resumed."""
        while True:
            session = await self.acquire(campaign_id)
            await session.chat.retry(CHAT_RETRY_SECONDS)
            try:
                return session, await session.join(member, since, epoch)
            except SessionClosed:
                continue

    async def acquire(self, campaign_id: str) -> Session:
        """The live session of `campaign_id`, loading it once however many joins race for it."""
        if self.closing:
            raise CloseConnection(CloseCode.SERVICE_RESTART, "server restarting")
        session = self.sessions.get(campaign_id)
        if session is not None:
            return session
        task = self._loading.get(campaign_id)
        if task is None:
            task = asyncio.create_task(self._load(campaign_id))
            self._loading[campaign_id] = task
            task.add_done_callback(lambda _: self._loading.pop(campaign_id, None))
        return await asyncio.shield(task)

    async def _load(self, campaign_id: str) -> Session:
        """Claim the campaign (clustered), load its row, catch up on its op log, go live.

        Another live owner's claim raises Owned (the endpoint relays there). The claim is
        given up again when anything after it fails.
        """
        coordinator = self.coordinator
        claim = await coordinator.claim(campaign_id)
        try:
            session, claim = await self._load_claimed(campaign_id, claim)
        except BaseException:
            await coordinator.release(campaign_id, claim)
            raise
        self._claims[campaign_id] = claim
        self.sessions[campaign_id] = session
        return session

    async def _load_claimed(self, campaign_id: str, claim: Claim) -> tuple[Session, Claim]:
        try:
            data, fence = await self.store.load_fenced(campaign_id)
            if self.coordinator.clustered:
                if fence >= claim.fence:
                    # Redis lost the fence counter (the row is ahead of it): claim above it.
                    await self.coordinator.release(campaign_id, claim)
                    claim = await self.coordinator.claim(campaign_id, floor=fence)
                # From here on, a previous owner that still writes is refused by the row.
                await self.store.raise_fence(campaign_id, claim.fence)
                fence = claim.fence
        except StoreUnavailable as exc:
            log.warning("state load failed", extra={"campaign_id": campaign_id, "reason": str(exc)})
            raise CloseConnection(CloseCode.TRY_AGAIN_LATER, "state could not be loaded") from exc
        if data is None:
            state = new_state(campaign_id)
        else:
            try:
                state = decode_stored_state(data, campaign_id)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.error(
                    "stored state cannot be decoded",
                    extra={"campaign_id": campaign_id, "reason": str(exc)},
                )
                raise CloseConnection(
                    CloseCode.INTERNAL_ERROR, "stored state is unreadable"
                ) from exc
        chat = CampaignChat(campaign_id, self.settings.chat, self.chat_store, self.roles)
        await chat.load()
        if self.closing:
            raise CloseConnection(CloseCode.SERVICE_RESTART, "server restarting")
        stored = 0 if data is None else len(data)
        session = Session(state, self.settings, self.metrics, chat, fence, stored_bytes=stored)
        if self.oplog is not None:
            applied = await self.oplog.catch_up(session, claim)
            if applied:
                log.info(
                    "caught up on the op log",
                    extra={"campaign_id": campaign_id, "commands": applied, "seq": state.seq},
                )
            self.oplog.attach(session, claim)
        return session, claim

    async def publish(self, message: ChatMessage) -> bool:
        """Publish a stored message through its campaign's session; False when not live.

        Clustered, a campaign live on another machine has that machine publish it.
        """
        if await self.publish_here(message):
            return True
        secret = forward_secret(self.settings)
        if secret is None:
            return False
        try:
            owner = await self.coordinator.owner(message.campaign_id)
        except CloseConnection:
            return False
        if owner is None:
            return False
        return await forward_chat(owner, message, secret)

    async def publish_here(self, message: ChatMessage) -> bool:
        """Publish a stored message through its session if live here; False when not.

        A load under way is waited for: its history may have been read before the message
        was stored.
        """
        loading = self._loading.get(message.campaign_id)
        if loading is not None:
            try:
                await asyncio.shield(loading)
            except CloseConnection:
                return False
        session = self.sessions.get(message.campaign_id)
        return session is not None and await session.publish_chat(message)

    def released(self, session: Session) -> None:
        """A member left `session`: evict it after the grace period if nobody comes back."""
        evicting = session.campaign_id in self._evicting
        if session.members or session.closed or self.closing or evicting:
            return
        task = asyncio.create_task(self._evict_when_idle(session))
        self._evicting[session.campaign_id] = task
        task.add_done_callback(lambda _: self._evicting.pop(session.campaign_id, None))

    async def _evict_when_idle(self, session: Session) -> None:
        await asyncio.sleep(self.settings.evict_grace)
        # A session dropped meanwhile (fenced out) is gone already, unsaved on purpose.
        while not session.members and not session.closed and not self.closing:
            if not session.dirty:
                session.close()
                if self.sessions.get(session.campaign_id) is session:
                    del self.sessions[session.campaign_id]
                    await self._release(session)
                return
            # During an outage the flush loop's backoff decides when the store is tried
            # again; this only waits for it to have written the session.
            if self._outage_since is not None or not await self.flush():
                await asyncio.sleep(self.settings.flush_interval)

    # --- flushing -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the periodic flush loop."""
        self._flusher = asyncio.create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        delay = self.settings.flush_interval
        while True:
            await asyncio.sleep(delay)
            ok = await self.flush()
            if ok:
                delay = self.settings.flush_interval
            else:
                delay = min(delay * 2, max(MAX_FLUSH_BACKOFF, self.settings.flush_interval))

    async def flush(self) -> bool:
        """Write every dirty session in batched upserts, FLUSH_CHUNK sessions at a time; False
        when the store failed (the chunks not yet written then wait for the next flush).

        A session changed after its snapshot stays dirty (mark_saved records the snapshot's
        version, not the session's), whichever slice the change lands in.
        """
        async with self._flush_lock:
            campaign_ids = list(self.sessions)
            for start in range(0, len(campaign_ids), FLUSH_CHUNK):
                if not await self._flush_chunk(campaign_ids[start : start + FLUSH_CHUNK]):
                    return False
            return True

    async def _flush_chunk(self, campaign_ids: list[str]) -> bool:
        """Snapshot, write and mark saved the dirty sessions among `campaign_ids`."""
        slices = Slices(FLUSH_SLICE_SECONDS)
        # Side by side rather than in pairs: pairs would each be tracked, and traversed, by
        # the garbage collector.
        written: list[Session] = []
        snapshots: list[Snapshot] = []
        for campaign_id in campaign_ids:
            session = self.sessions.get(campaign_id)
            if session is not None and session.dirty:
                snapshot = await session.snapshot()
                if snapshot is not None:
                    written.append(session)
                    snapshots.append(snapshot)
            await slices.pause()
        if not snapshots:
            return True
        fences = {session.campaign_id: session.fence for session in written}
        started = time.perf_counter()
        try:
            saved = await self.store.save_many(Rows(snapshots), fences)
        except StoreUnavailable as exc:
            self.metrics.flushed(time.perf_counter() - started, len(snapshots), ok=False)
            if self._outage_since is None:
                self._outage_since = time.monotonic()
                log.error(
                    "flush failed; state stays dirty and is retried with backoff",
                    extra={"reason": str(exc), "rows": len(snapshots)},
                )
            return False
        written_rows = len(snapshots) - len(saved.refused)
        self.metrics.flushed(time.perf_counter() - started, written_rows, ok=True)
        if self._outage_since is not None:
            log.info(
                "flush recovered",
                extra={"outage_seconds": round(time.monotonic() - self._outage_since, 3)},
            )
            self._outage_since = None
        slices.restart()
        confirmed: list[tuple[str, int]] = []
        for session, snapshot in zip(written, snapshots, strict=True):
            if session.campaign_id in saved.refused:
                self.fenced_out(session)
            else:
                session.mark_saved(snapshot)
                confirmed.append((session.campaign_id, snapshot.seq))
            await slices.pause()
        if self.oplog is not None:
            await self.oplog.trim(confirmed)
        return True

    async def _release(self, session: Session) -> None:
        """Give up the claim of a session that was written and dropped."""
        if self.oplog is not None:
            self.oplog.detach(session)
        claim = self._claims.pop(session.campaign_id, None)
        if claim is not None:
            await self.coordinator.release(session.campaign_id, claim)

    async def lease_lost(self) -> None:
        """This machine may no longer write (its Redis lease is gone or about to be).

        Every session stops taking edits, is written once more under its fence (no other
        owner can have claimed while the lease stood, and a newer fence would refuse the
        write anyway) and dropped; its clients are closed with 1013 and reconnect, to
        whichever machine then claims the campaign. What the op log never had was never
        shown to anyone.
        """
        sessions = list(self.sessions.values())
        log.error(
            "cluster lease lost: every campaign is written and closed",
            extra={"sessions": len(sessions)},
        )
        for session in sessions:
            session.close()
        await self.flush()
        reason = CloseConnection(CloseCode.TRY_AGAIN_LATER, "lost cluster coordination; reconnect")
        for session in sessions:
            self._drop(session, reason)

    def _drop(self, session: Session, reason: CloseConnection) -> None:
        session.close()
        if self.sessions.get(session.campaign_id) is session:
            del self.sessions[session.campaign_id]
        self._claims.pop(session.campaign_id, None)
        if self.oplog is not None:
            self.oplog.detach(session)
        for member in list(session.members):
            member.close(reason)

    def claim_lost(self, session: Session) -> None:
        """The op log found no claim on `session` (or this machine's lease gone): Redis lost
        its data, most likely, restarted empty before the lease's renew noticed.

        No other machine holds the campaign, so nothing replays what only this session has:
        it stops taking edits, is written once more under its fence (a newer owner's fence
        would refuse the write) and dropped, its clients closed with 1013, as `lease_lost`
        does for every session.
        """
        log.error(
            "campaign claim lost from Redis: the session is written and closed",
            extra={"campaign_id": session.campaign_id, "fence": session.fence},
        )
        session.close()
        task = asyncio.create_task(self._write_and_drop(session))
        self._writing.add(task)
        task.add_done_callback(self._writing.discard)

    async def _write_and_drop(self, session: Session) -> None:
        await self.flush()
        reason = CloseConnection(CloseCode.TRY_AGAIN_LATER, "lost cluster coordination; reconnect")
        self._drop(session, reason)

    def fenced_out(self, session: Session) -> None:
        """Drop a session whose row another writer has taken over; its clients reconnect.

        Its unsaved changes are given up: the row belongs to a newer owner now, and the next
        join here loads what that owner wrote.
        """
        log.warning(
            "campaign taken over by another writer: session dropped unsaved",
            extra={"campaign_id": session.campaign_id, "fence": session.fence},
        )
        self.metrics.fenced_out.inc()
        self._drop(session, CloseConnection(CloseCode.SERVICE_RESTART, "campaign moved; reconnect"))

    # --- shutdown -------------------------------------------------------------------------------

    async def close(self, deadline: float, clock: Callable[[], float] = time.monotonic) -> bool:
        """Refuse new joins, then flush everything, retrying until `deadline`; True when done."""
        self.closing = True
        tasks = [*self._evicting.values(), *self._loading.values(), *self._writing]
        for task in [self._flusher, *tasks]:
            if task is not None:
                task.cancel()
        delay = 0.1
        while True:
            if await self.flush():
                for session in list(self.sessions.values()):
                    await self._release(session)
                return True
            if clock() + delay >= deadline:
                log.error("shutdown with unsaved state: the store kept failing")
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
