"""One live campaign: its state under an asyncio.Lock, sequencing, history and fan-out.

Chat goes through here too: a chat.send is checked, rolled and stored by the campaign's
CampaignChat outside the lock (the database never holds up the table), then published under
it like any event: it takes the next seq, is encoded once, reaches the members its Audience
includes, and is recorded with that audience so that a resume replays it to exactly them.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from contextlib import AbstractContextManager
from typing import Any, Protocol

from msgspec import UNSET, Raw, Struct

from app.audience import state_view, view
from app.chat import Audience, CampaignChat, owns_character
from app.config import Settings
from app.ephemeral import Ephemeral, LiveMessage
from app.errors import CloseCode, CloseConnection, Refusal
from app.metacache import MetadataCache
from app.metrics import Metrics
from app.model import Actor, Event, Role, Rules, StateChange
from app.protocol import (
    CampaignState,
    ChatMessage,
    ChatSend,
    Empty,
    ErrorPayload,
    FogUpdateMsg,
    Frame,
    MapRenameMsg,
    MapSetMsg,
    StateResume,
    StateSaved,
    TokenAddMsg,
    TokenUpdateMsg,
    encode,
    encode_frame,
    text_frame,
)
from app.rules import apply, map_list

# The changes that can make the stored state larger, each by at most about its payload's size
# (by type: a move, most of the traffic, is one set lookup from the answer).
GROWING: frozenset[type[StateChange]] = frozenset(
    {TokenAddMsg, TokenUpdateMsg, FogUpdateMsg, MapSetMsg, MapRenameMsg}
)


def _growth(message: StateChange) -> int:
    """How much `message` may add to the stored state: its payload's size, or 0."""
    return len(encode(message.payload)) if type(message) in GROWING else 0


class Outgoing(Struct, frozen=True, gc=False):
    """One message as sent, encoded once for its whole audience.

    `frame` is the complete WebSocket text frame, the same bytes for every recipient.
    A member may replace a `conflates` message it has not sent yet by a newer one about the
    same `token_id`; any other message about that token (or about no token) ends that.
    An ephemeral frame names its `signal` lane (one sender's channel, app/signals.py): a
    member replaces one it has not sent yet by a newer one of the lane, whatever lies between,
    and drops them first when it falls behind.
    """

    frame: bytes
    kind: str
    token_id: str | None = None
    conflates: bool = False
    signal: str | None = None


class Member(Protocol):
    """A connected client as the session sees it: someone to hand frames to, never a socket.

    Members are told apart by identity (dict keys, a drag lock's connection).
    """

    def __hash__(self) -> int: ...

    @property
    def actor(self) -> Actor:
        """Who this member is."""
        ...

    @property
    def username(self) -> str | None:
        """The member's display name, resolved once when it connected (None: unknown)."""
        ...

    def deliver(self, outgoing: Outgoing) -> None:
        """Hand over one message without waiting."""
        ...

    def deliver_soon(self, outgoing: Outgoing) -> None:
        """Hand over one message that may go out a moment later, before whatever follows it."""
        ...

    def batch(self) -> AbstractContextManager[None]:
        """What is delivered inside (without waiting) may go out together, in order."""
        ...

    def close(self, reason: CloseConnection) -> None:
        """Disconnect soon with `reason`'s close code, dropping what is not sent yet."""
        ...


class Journal(Protocol):
    """Where a clustered session writes ahead (app/coord/oplog.py): what it applied, in order.

    A session with a journal holds each broadcast until `release` says the journal has it, so
    no client ever sees an edit that a new owner could not replay.
    """

    def command(self, session: Session, first: int, actor: Actor, message: StateChange) -> None:
        """`message` from `actor` applied as seqs `first`..`session.state.seq`."""
        ...

    def chat(self, session: Session, message: ChatMessage) -> None:
        """A chat message published as seq `session.state.seq`."""
        ...


class Joiner(Struct):
    """A member whose greeting waits for the journal to have what the greeting shows."""

    member: Member
    upto: int
    frames: list[Outgoing]
    admitted: asyncio.Future[None]


class SessionClosed(Exception):
    """The session was evicted while a join waited for it; the joiner should look it up again."""


class Recorded(Struct, frozen=True, gc=False):
    """A broadcast event as each audience received it (one object when both saw the same).

    A chat message's `audience` narrows who received it below the role.
    """

    seq: int
    gm: Outgoing | None
    player: Outgoing | None
    full_sync: bool
    # The bytes of its frames, a frame both audiences share counted once (resume_buffer_bytes).
    size: int
    audience: Audience | None = None


