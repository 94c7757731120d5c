"""POST /internal/broadcast served by uvicorn, storing in real SQLite and Postgres databases.

The route is mounted on a small Starlette app whose services hold a real SqlChatStore and a
publisher that records what it is given (the sessions' side of publishing comes with them).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import uuid
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import httpx
import msgspec
import pytest
import uvicorn
from sqlalchemy import text
from sqlalchemy.engine import make_url
from starlette.applications import Starlette
from starlette.routing import Route

from app.broadcast import BROADCAST_NAMESPACE, MAX_BODY_BYTES, BroadcastEndpoint, announce
from app.config import DEFAULT_USERNAME_SQL, Settings
from app.logs import REDACTED, JsonFormatter, RedactingFilter, log_config, protect
from app.metrics import Metrics
from app.persistence.chat import ChatStore, SqlChatStore
from app.persistence.database import create_engine
from app.persistence.migrate import upgrade_to_head
from app.protocol import ChatMessage
from tests.support.tcpproxy import TcpProxy

pytestmark = pytest.mark.anyio

T = TypeVar("T")
TIMEOUT = 10.0
SECRET = "s3cr3t!-" + uuid.uuid4().hex + "-with $pecial chars"
PATH = "/internal/broadcast"


def body(**fields: Any) -> dict[str, Any]:
    """A valid broadcast body, with `fields` changed."""
    base: dict[str, Any] = {
        "campaign_id": "c1",
        "user_id": "user_gm",
        "message_type": "text",
        "content": {"text": "The bridge collapses!"},
        "gm_only": False,
    }
    return {**base, **fields}


@dataclass
class Recorder:
    """A ChatPublisher that keeps what it is asked to publish."""

    live: bool = True
    published: list[ChatMessage] = field(default_factory=list)

    async def publish(self, message: ChatMessage) -> bool:
        self.published.append(message)
        return self.live


@dataclass
class BroadcastServices:
    """The services the endpoint reads from the lifespan state."""

    settings: Settings
    chat_store: ChatStore
    chat_publisher: Recorder
    metrics: Metrics = field(default_factory=Metrics)


@dataclass
class Running:
    """A served app: its base URL and port, its services, and an HTTP client."""

    url: str
    port: int
    services: BroadcastServices
    http: httpx.AsyncClient

    async def post(
        self, payload: Any, secret: str | None = SECRET, **kwargs: Any
    ) -> httpx.Response:
        headers = kwargs.pop("headers", {})
        if secret is not None:
            headers["Authorization"] = f"Bearer {secret}"
        content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return await self.http.post(PATH, content=content, headers=headers, **kwargs)

    async def rows(self) -> list[Any]:
        store = self.services.chat_store
        assert isinstance(store, SqlChatStore)
        return await store.recent("c1", 100)


@asynccontextmanager
async def serve_broadcast(services: BroadcastServices) -> AsyncIterator[Running]:
    """The endpoint on uvicorn, on an ephemeral port of this event loop."""

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[dict[str, Any]]:
        yield {"services": services}

    app = Starlette(routes=[Route(PATH, BroadcastEndpoint())], lifespan=lifespan)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, loop="asyncio", log_config=None, lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(TIMEOUT):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("server exited during startup")
                await asyncio.sleep(0.01)
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as http:
            yield Running(url, port, services, http)
    finally:
        server.should_exit = True
        async with asyncio.timeout(TIMEOUT):
            await task
        sock.close()


@asynccontextmanager
async def broadcasting(
    database_url: str, *, secret: str | None = SECRET, migrate: bool = True, live: bool = True
) -> AsyncIterator[Running]:
    """The endpoint over a (migrated) database with a users table holding one name."""
    if migrate:
        async with asyncio.timeout(TIMEOUT * 3):
            await asyncio.to_thread(upgrade_to_head, database_url)
            engine = create_engine(database_url)
            async with engine.begin() as connection:
                await connection.execute(text("CREATE TABLE users (id text, username text)"))
                await connection.execute(
                    text("INSERT INTO users VALUES ('user_gm', 'Game Master')")
                )
            await engine.dispose()
    engine = create_engine(database_url, connect_timeout=1.5, command_timeout=2.0)
    store = SqlChatStore(engine, username_sql=DEFAULT_USERNAME_SQL, character_sql=None)
    settings = Settings(env="test", internal_api_secret=secret)
    services = BroadcastServices(settings, store, Recorder(live=live))
    try:
        async with serve_broadcast(services) as running:
            yield running
    finally:
        async with asyncio.timeout(TIMEOUT):
            await engine.dispose()


async def within(coroutine: Coroutine[Any, Any, T]) -> T:
    async with asyncio.timeout(TIMEOUT):
        return await coroutine


# --- which route answers, and to whom --------------------------------------------------------


async def test_without_a_secret_the_route_answers_404_to_every_method(database_url: str) -> None:
    async with broadcasting(database_url, secret=None) as server:
        for method in ("POST", "GET", "PUT"):
            response = await within(
                server.http.request(method, PATH, headers={"Authorization": "Bearer x"})
            )
            assert response.status_code == 404, method
        assert server.services.chat_publisher.published == []


async def test_a_method_other_than_post_is_405_naming_post(database_url: str) -> None:
    async with broadcasting(database_url) as server:
        for method in ("GET", "PUT", "DELETE", "PATCH", "OPTIONS"):
            response = await within(
                server.http.request(method, PATH, headers={"Authorization": f"Bearer {SECRET}"})
            )
            assert (response.status_code, response.headers["allow"]) == (405, "POST"), method


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="absent"),
        pytest.param("", id="empty"),
        pytest.param("Bearer", id="bearer-alone"),
        pytest.param("Bearer wrong", id="wrong"),
        # The secret is random: ids of their own keep the test names the same in every
        # process that collects them (pytest-xdist's workers).
        pytest.param(f"Bearer {SECRET[:-1]}", id="one-char-short"),
        pytest.param(f"Bearer {SECRET}x", id="one-char-long"),
        pytest.param(f"Basic {SECRET}", id="basic-scheme"),
        pytest.param(SECRET, id="no-scheme"),
        pytest.param(f"Bearer  {SECRET}", id="two-spaces"),
    ],
)
async def test_a_missing_or_wrong_secret_is_401_and_nothing_is_stored(
    tmp_path: Any, authorization: str | None
) -> None:
    url = f"sqlite:///{tmp_path / 'vtt.db'}"
    async with broadcasting(url) as server:
        headers = {} if authorization is None else {"Authorization": authorization}
        response = await within(server.post(body(), secret=None, headers=headers))
        assert response.status_code == 401
        assert await within(server.rows()) == []


async def test_a_secret_beyond_ascii_matches_the_utf8_bytes_sent(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'vtt.db'}"
    async with broadcasting(url, secret="clé-secrète") as server:
        sent = {"Authorization": "Bearer clé-secrète".encode()}
        response = await within(server.post(body(), secret=None, headers=sent))
        assert response.status_code == 204
        wrong = {"Authorization": b"Bearer cle-secrete"}
        assert (await within(server.post(body(), secret=None, headers=wrong))).status_code == 401


async def test_the_bearer_scheme_is_case_insensitive(tmp_path: Any) -> None:
    async with broadcasting(f"sqlite:///{tmp_path / 'vtt.db'}") as server:
        response = await within(
            server.post(body(), secret=None, headers={"Authorization": f"bearer {SECRET}"})
        )
        assert response.status_code == 204


# --- the body limit -------------------------------------------------------------------------------


async def raw_request(port: int, head: str, first: bytes) -> bytes:
    """Send a request head and part of a body, then read the status line without sending more."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode() + b"\r\n" + first)
        await writer.drain()
        async with asyncio.timeout(TIMEOUT):
            return await reader.readline()
    finally:
        writer.close()


