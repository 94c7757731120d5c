"""Settings read once from the environment (and `.env` when present)."""

from __future__ import annotations

import os
import re
import resource
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

DEFAULT_ROLE_SQL = (
    "SELECT CASE WHEN gm_id = :user_id THEN 'gm' ELSE 'player' END AS role "
    "FROM campaigns WHERE id = :campaign_id"
)

# The Go service's username source (`users(id, username)`); VTT_USERNAME_SQL set empty: none.
DEFAULT_USERNAME_SQL = "SELECT username FROM users WHERE id = :user_id"

TokenPolicy = Literal["open", "owner"]
NODE_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
LOG_LEVELS = ("trace", "debug", "info", "warning", "error", "critical")
# The most clock skew VTT_JWT_LEEWAY may allow on a token's exp, nbf and iat (seconds).
MAX_LEEWAY = 300.0


class ConfigError(Exception):
    """The environment describes a configuration the server refuses to run with."""


def default_max_handshakes() -> int:
    """A quarter of this process's descriptor limit: connections still sending headers."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 4096
    return max(1, soft // 4)


@dataclass(frozen=True, slots=True)
class Limits:
    """Protocol limits; every one is enforced by the app itself."""

    max_frame_bytes: int = 512 * 1024
    max_tokens: int = 2000
    max_fog_zones: int = 5000
    max_maps: int = 200
    max_map_points: int = 200_000
    max_state_bytes: int = 32 * 1024 * 1024
    image_url_prefixes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ChatLimits:
    """Chat limits (PROTOCOL.md "Chat and dice") and the memory a campaign's chat log may hold."""

    max_content_bytes: int = 8 * 1024
    history_messages: int = 100
    history_bytes: int = 512 * 1024
    rate_per_second: float = 2.0
    rate_burst: int = 10
    memory_messages: int = 1000
    memory_bytes: int = 2 * 1024 * 1024


Routing = Literal["fly-replay", "relay"]


