"""Schema migrations run from the server: Alembic's `upgrade head` as a function."""

from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def upgrade_to_head(database_url: str | None, sqlite_path: str = "vtt.db") -> None:
    """Migrate the database to the newest revision; blocking, so run it in a thread.

    One call at a time per process: Alembic keeps its migration context in module globals.
    Separate processes (two machines starting together) take turns on an advisory lock.
    """
    config = Config()
    # Config values go through configparser interpolation, where "%" is special.
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    config.attributes["database_url"] = database_url
    config.attributes["sqlite_path"] = sqlite_path
    command.upgrade(config, "head")
