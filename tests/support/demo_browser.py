"""The demo table (/demo) in Debian's Chromium under Playwright: pages, screenshots, helpers.

Used by tests/system/test_demo*_browser.py; each test module wraps these in its fixtures.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright

from tests.support.harness import TIMEOUT, RunningServer

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


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """Debian's Chromium; required in CI, the test skipped elsewhere when it is missing."""
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


@asynccontextmanager
async def demo_table(
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


async def token_center(page: Page, token_id: str) -> tuple[float, float]:
    """Where the token's circle is on the screen (CSS pixels)."""
    box = await page.locator(f"{token_selector(token_id)} circle").bounding_box()
    assert box is not None
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


async def drag_token(page: Page, token_id: str, dx: float, dy: float) -> None:
    """Drag a token by (dx, dy) CSS pixels (the board is drawn at one map pixel per CSS pixel)."""
    x, y = await token_center(page, token_id)
    await page.mouse.move(x, y)
    await page.mouse.down()
    await page.mouse.move(x + dx, y + dy, steps=8)
    await page.mouse.up()


async def board_origin(page: Page) -> tuple[float, float]:
    """The screen position of the map's (0, 0)."""
    box = await page.locator("#board").bounding_box()
    assert box is not None
    return box["x"], box["y"]


async def frames(page: Page) -> list[dict[str, Any]]:
    received: list[dict[str, Any]] = await page.evaluate("window.__vttFrames")
    return received