def head(**headers: str) -> str:
    lines = [f"POST {PATH} HTTP/1.1", "Host: vtt", *(f"{k}: {v}" for k, v in headers.items())]
    return "\r\n".join(lines) + "\r\n"


async def test_a_body_declared_over_64_kib_is_413_before_any_of_it_is_read(tmp_path: Any) -> None:
    async with broadcasting(f"sqlite:///{tmp_path / 'vtt.db'}") as server:
        request = head(
            Authorization=f"Bearer {SECRET}",
            **{"Content-Length": str(MAX_BODY_BYTES + 1), "Content-Type": "application/json"},
        )
        status = await within(raw_request(server.port, request, b'{"campaign_id":'))
        assert status.startswith(b"HTTP/1.1 413")
        exactly = json.dumps(body(content="x" * 10)).encode()
        padded = exactly + b" " * (MAX_BODY_BYTES - len(exactly))
        assert (await within(server.post(padded))).status_code == 204


async def test_a_chunked_body_is_413_as_soon_as_it_passes_64_kib(tmp_path: Any) -> None:
    async with broadcasting(f"sqlite:///{tmp_path / 'vtt.db'}") as server:
        request = head(Authorization=f"Bearer {SECRET}", **{"Transfer-Encoding": "chunked"})
        chunk = b" " * (16 * 1024)
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(5))
        # 80 KiB sent and the body never finished: the answer cannot wait for its end.
        status = await within(raw_request(server.port, request, chunks))
        assert status.startswith(b"HTTP/1.1 413")
        assert await within(server.rows()) == []