class Snapshot(Struct, frozen=True, gc=False):
    """The persisted form of a session at one version.

    Untracked by the garbage collector: a flush holds one per dirty session for the whole
    tick, and tens of thousands of tracked survivors would each cost young collections.
    """

    campaign_id: str
    data: bytes
    version: int
    seq: int


class Session:
    """One campaign's table; all mutation happens under `lock`, and never awaits I/O there."""

    def __init__(
        self,
        state: CampaignState,
        settings: Settings,
        metrics: Metrics,
        chat: CampaignChat,
        fence: int = 0,
        epoch: str | None = None,
        stored_bytes: int = 0,
    ) -> None:
        self.campaign_id = state.campaign_id
        # The fence this session writes under: its row's when loaded. A row whose fence was
        # raised since (another writer took the campaign over) refuses this session's writes.
        self.fence = fence
        self.state = state
        self.state.epoch = epoch or uuid.uuid4().hex[:16]
        if self.state.saved_maps is UNSET:
            self.state.saved_maps = {}
        self.rules = Rules(limits=settings.limits, token_policy=settings.token_policy)
        self.settings = settings
        self.metrics = metrics
        self.lock = asyncio.Lock()
        self.members: dict[Member, None] = {}
        # The same members by audience, so a broadcast never asks each member its role.
        self._audiences: dict[Role, dict[Member, None]] = {"gm": {}, "player": {}}
        # The latest broadcasts for resumes: at most resume_buffer of them, and of
        # resume_buffer_bytes of frames (`history_bytes`).
        self.history: deque[Recorded] = deque()
        self.history_bytes = 0
        self.chat = chat
        self._metadata = MetadataCache()
        # Dirty tracking: `version` counts changes, `saved_version` the last one written.
        self.version = 0
        self.saved_version = 0
        self.closed = False
        # The stored state's size, bounded by max_state_bytes: exact when loaded and at each
        # snapshot, and `grown` since by at most the payloads of the growing changes applied.
        self.stored_bytes = stored_bytes
        self.grown = 0
        # Write-ahead (clustered only): broadcasts wait in `_unsent` until the journal has
        # them (`acked`), and joiners behind them; without a journal `acked` follows `seq`.
        self.journal: Journal | None = None
        self.acked = state.seq
        self._unsent: deque[Recorded] = deque()
        self._joiners: deque[Joiner] = deque()
        # Who waits for everything up to a seq to have gone out (`sent_through`), in seq order.
        self._senders: list[tuple[int, asyncio.Future[None]]] = []
        # Presence, drag locks and signals: nothing of it is stored, numbered or replayed.
        self.ephemeral = Ephemeral(
            self.state,
            self.members,
            self._audiences,
            self._frame,
            self.lock,
            self.rules,
            settings,
            metrics,
        )

    @property
    def epoch(self) -> str:
        """Changes whenever the state is (re)loaded from storage."""
        return str(self.state.epoch)

    @property
    def dirty(self) -> bool:
        """Whether a change has not been written yet."""
        return self.version != self.saved_version

    # --- membership ---------------------------------------------------------------------------

    async def join(
        self, member: Member, since: int | None = None, epoch: str | None = None
    ) -> bool:
        """Add `member` and send it the state (or the missed events); True when it resumed."""
        async with self.lock:
            if self.closed:
                raise SessionClosed(self.campaign_id)
            self._check_caps(member.actor.user_id)
            frames: list[Outgoing] = []
            resumed = self._greet(member.actor, since, epoch, frames)
            if self.acked == self.state.seq:
                self._admit(member, frames)
                return resumed
            # The greeting shows edits the journal does not have yet: it goes out, and the
            # member joins the audience, once they are released (the next ones it then gets
            # as everyone does).
            joiner = Joiner(
                member, self.state.seq, frames, asyncio.get_running_loop().create_future()
            )
            self._joiners.append(joiner)
        try:
            await joiner.admitted
        except BaseException:
            if joiner in self._joiners:
                self._joiners.remove(joiner)
            raise
        return resumed

    def _admit(self, member: Member, frames: list[Outgoing]) -> None:
        """Make `member` one of the audience and send it its greeting, then presence and locks."""
        self.members[member] = None
        self._audiences[member.actor.role][member] = None
        # The greeting (state or missed events, then presence and locks) in one write.
        with member.batch():
            for frame in frames:
                member.deliver(frame)
            self.ephemeral.arrive(member)

    def _greet(
        self, actor: Actor, since: int | None, epoch: str | None, frames: list[Outgoing]
    ) -> bool:
        """Put the greeting in `frames`: the missed events, else the state; True: resumed."""
        if since is not None and epoch == self.epoch and self._replay(actor, since, frames):
            return True
        frames.append(self._frame("state.sync", actor.user_id, state_view(self.state, actor.role)))
        frames.append(self._frame("map.list", actor.user_id, map_list(self.state)))
        history = self.chat.log.history_for(actor.user_id, actor.role)
        frames.append(self._frame("chat.history", actor.user_id, history))
        self.metrics.message_out("state.sync")
        self.metrics.message_out("map.list")
        self.metrics.message_out("chat.history")
        return False

    def _check_caps(self, user_id: str) -> None:
        if len(self.members) + len(self._joiners) >= self.settings.max_connections_per_campaign:
            raise CloseConnection(
                CloseCode.TOO_MANY_CONNECTIONS, "too many connections to campaign"
            )
        mine = sum(1 for m in self.members if m.actor.user_id == user_id)
        mine += sum(1 for j in self._joiners if j.member.actor.user_id == user_id)
        if mine >= self.settings.max_connections_per_user:
            raise CloseConnection(CloseCode.TOO_MANY_CONNECTIONS, "too many connections for user")

    def _replay(self, actor: Actor, since: int, frames: list[Outgoing]) -> bool:
        """Send the events after `since` when the history still holds all of them."""
        seq = self.state.seq
        if since > seq or since < 0:
            return False
        missed = [r for r in self.history if r.seq > since]
        if len(missed) != seq - since or any(r.full_sync for r in missed):
            return False
        marker = StateResume(from_seq=since + 1, to_seq=seq, epoch=self.epoch)
        frames.append(self._frame("state.resume", actor.user_id, marker))
        self.metrics.message_out("state.resume")
        gm = actor.role == "gm"
        for record in missed:
            out = record.gm if gm else record.player
            audience = record.audience
            if out is not None and (
                audience is None or audience.includes(actor.user_id, actor.role)
            ):
                frames.append(out)
                self.metrics.message_out(out.kind)
        return True

    async def leave(self, member: Member) -> None:
        """Remove `member`."""
        async with self.lock:
            self.members.pop(member, None)
            self._audiences[member.actor.role].pop(member, None)
            self.ephemeral.leave(member)

    def close(self) -> None:
        """Take no more joins and stop the timers: the manager is evicting this session.

        Joiners still waiting for their greeting look the campaign up again; what was never
        released is never shown.
        """
        self.closed = True
        self.ephemeral.close()
        self._unsent.clear()
        while self._joiners:
            joiner = self._joiners.popleft()
            if not joiner.admitted.done():
                joiner.admitted.set_exception(SessionClosed(self.campaign_id))
        self._wake_senders(self.state.seq)

    async def sent_through(self, seq: int) -> None:
        """Wait until every broadcast up to `seq` went out to the members (the journal, when
        there is one, has it), or the session closed (what was never released never goes)."""
        if self.closed or self.acked >= seq:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._senders.append((seq, waiter))
        await waiter

    def _wake_senders(self, upto: int) -> None:
        senders = self._senders
        while senders and senders[0][0] <= upto:
            waiter = senders.pop(0)[1]
            if not waiter.done():
                waiter.set_result(None)

    def release(self, upto: int) -> None:
        """The journal has everything up to seq `upto`: send it, and greet who waited for it.

        In seq order: a joiner whose greeting showed seq N gets everything after N and nothing
        before (its greeting had that).
        """
        if self.closed or upto <= self.acked:
            return
        self.acked = upto
        unsent, joiners = self._unsent, self._joiners
        while unsent and unsent[0].seq <= upto:
            record = unsent.popleft()
            while joiners and joiners[0].upto < record.seq:
                self._admit_waiting(joiners.popleft())
            self._deliver(record)
        while joiners and joiners[0].upto <= upto:
            self._admit_waiting(joiners.popleft())
        self._wake_senders(upto)

    def _admit_waiting(self, joiner: Joiner) -> None:
        if joiner.admitted.done():
            return
        self._admit(joiner.member, joiner.frames)
        joiner.admitted.set_result(None)

    # --- messages -----------------------------------------------------------------------------

    async def submit(self, member: Member, message: StateChange) -> None:
        """Apply one client message and broadcast the result, or reply with an error."""
        async with self.lock:
            self.submit_now(member, message)

    def submit_now(self, member: Member, message: StateChange) -> None:
        """`submit` for a caller holding the lock, or sure it is free (nothing here waits).

        A closed session (being dropped) takes nothing more.
        """
        if self.closed:
            return
        growth = _growth(message)
        # Only a growing change (no move) asks how much room the stored state has left.
        oversized = growth > 0 and growth > self._room()
        live = self.ephemeral
        actor = member.actor
        before = live.visibility()
        try:
            events = apply(self.state, message, actor, self.rules, live.may_change, oversized)
        except Refusal as refusal:
            self.reply_error(member, refusal.code, refusal.message)
            return
        self.grown += growth
        live.changed(events, actor, before)
        first = self.state.seq + 1
        for event in events:
            self._publish(event)
        live.revealed(before)
        journal = self.journal
        if journal is not None and events:
            journal.command(self, first, actor, message)

    def _room(self) -> int:
        """How many bytes the stored state may still grow by (negative when it is past)."""
        return self.rules.limits.max_state_bytes - self.stored_bytes - self.grown

    def replay_command(self, actor: Actor, message: StateChange) -> bool:
        """Apply a logged command again (a new owner catching up); False when it is refused."""
        try:
            events = apply(self.state, message, actor, self.rules)
        except Refusal:
            return False
        self.grown += _growth(message)
        for event in events:
            self._publish(event)
        return True

    def replay_chat(self, message: ChatMessage) -> None:
        """Publish a logged chat message again, whether or not the loaded history has it."""
        self.chat_now(message, self.chat.log.append(message) or encode(message))

    async def send_chat(self, member: Member, payload: ChatSend) -> None:
        """Take one chat.send: checked, rolled and stored without the lock, then published."""
        try:
            message = await self.chat.accept(member.actor, member.username, payload, self)
        except Refusal as refusal:
            self.reply_error(member, refusal.code, refusal.message)
            return
        if message.roll is not UNSET:
            self.metrics.chat_rolls.inc()
        await self.publish_chat(message)

    async def publish_chat(self, message: ChatMessage) -> bool:
        """Publish a stored chat message to its audience, unless the chat log has it already.

        False when the session was evicted meanwhile: the message is stored, and the next
        load's history has it.
        """
        async with self.lock:
            if self.closed:
                return False
            data = self.chat.log.append(message)
            if data is None:
                return True
            self.chat_now(message, data)
            if self.journal is not None:
                self.journal.chat(self, message)
            return True

    def chat_now(self, message: ChatMessage, data: bytes) -> None:
        """Number and broadcast a chat message the log has taken (`data`: its encoding)."""
        self.state.seq += 1
        # The seq is persisted with the state: a chat message makes the state dirty.
        self.version += 1
        seq = self.state.seq
        frame = Frame(
            type="chat.message",
            campaign_id=self.campaign_id,
            user_id=message.user_id,
            seq=seq,
            payload=Raw(data),
        )
        out = Outgoing(text_frame(encode_frame(frame)), "chat.message")
        self._record(Recorded(seq, out, out, False, len(out.frame), Audience.of(message)))

    async def submit_live(self, member: Member, message: LiveMessage) -> None:
        """Handle a message that changes nothing stored: a drag lock's grab or release, a signal."""
        async with self.lock:
            self.live_now(member, message)

    def live_now(self, member: Member, message: LiveMessage) -> None:
        """`submit_live` for a caller holding the lock, or sure it is free."""
        try:
            self.ephemeral.receive(member, message)
        except Refusal as refusal:
            self.reply_error(member, refusal.code, refusal.message)

    def reply(self, member: Member, kind: str, payload: Any) -> None:
        """Send a one-client reply (no seq)."""
        member.deliver(self._frame(kind, member.actor.user_id, payload))
        self.metrics.message_out(kind)

    def reply_error(self, member: Member, code: str, message: str) -> None:
        """Send an `error` reply to one client."""
        self.metrics.error(code)
        self.reply(member, "error", ErrorPayload(code=code, message=message))

    def pong(self, member: Member) -> None:
        """Answer a ping."""
        self.reply(member, "pong", Empty())

    def _publish(self, event: Event) -> None:
        self.state.seq += 1
        self.version += 1
        seq = self.state.seq
        gm_seen = view(event, self.state, "gm", "")
        player_seen = view(event, self.state, "player", "")
        gm = self._render(event, gm_seen, seq)
        if player_seen is not None and gm_seen is not None and player_seen[1] is gm_seen[1]:
            player = gm
        else:
            player = self._render(event, player_seen, seq)
        size = 0 if gm is None else len(gm.frame)
        if player is not None and player is not gm:
            size += len(player.frame)
        self._record(Recorded(seq, gm, player, event.type == "state.sync", size))

    def _record(self, record: Recorded) -> None:
        """Keep `record` for resumes; send it now, or once the journal has it."""
        self._keep(record)
        if self.journal is None:
            self.acked = record.seq
            self._deliver(record)
        else:
            self._unsent.append(record)

    def _keep(self, record: Recorded) -> None:
        """Add `record` to the history, then drop the oldest past either bound."""
        history = self.history
        history.append(record)
        kept = self.history_bytes + record.size
        settings = self.settings
        while len(history) > settings.resume_buffer or kept > settings.resume_buffer_bytes:
            kept -= history.popleft().size
        self.history_bytes = kept

    def _deliver(self, record: Recorded) -> None:
        audience = record.audience
        if audience is not None:
            out = record.gm
            assert out is not None
            reached = 0
            for member in self.members:
                actor = member.actor
                if audience.includes(actor.user_id, actor.role):
                    member.deliver(out)
                    reached += 1
            self.metrics.message_out(out.kind, reached)
            return
        gm, player = record.gm, record.player
        gms = self._audiences["gm"]
        if gm is not None and gms:
            for member in gms:
                member.deliver(gm)
            self.metrics.message_out(gm.kind, len(gms))
        players = self._audiences["player"]
        if player is not None and players:
            for member in players:
                member.deliver(player)
            self.metrics.message_out(player.kind, len(players))

    def _render(self, event: Event, seen: tuple[str, Any] | None, seq: int) -> Outgoing | None:
        if seen is None:
            return None
        kind, payload = seen
        if isinstance(payload, CampaignState):
            payload = self._metadata.pack(payload)
        frame = Frame(
            type=kind, campaign_id=self.campaign_id, user_id=event.user_id, seq=seq, payload=payload
        )
        data = text_frame(encode_frame(frame))
        return Outgoing(data, kind, event.token_id, kind == "token.move")

    def _frame(self, kind: str, user_id: str, payload: Any, signal: str | None = None) -> Outgoing:
        seq = self.state.seq if kind in {"state.sync", "state.resume"} else None
        if isinstance(payload, CampaignState):
            payload = self._metadata.pack(payload)
        frame = Frame(
            type=kind, campaign_id=self.campaign_id, user_id=user_id, seq=seq, payload=payload
        )
        return Outgoing(text_frame(encode_frame(frame)), kind, signal=signal)

    # --- what chat asks of the table (app.chat.Roster), answered without waiting --------------

    def connected(self, user_id: str) -> bool:
        """Whether the user has a connection to this campaign now."""
        return any(member.actor.user_id == user_id for member in self.members)

    def owns_character(self, user_id: str, character_id: str) -> bool:
        """Whether the user owns a token of the character in this campaign's state."""
        return owns_character(self.state, user_id, character_id)

    # --- persistence ---------------------------------------------------------------------------

    async def snapshot(self) -> Snapshot | None:
        """The state to write, taken under the lock, or None when nothing changed."""
        async with self.lock:
            if not self.dirty:
                return None
            stored = self._metadata.pack(self.state)
            stored.epoch = UNSET
            data = encode(stored)
            self.stored_bytes, self.grown = len(data), 0
            return Snapshot(self.campaign_id, data, self.version, self.state.seq)

    def mark_saved(self, snapshot: Snapshot) -> None:
        """Record that `snapshot` is durable and tell the clients (up to what they were shown)."""
        self.saved_version = max(self.saved_version, snapshot.version)
        saved = StateSaved(seq=min(snapshot.seq, self.acked))
        for member in self.members:
            member.deliver(self._frame("state.saved", member.actor.user_id, saved))
        self.metrics.message_out("state.saved", len(self.members))
