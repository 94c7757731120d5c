"""vtt_sessions.fence: the owner's fence each row was last written under.

At most one machine writes a campaign; each owner holds a per-campaign fence from Redis,
greater than every earlier owner's, and a write under a lower fence than the row's is
refused. Rows written before (by the Go service or by this one) get 0, as does every
row on SQLite, which only ever runs one machine. On Postgres 11+ adding a column with a
constant default is metadata only: the table is not rewritten. SQLite goes through
batch mode, as env.py sets it, to add and drop the column.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add vtt_sessions.fence, 0 in every existing row."""
    with op.batch_alter_table("vtt_sessions") as batch:
        batch.add_column(
            sa.Column("fence", sa.BigInteger(), server_default=sa.text("0"), nullable=False)
        )


def downgrade() -> None:
    """Drop vtt_sessions.fence (the fences go; the states stay)."""
    with op.batch_alter_table("vtt_sessions") as batch:
        batch.drop_column("fence")
