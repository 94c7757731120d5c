"""The demo table at /demo in real Chromium: a GM page and a player page on one campaign."""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright

from tests.support.harness import TIMEOUT, RunningServer, serve, settings_for

pytestmark = pytest.mark.anyio

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_INSTALLED = CHROMIUM.exists()
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
WAIT_MS = TIMEOUT * 1000
GRID = 64


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """A development server (the demo is mounted in development)."""
    async with serve(settings_for(tmp_path, env="development")) as running:
        yield running


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium under Playwright; required in CI, skipped elsewhere when missing."""
    if not CHROMIUM_INSTALLED:
        message = f"{CHROMIUM} is missing: apt-get install -y chromium"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=WAIT_MS * 3
        )
        try:
            yield launched
        finally:
            await launched.close()


@dataclass
class Table:
    """Opens demo pages and screenshots every one of them when the test ends."""

    browser: Browser
    server: RunningServer
    name: str
    pages: dict[str, Page] = field(default_factory=dict)

    async def open(self, label: str, user: str, role: str, campaign: str = "demo") -> Page:
        """A new browser context on the demo page, once its client has joined."""
        context = await self.browser.new_context(viewport={"width": 1400, "height": 1000})
        page = await context.new_page()
        page.set_default_timeout(WAIT_MS)
        self.pages[label] = page
        await page.goto(f"{self.server.http}/demo/?campaign={campaign}&user={user}&role={role}")
        await page.wait_for_function("window.__vtt && window.__vtt.view().status === 'open'")
        return page

    async def screenshot_all(self, moment: str = "") -> None:
        """Save each page as test-artifacts/screenshots/<test>-<label>[-<moment>].png."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        suffix = f"-{moment}" if moment else ""
        for label, page in self.pages.items():
            path = SCREENSHOTS / f"{self.name}-{label}{suffix}.png"
            await page.screenshot(path=path, full_page=True)


@pytest.fixture
async def table(
    browser: Browser, server: RunningServer, request: pytest.FixtureRequest
) -> AsyncIterator[Table]:
    """The pages of one test, screenshotted at its end whether it passed or not."""
    opened = Table(browser, server, re.sub(r"^test_", "", request.node.name))
    try:
        yield opened
    finally:
        await opened.screenshot_all()
        for page in opened.pages.values():
            await page.context.close()


def token_selector(token_id: str) -> str:
    return f'.token[data-token-id="{token_id}"]'


async def add_token(gm: Page, name: str, *others: Page) -> str:
    """Add a token from the GM's toolbar; return its id once every page shows it."""
    await gm.fill("#token-name", name)
    await gm.click("#add-token")
    row = gm.locator("#token-list li", has_text=name)
    token_id = await row.get_attribute("data-token-id")
    assert token_id is not None
    for page in others:
        await page.wait_for_selector(token_selector(token_id))
    return token_id


async def position(page: Page, token_id: str) -> tuple[float, float]:
    element = page.locator(token_selector(token_id))
    x, y = await element.get_attribute("data-x"), await element.get_attribute("data-y")
    assert x is not None
    assert y is not None
    return float(x), float(y)


async def wait_for_position(page: Page, token_id: str, place: tuple[float, float]) -> None:
    """Wait until `page` shows the token at `place` (as the server last confirmed it)."""
    await page.wait_for_function(
        """([selector, x, y]) => {
            const el = document.querySelector(selector);
            return el !== null && Number(el.dataset.x) === x && Number(el.dataset.y) === y;
        }""",
        arg=[token_selector(token_id), place[0], place[1]],
    )


async def drag_token(page: Page, token_id: str, dx: float, dy: float) -> None:
    """Drag a token by (dx, dy) CSS pixels (the board is drawn at one map pixel per CSS pixel)."""
    box = await page.locator(f"{token_selector(token_id)} circle").bounding_box()
    assert box is not None
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    await page.mouse.move(x, y)
    await page.mouse.down()
    await page.mouse.move(x + dx, y + dy, steps=8)
    await page.mouse.up()


async def frames(page: Page) -> list[dict[str, Any]]:
    received: list[dict[str, Any]] = await page.evaluate("window.__vttFrames")
    return received


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
