"""The Next.js example (examples/nextjs) in Chromium, on the client installed from its tarball.

`scripts/install.mjs` packs clients/ts and installs the tarball as a real app would (npm ci is
skipped when node_modules already came from the same lock and tarball); `next build`, its type
check included, makes the example against a server started here, and `next start` serves it.
React's strict mode mounts components twice only in its development build, so the test of one
WebSocket per page runs on `next dev`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright
from prometheus_client.parser import text_string_to_metric_families

from tests.support.harness import TIMEOUT, RunningServer, map_payload, serve, settings_for
from tests.support.process import free_port

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "nextjs"
NEXT = EXAMPLE / "node_modules" / ".bin" / "next"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
# A cold npm cache downloads Next.js; a warm one installs in seconds, or not at all.
INSTALL_TIMEOUT = 600.0
BUILD_TIMEOUT = 300.0
# `next dev` compiles the page on its first request.
SERVE_TIMEOUT = 120.0
WAIT_MS = TIMEOUT * 1000
GRID = 64

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(INSTALL_TIMEOUT + BUILD_TIMEOUT + 300)]


def require_tools() -> None:
    """Skip without Node.js, npm or Chromium (fail instead with CI=true)."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    missing += [] if CHROMIUM.exists() else [f"{CHROMIUM} (apt-get install -y chromium)"]
    if missing:
        message = f"the Next.js example needs {', '.join(missing)}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """One event loop for the module, so the server and the example are built once."""
    return "asyncio"


@pytest.fixture(scope="module")
async def vtt(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningServer]:
    """A development server (dev auth, the dev token endpoint) for every page of the module."""
    require_tools()
    async with serve(settings_for(tmp_path_factory.mktemp("vtt"), env="development")) as running:
        yield running


def next_environ(vtt: RunningServer) -> dict[str, str]:
    """This environment, pointing the example at `vtt`."""
    kept = {key: value for key, value in os.environ.items() if key != "NODE_ENV"}
    return {
        **kept,
        "NEXT_PUBLIC_VTT_WS_URL": f"ws://127.0.0.1:{vtt.port}",
        "NEXT_TELEMETRY_DISABLED": "1",
    }


async def run(argv: list[str], timeout: float, env: dict[str, str]) -> str:
    """Run a command in the example to its end; it must succeed. Its output."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=EXAMPLE,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        async with asyncio.timeout(timeout):
            output, _ = await proc.communicate()
    except TimeoutError:
        os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise
    text = output.decode(errors="replace")
    assert proc.returncode == 0, f"{' '.join(argv)} exited with {proc.returncode}:\n{text}"
    return text


@pytest.fixture(scope="module")
async def build_output(vtt: RunningServer) -> str:
    """Install the example from the packed client, then `next build` it; the build's output."""
    env = next_environ(vtt)
    await run(["node", "scripts/install.mjs"], INSTALL_TIMEOUT, env)
    return await run([str(NEXT), "build"], BUILD_TIMEOUT, env)


def output_of(log: Path) -> str:
    """What a process wrote to `log`."""
    return log.read_text(errors="replace")


@asynccontextmanager
async def next_server(command: str, env: dict[str, str], log: Path) -> AsyncIterator[str]:
    """`next start` or `next dev` on a free port, once it serves the page; its base URL."""
    port = free_port()
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *(str(NEXT), command, "--port", str(port), "--hostname", "127.0.0.1"),
            cwd=EXAMPLE,
            env=env,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        async with asyncio.timeout(SERVE_TIMEOUT), httpx.AsyncClient(timeout=SERVE_TIMEOUT) as http:
            while True:
                assert proc.returncode is None, f"next {command} exited:\n{output_of(log)}"
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(f"{base}/campaigns/probe")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(TIMEOUT):
                await proc.wait()
        except TimeoutError:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