@dataclass(frozen=True, slots=True)
class Cluster:
    """Many machines coordinated through Redis (README "Running several machines").

    `node_url` is the WebSocket base URL at which the other machines reach this one;
    `secret`, when set, signs the identity a relaying machine hands the owner (unset, the
    relay hands over the client's own token, which the owner verifies); `routing` says how a
    client that landed on a machine that does not own its campaign reaches the owner.
    """

    redis_url: str
    node_id: str
    node_url: str
    secret: str | None = None
    lease_ttl: float = 10.0
    routing: Routing = "relay"
    replay_status: int = 307
    oplog_max_entries: int = 100_000

    @property
    def renew_interval(self) -> float:
        """How often the node lease is renewed: five times per TTL."""
        return self.lease_ttl / 5

    @property
    def deadline_margin(self) -> float:
        """How long before the lease could expire this node stops writing: one renew interval."""
        return self.lease_ttl / 5


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the server reads from its environment."""

    port: int = 8080
    env: str = "development"
    log_level: str = "info"
    database_url: str | None = None
    sqlite_path: str = "vtt.db"
    auto_migrate: bool = True
    clerk_jwks_url: str | None = None
    clerk_issuer: str | None = None
    clerk_authorized_parties: tuple[str, ...] = ()
    jwt_leeway: float = 5.0
    jwks_ttl: float = 300.0
    role_sql: str = DEFAULT_ROLE_SQL
    # A handshake may take a member's role from an answer this recent (0: always ask).
    role_cache_ttl: float = 5.0
    role_cache_size: int = 10_000
    # Named prepared statements for every query; off behind a transaction pooler.
    # None: on, except for a Neon pooled endpoint (the `statement_cache` property).
    db_statement_cache: bool | None = None
    allowed_origins: tuple[str, ...] = ()
    dev_key_dir: str = ".devkeys"
    token_refresh_required: bool = False
    token_grace: float = 300.0
    token_policy: TokenPolicy = "open"
    flush_interval: float = 5.0
    evict_grace: float = 60.0
    limits: Limits = Limits()
    rate_per_second: float = 60.0
    rate_burst: int = 120
    flood_close_seconds: float = 10.0
    outbox_max_messages: int = 1024
    outbox_max_bytes: int = 4 * 1024 * 1024
    max_connections_per_user: int = 8
    max_connections_per_campaign: int = 100
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    resume_buffer: int = 1000
    # ... and at most this many bytes of their frames, so that big frames (fog of a large map)
    # cannot pin hundreds of megabytes per campaign.
    resume_buffer_bytes: int = 1024 * 1024
    # Presence, drag locks and ephemeral signals (docs/PROTOCOL.md).
    presence_grace: float = 10.0
    lock_idle_timeout: float = 5.0
    cursor_rate: float = 20.0
    pointer_ping_rate: float = 2.0
    pointer_ping_burst: int = 5
    ws_impl: str = "websockets-sansio"
    ws_per_message_deflate: bool = False
    handshake_timeout: float = 10.0
    max_handshakes: int = field(default_factory=default_max_handshakes)
    chat: ChatLimits = ChatLimits()
    username_sql: str | None = DEFAULT_USERNAME_SQL
    character_sql: str | None = None
    internal_api_secret: str | None = None
    # Scale-out (issue 17): all None/defaults with REDIS_URL unset, and then unused.
    cluster: Cluster | None = None

    @property
    def production(self) -> bool:
        """Whether the server runs in production mode."""
        return self.env == "production"

    @property
    def statement_cache(self) -> bool:
        """Whether the database's statements may be named prepared statements.

        Unless VTT_DB_STATEMENT_CACHE says, yes, except when DATABASE_URL's host is a Neon
        pooled endpoint (`...-pooler.<region>...neon.tech`): PgBouncer in transaction mode.
        """
        if self.db_statement_cache is not None:
            return self.db_statement_cache
        host = urlsplit(self.database_url or "").hostname or ""
        return "-pooler." not in host

    @property
    def dev_auth(self) -> bool:
        """Whether tokens are verified against the local development key pair."""
        return self.clerk_jwks_url is None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from `environ` (default: the process environment plus `.env`)."""
        env = dict(read_dotenv(Path(".env"))) if environ is None else {}
        env.update(os.environ if environ is None else environ)
        return _parse(env)


def read_dotenv(path: Path) -> dict[str, str]:
    """Parse a `.env` file of KEY=VALUE lines; a missing file gives nothing."""
    if not path.is_file():
        return {}
    values: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip().removeprefix("export ").strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key] = value
    return values


def _str(env: Mapping[str, str], key: str) -> str | None:
    value = env.get(key, "").strip()
    return value or None


def _list(env: Mapping[str, str], key: str) -> tuple[str, ...]:
    """A comma list; one that is set but names nothing, or names `*`, is refused: each of
    these lists turns a check on, and a typo must not turn it off or refuse everyone."""
    raw = _str(env, key)
    if raw is None:
        return ()
    parts = tuple(part.strip() for part in raw.split(",") if part.strip())
    if not parts:
        raise ConfigError(f"{key} names nothing, got {raw!r}: unset it, or list at least one")
    if "*" in parts:
        raise ConfigError(f"{key} takes no wildcard, got {raw!r}: unset it to allow any")
    return parts


def _is_postgres(database_url: str | None) -> bool:
    return database_url is not None and database_url.startswith(("postgres://", "postgresql"))


def _leeway(env: Mapping[str, str]) -> float:
    """VTT_JWT_LEEWAY: clock skew, so at most MAX_LEEWAY (more would make expiry meaningless)."""
    leeway = _num(env, "VTT_JWT_LEEWAY", 5.0)
    if leeway > MAX_LEEWAY:
        raise ConfigError(f"VTT_JWT_LEEWAY is clock skew: at most {MAX_LEEWAY:g} s, got {leeway:g}")
    return leeway


def _num(env: Mapping[str, str], key: str, default: float, *, minimum: float = 0.0) -> float:
    raw = _str(env, key)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{key} must be a number, got {raw!r}") from None
    if not value >= minimum or value == float("inf"):
        raise ConfigError(f"{key} must be a finite number >= {minimum}, got {raw!r}")
    return value


