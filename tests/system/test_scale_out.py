"""Issue 17's faults, each on two or three server processes, one private Redis and Postgres.

Every client here is a `Recorder`: it records each frame as it arrives, so what a client saw
is known even across the kills, pauses and reconnects the tests cause. The GM drags token
`t1` to x = 1, 2, 3, ...: a move's x says which edit it was, so "nothing seen was lost"
reads as "the new owner's x is at least the highest x anyone saw".
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from tests.support.cluster import Cluster, StartCluster
from tests.support.fence_audit import fence_audit, install_fence_audit
from tests.support.flyproxy import FlyProxy
from tests.support.harness import token_payload
from tests.support.poll import poll
from tests.support.process import ServerProcess
from tests.support.redisproc import RedisProcess
from tests.support.wsclient import Recorder

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

TTL = 2.0
TIMEOUT = 15.0


def moves_seen(*clients: Recorder) -> list[int]:
    """The x of every token.move of t1 any of `clients` received."""
    return [
        frame["payload"]["x"]
        for client in clients
        for frame in client.frames
        if frame["type"] == "token.move" and frame["payload"]["token_id"] == "t1"
    ]


def assert_gapless(client: Recorder) -> None:
    """Each sequenced frame after a state.sync or state.resume follows the one before it."""
    expected: int | None = None
    for frame in client.frames:
        kind, seq = frame["type"], frame.get("seq")
        if kind == "state.sync":
            expected = seq
            continue
        if kind == "state.resume":
            expected = frame["payload"]["from_seq"] - 1
            continue
        if kind == "state.saved" or not isinstance(seq, int):
            continue
        assert expected is not None
        assert seq == expected + 1, (kind, seq, expected)
        expected = seq


async def health(node: ServerProcess) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=5.0) as client:
        answer = await client.get(f"http://127.0.0.1:{node.port}/health")
    body: dict[str, Any] = answer.json()
    return body


async def ready(node: ServerProcess) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=5.0) as client:
        answer = await client.get(f"http://127.0.0.1:{node.port}/ready")
    body: dict[str, Any] = answer.json()
    return body


async def open_gm(node: ServerProcess, campaign: str = "c1") -> Recorder:
    gm = await Recorder.open(node.ws_url(campaign, node.token("gm1", "gm")))
    await gm.next("state.sync")
    return gm


async def with_token(gm: Recorder) -> None:
    await gm.send("token.add", token_payload("t1", x=0))
    await gm.next("token.add")


async def drag(gm: Recorder, start: int, count: int, interval: float = 0.01) -> int:
    """Send moves of t1 to x = start .. start + count - 1; the last x sent."""
    x = start
    for x in range(start, start + count):
        await gm.send("token.move", {"token_id": "t1", "x": x, "y": 0})
        await asyncio.sleep(interval)
    return x


async def reconnect_until_greeted(client: Recorder, url: str, deadline: float) -> tuple[str, float]:
    """Reconnect (resuming) until a state.sync or state.resume arrives; which, and when."""
    while True:
        before = len(client.arrivals)
        try:
            await client.reconnect(url, timeout=2.0)
            arrival = await _greeting_after(client, before)
            return arrival
        except (AssertionError, OSError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def _greeting_after(client: Recorder, index: int) -> tuple[str, float]:
    async def arrived() -> bool:
        if any(a.type in {"state.sync", "state.resume"} for a in client.arrivals[index:]):
            return True
        if client.close_code is not None:
            raise AssertionError(f"closed {client.close_code}")
        return False

    await poll(arrived, 5.0, "a greeting")
    first = next(a for a in client.arrivals[index:] if a.type in {"state.sync", "state.resume"})
    return first.type, first.at


async def state_of(node: ServerProcess, campaign: str = "c1") -> dict[str, Any]:
    """The campaign's state as a fresh GM on `node` is given it."""
    gm = await Recorder.open(node.ws_url(campaign, node.token("gm-witness", "gm")))
    try:
        sync = await gm.next("state.sync")
    finally:
        await gm.close()
    payload: dict[str, Any] = sync["payload"]
    payload["seq"] = sync["seq"]
    return payload