async def test_an_unauthenticated_oversized_body_is_401_not_413(tmp_path: Any) -> None:
    async with broadcasting(f"sqlite:///{tmp_path / 'vtt.db'}") as server:
        request = head(**{"Content-Length": str(10 * MAX_BODY_BYTES)})
        status = await within(raw_request(server.port, request, b""))
        assert status.startswith(b"HTTP/1.1 401")


# --- bodies refused -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "code", "says"),
    [
        (b"{not json", "invalid_json", "body is not valid JSON"),
        (
            b'{"campaign_id": "c1", "user_id": "u1", "content": "\xff"}',
            "invalid_json",
            "body is not valid JSON",
        ),
        (b"[1, 2]", "invalid_payload", "Expected `object`"),
        ({k: v for k, v in body().items() if k != "campaign_id"}, "invalid_payload", "campaign_id"),
        (body(campaign_id="c 1"), "invalid_payload", "campaign_id"),
        (body(campaign_id="x" * 129), "invalid_payload", "campaign_id"),
        ({k: v for k, v in body().items() if k != "user_id"}, "invalid_payload", "user_id"),
        ({k: v for k, v in body().items() if k != "content"}, "invalid_payload", "content"),
        (
            {k: v for k, v in body().items() if k != "message_type"},
            "invalid_payload",
            "message_type",
        ),
        (body(message_type=""), "invalid_payload", "message_type"),
        (body(gm_only="true"), "invalid_payload", "gm_only"),
        (body(message_type="m" * 33), "invalid_payload", "message_type"),
        (body(content="c" * 9000), "invalid_payload", "at most 8192"),
        (body(roll="3d6+"), "invalid_payload", "chat.send roll: expected a die or a number"),
        (body(gm_only=True, recipient_id="bob"), "invalid_request", "either gm_only"),
        (body(recipient_id="user_gm"), "invalid_request", "someone else"),
        (body(id="i" * 129), "invalid_payload", "id"),
    ],
)
async def test_a_bad_body_is_400_with_a_code_and_a_reason_and_nothing_is_stored(
    database_url: str, payload: Any, code: str, says: str
) -> None:
    async with broadcasting(database_url) as server:
        response = await within(server.post(payload))
        assert response.status_code == 400
        answer = response.json()
        assert answer["code"] == code
        assert says in answer["message"]
        assert await within(server.rows()) == []
        assert server.services.chat_publisher.published == []


# --- stored, published, idempotent ---------------------------------------------------------------


async def test_a_stored_message_is_204_and_published_with_its_username_and_roll(
    database_url: str,
) -> None:
    async with broadcasting(database_url) as server:
        payload = body(roll="/roll 4d6kh3 Strength", character_id="npc-1", recipient_id="")
        response = await within(server.post(payload))
        assert (response.status_code, response.content) == (204, b"")
        (row,) = await within(server.rows())
        (published,) = server.services.chat_publisher.published
    assert published.id == row.id
    assert uuid.UUID(published.id).version == 4
    assert (published.username, published.character_id, published.recipient_id) == (
        "Game Master",
        "npc-1",
        msgspec.UNSET,
    )
    assert json.loads(bytes(published.content)) == payload["content"]
    assert not isinstance(published.roll, msgspec.UnsetType)
    assert (published.roll.expression, published.roll.label) == ("4d6kh3", "Strength")
    assert json.loads(row.roll or "")["total"] == published.roll.total
    assert row.username == "Game Master"
    assert published.gm_only is False


async def test_gm_only_and_user_id_are_trusted_as_given(database_url: str) -> None:
    async with broadcasting(database_url) as server:
        response = await within(server.post(body(user_id="user_player", gm_only=True)))
        assert response.status_code == 204
        (published,) = server.services.chat_publisher.published
    assert (published.user_id, published.gm_only, published.username) == (
        "user_player",
        True,
        msgspec.UNSET,
    )


