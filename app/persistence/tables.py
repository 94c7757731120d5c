"""The SQLAlchemy Core tables this service owns (Alembic's target metadata).

`chat_messages` is not among them: it may belong to the Next.js app, so Alembic never
compares or alters it, and `app.persistence.chat` builds its table from the columns it finds.
"""

from sqlalchemy import JSON, BigInteger, Column, DateTime, MetaData, Table, Text, func, text
from sqlalchemy.dialects.postgresql import JSONB

# Postgres's own default constraint names, so Alembic and a hand-made table agree.
metadata = MetaData(
    naming_convention={
        "pk": "%(table_name)s_pkey",
        "uq": "%(table_name)s_%(column_0_name)s_key",
        "fk": "%(table_name)s_%(column_0_name)s_fkey",
        "ix": "%(table_name)s_%(column_0_name)s_idx",
    }
)

vtt_sessions = Table(
    "vtt_sessions",
    metadata,
    Column("campaign_id", Text, primary_key=True),
    Column(
        "state",
        JSON().with_variant(JSONB(), "postgresql"),
        nullable=False,
        server_default=text("'{}'"),
    ),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # The fence of the owner that last wrote the row (0 before issue 17, and on SQLite).
    Column("fence", BigInteger, nullable=False, server_default=text("0")),
)

# Roll results of chat messages, keyed by chat_messages.id as text (whatever its type).
vtt_chat_rolls = Table(
    "vtt_chat_rolls",
    metadata,
    Column("message_id", Text, primary_key=True),
    Column("campaign_id", Text, nullable=False),
    Column("roll", JSON().with_variant(JSONB(), "postgresql"), nullable=False),
)


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """Alembic's filter: compare only this service's tables, in a database shared with the app."""
    return type_ != "table" or name in metadata.tables