async def fence_of(redis_url: str, campaign: str = "c1") -> int:
    client = aioredis.Redis.from_url(redis_url)
    try:
        value = await client.get(f"vtt:{{{campaign}}}:fence")
    finally:
        await client.aclose()
    return int(value or 0)


# --- (a) one campaign on two machines: one gapless seq order --------------------------------


async def test_clients_of_one_campaign_on_two_machines_see_one_gapless_order(
    cluster: StartCluster,
) -> None:
    nodes = await cluster(size=2)
    a, b = nodes.node("a"), nodes.node("b")
    gm = await open_gm(a)
    player = await Recorder.open(b.ws_url("c1", b.token("pl1", "player")))
    await player.next("state.sync")
    await with_token(gm)
    await player.next("token.add")

    await drag(gm, 1, 20)
    await player.send("ping")
    await poll(lambda: 20 in moves_seen(player), TIMEOUT, "the player to see the last move")

    assert [f["seq"] for f in gm.frames if f["type"] == "token.move"] == [
        f["seq"] for f in player.frames if f["type"] == "token.move"
    ]
    assert_gapless(gm)
    assert_gapless(player)
    assert (await health(a))["clients"] == 2
    assert (await health(b))["sessions"] == 0


async def test_on_fly_a_non_owner_answers_with_fly_replay_and_the_proxy_reaches_the_owner(
    cluster: StartCluster,
) -> None:
    nodes = await cluster(size=2, env={"VTT_ROUTING": "fly-replay"})
    a = nodes.node("a")
    gm = await open_gm(a)
    await with_token(gm)
    async with FlyProxy(nodes.ports, pick=lambda: "b") as proxy:
        token = a.token("pl1", "player")
        player = await Recorder.open(proxy.url(f"/ws?campaign=c1&token={token}"))
        await player.next("state.sync")
        await drag(gm, 1, 5)
        await poll(lambda: 5 in moves_seen(player), TIMEOUT, "the replayed player to see moves")

        assert [(r.node, r.replayed_to, r.failed) for r in proxy.log] == [("b", "a", False)]
        assert (await health(a))["clients"] == 2
        assert (await health(nodes.node("b")))["sessions"] == 0
        await player.close()
    await gm.close()


# --- (b) SIGKILL the owner mid-drag ---------------------------------------------------------


async def test_a_killed_owners_campaign_is_taken_over_in_time_and_keeps_every_seen_edit(
    cluster: StartCluster, redis_server: RedisProcess
) -> None:
    nodes = await cluster(size=2)
    a, b = nodes.node("a"), nodes.node("b")
    gm = await open_gm(a)
    await with_token(gm)
    witness = await Recorder.open(b.ws_url("c1", b.token("pl1", "player")))
    await witness.next("state.sync")
    dragging = asyncio.create_task(drag(gm, 1, 10_000, interval=0.005))
    await poll(lambda: len(moves_seen(witness)) >= 30, TIMEOUT, "the drag to be under way")

    assert a.proc is not None
    a.proc.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    await a.proc.wait()
    dragging.cancel()
    await asyncio.gather(dragging, return_exceptions=True)
    seen = max(moves_seen(gm, witness))
    seen_seq = max(gm.seqs() + witness.seqs())

    url = b.ws_url("c1", b.token("pl1", "player"))
    kind, at = await reconnect_until_greeted(witness, url, killed + TTL + 5.0)

    assert at - killed <= TTL + 1.0, at - killed
    assert kind == "state.resume"
    state = await state_of(b)
    assert state["seq"] >= seen_seq
    assert state["tokens"]["t1"]["x"] >= seen
    assert max(moves_seen(witness)) == state["tokens"]["t1"]["x"]
    assert_gapless(witness)
    assert await fence_of(redis_server.url) == 2


# --- (c) Redis away for 1 s -----------------------------------------------------------------


