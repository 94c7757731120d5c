"""app.manager.SessionManager on fakes: single-flight loads, refusals, eviction, flushes, close."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from app.auth.roles import DevClaimRoles
from app.chat import message_of
from app.config import Settings
from app.errors import CloseCode, CloseConnection
from app.manager import FLUSH_CHUNK, MAX_FLUSH_BACKOFF, SessionManager, Slices
from app.metrics import Metrics
from app.persistence.chat import MemoryChatStore, StoredMessage
from app.persistence.store import Saved
from app.protocol import TokenAddMsg, decode_client_message
from app.session import Session
from tests.support.fakes import FakeMember, RecordingStore, change
from tests.support.harness import TIMEOUT, token_payload
from tests.support.loops import EveryTurn, VirtualClockLoop
from tests.support.poll import poll

pytestmark = pytest.mark.anyio

SETTINGS = Settings(env="test")
STORED = json.dumps({"campaign_id": "c1", "tokens": {"t1": token_payload("t1", x=7)}, "seq": 7})


def manager_of(**overrides: Any) -> tuple[SessionManager, RecordingStore]:
    """A manager over an empty RecordingStore; its flush loop is not started."""
    store = RecordingStore()
    return manager_over(replace(SETTINGS, **overrides), store, Metrics()), store


def manager_over(settings: Settings, store: RecordingStore, metrics: Metrics) -> SessionManager:
    """A manager over `store`, its chat in memory."""
    return SessionManager(settings, store, metrics, MemoryChatStore(), DevClaimRoles())


async def edited(session: Session, member: FakeMember, token_id: str = "t1") -> None:
    """Add a token as `member`, making `session` dirty."""
    await session.submit(member, change("token.add", token_payload(token_id)))


async def refusal(manager: SessionManager, campaign: str, member: FakeMember) -> CloseConnection:
    """The CloseConnection a join raises (it must raise one)."""
    with pytest.raises(CloseConnection) as caught:
        async with asyncio.timeout(TIMEOUT):
            await manager.join(campaign, member)
    return caught.value


# --- loading ------------------------------------------------------------------------------------


async def test_the_first_join_loads_the_campaign_and_later_joins_share_its_session() -> None:
    manager, store = manager_of()

    first, resumed = await manager.join("c1", FakeMember("gm-ada", "gm"))
    second, _ = await manager.join("c1", FakeMember("pl-bo"))

    assert resumed is False
    assert second is first
    assert manager.sessions == {"c1": first}
    assert store.loads == 1


async def test_joins_racing_for_an_unloaded_campaign_share_one_load() -> None:
    manager, store = manager_of()
    store.load_gate.clear()
    members = [FakeMember(f"pl-{index}") for index in range(5)]

    joins = [asyncio.create_task(manager.join("c1", member)) for member in members]
    await poll(lambda: store.loads == 1, TIMEOUT, "the load to start")
    assert manager.sessions == {}
    store.load_gate.set()
    async with asyncio.timeout(TIMEOUT):
        results = await asyncio.gather(*joins)

    assert store.loads == 1
    assert len({id(session) for session, _ in results}) == 1
    greeting = ["state.sync", "map.list", "chat.history"]
    assert all(member.types == greeting for member in members)


async def test_a_session_starts_from_the_stored_state() -> None:
    manager, store = manager_of()
    store.rows["c1"] = STORED.encode()
    gm = FakeMember("gm-ada", "gm")

    await manager.join("c1", gm)

    sync = gm.received[0]
    assert sync["seq"] == 7
    assert sync["payload"]["tokens"]["t1"]["x"] == 7


async def test_a_failed_load_refuses_every_racing_join_with_1013_and_creates_nothing() -> None:
    manager, store = manager_of()
    store.rows["c1"] = STORED.encode()
    store.outage = True
    members = [FakeMember(f"pl-{index}") for index in range(3)]

    async with asyncio.timeout(TIMEOUT):
        outcomes = await asyncio.gather(
            *(manager.join("c1", member) for member in members), return_exceptions=True
        )

    assert store.loads == 1
    for outcome in outcomes:
        assert isinstance(outcome, CloseConnection)
        assert (outcome.code, outcome.reason) == (
            CloseCode.TRY_AGAIN_LATER,
            "state could not be loaded",
        )
    assert manager.sessions == {}
    assert all(member.received == [] for member in members)
    assert await manager.flush()
    assert store.saves == 0
    assert store.rows == {"c1": STORED.encode()}


async def test_after_a_failed_load_the_next_join_loads_again() -> None:
    manager, store = manager_of()
    store.rows["c1"] = STORED.encode()
    store.outage = True
    await refusal(manager, "c1", FakeMember("pl-bo"))

    store.outage = False
    session, _ = await manager.join("c1", FakeMember("pl-bo"))

    assert store.loads == 2
    assert session.state.seq == 7


@pytest.mark.parametrize(
    "stored",
    [b'{"grid_size": "big"}', b"[1, 2]", b"not json"],
    ids=["a wrong type", "not an object", "not JSON"],
)
async def test_an_unreadable_stored_state_refuses_the_join_with_1011_and_creates_nothing(
    stored: bytes,
) -> None:
    manager, store = manager_of()
    store.rows["c1"] = stored

    failure = await refusal(manager, "c1", FakeMember("gm-ada", "gm"))

    assert (failure.code, failure.reason) == (
        CloseCode.INTERNAL_ERROR,
        "stored state is unreadable",
    )
    assert manager.sessions == {}
    assert await manager.flush()
    assert store.rows == {"c1": stored}


async def test_a_join_that_finds_its_session_evicted_while_it_waited_gets_a_fresh_one() -> None:
    manager, store = manager_of(evict_grace=0.0)
    gm = FakeMember("gm-ada", "gm")
    old, _ = await manager.join("c1", gm)
    await old.leave(gm)

    async with old.lock:
        joining = asyncio.create_task(manager.join("c1", FakeMember("pl-bo")))
        manager.released(old)
        await poll(lambda: "c1" not in manager.sessions, TIMEOUT, "the eviction")
    async with asyncio.timeout(TIMEOUT):
        fresh, _ = await joining

    assert old.closed
    assert fresh is not old
    assert manager.sessions == {"c1": fresh}
    assert store.loads == 2


# --- chat ---------------------------------------------------------------------------------------


def chatting(chat_store: MemoryChatStore) -> tuple[SessionManager, RecordingStore]:
    """A manager over an empty RecordingStore and `chat_store`."""
    store = RecordingStore()
    return SessionManager(SETTINGS, store, Metrics(), chat_store, DevClaimRoles()), store


def stored_message(number: int, **fields: Any) -> StoredMessage:
    """A public message of c1 from gm-ada, `number` seconds into 2026."""
    moment = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=number)
    base: dict[str, Any] = {"message_type": "text", "content": f'"m{number}"', "gm_only": False}
    return StoredMessage(f"id-{number}", "c1", "gm-ada", created_at=moment, **(base | fields))


async def test_a_campaigns_chat_is_loaded_with_its_state_and_served_to_each_join() -> None:
    chat_store = MemoryChatStore()
    for number, gm_only in ((1, False), (2, True)):
        await chat_store.insert(stored_message(number, gm_only=gm_only))
    manager, _ = chatting(chat_store)
    gm, player = FakeMember("gm-ada", "gm"), FakeMember("pl-bo")

    await manager.join("c1", gm)
    await manager.join("c1", player)

    assert [m["content"] for m in gm.received[2]["payload"]["messages"]] == ["m1", "m2"]
    public = json.loads(msgspec.json.encode(message_of(stored_message(1))))
    assert player.received[2]["payload"] == {"messages": [public]}


async def test_a_failed_chat_load_lets_the_join_in_with_a_history_marked_incomplete() -> None:
    chat_store = MemoryChatStore()
    chat_store.outage = True
    manager, _ = chatting(chat_store)
    gm = FakeMember("gm-ada", "gm")

    session, _ = await manager.join("c1", gm)

    assert gm.types == ["state.sync", "map.list", "chat.history"]
    assert gm.received[2]["payload"] == {"messages": [], "incomplete": True}
    assert manager.sessions == {"c1": session}


async def test_publishing_reaches_a_live_campaign_and_says_false_for_one_not_live_here() -> None:
    manager, _ = chatting(MemoryChatStore())
    gm = FakeMember("gm-ada", "gm")
    session, _ = await manager.join("c1", gm)
    gm.take()

    live = await manager.publish(message_of(stored_message(1)))
    elsewhere = await manager.publish(message_of(replace(stored_message(2), campaign_id="c2")))
    session.closed = True
    evicted = await manager.publish(message_of(stored_message(3)))

    assert (live, elsewhere, evicted) == (True, False, False)
    assert [(m["type"], m["seq"]) for m in gm.take()] == [("chat.message", 1)]


async def test_a_message_published_during_its_campaigns_load_waits_and_is_not_sent_twice() -> None:
    chat_store = MemoryChatStore()
    message = stored_message(1)
    await chat_store.insert(message)
    manager, store = chatting(chat_store)
    store.load_gate.clear()
    gm = FakeMember("gm-ada", "gm")
    join = asyncio.create_task(manager.join("c1", gm))
    await poll(lambda: store.loads == 1, TIMEOUT, "the load to start")

    published = asyncio.create_task(manager.publish(message_of(message)))
    store.load_gate.set()
    async with asyncio.timeout(TIMEOUT):
        session, _ = await join
        assert await published is True

    assert gm.types == ["state.sync", "map.list", "chat.history"]
    assert [m["id"] for m in gm.received[2]["payload"]["messages"]] == [message.id]
    assert session.state.seq == 0


# --- eviction -----------------------------------------------------------------------------------


async def test_a_clean_session_left_by_its_last_member_is_evicted_without_a_write() -> None:
    manager, store = manager_of(evict_grace=0.0)
    gm = FakeMember("gm-ada", "gm")
    session, _ = await manager.join("c1", gm)

    await session.leave(gm)
    manager.released(session)
    await poll(lambda: "c1" not in manager.sessions, TIMEOUT, "the eviction")

    assert session.closed
    assert store.saves == 0


async def test_a_session_whose_users_are_all_within_the_presence_grace_is_still_evicted() -> None:
    manager, _ = manager_of(evict_grace=0.0, presence_grace=3600.0)
    gm = FakeMember("gm-ada", "gm")
    session, _ = await manager.join("c1", gm)

    await session.leave(gm)
    manager.released(session)
    await poll(lambda: "c1" not in manager.sessions, TIMEOUT, "the eviction")

    assert session.closed
    assert session.ephemeral.presence.next_departure() is not None, "gm was still departing"
    fresh, _ = await manager.join("c1", FakeMember("pl-bo"))
    assert fresh is not session
    assert [p.user_id for p in fresh.ephemeral.presence.members()] == ["pl-bo"]


async def test_a_dirty_idle_session_is_written_before_it_is_evicted() -> None:
    manager, store = manager_of(evict_grace=0.0)
    gm = FakeMember("gm-ada", "gm")
    session, _ = await manager.join("c1", gm)
    await edited(session, gm)

    await session.leave(gm)
    manager.released(session)
    await poll(lambda: "c1" not in manager.sessions, TIMEOUT, "the eviction")

    assert store.saves == 1
    assert "t1" in json.loads(store.rows["c1"])["tokens"]


async def test_a_session_rejoined_within_the_grace_period_is_kept() -> None:
    manager, _ = manager_of(evict_grace=0.05)
    gm = FakeMember("gm-ada", "gm")
    session, _ = await manager.join("c1", gm)
    await session.leave(gm)
    manager.released(session)
    evictor = manager._evicting["c1"]

    again, _ = await manager.join("c1", FakeMember("gm-ada", "gm"))
    async with asyncio.timeout(TIMEOUT):
        await evictor

    assert again is session
    assert manager.sessions == {"c1": session}
    assert not session.closed


async def test_no_eviction_starts_while_members_remain_nor_twice_and_close_cancels_it() -> None:
    manager, _ = manager_of(evict_grace=3600.0)
    gm, player = FakeMember("gm-ada", "gm"), FakeMember("pl-bo")
    session, _ = await manager.join("c1", gm)
    await manager.join("c1", player)

    await session.leave(player)
    manager.released(session)
    assert manager._evicting == {}
    await session.leave(gm)
    manager.released(session)
    evictor = manager._evicting["c1"]
    manager.released(session)

    assert manager._evicting == {"c1": evictor}
    assert await manager.close(asyncio.get_running_loop().time() + TIMEOUT)
    await asyncio.wait([evictor], timeout=TIMEOUT)
    assert evictor.cancelled()
    assert manager.sessions == {"c1": session}


# --- flushing -----------------------------------------------------------------------------------


async def test_a_flush_writes_every_dirty_session_in_one_save_and_tells_their_members() -> None:
    manager, store = manager_of()
    members = {campaign: FakeMember("gm-ada", "gm") for campaign in ("c1", "c2", "c3")}
    for campaign, member in members.items():
        session, _ = await manager.join(campaign, member)
        if campaign != "c3":
            await edited(session, member)
        member.take()

    assert await manager.flush()

    assert store.saves == 1
    assert store.rows.keys() == {"c1", "c2"}
    assert members["c1"].take() == [
        {"type": "state.saved", "campaign_id": "c1", "user_id": "gm-ada", "payload": {"seq": 1}}
    ]
    assert members["c2"].types == ["state.saved"]
    assert members["c3"].take() == []
    assert not any(session.dirty for session in manager.sessions.values())


async def test_a_session_writes_under_the_fence_its_row_had_when_loaded() -> None:
    manager, store = manager_of()
    store.rows["c1"] = STORED.encode()
    store.fences["c1"] = 4
    member = FakeMember("gm-ada", "gm")
    session, _ = await manager.join("c1", member)
    await edited(session, member, "t2")

    assert await manager.flush()

    assert session.fence == 4
    assert store.fences["c1"] == 4
    assert b'"t2"' in store.rows["c1"]
    assert member.closed_with is None


async def test_a_session_whose_row_another_writer_took_over_is_dropped_unsaved() -> None:
    manager, store = manager_of()
    members = {campaign: FakeMember("gm-ada", "gm") for campaign in ("c1", "c2")}
    sessions = {}
    for campaign, member in members.items():
        sessions[campaign], _ = await manager.join(campaign, member)
        await edited(sessions[campaign], member)
        member.take()
    # A newer owner raised c1's fence (and wrote its own state) since c1 was loaded here.
    store.rows["c1"] = STORED.encode()
    store.fences["c1"] = 2

    assert await manager.flush()

    assert store.rows["c1"] == STORED.encode()
    assert manager.sessions == {"c2": sessions["c2"]}
    assert sessions["c1"].closed
    closed = members["c1"].closed_with
    assert closed is not None
    assert closed.code == CloseCode.SERVICE_RESTART
    assert members["c1"].take() == []
    assert members["c2"].types == ["state.saved"]
    assert members["c2"].closed_with is None
    assert manager.metrics.registry.get_sample_value("vtt_sessions_fenced_out_total") == 1

    # Its member leaving starts no eviction: there is nothing left to write or drop.
    await sessions["c1"].leave(members["c1"])
    manager.released(sessions["c1"])
    assert manager._evicting == {}

    again, _ = await manager.join("c1", FakeMember("gm-ada", "gm"))
    assert again is not sessions["c1"]
    assert again.fence == 2
    assert again.state.seq == 7


async def test_an_idle_session_fenced_out_by_its_eviction_flush_ends_its_eviction() -> None:
    manager, store = manager_of(evict_grace=0)
    member = FakeMember("gm-ada", "gm")
    session, _ = await manager.join("c1", member)
    await edited(session, member)
    store.rows["c1"] = STORED.encode()
    store.fences["c1"] = 2

    await session.leave(member)
    manager.released(session)
    evictor = manager._evicting["c1"]
    async with asyncio.timeout(TIMEOUT):
        await evictor

    assert session.closed
    assert manager.sessions == {}
    assert store.rows["c1"] == STORED.encode()


async def test_a_flush_with_nothing_dirty_writes_nothing() -> None:
    manager, store = manager_of()
    await manager.join("c1", FakeMember("gm-ada", "gm"))

    assert await manager.flush()

    assert store.attempts.empty()


async def test_a_failed_flush_keeps_sessions_dirty_tells_nobody_and_the_next_one_writes() -> None:
    manager, store = manager_of()
    gm = FakeMember("gm-ada", "gm")
    session, _ = await manager.join("c1", gm)
    await edited(session, gm)
    gm.take()
    store.outage = True

    assert not await manager.flush()
    assert session.dirty
    assert gm.take() == []

    store.outage = False
    assert await manager.flush()
    assert not session.dirty
    assert gm.types == ["state.saved"]


async def test_a_flush_of_hundreds_of_sessions_writes_and_acknowledges_them_all() -> None:
    manager, store = manager_of()
    campaigns = [f"c{index}" for index in range(300)]
    members = [FakeMember("gm-ada", "gm") for _ in campaigns]
    for campaign, member in zip(campaigns, members, strict=True):
        session, _ = await manager.join(campaign, member)
        await edited(session, member)
        member.take()

    assert await manager.flush()

    assert store.saves == 1
    assert store.rows.keys() == set(campaigns)
    assert all(member.types == ["state.saved"] for member in members)


async def test_a_flush_past_a_chunk_writes_every_session_one_chunk_at_a_time() -> None:
    manager, store = manager_of()
    dirty = await dirty_sessions(manager, FLUSH_CHUNK + 5)

    assert await manager.flush()

    assert store.saves == 2
    assert store.rows.keys() == {campaign for campaign, _, _ in dirty}
    assert all(gm.types == ["state.saved"] for _, _, gm in dirty)
    assert not any(session.dirty for _, session, _ in dirty)


class FailingFrom(RecordingStore):
    """A store whose save_many fails from its `first`th call on."""

    def __init__(self, first: int) -> None:
        super().__init__()
        self.first = first

    async def save_many(
        self, rows: Sequence[tuple[str, bytes]], fences: Mapping[str, int] | None = None
    ) -> Saved:
        if self.saves + 1 >= self.first:
            self.outage = True
        return await super().save_many(rows, fences)


async def test_a_store_failing_in_a_later_chunk_keeps_that_chunk_and_the_rest_dirty() -> None:
    store = FailingFrom(2)
    manager = manager_over(SETTINGS, store, Metrics())
    dirty = await dirty_sessions(manager, 2 * FLUSH_CHUNK + 1)

    assert not await manager.flush()

    first, rest = dirty[:FLUSH_CHUNK], dirty[FLUSH_CHUNK:]
    assert store.saves == 1, "the third chunk is not tried after the second failed"
    assert not any(session.dirty for _, session, _ in first)
    assert all(gm.types == ["state.saved"] for _, _, gm in first)
    assert all(session.dirty for _, session, _ in rest)
    assert all(gm.take() == [] for _, _, gm in rest)

    store.outage, store.first = False, 10
    assert await manager.flush()
    assert not any(session.dirty for _, session, _ in rest)


async def dirty_sessions(
    manager: SessionManager, count: int
) -> list[tuple[str, Session, FakeMember]]:
    """`count` live campaigns, each edited once by its GM (so dirty), their greetings taken."""
    sessions = []
    for index in range(count):
        gm = FakeMember("gm-ada", "gm")
        session, _ = await manager.join(f"c{index}", gm)
        await edited(session, gm)
        gm.take()
        sessions.append((f"c{index}", session, gm))
    return sessions


def stored_tokens(store: RecordingStore, campaign: str) -> set[str]:
    """The token ids of a campaign's stored state."""
    return set(json.loads(store.rows[campaign])["tokens"])


