"""Not one edit lost across a restart of the server process, nor across a SIGTERM."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.support.harness import Peer, token_payload
from tests.support.process import ServerProcess
from tests.support.table import saved

pytestmark = pytest.mark.anyio


async def test_a_restart_keeps_every_saved_edit(tmp_path: Path, database_url: str) -> None:
    server = ServerProcess(tmp_path, {"DATABASE_URL": database_url, "VTT_FLUSH_INTERVAL": "0.2"})
    await server.start()
    try:
        gm = await Peer.greeted(server.ws_url("c1", server.token("gm1", "gm")))
        await gm.request("token.add", token_payload("t1", x=3, y=4))
        await gm.request("token.move", {"token_id": "t1", "x": 30, "y": 40})
        await saved(gm, 2)
        first_epoch = gm.sync["payload"]["epoch"]
        await gm.close()
        await server.stop()
        await server.start()
        again = await Peer.greeted(server.ws_url("c1", server.token("gm1", "gm")))
        state = again.sync["payload"]
        assert state["tokens"]["t1"]["x"] == 30
        assert state["tokens"]["t1"]["owner_id"] == "gm1"
        assert state["seq"] == 2
        assert state["epoch"] != first_epoch
        await again.close()
    finally:
        server.kill()


async def test_sigterm_right_after_an_edit_keeps_that_edit(
    tmp_path: Path, database_url: str
) -> None:
    server = ServerProcess(tmp_path, {"DATABASE_URL": database_url, "VTT_FLUSH_INTERVAL": "3600"})
    await server.start()
    try:
        gm = await Peer.greeted(server.ws_url("c1", server.token("gm1", "gm")))
        await gm.request("token.add", token_payload("t1", x=7))
        await gm.roundtrip()
        await server.stop(signal.SIGTERM)
        code, _ = await gm.closed()
        assert code == 1012
        await server.start()
        again = await Peer.greeted(server.ws_url("c1", server.token("gm1", "gm")))
        assert again.sync["payload"]["tokens"]["t1"]["x"] == 7
        await again.close()
    finally:
        server.kill()
