"""Mint a development token: `python -m app.dev.devtoken --user alice --gm --campaign demo`."""

from __future__ import annotations

import argparse
import sys

from app.auth import DevKeys
from app.config import ConfigError, Settings
from app.model import Role


def main(argv: list[str] | None = None) -> int:
    """Print a dev token signed with the local dev key pair."""
    parser = argparse.ArgumentParser(prog="python -m app.dev.devtoken", description=__doc__)
    parser.add_argument("--user", required=True, help="the user id (the token's `sub`)")
    parser.add_argument("--gm", action="store_true", help="the GM role (default: player)")
    parser.add_argument("--campaign", help="limit the role to this campaign (default: any)")
    parser.add_argument("--ttl", type=float, default=3600.0, help="lifetime in seconds")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not settings.dev_auth:
        print("error: CLERK_JWKS_URL is set, so dev tokens would be refused", file=sys.stderr)
        return 2
    keys = DevKeys(settings.dev_key_dir)
    role: Role = "gm" if args.gm else "player"
    print(keys.mint(args.user, role, campaign=args.campaign, ttl=args.ttl))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