async def test_a_slice_lets_the_loop_run_once_its_budget_is_spent_and_not_before() -> None:
    loop = asyncio.get_running_loop()
    ran: list[str] = []

    loop.call_soon(ran.append, "waiting")
    async with asyncio.timeout(TIMEOUT):
        await Slices(3600.0).pause()
    assert ran == []
    async with asyncio.timeout(TIMEOUT):
        await Slices(0.0).pause()
    assert ran == ["waiting"]


async def test_a_flush_snapshots_a_slice_at_a_time_and_an_edit_after_a_snapshot_waits_for_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("app.manager.FLUSH_SLICE_SECONDS", 0.0)
    manager, store = manager_of()
    sessions = await dirty_sessions(manager, 6)
    # While the flush takes its snapshots, one more edit per turn of the loop, last campaign
    # first: the ones edited before their snapshot are written with it, the others not.
    waiting = list(reversed(sessions))
    edits: dict[str, asyncio.Task[None]] = {}

    def edit_one() -> None:
        if waiting and store.attempts.empty():
            campaign, session, gm = waiting.pop(0)
            edits[campaign] = asyncio.create_task(edited(session, gm, "t2"))

    flushing = asyncio.create_task(manager.flush())
    turns = EveryTurn(edit_one)
    try:
        async with asyncio.timeout(TIMEOUT):
            assert await flushing
            await asyncio.gather(*edits.values())
    finally:
        turns.close()

    assert store.saves == 1
    with_edit = {campaign for campaign, _, _ in sessions if "t2" in stored_tokens(store, campaign)}
    assert with_edit, "an edit made while earlier snapshots were taken is in its own"
    assert with_edit < edits.keys(), "an edit made after its snapshot is not"
    for campaign, session, _ in sessions:
        assert session.dirty == (campaign in edits.keys() - with_edit), campaign
    assert await manager.flush()
    assert all("t2" in stored_tokens(store, campaign) for campaign in edits)
    assert not any(session.dirty for _, session, _ in sessions)


