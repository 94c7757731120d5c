"""The write-ahead op log: what an owner applied, in Redis before any client sees it.

Each campaign's log is a Redis Stream (`keys.log`) whose entry ids are `<last seq>-0`: one
entry per event-loop tick that applied something, holding the commands (client messages and
chat messages, each with the seqs it took) and the epoch. A session holds each broadcast
until its entry is appended (`Session.release`), so an edit anyone saw is in the log, and a
new owner that loads the row (at seq S) and applies the log's commands after S arrives at
the state the clients saw, seq for seq.

One entry per campaign per batch, all of a tick's appended by one script call (one Redis
command, however many campaigns), and at most one call in flight: a campaign's entries
therefore go in seq order. The script checks this machine's node lease and each claim
first, so an owner that was paused, or whose claim another machine took, appends nothing
(and so shows nothing). One script touching many campaigns' keys needs a single Redis
primary, not a Redis Cluster (Upstash is one). Entries are trimmed up
to what Postgres confirmed; while Postgres is away the log grows, up to
`oplog_max_entries` per campaign (then its oldest entries go: only a crash of the owner
during that outage would miss them).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Final, Protocol, cast

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from app.coord import keys
from app.coord.base import Claim, unavailable
from app.model import Actor, StateChange
from app.protocol import MESSAGES, ChatMessage
from app.session import Session

log = logging.getLogger("vtt.oplog")

# A failed append is tried again this often, while the lease lasts.
RETRY_SECONDS = 0.05
# Entries read per XRANGE when a new owner catches up.
READ_PAGE = 500

# One call per tick for every campaign with something to append. KEYS: this machine's node
# lease, then each campaign's claim and log; ARGV: the lease's incarnation, the log's cap,
# then per campaign its claim value, entry id, epoch and commands. Each campaign answers
# OK (appended, or appended already by a try whose answer was lost), FENCED (another
# machine's claim: nothing appended), LOST (no claim, or this machine's lease gone: Redis
# lost its data or this machine was paused past its lease, and no one else claimed; nothing
# appended) or ORDER (an id below the log's top).
APPEND: Final = """
local lease = redis.call('GET', KEYS[1]) == ARGV[1]
local answers = {}
for i = 1, (#KEYS - 1) / 2 do
  local claim, log, at = KEYS[2 * i], KEYS[2 * i + 1], 3 + 4 * (i - 1)
  local current = redis.call('GET', claim)
  if current and current ~= ARGV[at] then
    answers[i] = 'FENCED'
  elseif not current or not lease then
    answers[i] = 'LOST'
  else
    local id = ARGV[at + 1]
    local added = redis.pcall(
      'XADD', log, 'MAXLEN', ARGV[2], id, 'e', ARGV[at + 2], 'c', ARGV[at + 3])
    answers[i] = 'OK'
    if type(added) == 'table' and added.err then
      local top = redis.call('XREVRANGE', log, '+', '-', 'COUNT', 1)
      if not (top[1] and top[1][1] == id) then answers[i] = 'ORDER' end
    end
  end
end
return answers
"""


class Command(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One logged command: the seqs it took, who sent it, and the message.

    `kind` "c" is a client message (`data` its msgpack), "m" a chat message (its JSON).
    """

    first: int
    last: int
    user_id: str
    role: str
    kind: str
    data: bytes


class Lease(Protocol):
    """What the op log needs of the coordinator: its node lease, and whether it holds."""

    @property
    def incarnation(self) -> str:
        """The node lease's current value ("" when none is held)."""
        ...

    @property
    def node_key(self) -> str:
        """This machine's node lease key."""
        ...

    def writable(self) -> bool:
        """Whether this machine may write now."""
        ...


class OpLogMetrics(Protocol):
    """What the op log counts."""

    def appended(self, entries: int, seconds: float) -> None:
        """A pipeline of `entries` appends answered after `seconds`."""
        ...

    def append_failed(self) -> None:
        """A pipeline failed (Redis away) and is tried again."""
        ...

    def replay_failed(self) -> None:
        """A catch-up stopped short: the chain was broken, so a new epoch was minted."""
        ...


_commands: Final = msgspec.msgpack.Encoder()
_commands_decoder: Final = msgspec.msgpack.Decoder(list[Command])
_client_encoder: Final = msgspec.msgpack.Encoder()
_client_decoder: Final = msgspec.msgpack.Decoder(MESSAGES.client_union())
_chat_encoder: Final = msgspec.json.Encoder()
_chat_decoder: Final = msgspec.json.Decoder(ChatMessage)


def connect(url: str, timeout: float) -> aioredis.Redis:
    """The op log's own client: a command that takes longer than `timeout` fails (and is
    tried again), and nothing is retried behind the writer's back."""
    return aioredis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )


class RedisOpLog:
    """The op log of every session this machine owns; one writer task."""

    def __init__(
        self,
        redis: aioredis.Redis,
        lease: Lease,
        max_entries: int,
        metrics: OpLogMetrics,
        on_refused: Callable[[Session], None],
        on_lost: Callable[[Session], None],
    ) -> None:
        self._redis = redis
        self._lease = lease
        self._max_entries = str(max_entries)
        self._metrics = metrics
        # Another machine claimed the campaign: drop it unsaved, the new owner has its log.
        self._on_refused = on_refused
        # No one holds its claim any more: write it under its fence and close it.
        self._on_lost = on_lost
        self._append = redis.register_script(APPEND)
        self._claims: dict[Session, Claim] = {}
        self._pending: dict[Session, list[Command]] = {}
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False

    # --- the journal a session writes ahead to ----------------------------------------------

    def attach(self, session: Session, claim: Claim) -> None:
        """From now on `session` writes ahead here, under `claim`."""
        self._claims[session] = claim
        session.journal = self

    def detach(self, session: Session) -> None:
        """`session` is gone: forget it and anything of it not appended."""
        self._claims.pop(session, None)
        self._pending.pop(session, None)

    def command(self, session: Session, first: int, actor: Actor, message: StateChange) -> None:
        """Log `message` (seqs `first`..now) with the tick's other commands."""
        data = _client_encoder.encode(message)
        self._add(session, Command(first, session.state.seq, actor.user_id, actor.role, "c", data))

    def chat(self, session: Session, message: ChatMessage) -> None:
        """Log a chat message published as the session's latest seq."""
        seq = session.state.seq
        data = _chat_encoder.encode(message)
        self._add(session, Command(seq, seq, message.user_id, "", "m", data))

    def _add(self, session: Session, command: Command) -> None:
        pending = self._pending.get(session)
        if pending is None:
            self._pending[session] = [command]
        else:
            pending.append(command)
        self._wake.set()

    # --- the writer -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer task."""
        self._writer = asyncio.create_task(self._run())

    async def close(self) -> None:
        """Stop the writer; what was not appended was never shown, and is dropped."""
        # The flag ends the writer when an append swallowed the cancel (redis-py sends
        # through asyncio.wait_for, which on Python 3.11 drops one that lands as it ends).
        self._closing = True
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None
        await self._redis.aclose()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            batch = [
                (session, commands)
                for session, commands in self._pending.items()
                if session in self._claims and not session.closed
            ]
            self._pending.clear()
            if not batch:
                continue
            if not self._lease.writable():
                # Held until the lease is back, or the sessions are dropped with it.
                self._put_back(batch)
                await asyncio.sleep(RETRY_SECONDS)
                continue
            started = loop.time()
            try:
                results = await self._send(batch)
            except (RedisError, OSError) as exc:
                self._metrics.append_failed()
                log.warning("op log append failed; retrying", extra={"reason": str(exc)})
                self._put_back(batch)
                await asyncio.sleep(RETRY_SECONDS)
                continue
            self._metrics.appended(len(batch), loop.time() - started)
            for (session, commands), result in zip(batch, results, strict=True):
                if result == b"OK":
                    session.release(commands[-1].last)
                elif result == b"LOST":
                    log.warning(
                        "op log refused an append: the campaign's claim or this machine's "
                        "lease is gone from Redis",
                        extra={"campaign_id": session.campaign_id},
                    )
                    self.detach(session)
                    self._on_lost(session)
                else:
                    log.warning(
                        "op log refused an append: the campaign has another owner",
                        extra={"campaign_id": session.campaign_id, "result": str(result)},
                    )
                    self.detach(session)
                    self._on_refused(session)

    def _put_back(self, batch: list[tuple[Session, list[Command]]]) -> None:
        """Requeue a batch before whatever its sessions applied since, and wake again."""
        for session, commands in batch:
            self._pending[session] = commands + self._pending.get(session, [])
        self._wake.set()

    async def _send(self, batch: list[tuple[Session, list[Command]]]) -> list[object]:
        """Append every campaign's entry in one script call; its answer per campaign."""
        names: list[str] = [self._lease.node_key]
        args: list[str | bytes] = [self._lease.incarnation, self._max_entries]
        for session, commands in batch:
            cid = session.campaign_id
            names += (keys.claim(cid), keys.log(cid))
            args += (
                self._claims[session].token,
                f"{commands[-1].last}-0",
                session.epoch,
                _commands.encode(commands),
            )
        results: list[object] = await self._append(keys=names, args=args)
        return results

    # --- catching up, epochs, trimming ------------------------------------------------------

    async def read(self, campaign_id: str, after: int) -> list[Command]:
        """Every logged command of `campaign_id` in entries after seq `after`, in order."""
        commands: list[Command] = []
        start = f"{after + 1}-0"
        while True:
            entries = cast(
                "list[tuple[bytes, dict[bytes, bytes]]]",
                await self._redis.xrange(keys.log(campaign_id), start, "+", READ_PAGE),
            )
            for _, fields in entries:
                commands.extend(_commands_decoder.decode(fields[b"c"]))
            if len(entries) < READ_PAGE:
                return commands
            start = "(" + entries[-1][0].decode()

    async def catch_up(self, session: Session, claim: Claim) -> int:
        """Apply what the log holds after the session's seq; the commands applied.

        The claim's epoch is kept when the chain from the row to the log's tip is whole, so
        clients resume across the owner change; otherwise a new epoch stands. Either way the
        epoch is recorded for the next owner.
        """
        try:
            commands = await self.read(session.campaign_id, session.state.seq)
        except (RedisError, OSError) as exc:
            log.warning(
                "op log could not be read",
                extra={"campaign_id": session.campaign_id, "reason": str(exc)},
            )
            raise unavailable("campaign log could not be read; retry") from exc
        applied, whole = replay(session, commands)
        if whole and claim.epoch is not None:
            session.state.epoch = claim.epoch
        elif not whole:
            self._metrics.replay_failed()
            log.error(
                "op log does not follow on from the stored state: a new epoch starts",
                extra={"campaign_id": session.campaign_id, "seq": session.state.seq},
            )
        try:
            await self._redis.set(keys.epoch(session.campaign_id), session.epoch)
        except (RedisError, OSError) as exc:
            raise unavailable("campaign log could not be written; retry") from exc
        return applied

    async def trim(self, saved: Sequence[tuple[str, int]]) -> None:
        """Drop the entries up to each campaign's seq that Postgres confirmed (best effort)."""
        if not saved:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for campaign_id, seq in saved:
                    pipe.xtrim(keys.log(campaign_id), minid=f"{seq + 1}-0")
                await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            log.warning("op log trim failed; the next flush trims", extra={"reason": str(exc)})


def replay(session: Session, commands: Sequence[Command]) -> tuple[int, bool]:
    """Apply the commands after the session's seq; (how many applied, whether all followed on).

    A command must take exactly the seqs it took before: the first must follow the session's
    seq, and applying it must end at its last. A gap, a refusal or an undecodable command
    stops the replay there (what applied stays).
    """
    applied = 0
    for command in commands:
        state = session.state
        if command.last <= state.seq:
            continue
        if command.first != state.seq + 1:
            return applied, False
        try:
            if command.kind == "m":
                session.replay_chat(_chat_decoder.decode(command.data))
            else:
                actor = Actor(command.user_id, "gm" if command.role == "gm" else "player")
                if not session.replay_command(actor, _client_decoder.decode(command.data)):
                    return applied, False
        except (msgspec.DecodeError, msgspec.ValidationError):
            return applied, False
        if state.seq != command.last:
            return applied, False
        applied += 1
    return applied, True