@pytest.mark.parametrize(
    ("given", "stored_as"),
    [
        ("6F9619FF-8B86-D011-B42D-00CF4FC964FF", "6f9619ff-8b86-d011-b42d-00cf4fc964ff"),
        ("action-2026-05-20-0001", str(uuid.uuid5(BROADCAST_NAMESPACE, "action-2026-05-20-0001"))),
    ],
)
async def test_a_repeated_id_is_204_again_and_stored_and_published_once(
    database_url: str, given: str, stored_as: str
) -> None:
    async with broadcasting(database_url) as server:
        first = await within(server.post(body(id=given, content="first")))
        again = await within(server.post(body(id=given, content="second")))
        other = await within(server.post(body(id=given + "-other", content="third")))
        assert [r.status_code for r in (first, again, other)] == [204, 204, 204]
        rows = await within(server.rows())
        published = server.services.chat_publisher.published
    assert [json.loads(r.content) for r in rows] == ["first", "third"]
    assert [m.id for m in published] == [r.id for r in rows]
    assert rows[0].id == stored_as


async def test_a_campaign_not_live_here_is_stored_for_the_next_join(tmp_path: Any) -> None:
    async with broadcasting(f"sqlite:///{tmp_path / 'vtt.db'}", live=False) as server:
        assert (await within(server.post(body()))).status_code == 204
        assert len(await within(server.rows())) == 1


# --- the database down ----------------------------------------------------------------------------


@pytest.mark.postgres
async def test_the_database_down_is_503_and_nothing_is_published(postgres_url: str) -> None:
    await within(asyncio.to_thread(upgrade_to_head, postgres_url))
    direct = make_url(postgres_url)
    async with TcpProxy(direct.host or "127.0.0.1", direct.port or 5432) as proxy:
        url = direct.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        async with broadcasting(url, migrate=False) as server:
            proxy.cut()
            response = await within(server.post(body()))
            assert response.status_code == 503
            assert response.json() == {
                "code": "db_error",
                "message": "the message could not be stored",
            }
            assert server.services.chat_publisher.published == []
            proxy.restore()
            for _ in range(100):
                response = await within(server.post(body(id="after-the-outage")))
                if response.status_code == 204:
                    break
                await asyncio.sleep(0.05)
            assert response.status_code == 204
            assert len(server.services.chat_publisher.published) == 1


async def test_an_unusable_chat_table_is_503_naming_why(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'vtt.db'}"
    await within(asyncio.to_thread(upgrade_to_head, url))
    engine = create_engine(url)
    async with asyncio.timeout(TIMEOUT), engine.begin() as connection:
        await connection.execute(text("DROP TABLE vtt_chat_rolls"))
    await within(engine.dispose())
    async with broadcasting(url, migrate=False) as server:
        response = await within(server.post(body()))
    assert response.status_code == 503
    assert response.json()["message"] == (
        "chat is unavailable: vtt_chat_rolls does not exist (run the migrations)"
    )


# --- the secret in logs ---------------------------------------------------------------------------


async def test_the_secret_never_reaches_a_log_line(tmp_path: Any) -> None:
    # Every record at the levels LOG_LEVEL=debug sets, through the filter and formatter the
    # handlers use.
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    configured = {
        "": "DEBUG",
        **{
            name: logger["level"]
            for name, logger in log_config("debug")["loggers"].items()
            if "level" in logger
        },
    }
    levels = {name: logging.getLogger(name).level for name in configured}
    root.addHandler(handler)
    for name, level in configured.items():
        logging.getLogger(name).setLevel(level)
    protect(SECRET)
    try:
        async with broadcasting(f"sqlite:///{tmp_path / 'vtt.db'}") as server:
            await within(server.post(body()))
            await within(server.post(body(), secret=SECRET + "x"))
            await within(server.post(b"{", headers={"X-Echo": SECRET}))
            logging.getLogger("vtt.test").warning("a header held %s (%r)", SECRET, SECRET)
    finally:
        root.removeHandler(handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    written = lines.getvalue()
    assert f"a header held {REDACTED}" in written
    assert SECRET not in written
    assert SECRET.split("!")[1][:12] not in written
    assert "The bridge collapses" not in written


def test_production_without_a_secret_says_so_at_startup(caplog: pytest.LogCaptureFixture) -> None:
    production = Settings(env="production")
    with caplog.at_level(logging.WARNING, logger="vtt.broadcast"):
        announce(production)
        announce(replace(production, internal_api_secret="set"))
        announce(Settings(env="development"))
    assert [r.getMessage() for r in caplog.records] == [
        "INTERNAL_API_SECRET is not set: POST /internal/broadcast answers 404"
    ]