@pytest.fixture(scope="module")
async def production(
    vtt: RunningServer, build_output: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    """The built example under `next start`."""
    log = tmp_path_factory.mktemp("next") / "start.log"
    async with next_server("start", next_environ(vtt), log) as base:
        yield base


@pytest.fixture(scope="module")
async def development(
    vtt: RunningServer, build_output: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    """The example under `next dev`: React's development build, where strict mode mounts twice."""
    log = tmp_path_factory.mktemp("next") / "dev.log"
    async with next_server("dev", next_environ(vtt), log) as base:
        yield base


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium under Playwright."""
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=WAIT_MS * 3
        )
        try:
            yield launched
        finally:
            await launched.close()


@dataclass
class Tab:
    """A page of the example, with every WebSocket it opened and every dev token it asked for."""

    page: Page
    sockets: list[str] = field(default_factory=list)
    token_requests: list[str] = field(default_factory=list)


@dataclass
class Table:
    """Opens pages of the example and screenshots every one of them when the test ends."""

    browser: Browser
    vtt: RunningServer
    name: str
    tabs: dict[str, Tab] = field(default_factory=dict)

    async def open(self, base: str, label: str, user: str, role: str, campaign: str) -> Tab:
        """A new browser context on the campaign's page, once its client has joined."""
        context = await self.browser.new_context(viewport={"width": 1400, "height": 1000})
        tab = Tab(await context.new_page())
        tab.page.set_default_timeout(WAIT_MS)
        # The vtt server's sockets only (`next dev` opens one of its own, for hot reloading).
        ours = f"ws://127.0.0.1:{self.vtt.port}/ws?"
        tab.page.on(
            "websocket",
            lambda socket: tab.sockets.append(socket.url) if socket.url.startswith(ours) else None,
        )
        tab.page.on(
            "request",
            lambda request: (
                tab.token_requests.append(request.url) if "/dev-token" in request.url else None
            ),
        )
        self.tabs[label] = tab
        await tab.page.goto(f"{base}/campaigns/{campaign}?user={user}&role={role}")
        await tab.page.wait_for_selector('output[data-status="open"]')
        return tab

    async def screenshot_all(self) -> None:
        """Save each open page as test-artifacts/screenshots/nextjs-<test>-<label>.png."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        for label, tab in self.tabs.items():
            if not tab.page.is_closed():
                path = SCREENSHOTS / f"nextjs-{self.name}-{label}.png"
                await tab.page.screenshot(path=path, full_page=True)


@pytest.fixture
async def table(
    browser: Browser, vtt: RunningServer, request: pytest.FixtureRequest
) -> AsyncIterator[Table]:
    """The pages of one test, screenshotted at its end whether it passed or not."""
    opened = Table(browser, vtt, re.sub(r"^test_", "", request.node.name))
    try:
        yield opened
    finally:
        await opened.screenshot_all()
        for tab in opened.tabs.values():
            await tab.page.context.close()


def token_selector(token_id: str) -> str:
    return f'g.token[data-token-id="{token_id}"]'


async def add_token(gm: Page, *others: Page) -> str:
    """Add a token with the GM's button; its id, once every page shows it."""
    before = await gm.locator("g.token").count()
    await gm.get_by_role("button", name="Add token").click()
    added = gm.locator("g.token").nth(before)
    token_id = await added.get_attribute("data-token-id")
    assert token_id is not None
    for page in others:
        await page.wait_for_selector(token_selector(token_id))
    return token_id


async def place(page: Page, token_id: str) -> tuple[float, float]:
    """Where the page shows the token, as the server last confirmed it."""
    token = page.locator(token_selector(token_id))
    x, y = await token.get_attribute("data-x"), await token.get_attribute("data-y")
    assert x is not None
    assert y is not None
    return float(x), float(y)


async def drag(page: Page, token_id: str, dx: float, dy: float) -> None:
    """Drag a token by (dx, dy) CSS pixels (one map pixel each)."""
    box = await page.locator(f"{token_selector(token_id)} circle").bounding_box()
    assert box is not None
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    await page.mouse.move(x, y)
    await page.mouse.down()
    await page.mouse.move(x + dx, y + dy, steps=8)
    await page.mouse.up()


async def wait_for_place(page: Page, token_id: str, at: tuple[float, float]) -> None:
    await page.wait_for_function(
        """([selector, x, y]) => {
            const token = document.querySelector(selector);
            return token !== null && Number(token.dataset.x) === x && Number(token.dataset.y) === y;
        }""",
        arg=[token_selector(token_id), at[0], at[1]],
    )


def connections(vtt: RunningServer, campaign: str) -> Counter[str]:
    """The server's open connections to `campaign`, by user."""
    session = vtt.services.manager.sessions.get(campaign)
    return Counter(member.actor.user_id for member in (session.members if session else ()))


async def sockets_are(
    vtt: RunningServer, campaign: str, by_user: dict[str, int], total: int
) -> bool:
    """Whether the campaign's connections by user are `by_user`, and /metrics counts `total`."""
    async with httpx.AsyncClient(base_url=vtt.http, timeout=TIMEOUT) as http:
        text = (await http.get("/metrics")).text
    (gauge,) = (f for f in text_string_to_metric_families(text) if f.name == "vtt_open_connections")
    return connections(vtt, campaign) == by_user and gauge.samples[0].value == total


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll until `check()` holds."""
    try:
        async with asyncio.timeout(TIMEOUT):
            while True:
                if await check():
                    return
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"timed out waiting until {what}")


async def test_next_build_type_checks_the_example_on_the_client_installed_from_its_tarball(
    build_output: str,
) -> None:
    assert "Finished TypeScript" in build_output, build_output
    installed = EXAMPLE / "node_modules" / "@wtsfs" / "vtt-client"
    assert not installed.is_symlink(), "the client must be installed from its tarball, not linked"
    assert (installed / "dist" / "index.js").is_file()
    assert (installed / "dist" / "react.d.ts").is_file()
    assert not (installed / "src").exists()


async def test_a_token_the_gm_adds_and_drags_lands_on_the_players_page_where_it_was_dropped(
    vtt: RunningServer, production: str, table: Table
) -> None:
    gm = await table.open(production, "gm", "alice", "gm", "crossing")
    player = await table.open(production, "player", "bob", "player", "crossing")
    token_id = await add_token(gm.page, player.page)
    x0, y0 = await place(gm.page, token_id)

    # Off the grid by a few pixels: only the drop, snapped to the grid, lands on the target.
    await drag(gm.page, token_id, 3 * GRID + 10, 2 * GRID + 7)
    target = (x0 + 3 * GRID, y0 + 2 * GRID)
    await wait_for_place(player.page, token_id, target)
    await wait_for_place(gm.page, token_id, target)

    assert (len(gm.sockets), len(player.sockets)) == (1, 1)
    assert connections(vtt, "crossing") == {"alice": 1, "bob": 1}


async def test_the_map_and_fog_the_gm_sets_are_drawn_on_the_players_page(
    vtt: RunningServer, production: str, table: Table
) -> None:
    player = await table.open(production, "player", "bob", "player", "scenery")
    gm = await vtt.join("scenery", "carol", "gm")
    await gm.request("map.set", map_payload("keep", image_url="/maps/keep.webp", width=960))
    zones = [{"x": 128, "y": 64, "w": 192, "h": 128, "visible": True}]
    await gm.request("fog.update", {"zones": zones})
    await gm.close()

    page = player.page
    await page.wait_for_selector('image.map[href="/maps/keep.webp"]')
    assert await page.locator("svg").last.get_attribute("width") == "960"
    fog = page.locator("rect.fog")
    await fog.wait_for()
    geometry = [await fog.get_attribute(name) for name in ("x", "y", "width", "height")]
    assert geometry == ["128", "64", "192", "128"]


async def say(page: Page, text: str) -> None:
    """Send `text` with the chat box."""
    await page.get_by_label("Chat message").fill(text)
    await page.get_by_role("button", name="Send").click()


def chat_line(text: str) -> str:
    """The chat message whose content is `text`."""
    return f'li.chat-message:has(.content:text-is("{text}"))'


async def test_a_chat_message_and_a_roll_cross_over_between_the_gms_and_the_players_pages(
    production: str, table: Table
) -> None:
    gm = await table.open(production, "gm", "alice", "gm", "talking")
    player = await table.open(production, "player", "bob", "player", "talking")
    for page in (gm.page, player.page):
        await page.wait_for_selector('li.member[data-user-id="bob"][data-role="player"]')
        assert await page.locator('li.member[data-user-id="alice"][data-role="gm"]').count() == 1
        assert await page.locator("li.member").count() == 2

    await say(gm.page, "welcome, adventurers")
    await player.page.wait_for_selector(chat_line("welcome, adventurers"))
    roll = "/roll 2d20kh1+5 # attack"
    await say(player.page, roll)
    results = []
    for page in (gm.page, player.page):
        shown = page.locator(f"{chat_line(roll)} .roll")
        await shown.wait_for()
        results.append((await shown.get_attribute("data-total"), await shown.text_content()))
    assert results[0] == results[1]
    total, text = results[0]
    assert total is not None
    assert text is not None
    assert text.startswith("2d20kh1+5: [")
    assert text.endswith(f"= {total} (attack)")
    assert [await page.locator("li.chat-message").count() for page in (gm.page, player.page)] == [
        2,
        2,
    ]


async def test_under_strict_mode_each_page_holds_one_websocket_until_its_tab_closes(
    vtt: RunningServer, development: str, table: Table
) -> None:
    gm = await table.open(development, "gm", "alice", "gm", "strict")
    player = await table.open(development, "player", "bob", "player", "strict")
    await add_token(gm.page, player.page)

    # Strict mode mounted each table twice: the first client asked for a token, then was closed
    # before it opened a socket.
    assert (len(gm.token_requests), len(player.token_requests)) == (2, 2), "strict mode is off"
    assert (len(gm.sockets), len(player.sockets)) == (1, 1)
    # The server sees exactly the two pages (sockets of earlier tests may still be closing).
    await eventually(
        lambda: sockets_are(vtt, "strict", {"alice": 1, "bob": 1}, total=2),
        "the server holds one socket per page",
    )

    await player.page.close()
    await eventually(
        lambda: sockets_are(vtt, "strict", {"alice": 1}, total=1), "the closed tab's socket closed"
    )
    assert len(gm.sockets) == 1
