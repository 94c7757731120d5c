"""Everything the lifespan builds for one app instance, and its teardown order."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth import (
    Auth,
    KeySource,
    TokenVerifier,
    build_auth,
    check_cryptography_backend,
)
from app.config import Settings
from app.manager import SessionManager
from app.metrics import Metrics
from app.persistence.database import create_engine
from app.persistence.migrate import upgrade_to_head
from app.persistence.store import SqlStore, Store

# The final flush may take this long before shutdown gives up on a failing database.
SHUTDOWN_FLUSH_SECONDS = 20.0


@dataclass(slots=True)
class Services:
    """The app's long-lived parts, built once per app by the lifespan."""

    settings: Settings
    engine: AsyncEngine
    store: Store
    auth: Auth
    manager: SessionManager
    metrics: Metrics

    @property
    def keys(self) -> KeySource:
        """Where signing keys come from."""
        return self.auth.keys

    @property
    def verifier(self) -> TokenVerifier:
        """The JWT verifier."""
        return self.auth.verifier

    @classmethod
    async def build(cls, settings: Settings) -> Services:
        """Migrate (unless told not to), then build the store, auth and session manager."""
        check_cryptography_backend()
        if settings.auto_migrate:
            await asyncio.to_thread(upgrade_to_head, settings.database_url, settings.sqlite_path)
        engine = create_engine(settings.database_url, settings.sqlite_path)
        store = SqlStore(engine)
        auth = build_auth(settings, engine)
        await auth.start()
        metrics = Metrics()
        manager = SessionManager(settings, store, metrics)
        manager.start()
        return cls(settings, engine, store, auth, manager, metrics)

    async def close(self) -> None:
        """Flush everything (new joins are refused from here on), then release the database."""
        await self.manager.close(time.monotonic() + SHUTDOWN_FLUSH_SECONDS)
        await self.auth.close()
        await self.store.close()
        await self.engine.dispose()
