"""vtt_sessions: create it, or adopt the table the Go service created.

Revision ID: 0001
Revises:
Create Date: 2026-05-09
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create vtt_sessions as PROTOCOL.md shows it; an existing one is kept as it is."""
    # IF NOT EXISTS is the adoption: the Go service's table has exactly this shape, and
    # its rows must survive the first deploy of this service.
    op.create_table(
        "vtt_sessions",
        sa.Column("campaign_id", sa.Text(), nullable=False),
        sa.Column(
            "state",
            sa.JSON().with_variant(postgresql.JSONB(), "postgresql"),
            server_default=sa.text("'{}'"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("campaign_id", name="vtt_sessions_pkey"),
        if_not_exists=True,
    )


def downgrade() -> None:
    """Drop vtt_sessions, stored campaigns included."""
    op.drop_table("vtt_sessions")
