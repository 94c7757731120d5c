"""A session that writes ahead: nothing goes out before its journal has it, joiners wait in
seq order, and a new owner's replay of the journal arrives at the same state."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.config import Settings
from app.coord.oplog import Command, replay
from app.metrics import Metrics
from app.model import Actor, StateChange
from app.protocol import ChatMessage, encode
from app.rules import new_state
from app.session import Session, SessionClosed, Snapshot
from tests.support.fakes import FakeMember, campaign_chat, change
from tests.support.harness import token_payload

pytestmark = pytest.mark.anyio

SETTINGS = Settings(env="test")
TIMEOUT = 5.0


class Journal:
    """What a session wrote ahead, as the op log would store it; it never releases by itself."""

    def __init__(self) -> None:
        self.commands: list[Command] = []

    def command(self, session: Session, first: int, actor: Actor, message: StateChange) -> None:
        data = msgspec.msgpack.encode(message)
        last = session.state.seq
        self.commands.append(Command(first, last, actor.user_id, actor.role, "c", data))

    def chat(self, session: Session, message: ChatMessage) -> None:
        seq = session.state.seq
        self.commands.append(Command(seq, seq, message.user_id, "", "m", encode(message)))


def journaled() -> tuple[Session, Journal]:
    session = Session(new_state("c1"), SETTINGS, Metrics(), campaign_chat("c1", SETTINGS))
    journal = Journal()
    session.journal = journal
    return session, journal


def add(token_id: str, x: int = 0) -> StateChange:
    return change("token.add", token_payload(token_id, x=x))


def move(token_id: str, x: int) -> StateChange:
    return change("token.move", {"token_id": token_id, "x": x, "y": 0})


def seqs(member: FakeMember) -> list[int]:
    return [m["seq"] for m in member.take() if m["type"].startswith("token.")]


async def test_a_broadcast_waits_for_the_journal_and_goes_out_in_order_once_released() -> None:
    session, journal = journaled()
    gm = FakeMember("gm", "gm")
    await session.join(gm)
    gm.take()

    session.submit_now(gm, add("t1"))
    session.submit_now(gm, move("t1", 5))

    assert gm.take() == []
    assert [(c.first, c.last) for c in journal.commands] == [(1, 1), (2, 2)]
    session.release(1)
    assert seqs(gm) == [1]
    session.release(2)
    assert seqs(gm) == [2]
    assert session.acked == 2


async def test_a_joiner_is_greeted_once_its_greeting_is_released_then_gets_the_rest() -> None:
    session, _ = journaled()
    gm = FakeMember("gm", "gm")
    await session.join(gm)
    gm.take()
    session.submit_now(gm, add("t1"))
    player = FakeMember("pl")
    joining = asyncio.create_task(session.join(player))
    await asyncio.sleep(0)
    session.submit_now(gm, move("t1", 7))

    assert not joining.done()
    assert player.received == []
    session.release(2)
    async with asyncio.timeout(TIMEOUT):
        assert await joining is False
    greeting = player.take()
    assert [m["type"] for m in greeting] == [
        "state.sync",
        "map.list",
        "chat.history",
        "token.move",
    ]
    assert greeting[0]["seq"] == 1
    assert greeting[3]["seq"] == 2
    assert seqs(gm) == [1, 2]


async def test_a_joiner_waiting_when_the_session_closes_looks_the_campaign_up_again() -> None:
    session, _ = journaled()
    gm = FakeMember("gm", "gm")
    await session.join(gm)
    session.submit_now(gm, add("t1"))
    joining = asyncio.create_task(session.join(FakeMember("pl")))
    await asyncio.sleep(0)

    session.close()

    with pytest.raises(SessionClosed):
        async with asyncio.timeout(TIMEOUT):
            await joining
    session.release(1)
    assert [m["type"] for m in gm.take()] == ["state.sync", "map.list", "chat.history"]


async def test_state_saved_never_names_a_seq_nobody_was_shown() -> None:
    session, _ = journaled()
    gm = FakeMember("gm", "gm")
    await session.join(gm)
    session.submit_now(gm, add("t1"))
    session.release(1)
    session.submit_now(gm, move("t1", 3))
    gm.take()

    session.mark_saved(Snapshot("c1", b"{}", session.version, session.state.seq))

    assert [m["payload"]["seq"] for m in gm.take() if m["type"] == "state.saved"] == [1]


async def test_without_a_journal_everything_goes_out_at_once_as_before() -> None:
    session = Session(new_state("c1"), SETTINGS, Metrics(), campaign_chat("c1", SETTINGS))
    gm = FakeMember("gm", "gm")
    await session.join(gm)
    gm.take()

    session.submit_now(gm, add("t1"))

    assert seqs(gm) == [1]
    assert session.acked == 1


def fresh() -> Session:
    return Session(new_state("c1"), SETTINGS, Metrics(), campaign_chat("c1", SETTINGS))


def visible(session: Session) -> Any:
    state = msgspec.structs.replace(session.state, epoch=msgspec.UNSET)
    return msgspec.json.decode(encode(state))


MOVES = st.lists(
    st.tuples(st.sampled_from(["t1", "t2", "t3"]), st.integers(-50, 50), st.booleans()),
    max_size=25,
)


@settings(max_examples=40, deadline=None)
@given(MOVES, st.integers(0, 25))
def test_replaying_the_journal_on_the_row_gives_the_live_state(
    moves: list[tuple[str, int, bool]], saved_at: int
) -> None:
    async def run() -> None:
        live, journal = journaled()
        gm = FakeMember("gm", "gm")
        await live.join(gm)
        row: Any = None
        for index, (token_id, x, remove) in enumerate(moves):
            if index == saved_at:
                row = msgspec.json.encode(live.state)
            if token_id not in live.state.tokens:
                live.submit_now(gm, add(token_id, x))
            elif remove:
                live.submit_now(gm, change("token.remove", {"token_id": token_id}))
            else:
                live.submit_now(gm, move(token_id, x))
        taken_over = fresh()
        if row is not None:
            state = msgspec.json.decode(row, type=type(live.state))
            taken_over = Session(state, SETTINGS, Metrics(), campaign_chat("c1", SETTINGS))

        applied, whole = replay(taken_over, journal.commands)

        assert whole
        assert visible(taken_over) == visible(live)
        assert taken_over.state.seq == live.state.seq
        assert applied == sum(1 for c in journal.commands if c.last > (saved_seq(row)))

    asyncio.run(run())


def saved_seq(row: bytes | None) -> int:
    if row is None:
        return 0
    seq: int = msgspec.json.decode(row)["seq"]
    return seq


async def test_a_gap_in_the_journal_stops_the_replay_where_it_is() -> None:
    live, journal = journaled()
    gm = FakeMember("gm", "gm")
    await live.join(gm)
    live.submit_now(gm, add("t1"))
    live.submit_now(gm, move("t1", 4))
    live.submit_now(gm, move("t1", 9))
    taken_over = fresh()

    applied, whole = replay(taken_over, [journal.commands[0], journal.commands[2]])

    assert (applied, whole) == (1, False)
    assert taken_over.state.seq == 1
    assert taken_over.state.tokens["t1"].x == 0


async def test_a_replayed_chat_message_takes_its_seq_and_is_in_the_resume_history() -> None:
    taken_over = fresh()
    message = ChatMessage(
        id="m1",
        campaign_id="c1",
        user_id="pl",
        message_type="text",
        content=msgspec.Raw(b'"hello"'),
        gm_only=False,
        created_at="2026-12-02T00:00:00Z",
    )
    commands = [Command(1, 1, "pl", "", "m", encode(message))]

    assert replay(taken_over, commands) == (1, True)
    assert taken_over.state.seq == 1
    assert [r.seq for r in taken_over.history] == [1]
