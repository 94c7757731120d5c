"""chat_messages: create it, or adopt the Go-era table untouched; vtt_chat_rolls for roll results.

`chat_messages` may belong to the Next.js app (the Go service only wrote to it), so an
existing table is adopted as it is: its columns are never altered, only the history index
(campaign_id, created_at) is added when no index starts with those columns (and the table
has them). Created here, it
has the Go service's columns; ids other than `id` are text, since campaign and character ids
are free strings in this service. Downgrading drops vtt_chat_rolls only: chat_messages and
its index may hold or serve the app's data, so no migration drops them.

Revision ID: 0002
Revises: 0001
Create Date: 2026-05-20
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

HISTORY_INDEX = "chat_messages_campaign_id_created_at_idx"
HISTORY_COLUMNS = ["campaign_id", "created_at"]
# A version-4-shaped UUID as text, for rows another writer inserts without an id.
SQLITE_UUID = (
    "(lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' || "
    "substr(lower(hex(randomblob(2))), 2) || '-' || substr('89ab', 1 + (abs(random()) % 4), 1) || "
    "substr(lower(hex(randomblob(2))), 2) || '-' || lower(hex(randomblob(6))))"
)


def upgrade() -> None:
    """Create or adopt chat_messages, give it the history index, create vtt_chat_rolls."""
    postgres = op.get_context().dialect.name == "postgresql"
    json_type = postgresql.JSONB() if postgres else sa.JSON()
    # IF NOT EXISTS is the adoption: an existing table, whatever its exact types, is kept.
    op.create_table(
        "chat_messages",
        sa.Column(
            "id",
            postgresql.UUID(as_uuid=False) if postgres else sa.Text(),
            server_default=sa.text("gen_random_uuid()" if postgres else SQLITE_UUID),
            nullable=False,
        ),
        sa.Column("campaign_id", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("character_id", sa.Text(), nullable=True),
        sa.Column("recipient_id", sa.Text(), nullable=True),
        sa.Column("message_type", sa.Text(), nullable=False),
        sa.Column("content", json_type, nullable=False),
        sa.Column("gm_only", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name="chat_messages_pkey"),
        if_not_exists=True,
    )
    if _needs_history_index():
        op.create_index(HISTORY_INDEX, "chat_messages", HISTORY_COLUMNS, if_not_exists=True)
    op.create_table(
        "vtt_chat_rolls",
        sa.Column("message_id", sa.Text(), nullable=False),
        sa.Column("campaign_id", sa.Text(), nullable=False),
        sa.Column("roll", json_type, nullable=False),
        sa.PrimaryKeyConstraint("message_id", name="vtt_chat_rolls_pkey"),
        if_not_exists=True,
    )


def _needs_history_index() -> bool:
    """Whether no index starts with (campaign_id, created_at) yet, and the table has both.

    An adopted table without those columns gets no index: the server's startup check then
    reports chat as unusable, and the migration (and the rest of the service) still works.
    """
    if context.is_offline_mode():
        # No database to look at: the printed script relies on IF NOT EXISTS by name alone.
        return True
    inspector = sa.inspect(op.get_bind())
    columns = {column["name"] for column in inspector.get_columns("chat_messages")}
    indexes = inspector.get_indexes("chat_messages")
    covered = any(index["column_names"][:2] == HISTORY_COLUMNS for index in indexes)
    return not covered and set(HISTORY_COLUMNS) <= columns


def downgrade() -> None:
    """Drop vtt_chat_rolls (stored roll results); chat_messages stays, as explained above."""
    op.drop_table("vtt_chat_rolls")
