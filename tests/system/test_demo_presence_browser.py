"""The demo table's live layer in real Chromium: who is here, cursors, pings and drag locks."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, WebSocket

from tests.support.demo_browser import (
    GRID,
    Table,
    add_token,
    board_origin,
    chromium,
    demo_table,
    drag_token,
    position,
    token_center,
    token_selector,
    wait_for_position,
)
from tests.support.harness import RunningServer, serve, settings_for

pytestmark = pytest.mark.anyio


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """A development server (the demo is mounted in development)."""
    async with serve(settings_for(tmp_path, env="development")) as running:
        yield running


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium under Playwright."""
    async with chromium() as launched:
        yield launched


@pytest.fixture
async def table(
    browser: Browser, server: RunningServer, request: pytest.FixtureRequest
) -> AsyncIterator[Table]:
    """The pages of one test, screenshotted at its end."""
    async with demo_table(browser, server, request) as opened:
        yield opened


def record_sent(page: Page) -> list[dict[str, Any]]:
    """Every frame the page's client sends from now on (call before the page opens its socket)."""
    sent: list[dict[str, Any]] = []

    def watch(socket: WebSocket) -> None:
        socket.on(
            "framesent",
            lambda payload: sent.append(json.loads(payload)) if isinstance(payload, str) else None,
        )

    page.on("websocket", watch)
    return sent


async def wait_for_mark(page: Page, kind: str, user: str, at: tuple[int, int]) -> None:
    """Wait until `page` draws `user`'s cursor or ping (`kind`) at map point `at`."""
    await page.wait_for_function(
        """([selector, x, y]) => {
            const mark = document.querySelector(selector);
            return mark !== null && Number(mark.dataset.x) === x && Number(mark.dataset.y) === y;
        }""",
        arg=[f'.{kind}[data-user-id="{user}"]', at[0], at[1]],
    )


async def test_each_page_lists_who_is_at_the_table_with_their_role(table: Table) -> None:
    gm = await table.open("gm", "alice", "gm")
    player = await table.open("player", "bob", "player")
    for page in (gm, player):
        await page.wait_for_selector('#members li[data-user-id="bob"]')
        assert await page.locator("#members li").count() == 2
    assert await gm.locator('#members li[data-user-id="alice"]').text_content() == "alice (you) GM"
    assert await gm.locator('#members li[data-user-id="bob"]').text_content() == "bob player"
    assert await player.locator('#members li[data-user-id="bob"]').text_content() == (
        "bob (you) player"
    )
    second_tab = await table.open("player-again", "bob", "player")
    await second_tab.wait_for_selector('#members li[data-user-id="alice"]')
    assert await second_tab.locator("#members li").count() == 2


async def test_a_cursor_and_a_ping_cross_over_between_the_gm_and_the_player(
    table: Table,
) -> None:
    gm = await table.open("gm", "alice", "gm")
    player = await table.open("player", "bob", "player")
    await gm.wait_for_selector('#members li[data-user-id="bob"]')
    gx, gy = await board_origin(gm)
    px, py = await board_origin(player)

    await gm.mouse.move(gx + 300, gy + 200, steps=4)
    await wait_for_mark(player, "cursor", "alice", (300, 200))
    await player.mouse.move(px + 420, py + 140, steps=4)
    await wait_for_mark(gm, "cursor", "bob", (420, 140))
    # Leaving the board takes the cursor off the others' tables.
    await gm.mouse.move(gx + 300, gy - 20)
    await player.wait_for_selector('.cursor[data-user-id="alice"]', state="detached")

    # Click and hold on the map: a ping, drawn on the other page where it was made.
    await gm.mouse.move(gx + 5 * GRID, gy + 3 * GRID)
    await gm.mouse.down()
    await wait_for_mark(player, "ping", "alice", (5 * GRID, 3 * GRID))
    await gm.mouse.up()
    await gm.wait_for_selector(".ping.mine")
    await table.screenshot_all("pinged")
    await player.mouse.move(px + 2 * GRID, py + 2 * GRID)
    await player.mouse.down()
    await wait_for_mark(gm, "ping", "bob", (2 * GRID, 2 * GRID))
    await player.mouse.up()
    # A ping fades: the client drops it from the view after its lifetime.
    await player.wait_for_selector('.ping[data-user-id="alice"]', state="detached")


async def test_a_token_the_gm_holds_is_locked_on_the_players_page_and_cannot_be_dragged_there(
    table: Table,
) -> None:
    gm = await table.open("gm", "alice", "gm")
    player = table.pages["player"] = await table.browser.new_page(
        viewport={"width": 1400, "height": 1000}
    )
    sent = record_sent(player)
    await player.goto(f"{table.server.http}/demo/?campaign=demo&user=bob&role=player")
    await player.wait_for_function("window.__vtt && window.__vtt.view().status === 'open'")
    token_id = await add_token(gm, "Ogre", player)
    start = await position(gm, token_id)

    # The GM grabs the token and holds it, mid-drag.
    x, y = await token_center(gm, token_id)
    await gm.mouse.move(x, y)
    await gm.mouse.down()
    await gm.mouse.move(x + GRID, y, steps=4)
    locked = f'{token_selector(token_id)}.locked[data-locked-by="alice"]'
    await player.wait_for_selector(locked)
    assert "alice" in (await player.locator(f"{locked} text.lock").text_content() or "")
    await table.screenshot_all("locked")

    # The player tries to drag it: the page sends nothing about it, and it does not move.
    await drag_token(player, token_id, 0, 3 * GRID)
    await gm.mouse.move(x + 2 * GRID, y, steps=4)
    await gm.mouse.up()
    dropped = (start[0] + 2 * GRID, start[1])
    await wait_for_position(player, token_id, dropped)
    await wait_for_position(gm, token_id, dropped)
    await player.wait_for_selector(f"{token_selector(token_id)}:not(.locked)")
    about = [f for f in sent if f.get("payload", {}).get("token_id") == token_id]
    assert about == []

    # Released: now the player may drag it.
    await drag_token(player, token_id, 0, GRID)
    await wait_for_position(gm, token_id, (dropped[0], dropped[1] + GRID))
    kinds = [f["type"] for f in sent if f.get("payload", {}).get("token_id") == token_id]
    assert kinds[0] == "token.grab"
    assert kinds[-2:] == ["token.move", "token.release"]