async def test_a_flush_acknowledges_a_slice_at_a_time_and_an_edit_before_a_turn_stays_dirty(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("app.manager.FLUSH_SLICE_SECONDS", 0.0)
    manager, store = manager_of()
    sessions = await dirty_sessions(manager, 6)
    _, last, last_gm = sessions[-1]
    seen: list[int] = []
    edits: list[asyncio.Task[None]] = []

    def watch() -> None:
        acknowledged = sum(1 for _, _, gm in sessions if "state.saved" in gm.types)
        seen.append(acknowledged)
        if acknowledged and not edits:
            edits.append(asyncio.create_task(edited(last, last_gm, "t2")))

    store.gate.clear()
    flushing = asyncio.create_task(manager.flush())
    await poll(lambda: store.attempts.qsize() == 1, TIMEOUT, "the write to start")
    turns = EveryTurn(watch)
    store.gate.set()
    try:
        async with asyncio.timeout(TIMEOUT):
            assert await flushing
            await asyncio.gather(*edits)
    finally:
        turns.close()

    assert any(0 < count < len(sessions) for count in seen), "state.saved goes out in slices"
    # The edit came after the write, before this session's acknowledgement: the state.saved
    # names the seq that was written, and the session stays dirty.
    assert [m["type"] for m in last_gm.received] == ["token.add", "state.saved"]
    assert last_gm.received[-1]["payload"] == {"seq": 1}
    assert "t2" not in stored_tokens(store, "c5")
    assert last.dirty
    assert not any(session.dirty for _, session, _ in sessions[:-1])
    last_gm.take()
    assert await manager.flush()
    assert "t2" in stored_tokens(store, "c5")
    assert not last.dirty
    assert last_gm.take() == [
        {"type": "state.saved", "campaign_id": "c5", "user_id": "gm-ada", "payload": {"seq": 2}}
    ]


async def test_a_change_made_while_a_flush_writes_keeps_the_session_dirty() -> None:
    manager, store = manager_of()
    gm = FakeMember("gm-ada", "gm")
    session, _ = await manager.join("c1", gm)
    await edited(session, gm)
    store.gate.clear()

    flushing = asyncio.create_task(manager.flush())
    await poll(lambda: store.attempts.qsize() == 1, TIMEOUT, "the write to start")
    await edited(session, gm, "t2")
    store.gate.set()
    async with asyncio.timeout(TIMEOUT):
        assert await flushing

    assert session.dirty
    assert "t2" not in json.loads(store.rows["c1"])["tokens"]
    assert await manager.flush()
    assert not session.dirty
    assert "t2" in json.loads(store.rows["c1"])["tokens"]


async def test_a_flush_asked_for_while_another_writes_waits_and_writes_nothing_twice() -> None:
    manager, store = manager_of()
    gm = FakeMember("gm-ada", "gm")
    session, _ = await manager.join("c1", gm)
    await edited(session, gm)
    store.gate.clear()

    first = asyncio.create_task(manager.flush())
    await poll(lambda: store.attempts.qsize() == 1, TIMEOUT, "the first write to start")
    second = asyncio.create_task(manager.flush())
    store.gate.set()
    async with asyncio.timeout(TIMEOUT):
        assert list(await asyncio.gather(first, second)) == [True, True]

    assert store.saves == 1


async def test_the_session_gauges_count_live_and_dirty_sessions_at_each_scrape() -> None:
    metrics = Metrics()
    manager = manager_over(SETTINGS, RecordingStore(), metrics)
    gm = FakeMember("gm-ada", "gm")
    session, _ = await manager.join("c1", gm)
    await manager.join("c2", FakeMember("gm-ada", "gm"))
    await edited(session, gm)

    assert metrics.registry.get_sample_value("vtt_live_sessions") == 2
    assert metrics.registry.get_sample_value("vtt_dirty_sessions") == 1


# --- shutdown -----------------------------------------------------------------------------------


async def test_close_writes_everything_dirty_stops_the_flush_loop_and_refuses_joins() -> None:
    manager, store = manager_of()
    gm = FakeMember("gm-ada", "gm")
    session, _ = await manager.join("c1", gm)
    await edited(session, gm)
    manager.start()

    assert await manager.close(asyncio.get_running_loop().time() + TIMEOUT)

    assert not session.dirty
    assert "t1" in json.loads(store.rows["c1"])["tokens"]
    failure = await refusal(manager, "c2", FakeMember("gm-ada", "gm"))
    assert (failure.code, failure.reason) == (CloseCode.SERVICE_RESTART, "server restarting")


def test_close_gives_up_at_its_deadline_when_the_store_keeps_failing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        manager, store = manager_of()
        gm = FakeMember("gm-ada", "gm")
        session, _ = await manager.join("c1", gm)
        await edited(session, gm)
        store.outage = True
        clock = asyncio.get_running_loop().time
        deadline = clock() + 5.0

        assert not await manager.close(deadline, clock=clock)

        assert deadline - 2.0 <= clock() < deadline
        assert session.dirty
        assert store.attempts.qsize() > 1

    loop = VirtualClockLoop()
    try:
        with caplog.at_level("ERROR", logger="vtt.manager"):
            loop.run_until_complete(asyncio.wait_for(scenario(), timeout=3600))
    finally:
        loop.close()
    assert [r.getMessage() for r in caplog.records][-1] == (
        "shutdown with unsaved state: the store kept failing"
    )


# --- the flush loop on a virtual clock ----------------------------------------------------------


def test_a_failing_flush_loop_backs_off_to_the_cap_and_logs_once_per_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        settings = Settings(env="test")
        interval = settings.flush_interval
        store = RecordingStore()
        metrics = Metrics()
        manager = manager_over(settings, store, metrics)
        gm = FakeMember("gm1", "gm")
        session, _ = await manager.join("c1", gm)
        clock = asyncio.get_running_loop().time

        async def edit(x: int) -> None:
            message = {"type": "token.add", "payload": token_payload(f"t{x}", x=x)}
            decoded = decode_client_message(json.dumps(message))
            assert isinstance(decoded, TokenAddMsg)
            await session.submit(gm, decoded)

        async def gaps(count: int) -> list[float]:
            """The delays before each of the next `count` write attempts."""
            found, last = [], clock()
            for _ in range(count):
                async with asyncio.timeout(MAX_FLUSH_BACKOFF * 2):
                    attempt = await store.attempts.get()
                found.append(attempt - last)
                last = attempt
            return found

        def logged(message: str) -> int:
            return sum(1 for r in caplog.records if r.getMessage().startswith(message))

        await edit(1)
        store.outage = True
        manager.start()
        backoff = [min(interval * 2**n, MAX_FLUSH_BACKOFF) for n in range(8)]
        assert await gaps(8) == pytest.approx(backoff)
        assert session.dirty
        assert metrics.registry.get_sample_value("vtt_flush_failures_total") == 8
        assert logged("flush failed") == 1
        assert logged("flush recovered") == 0

        store.outage = False
        assert await gaps(1) == pytest.approx([MAX_FLUSH_BACKOFF])
        assert not session.dirty
        assert store.rows.keys() == {"c1"}
        assert gm.received[-1]["type"] == "state.saved"
        assert logged("flush recovered") == 1

        await edit(2)
        assert await gaps(1) == pytest.approx([interval]), "a success resets the backoff"
        store.outage = True
        await edit(3)
        assert await gaps(3) == pytest.approx([interval, interval * 2, interval * 4])
        assert logged("flush failed") == 2, "a second outage is logged once more"

        store.outage = False
        assert await manager.close(clock() + MAX_FLUSH_BACKOFF, clock=clock)
        assert not session.dirty
        assert logged("flush failed") == 2
        assert logged("flush recovered") == 2

    loop = VirtualClockLoop()
    try:
        with caplog.at_level("INFO", logger="vtt.manager"):
            loop.run_until_complete(asyncio.wait_for(scenario(), timeout=3600))
    finally:
        loop.close()


def test_a_session_waiting_for_eviction_during_an_outage_adds_no_writes_to_the_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        settings = Settings(env="test", evict_grace=0.0)
        interval = settings.flush_interval
        store = RecordingStore()
        manager = manager_over(settings, store, Metrics())
        gm = FakeMember("gm1", "gm")
        session, _ = await manager.join("c1", gm)
        clock = asyncio.get_running_loop().time
        message = {"type": "token.add", "payload": token_payload("t1")}
        decoded = decode_client_message(json.dumps(message))
        assert isinstance(decoded, TokenAddMsg)
        await session.submit(gm, decoded)

        store.outage = True
        manager.start()
        async with asyncio.timeout(interval * 2):
            first = await store.attempts.get()
        assert first == pytest.approx(interval)
        await session.leave(gm)
        manager.released(session)

        attempts = []
        for _ in range(5):
            async with asyncio.timeout(MAX_FLUSH_BACKOFF * 2):
                attempts.append(await store.attempts.get())
        gaps = [b - a for a, b in zip([first, *attempts], attempts, strict=False)]
        assert gaps == pytest.approx([interval * 2, interval * 4, interval * 8, 60.0, 60.0])
        assert manager.sessions.keys() == {"c1"}, "unsaved: kept in memory"

        evictor = manager._evicting["c1"]
        store.outage = False
        async with asyncio.timeout(MAX_FLUSH_BACKOFF * 2):
            await store.attempts.get()
            await evictor
        assert "c1" not in manager.sessions
        assert store.rows.keys() == {"c1"}
        assert session.closed
        assert await manager.close(clock() + 1.0, clock=clock)

    loop = VirtualClockLoop()
    try:
        with caplog.at_level("INFO", logger="vtt.manager"):
            loop.run_until_complete(asyncio.wait_for(scenario(), timeout=3600))
    finally:
        loop.close()