def _int(env: Mapping[str, str], key: str, default: int, *, minimum: int = 0) -> int:
    raw = _str(env, key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{key} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{key} must be >= {minimum}, got {raw!r}")
    return value


def _bool(env: Mapping[str, str], key: str, default: bool) -> bool:
    raw = _str(env, key)
    if raw is None:
        return default
    lowered = raw.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{key} must be a boolean (1/0, true/false), got {raw!r}")


def _optional_bool(env: Mapping[str, str], key: str) -> bool | None:
    return None if _str(env, key) is None else _bool(env, key, True)


def default_issuer(jwks_url: str | None) -> str | None:
    """The issuer implied by a Clerk JWKS URL: its origin, when it ends in the well-known path."""
    suffix = "/.well-known/jwks.json"
    if jwks_url is None or not jwks_url.endswith(suffix):
        return None
    return jwks_url.removesuffix(suffix)


def _parse(env: Mapping[str, str]) -> Settings:
    mode = (_str(env, "VTT_ENV") or "development").lower()
    if _str(env, "FLY_APP_NAME") is not None:
        mode = "production"
    if mode not in {"development", "production", "test"}:
        raise ConfigError(f"VTT_ENV must be development, test or production, got {mode!r}")
    jwks_url = _str(env, "CLERK_JWKS_URL")
    database_url = _str(env, "DATABASE_URL")
    if mode == "production":
        missing = [
            name
            for name, value in (("CLERK_JWKS_URL", jwks_url), ("DATABASE_URL", database_url))
            if value is None
        ]
        if missing:
            raise ConfigError(
                "production mode (VTT_ENV=production or FLY_APP_NAME set) requires "
                + " and ".join(missing)
                + ": dev auth and the embedded database are refused in production"
            )
        if not _is_postgres(database_url):
            raise ConfigError(
                "production mode requires a PostgreSQL DATABASE_URL (postgres:// or "
                "postgresql://): the embedded database is refused in production"
            )
    if jwks_url is not None and urlsplit(jwks_url).scheme not in {"http", "https"}:
        raise ConfigError(f"CLERK_JWKS_URL must be an http(s) URL, got {jwks_url!r}")
    issuer = _str(env, "CLERK_ISSUER") or default_issuer(jwks_url)
    if mode == "production" and issuer is None:
        raise ConfigError(
            "production requires CLERK_ISSUER when CLERK_JWKS_URL does not end in "
            "/.well-known/jwks.json: token issuers must be checked"
        )
    log_level = (_str(env, "LOG_LEVEL") or "info").lower()
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    policy = (_str(env, "VTT_TOKEN_POLICY") or "open").lower()
    if policy not in {"open", "owner"}:
        raise ConfigError(f"VTT_TOKEN_POLICY must be open or owner, got {policy!r}")
    token_policy: TokenPolicy = "owner" if policy == "owner" else "open"
    chat = ChatLimits(
        max_content_bytes=_int(env, "VTT_CHAT_MAX_CONTENT_BYTES", 8 * 1024, minimum=16),
        history_messages=_int(env, "VTT_CHAT_HISTORY_MESSAGES", 100, minimum=0),
        history_bytes=_int(env, "VTT_CHAT_HISTORY_BYTES", 512 * 1024, minimum=1024),
        rate_per_second=_num(env, "VTT_CHAT_RATE_PER_SECOND", 2.0, minimum=0.01),
        rate_burst=_int(env, "VTT_CHAT_RATE_BURST", 10, minimum=1),
        memory_messages=_int(env, "VTT_CHAT_MEMORY_MESSAGES", 1000, minimum=0),
        memory_bytes=_int(env, "VTT_CHAT_MEMORY_BYTES", 2 * 1024 * 1024, minimum=1024),
    )
    # Unset means the default query; set but empty means no usernames at all.
    username_sql = env.get("VTT_USERNAME_SQL")
    base = Limits()
    limits = Limits(
        max_frame_bytes=_int(env, "VTT_MAX_FRAME_BYTES", base.max_frame_bytes, minimum=1024),
        max_tokens=_int(env, "VTT_MAX_TOKENS", base.max_tokens, minimum=1),
        max_fog_zones=_int(env, "VTT_MAX_FOG_ZONES", base.max_fog_zones, minimum=1),
        max_maps=_int(env, "VTT_MAX_MAPS", base.max_maps, minimum=1),
        max_map_points=_int(env, "VTT_MAX_MAP_POINTS", base.max_map_points, minimum=1),
        max_state_bytes=_int(env, "VTT_MAX_STATE_BYTES", base.max_state_bytes, minimum=64 * 1024),
        image_url_prefixes=_list(env, "VTT_IMAGE_URL_PREFIXES"),
    )
    return Settings(
        port=_int(env, "PORT", 8080, minimum=0),
        env=mode,
        log_level=log_level,
        database_url=database_url,
        sqlite_path=_str(env, "VTT_SQLITE_PATH") or "vtt.db",
        auto_migrate=_bool(env, "VTT_AUTO_MIGRATE", True),
        clerk_jwks_url=jwks_url,
        clerk_issuer=issuer,
        clerk_authorized_parties=_list(env, "CLERK_AUTHORIZED_PARTIES"),
        jwt_leeway=_leeway(env),
        jwks_ttl=_num(env, "VTT_JWKS_TTL", 300.0, minimum=1.0),
        role_sql=_str(env, "VTT_ROLE_SQL") or DEFAULT_ROLE_SQL,
        role_cache_ttl=_num(env, "VTT_ROLE_CACHE_TTL", 5.0),
        role_cache_size=_int(env, "VTT_ROLE_CACHE_SIZE", 10_000, minimum=0),
        db_statement_cache=_optional_bool(env, "VTT_DB_STATEMENT_CACHE"),
        allowed_origins=_list(env, "VTT_ALLOWED_ORIGINS"),
        dev_key_dir=_str(env, "VTT_DEV_KEY_DIR") or ".devkeys",
        token_refresh_required=_bool(env, "VTT_TOKEN_REFRESH_REQUIRED", False),
        token_grace=_num(env, "VTT_TOKEN_GRACE", 300.0),
        token_policy=token_policy,
        flush_interval=_num(env, "VTT_FLUSH_INTERVAL", 5.0, minimum=0.05),
        evict_grace=_num(env, "VTT_EVICT_GRACE", 60.0),
        limits=limits,
        rate_per_second=_num(env, "VTT_RATE_PER_SECOND", 60.0, minimum=0.1),
        rate_burst=_int(env, "VTT_RATE_BURST", 120, minimum=1),
        flood_close_seconds=_num(env, "VTT_FLOOD_CLOSE_SECONDS", 10.0, minimum=0.1),
        outbox_max_messages=_int(env, "VTT_OUTBOX_MAX_MESSAGES", 1024, minimum=1),
        outbox_max_bytes=_int(env, "VTT_OUTBOX_MAX_BYTES", 4 * 1024 * 1024, minimum=1024),
        max_connections_per_user=_int(env, "VTT_MAX_CONNECTIONS_PER_USER", 8, minimum=1),
        max_connections_per_campaign=_int(env, "VTT_MAX_CONNECTIONS_PER_CAMPAIGN", 100, minimum=1),
        ping_interval=_num(env, "VTT_PING_INTERVAL", 20.0, minimum=0.1),
        ping_timeout=_num(env, "VTT_PING_TIMEOUT", 20.0, minimum=0.1),
        resume_buffer=_int(env, "VTT_RESUME_BUFFER", 1000, minimum=0),
        resume_buffer_bytes=_int(env, "VTT_RESUME_BUFFER_BYTES", 1024 * 1024, minimum=0),
        presence_grace=_num(env, "VTT_PRESENCE_GRACE", 10.0),
        lock_idle_timeout=_num(env, "VTT_LOCK_IDLE_TIMEOUT", 5.0, minimum=0.1),
        cursor_rate=_num(env, "VTT_CURSOR_RATE_PER_SECOND", 20.0, minimum=0.1),
        pointer_ping_rate=_num(env, "VTT_POINTER_PING_RATE_PER_SECOND", 2.0, minimum=0.01),
        pointer_ping_burst=_int(env, "VTT_POINTER_PING_BURST", 5, minimum=1),
        ws_impl=_str(env, "VTT_WS_IMPL") or "websockets-sansio",
        ws_per_message_deflate=_bool(env, "VTT_WS_PER_MESSAGE_DEFLATE", False),
        handshake_timeout=_num(env, "VTT_HANDSHAKE_TIMEOUT", 10.0, minimum=0.1),
        max_handshakes=_int(env, "VTT_MAX_HANDSHAKES", default_max_handshakes(), minimum=1),
        chat=chat,
        username_sql=DEFAULT_USERNAME_SQL if username_sql is None else username_sql.strip() or None,
        character_sql=_str(env, "VTT_CHARACTER_SQL"),
        internal_api_secret=_str(env, "INTERNAL_API_SECRET"),
        cluster=_cluster(env, database_url, port=_int(env, "PORT", 8080, minimum=0)),
    )


def _cluster(env: Mapping[str, str], database_url: str | None, port: int) -> Cluster | None:
    """The scale-out settings, or None when REDIS_URL is unset (one machine, no Redis)."""
    redis_url = _str(env, "REDIS_URL")
    if redis_url is None:
        return None
    if not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("REDIS_URL must be a redis://, rediss:// or unix:// URL")
    if not _is_postgres(database_url):
        raise ConfigError(
            "REDIS_URL needs a Postgres DATABASE_URL: the machines of a cluster share one "
            "database, and the embedded SQLite file is one machine's"
        )
    fly_machine = _str(env, "FLY_MACHINE_ID")
    node_id = _str(env, "VTT_NODE_ID") or fly_machine or socket.gethostname()
    if not NODE_ID.fullmatch(node_id):
        raise ConfigError("VTT_NODE_ID must be 1-64 characters of [A-Za-z0-9_.-]")
    node_url = _str(env, "VTT_NODE_URL")
    fly_app = _str(env, "FLY_APP_NAME")
    if node_url is None and fly_machine is not None and fly_app is not None:
        node_url = f"ws://{fly_machine}.vm.{fly_app}.internal:{port}"
    if node_url is None:
        raise ConfigError(
            "REDIS_URL needs VTT_NODE_URL, the address the other machines reach this one at "
            "(e.g. http://10.0.0.5:8080); on Fly it defaults to the machine's .internal name"
        )
    node_url = _websocket_base(node_url)
    secret = _str(env, "VTT_CLUSTER_SECRET")
    if secret is not None and len(secret) < 16:
        raise ConfigError(
            "VTT_CLUSTER_SECRET must have at least 16 characters (the same on every machine)"
        )
    routing = (_str(env, "VTT_ROUTING") or ("fly-replay" if fly_app else "relay")).lower()
    if routing not in {"fly-replay", "relay"}:
        raise ConfigError(f"VTT_ROUTING must be fly-replay or relay, got {routing!r}")
    replay_status = _int(env, "VTT_REPLAY_STATUS", 307, minimum=101)
    if replay_status != 101 and not 300 <= replay_status <= 599:
        raise ConfigError("VTT_REPLAY_STATUS must be 101 or an HTTP status from 300 to 599")
    return Cluster(
        redis_url=redis_url,
        node_id=node_id,
        node_url=node_url,
        secret=secret,
        lease_ttl=_num(env, "VTT_LEASE_TTL", 10.0, minimum=0.5),
        routing="fly-replay" if routing == "fly-replay" else "relay",
        replay_status=replay_status,
        oplog_max_entries=_int(env, "VTT_OPLOG_MAX_ENTRIES", 100_000, minimum=1000),
    )


def _websocket_base(url: str) -> str:
    """`url` as a ws:// or wss:// base (http:// and https:// are accepted), without a slash."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ConfigError(f"VTT_NODE_URL must be an http(s):// or ws(s):// URL, got {url!r}")
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}"