async def test_redis_away_for_a_second_stalls_edits_then_delivers_them_in_order(
    cluster: StartCluster, redis_server: RedisProcess
) -> None:
    nodes = await cluster(size=2, env={"VTT_LEASE_TTL": "4"})
    a, b = nodes.node("a"), nodes.node("b")
    gm = await open_gm(a)
    await with_token(gm)
    player = await Recorder.open(b.ws_url("c1", b.token("pl1", "player")))
    await player.next("state.sync")

    redis_server.pause()
    paused = time.monotonic()
    await drag(gm, 1, 10, interval=0.05)
    held = [a for a in player.arrivals if a.type == "token.move"]
    await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - paused)))
    redis_server.resume()
    await poll(lambda: 10 in moves_seen(player), TIMEOUT, "the held moves to arrive")

    assert held == []
    assert moves_seen(player) == list(range(1, 11))
    assert moves_seen(gm) == list(range(1, 11))
    assert gm.close_code is None
    assert player.close_code is None
    assert_gapless(gm)
    assert_gapless(player)


# --- (d) Redis away past the deadline -------------------------------------------------------


async def test_redis_away_past_the_deadline_closes_owners_with_1013_and_loses_nothing(
    cluster: StartCluster, redis_server: RedisProcess, postgres_url: str
) -> None:
    nodes = await cluster(size=2, env={"VTT_FLUSH_INTERVAL": "30"})
    a, b = nodes.node("a"), nodes.node("b")
    await install_fence_audit(postgres_url)
    gm = await open_gm(a)
    await with_token(gm)
    await drag(gm, 1, 10)
    await poll(lambda: 10 in moves_seen(gm), TIMEOUT, "the moves to be acknowledged")

    assert await ready(a) == {"status": "ready", "redis": "ok"}

    redis_server.pause()
    stopped = time.monotonic()
    code = await gm.closed(timeout=TTL + 3.0)
    closed_after = time.monotonic() - stopped

    assert code == 1013
    assert closed_after <= TTL + 0.5, closed_after
    not_ready = await ready(a)
    assert (not_ready["status"], not_ready["reason"]) == ("not ready", "redis")
    late = await Recorder.open(b.ws_url("c1", b.token("pl2", "player")))
    assert await late.closed(timeout=TIMEOUT) == 1013
    redis_server.resume()

    async def back() -> bool:
        try:
            state = await state_of(b)
        except (AssertionError, OSError, TimeoutError):
            return False
        return bool(state["tokens"]["t1"]["x"] == 10)

    await poll(back, TIMEOUT, "the campaign to come back with every seen edit", interval=0.2)
    writes = [(fence, seq) for campaign, fence, seq in await fence_audit(postgres_url)]
    assert writes
    assert writes == sorted(writes)


# --- (e) a paused owner ---------------------------------------------------------------------


async def test_a_paused_owner_never_shows_an_edit_past_its_tip_nor_overwrites_the_new_owner(
    cluster: StartCluster, postgres_url: str
) -> None:
    nodes = await cluster(size=2, env={"VTT_FLUSH_INTERVAL": "0.2"})
    a, b = nodes.node("a"), nodes.node("b")
    await install_fence_audit(postgres_url)
    gm = await open_gm(a)
    await with_token(gm)
    await drag(gm, 1, 5)
    await poll(lambda: 5 in moves_seen(gm), TIMEOUT, "the moves before the pause")
    assert a.proc is not None
    a.proc.send_signal(signal.SIGSTOP)
    tip = max(gm.seqs())
    try:
        # The edits sent now wait in A's socket; whatever A does with them on waking must
        # not reach anyone.
        await drag(gm, 100, 5)
        await asyncio.sleep(TTL + 0.5)
        other = await Recorder.open(b.ws_url("c1", b.token("gm2", "gm")))
        await other.next("state.sync")
        await other.send("token.move", {"token_id": "t1", "x": 500, "y": 0})
        await other.next("token.move")
    finally:
        a.proc.send_signal(signal.SIGCONT)
    woke = time.monotonic()
    code = await gm.closed(timeout=TIMEOUT)
    assert code in {1012, 1013}
    assert time.monotonic() - woke <= 1.5

    assert max(gm.seqs()) <= tip
    assert 100 not in moves_seen(gm)
    assert 100 not in moves_seen(other)

    async def new_owner_wrote() -> bool:
        return any(fence == 2 for _, fence, _ in await fence_audit(postgres_url))

    # A's last flush (on waking, under fence 1) may come before B's first; never after it.
    await poll(new_owner_wrote, TIMEOUT, "the new owner's first write")
    # B's next flush (0.2 s) gives A's a window to land after it, if A could write at all.
    await asyncio.sleep(0.5)
    writes = await fence_audit(postgres_url)
    new_owner_writes = [i for i, (_, fence, _) in enumerate(writes) if fence == 2]
    assert new_owner_writes, writes
    assert all(fence == 2 for _, fence, _ in writes[new_owner_writes[0] :]), writes
    state = await state_of(b)
    assert state["tokens"]["t1"]["x"] == 500
    await other.close()


