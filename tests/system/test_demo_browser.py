"""The demo table at /demo in real Chromium: a GM page and a player page on one campaign."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser

from tests.support.demo_browser import (
    GRID,
    Table,
    add_token,
    chromium,
    demo_table,
    drag_token,
    frames,
    position,
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


async def test_a_gm_drag_shows_on_the_players_page_within_500_ms(table: Table) -> None:
    gm = await table.open("gm", "alice", "gm")
    player = await table.open("player", "bob", "player")
    token_id = await add_token(gm, "Knight", player)
    x0, y0 = await position(gm, token_id)
    # Off-grid by a few pixels, so only the drop (snapped to the grid) lands on the target.
    target = (x0 + 3 * GRID, y0 + 2 * GRID)
    await player.evaluate(
        """([id, x, y]) => {
            window.__shownAt = null;
            const check = () => {
                const el = document.querySelector(`.token[data-token-id="${id}"]`);
                if (window.__shownAt === null && el && el.dataset.x === String(x)
                        && el.dataset.y === String(y)) {
                    window.__shownAt = Date.now();
                }
            };
            new MutationObserver(check).observe(document.getElementById("board"),
                {subtree: true, attributes: true, childList: true});
        }""",
        [token_id, target[0], target[1]],
    )
    await gm.evaluate(
        """() => {
            window.__releasedAt = null;
            window.addEventListener("pointerup", () => { window.__releasedAt = Date.now(); },
                {capture: true, once: true});
        }"""
    )
    await drag_token(gm, token_id, 3 * GRID + 10, 2 * GRID + 7)
    await player.wait_for_function("window.__shownAt !== null")
    released_at = await gm.evaluate("window.__releasedAt")
    shown_at = await player.evaluate("window.__shownAt")
    assert shown_at - released_at < 500, f"the player saw the move {shown_at - released_at} ms late"
    # The GM's echo of the drop may arrive after the player's copy: wait for it rather than read.
    await wait_for_position(gm, token_id, target)
    moves = [f for f in await frames(player) if f["type"] == "token.move"]
    assert moves[-1]["payload"] == {"token_id": token_id, "x": target[0], "y": target[1]}


async def test_a_hidden_token_leaves_the_players_page_and_never_reaches_it_again(
    table: Table,
) -> None:
    gm = await table.open("gm", "alice", "gm")
    player = await table.open("player", "bob", "player")
    secret = await add_token(gm, "Goblin ambusher", player)
    row = gm.locator(f'#token-list li[data-token-id="{secret}"]')
    await row.locator("[data-action=toggle-visibility]").click()
    await player.wait_for_selector(token_selector(secret), state="detached")
    await gm.wait_for_selector(f"{token_selector(secret)}.hidden")
    await table.screenshot_all("while-hidden")
    # Moved while hidden; then a visible token, which the player receives after that move.
    hidden_at = await position(gm, secret)
    await drag_token(gm, secret, 4 * GRID, 0)
    await wait_for_position(gm, secret, (hidden_at[0] + 4 * GRID, hidden_at[1]))
    await add_token(gm, "Signpost", player)
    late = await table.open("late-player", "carol", "player")

    received = await frames(player)
    removal = next(
        i
        for i, f in enumerate(received)
        if f["type"] == "token.remove" and f["payload"]["token_id"] == secret
    )
    after_removal = json.dumps(received[removal + 1 :])
    assert secret not in after_removal
    assert "Goblin" not in after_removal
    for page in (player, late):
        assert secret not in await page.content()
        assert "Goblin" not in await page.content()
    late_frames = json.dumps(await frames(late))
    assert secret not in late_frames
    assert "Goblin" not in late_frames

    await row.locator("[data-action=toggle-visibility]").click()
    await player.wait_for_selector(token_selector(secret))
    assert await position(player, secret) == await position(gm, secret)


async def test_the_player_has_no_fog_or_hide_controls_and_sees_the_gms_fog(table: Table) -> None:
    gm = await table.open("gm", "alice", "gm")
    player = await table.open("player", "bob", "player")
    token_id = await add_token(gm, "Torch", player)
    controls = "#gm-tools, #fog-tools, #draw-fog, #clear-fog, #add-token, [data-action]"
    assert await gm.locator(controls).count() > 0
    assert await player.locator(controls).count() == 0

    await gm.click("#draw-fog")
    board = await gm.locator("#board").bounding_box()
    assert board is not None
    await gm.mouse.move(board["x"] + 5 * GRID + 3, board["y"] + 3 * GRID + 3)
    await gm.mouse.down()
    await gm.mouse.move(board["x"] + 9 * GRID - 3, board["y"] + 6 * GRID - 3, steps=6)
    await gm.mouse.up()
    fog = player.locator("rect.fog")
    await fog.wait_for()
    geometry = [await fog.get_attribute(name) for name in ("x", "y", "width", "height")]
    assert geometry == [str(5 * GRID), str(3 * GRID), str(4 * GRID), str(3 * GRID)]

    x, y = await position(player, token_id)
    await drag_token(player, token_id, GRID, GRID)
    await wait_for_position(player, token_id, (x + GRID, y + GRID))
    await wait_for_position(gm, token_id, (x + GRID, y + GRID))
    assert [f for f in await frames(player) if f["type"] == "error"] == []
