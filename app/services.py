"""Everything the lifespan builds for one app instance, and its teardown order."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth import (
    Auth,
    KeySource,
    TokenVerifier,
    build_auth,
    check_cryptography_backend,
)
from app.broadcast import ChatPublisher, announce
from app.config import Settings
from app.coord.base import Coordinator, LocalCoordinator
from app.logs import protect
from app.manager import SessionManager
from app.metrics import Metrics
from app.persistence.chat import ChatStore, ChatUnusable, SqlChatStore
from app.persistence.database import DriverPool, create_engine
from app.persistence.migrate import upgrade_to_head
from app.persistence.store import SqlStore, Store, StoreUnavailable
from app.transport.handshake import HandshakeGate

if TYPE_CHECKING:
    from app.coord.oplog import RedisOpLog

log = logging.getLogger("vtt.chat")
shutdown_log = logging.getLogger("vtt.shutdown")

# The final flush may take this long before shutdown gives up on a failing database.
SHUTDOWN_FLUSH_SECONDS = 20.0
# Each release after the final flush (op log, Redis, keys, database) may take this long.
SHUTDOWN_STEP_SECONDS = 5.0
# The startup look at chat_messages waits this long for a database that does not answer.
CHAT_CHECK_SECONDS = 5.0


@dataclass(slots=True)
class Services:
    """The app's long-lived parts, built once per app by the lifespan."""

    settings: Settings
    engine: AsyncEngine
    store: Store
    auth: Auth
    manager: SessionManager
    metrics: Metrics
    chat_store: ChatStore
    handshakes: HandshakeGate
    # Postgres only: the app's asyncpg pool for the role query (SQLite: the engine does it).
    driver: DriverPool | None = None
    # Scale-out (REDIS_URL set): who owns which campaign, and the op log; else one machine.
    coordinator: Coordinator = field(default_factory=LocalCoordinator)
    oplog: RedisOpLog | None = None

    @property
    def keys(self) -> KeySource:
        """Where signing keys come from."""
        return self.auth.keys

    @property
    def verifier(self) -> TokenVerifier:
        """The JWT verifier."""
        return self.auth.verifier

    @property
    def chat_publisher(self) -> ChatPublisher:
        """Where POST /internal/broadcast publishes: the session, when the campaign is live."""
        return self.manager

    @classmethod
    async def build(cls, settings: Settings) -> Services:
        """Migrate (unless told not to), then build the stores, auth and session manager."""
        check_cryptography_backend()
        if settings.internal_api_secret is not None:
            protect(settings.internal_api_secret)
        announce(settings)
        if settings.auto_migrate:
            await asyncio.to_thread(upgrade_to_head, settings.database_url, settings.sqlite_path)
        engine = create_engine(
            settings.database_url, settings.sqlite_path, statement_cache=settings.statement_cache
        )
        store = SqlStore(engine)
        # The flush's connections open, and its upsert compiles, in the background.
        store.start()
        chat_store = SqlChatStore(
            engine, username_sql=settings.username_sql, character_sql=settings.character_sql
        )
        await check_chat(chat_store)
        driver = None
        if engine.dialect.name == "postgresql" and not settings.dev_auth:
            assert settings.database_url is not None
            driver = DriverPool(settings.database_url, statement_cache=settings.statement_cache)
            store.read_through(driver)
            chat_store.read_through(driver)
        auth = build_auth(settings, engine, driver)
        if driver is not None:
            # Its connections open in the background, the role query prepared on each.
            await driver.start()
        await auth.start()
        metrics = Metrics()
        coordinator: Coordinator = LocalCoordinator()
        oplog: RedisOpLog | None = None
        cluster = settings.cluster
        if cluster is not None:
            # Imported here: with REDIS_URL unset, nothing imports redis.
            from app.coord.oplog import RedisOpLog, connect
            from app.coord.redis import RedisCoordinator

            leased = RedisCoordinator(cluster, metrics)
            coordinator = leased
        manager = SessionManager(settings, store, metrics, chat_store, auth.roles, coordinator)
        if cluster is not None:
            oplog = RedisOpLog(
                connect(cluster.redis_url, cluster.renew_interval),
                leased,
                cluster.oplog_max_entries,
                metrics,
                manager.fenced_out,
                manager.claim_lost,
            )
            manager.oplog = oplog
            await coordinator.start(manager)
            oplog.start()
        manager.start()
        handshakes = HandshakeGate(
            settings.handshake_timeout,
            settings.max_handshakes,
            on_timeout=metrics.handshake_timeouts.inc,
            on_refused=metrics.handshake_bound_refusals.inc,
        )
        return cls(
            settings,
            engine,
            store,
            auth,
            manager,
            metrics,
            chat_store,
            handshakes,
            driver,
            coordinator,
            oplog,
        )

    async def close(self) -> None:
        """Flush everything (new joins are refused from here on), then release the database.

        Each release after the flush gets SHUTDOWN_STEP_SECONDS: a step that hangs is logged
        by name and left behind, so the process still exits well inside its kill timeout.
        """
        flushed = False
        try:
            # The flush retries a failing database until its deadline; one that hangs (an
            # answer that never comes) gets a few seconds more, then the releases go on.
            async with asyncio.timeout(SHUTDOWN_FLUSH_SECONDS + SHUTDOWN_STEP_SECONDS):
                flushed = await self.manager.close(time.monotonic() + SHUTDOWN_FLUSH_SECONDS)
        except TimeoutError:
            shutdown_log.error("shutdown step hung; left behind", extra={"step": "final flush"})
        if flushed:
            shutdown_log.info("sessions written; releasing")
        else:
            shutdown_log.error("releasing with sessions unwritten", extra={"flushed": False})
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        if self.oplog is not None:
            steps.append(("op log", self.oplog.close))
        steps += [("coordinator", self.coordinator.close), ("auth", self.auth.close)]
        steps.append(("store", self.store.close))
        if self.driver is not None:
            steps.append(("role query pool", self.driver.close))
        steps.append(("database engine", self.engine.dispose))
        for name, step in steps:
            try:
                async with asyncio.timeout(SHUTDOWN_STEP_SECONDS):
                    await step()
            except TimeoutError:
                shutdown_log.error("shutdown step hung; left behind", extra={"step": name})


async def check_chat(store: ChatStore) -> None:
    """Look at chat_messages once at startup and say plainly when chat cannot work."""
    try:
        await asyncio.wait_for(store.check(), CHAT_CHECK_SECONDS)
    except ChatUnusable as unusable:
        log.error(
            "chat disabled: chat_messages cannot be used; the rest of the table works",
            extra={"reason": unusable.reason},
        )
    except (StoreUnavailable, TimeoutError) as failure:
        log.warning(
            "chat_messages not checked: database unavailable; checked again when chat is used",
            extra={"reason": str(failure) or type(failure).__name__},
        )