# --- (f) a claim race -----------------------------------------------------------------------


async def test_twenty_clients_of_a_new_campaign_on_three_machines_make_exactly_one_claim(
    cluster: StartCluster, redis_server: RedisProcess
) -> None:
    nodes = await cluster(size=3)
    machines = list(nodes.nodes.values())

    async def join(index: int) -> Recorder:
        node = machines[index % 3]
        client = await Recorder.open(node.ws_url("race", node.token(f"u{index}", "player")))
        await client.next("state.sync")
        return client

    async with asyncio.timeout(TIMEOUT * 2):
        clients = await asyncio.gather(*(join(i) for i in range(20)))

    assert await fence_of(redis_server.url, "race") == 1
    assert len({c.epoch for c in clients}) == 1
    sessions = [(await health(node))["sessions"] for node in machines]
    assert sorted(sessions) == [0, 0, 1]
    for client in clients:
        await client.close()


# --- (g) a rolling drain --------------------------------------------------------------------


async def test_a_draining_machines_clients_resume_on_another_with_nothing_lost(
    cluster: StartCluster,
) -> None:
    nodes = await cluster(size=2)
    a, b = nodes.node("a"), nodes.node("b")
    gm = await open_gm(a)
    await with_token(gm)
    dragging = asyncio.create_task(drag(gm, 1, 30, interval=0.01))
    await poll(lambda: len(moves_seen(gm)) >= 10, TIMEOUT, "the drag to be under way")
    stopping = asyncio.create_task(a.stop())
    await asyncio.gather(dragging, return_exceptions=True)
    assert await gm.closed(timeout=TIMEOUT) == 1012
    seen = max(moves_seen(gm))
    started = time.monotonic()

    url = b.ws_url("c1", b.token("gm1", "gm"))
    kind, at = await reconnect_until_greeted(gm, url, started + TIMEOUT)
    await stopping

    # The draining machine sent every move it applied before the 1012 (those it merged and
    # applied on the way out included), so the client resumes exactly where the state is.
    assert kind == "state.resume"
    assert at - started <= 3.0
    state = await state_of(b)
    assert state["tokens"]["t1"]["x"] == seen
    assert_gapless(gm)


# --- chat, presence and drag locks across machines and owner changes --------------------------


async def test_a_broadcast_posted_to_a_non_owner_is_published_by_the_owner(
    cluster: StartCluster,
) -> None:
    nodes = await cluster(size=2, env={"INTERNAL_API_SECRET": "internal-secret"})
    a, b = nodes.node("a"), nodes.node("b")
    gm = await open_gm(a)
    body = {
        "campaign_id": "c1",
        "user_id": "gm1",
        "message_type": "text",
        "content": {"text": "from the app"},
        "gm_only": False,
    }

    async with httpx.AsyncClient(timeout=5.0) as client:
        answer = await client.post(
            f"http://127.0.0.1:{b.port}/internal/broadcast",
            json=body,
            headers={"authorization": "Bearer internal-secret"},
        )
        forged = await client.post(
            f"http://127.0.0.1:{a.port}/internal/cluster/chat",
            content=b"{}",
            headers={"x-vtt-signature": "1.00"},
        )

    assert answer.status_code == 204
    message = await gm.next("chat.message")
    assert message["payload"]["content"] == {"text": "from the app"}
    assert message["seq"] == 1
    assert forged.status_code == 401
    await gm.close()


