"""The demo table's chat in real Chromium: rolls, GM-only messages and whispers between pages."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page

from tests.support.demo_browser import Table, chromium, demo_table, frames
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


async def say(page: Page, text: str, *, gm_only: bool = False, to: str = "") -> None:
    """Type `text` into the chat box and send it, GM-only or whispered to `to` when asked."""
    await page.fill("#chat-input", text)
    await page.select_option("#chat-recipient", to)
    await page.set_checked("#chat-gm-only", gm_only)
    await page.click("#chat-send")


def message(text: str) -> str:
    """The selector of the chat message saying `text` (its content, as the page shows it)."""
    return f'#chat-log li.chat-message:has(.content:text-is(": {text}"))'


async def message_id(page: Page, text: str) -> str:
    """The id of the message saying `text`, once the page shows it."""
    await page.wait_for_selector(message(text))
    found = await page.get_attribute(message(text), "data-id")
    assert found is not None
    return found


async def test_a_players_gm_only_roll_shows_on_the_gms_page_and_never_on_another_players(
    table: Table,
) -> None:
    gm = await table.open("gm", "alice", "gm")
    bob = await table.open("bob", "bob", "player")
    carol = await table.open("carol", "carol", "player")
    await bob.wait_for_selector('#chat-recipient option[value="carol"]', state="attached")

    roll = "/roll 2d20kh1+5 # attack"
    await say(bob, roll, gm_only=True)
    roll_id = await message_id(gm, roll)
    assert await message_id(bob, roll) == roll_id
    shown = gm.locator(message(roll))
    assert await shown.get_attribute("class") == "chat-message gm-only"
    assert await shown.locator(".badge.audience").text_content() == "GM only"
    # The server's roll: two d20s, the higher kept, plus 5, the total the sum of what was kept.
    dice = [int(face) for face in await shown.locator(".roll .die").all_text_contents()]
    dropped = [int(face) for face in await shown.locator(".roll .die.dropped").all_text_contents()]
    total = int(await shown.locator(".roll .total").text_content() or "")
    assert len(dice) == 2
    assert len(dropped) == 1
    assert total == max(dice) + 5
    assert dropped == [min(dice)]
    assert "(attack)" in (await shown.locator(".roll").text_content() or "")
    bob_total = await bob.locator(f"{message(roll)} .roll .total").text_content()
    assert bob_total == str(total)
    await table.screenshot_all("after-the-roll")

    # A public message sent after it reaches carol: by then the roll would have, had it been hers.
    await say(bob, "the door creaks")
    await message_id(carol, "the door creaks")
    assert await carol.locator("#chat-log li").count() == 1
    assert roll_id not in json.dumps(await frames(carol))
    shown_to_carol = await carol.locator("#chat-log").inner_html()
    assert "2d20kh1" not in shown_to_carol
    assert "attack" not in shown_to_carol


async def test_a_whisper_reaches_the_picked_member_only_and_joins_their_history(
    table: Table,
) -> None:
    gm = await table.open("gm", "alice", "gm")
    bob = await table.open("bob", "bob", "player")
    carol = await table.open("carol", "carol", "player")
    await gm.wait_for_selector('#chat-recipient option[value="bob"]', state="attached")

    await say(gm, "a note for bob", to="bob")
    whisper = await message_id(bob, "a note for bob")
    assert await gm.get_attribute(message("a note for bob"), "data-id") == whisper
    badge = gm.locator(f"{message('a note for bob')} .badge.audience")
    assert await badge.text_content() == "whisper to bob"
    await say(gm, "hello everyone")
    await message_id(carol, "hello everyone")
    assert await carol.locator(message("a note for bob")).count() == 0
    assert whisper not in json.dumps(await frames(carol))

    again = await table.open("bob-again", "bob", "player")
    assert await message_id(again, "a note for bob") == whisper
    await message_id(again, "hello everyone")
