"""Every write to vtt_sessions on Postgres, as a trigger records it: the fence and the seq.

A test of ownership installs the audit on a migrated database, runs its machines, then reads
the writes in the order they happened: the fences a campaign was written under must never go
down, nor its seq go back.
"""

from __future__ import annotations

import asyncpg

AUDIT_DDL = (
    """CREATE TABLE vtt_fence_audit (
      id          bigserial   PRIMARY KEY,
      campaign_id text        NOT NULL,
      fence       bigint      NOT NULL,
      seq         bigint,
      txid        bigint      NOT NULL DEFAULT txid_current(),
      at          timestamptz NOT NULL DEFAULT clock_timestamp()
    )""",
    """CREATE FUNCTION vtt_fence_audit_row() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      INSERT INTO vtt_fence_audit (campaign_id, fence, seq)
      VALUES (NEW.campaign_id, NEW.fence, (NEW.state->>'seq')::bigint);
      RETURN NULL;
    END
    $$""",
    """CREATE TRIGGER vtt_fence_audit AFTER INSERT OR UPDATE ON vtt_sessions
    FOR EACH ROW EXECUTE FUNCTION vtt_fence_audit_row()""",
)


async def install_fence_audit(dsn: str) -> None:
    """Create vtt_fence_audit and the trigger filling it (vtt_sessions must exist)."""
    connection = await asyncpg.connect(dsn, timeout=5)
    try:
        async with connection.transaction():
            for statement in AUDIT_DDL:
                await connection.execute(statement, timeout=30)
    finally:
        await connection.close(timeout=5)


async def fence_audit(dsn: str) -> list[tuple[str, int, int]]:
    """The (campaign_id, fence, seq) of every row written so far, in id order.

    Ids are handed out as the trigger runs, so concurrent transactions may commit in
    another order. seq is the state's `seq`, which every state this service writes carries.
    """
    connection = await asyncpg.connect(dsn, timeout=5)
    try:
        rows = await connection.fetch(
            "SELECT campaign_id, fence, seq FROM vtt_fence_audit ORDER BY id", timeout=30
        )
    finally:
        await connection.close(timeout=5)
    return [(row["campaign_id"], row["fence"], row["seq"]) for row in rows]