async def test_chat_presence_and_locks_survive_an_owner_change_as_the_contract_says(
    cluster: StartCluster,
) -> None:
    nodes = await cluster(size=2, env={"VTT_FLUSH_INTERVAL": "30"})
    a, b = nodes.node("a"), nodes.node("b")
    gm = await open_gm(a)
    await with_token(gm)
    player = await Recorder.open(b.ws_url("c1", b.token("pl1", "player")))
    await player.next("state.sync")
    await gm.send("chat.send", {"content": "before the crash"})
    said = await player.next("chat.message")
    await gm.send("token.grab", {"token_id": "t1"})
    await player.next("token.grabbed")
    await drag(gm, 1, 3)
    await poll(lambda: 3 in moves_seen(player), TIMEOUT, "the moves after the chat")

    assert a.proc is not None
    a.proc.send_signal(signal.SIGKILL)
    await a.proc.wait()
    kind, _ = await reconnect_until_greeted(
        player, b.ws_url("c1", b.token("pl1", "player")), time.monotonic() + TTL + 5.0
    )

    # The chat message's seq came back from the op log: the chain is whole, so a resume.
    assert kind == "state.resume"
    latest = player.connections - 1

    def presence_now() -> list[dict[str, Any]]:
        return [
            a.frame for a in player.arrivals if a.connection == latest and a.type == "presence.sync"
        ]

    await poll(lambda: bool(presence_now()), TIMEOUT, "presence after the resume")
    members = presence_now()[0]["payload"]["members"]
    assert [m["user_id"] for m in members] == ["pl1"]
    fresh = await Recorder.open(b.ws_url("c1", b.token("pl2", "player")))
    history = await fresh.next("chat.history")
    assert [m["id"] for m in history["payload"]["messages"]] == [said["payload"]["id"]]
    # The GM's drag lock ended with its machine: the token is free to grab.
    await fresh.send("token.grab", {"token_id": "t1"})
    grabbed = await fresh.next("token.grabbed")
    assert grabbed["payload"] == {"token_id": "t1", "user_id": "pl2"}
    await fresh.close()
    await player.close()


async def test_a_clustered_machine_without_host_listens_on_ipv4_and_ipv6(
    tmp_path: Path, redis_server: RedisProcess, postgres_url: str
) -> None:
    # On Fly the proxy comes over IPv4 and the other machines over 6PN (IPv6).
    nodes = Cluster(tmp_path, redis_server.url, postgres_url, size=1)
    node = nodes.node("a")
    del node.env["HOST"]
    await nodes.start()
    try:
        async with httpx.AsyncClient(timeout=5.0) as client:
            for host in ("127.0.0.1", "[::1]"):
                answer = await client.get(f"http://{host}:{node.port}/health")
                assert answer.status_code == 200, host
    finally:
        await nodes.stop()


async def test_without_a_cluster_secret_the_owner_verifies_the_relayed_clients_own_token(
    cluster: StartCluster,
) -> None:
    nodes = await cluster(size=2, env={"VTT_CLUSTER_SECRET": ""})
    a, b = nodes.node("a"), nodes.node("b")
    gm = await open_gm(a)
    await with_token(gm)
    player = await Recorder.open(b.ws_url("c1", b.token("pl1", "player")))
    await player.next("state.sync")

    await drag(gm, 1, 3)

    await poll(lambda: 3 in moves_seen(player), TIMEOUT, "the relayed player to see the moves")
    assert (await health(a))["clients"] == 2
    assert (await health(b))["sessions"] == 0
    await player.close()
    await gm.close()
