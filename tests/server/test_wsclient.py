"""The recording WebSocket client: it records as frames arrive, waits by type, and resumes."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.harness import RunningServer, token_payload
from tests.support.table import new_campaign
from tests.support.wsclient import Recorder

pytestmark = pytest.mark.anyio

TIMEOUT = 10.0


async def test_it_records_every_frame_and_waits_by_type(shared: RunningServer) -> None:
    url = shared.ws_url(new_campaign(), shared.token("gm1", "gm"))
    gm = await Recorder.open(url)
    sync = await gm.next("state.sync")
    assert gm.epoch == sync["payload"]["epoch"]
    await gm.send("token.add", token_payload("t1"))
    await gm.send("token.move", {"token_id": "t1", "x": 5, "y": 6})
    moved = await gm.next("token.move")
    added = await gm.next("token.add")
    assert (added["seq"], moved["seq"]) == (1, 2)
    assert gm.seqs() == [0, 1, 2]
    assert gm.seq == 2
    times = [arrival.at for arrival in gm.arrivals]
    assert times == sorted(times)
    assert gm.close_code is None
    await gm.close()
    assert gm.close_code == 1000


async def test_a_reconnect_resumes_from_the_last_seq_and_epoch(shared: RunningServer) -> None:
    campaign = new_campaign()
    url = shared.ws_url(campaign, shared.token("gm1", "gm"))
    gm = await Recorder.open(url)
    epoch = (await gm.next("state.sync"))["payload"]["epoch"]
    await gm.send("token.add", token_payload("t1"))
    await gm.next("token.add")
    await gm.close()
    other = await Recorder.open(shared.ws_url(campaign, shared.token("gm2", "gm")))
    await other.next("state.sync")
    await other.send("token.move", {"token_id": "t1", "x": 9, "y": 9})
    await other.next("token.move")
    assert gm.resume_url() == f"{url}&since=1&epoch={epoch}"
    await gm.reconnect()
    resume = await gm.next("state.resume")
    assert resume["payload"] == {"from_seq": 2, "to_seq": 2, "epoch": epoch}
    missed = await gm.next("token.move")
    assert missed["seq"] == 2
    assert gm.arrivals[-1].connection == 1
    assert gm.connections == 2
    assert gm.url == url
    await asyncio.gather(gm.close(), other.close())


async def test_next_fails_fast_when_the_connection_closes(shared: RunningServer) -> None:
    gm = await Recorder.open(shared.ws_url(new_campaign(), shared.token("gm1", "gm")))
    await gm.next("state.sync")
    await gm.close()
    with pytest.raises(AssertionError, match="closed"):
        await gm.next("token.move", timeout=TIMEOUT)
    assert await gm.closed() == 1000
