"""A throwaway Postgres database for one bench run, holding the app's `campaigns` and `users`.

`users` is the table the default VTT_USERNAME_SQL reads, as the Go service's database has it:
every join looks its user's name up there, as in production.
"""

from __future__ import annotations

import asyncio
import os

import asyncpg  # type: ignore[import-untyped, unused-ignore]

from bench.tokens import campaign_id, user_id

# Users with a name in `users`, per campaign: more than any mode has clients in a campaign.
USERS_PER_CAMPAIGN = 16


class ScratchDatabase:
    """Creates `vtt_bench_<pid>` on a Postgres server, fills `campaigns` and `users`, drops it
    on exit."""

    def __init__(self, admin_url: str, campaigns: int) -> None:
        self.admin_url = admin_url
        self.campaigns = campaigns
        self.name = f"vtt_bench_{os.getpid()}"
        base, _, _ = admin_url.rpartition("/")
        self.url = f"{base}/{self.name}"

    def __enter__(self) -> ScratchDatabase:
        asyncio.run(asyncio.wait_for(self._create(), 60))
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run(asyncio.wait_for(self._drop(), 60))

    async def _create(self) -> None:
        admin = await asyncpg.connect(self.admin_url, timeout=5)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{self.name}"')
        finally:
            await admin.close()
        db = await asyncpg.connect(self.url, timeout=5)
        try:
            await db.execute("CREATE TABLE campaigns (id uuid PRIMARY KEY, gm_id text NOT NULL)")
            rows = [(campaign_id(i), user_id(i, 0)) for i in range(self.campaigns)]
            await db.copy_records_to_table("campaigns", records=rows, columns=["id", "gm_id"])
            await db.execute("CREATE TABLE users (id text PRIMARY KEY, username text)")
            names = [
                (user_id(i, slot), f"Bench {i}.{slot}")
                for i in range(self.campaigns)
                for slot in range(USERS_PER_CAMPAIGN)
            ]
            await db.copy_records_to_table("users", records=names, columns=["id", "username"])
        finally:
            await db.close()

    async def _drop(self) -> None:
        admin = await asyncpg.connect(self.admin_url, timeout=5)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        finally:
            await admin.close()


def reachable(admin_url: str) -> str | None:
    """Return None when Postgres answers at `admin_url`, else why not."""

    async def probe() -> None:
        conn = await asyncpg.connect(admin_url, timeout=3)
        await conn.close()

    try:
        asyncio.run(asyncio.wait_for(probe(), 5))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None
