"""With REDIS_URL unset nothing of Redis is imported, so no Redis connection can be tried."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

PROGRAM = textwrap.dedent(
    """
    import asyncio, sys
    from app.config import Settings
    from app.services import Services
    import app.main

    async def main():
        services = await Services.build(Settings.from_env({
            "VTT_ENV": "test",
            "VTT_SQLITE_PATH": sys.argv[1] + "/vtt.db",
            "VTT_DEV_KEY_DIR": sys.argv[1] + "/keys",
        }))
        try:
            session = await services.manager.acquire("c1")
            assert not services.coordinator.clustered
            assert services.oplog is None and session.journal is None
        finally:
            await services.close()

    asyncio.run(main())
    loaded = sorted(name for name in sys.modules if name.split(".")[0] in {"redis", "hiredis"}
                    or name in {"app.coord.redis", "app.coord.oplog"})
    print("loaded:", loaded)
    """
)


def test_a_server_without_redis_url_never_imports_redis(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "loaded: []" in done.stdout, done.stdout
