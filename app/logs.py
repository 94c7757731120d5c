"""JSON log lines, one object per line, with secrets redacted before anything is written.

Every handler configured here carries `RedactingFilter`, so uvicorn's own loggers
(`uvicorn.error` prints each WebSocket handshake's path with its query string,
`uvicorn.access` each HTTP request line) go through the same redaction as ours.
"""

from __future__ import annotations

import json
import logging
import logging.config
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from uvicorn.logging import TRACE_LOG_LEVEL

# Extra fields a log call may attach (`extra={...}`); anything else is dropped so a
# stray object can never smuggle a payload, a header dict or a token into the output.
EXTRA_FIELDS: tuple[str, ...] = (
    "campaign_id",
    "user_id",
    "code",
    "reason",
    # role decisions are the point of auth logs and carry no secret
    "role",
    # the JWKS key id tells which key a refused token named, which is how rotation is debugged
    "kid",
    # flush and drain summaries: how much was written, how long it took, which attempt it was
    "rows",
    "duration_ms",
    "attempt",
    # connection and session counts at shutdown show what a deploy interrupted
    "clients",
    "sessions",
)

# uvicorn's access record passes these as its five positional arguments.
ACCESS_FIELDS: tuple[str, ...] = (
    "client_addr",
    "method",
    "full_path",
    "http_version",
    "status_code",
)

REDACTED = "[redacted]"

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # a query-string or key=value token: ?token=..., &access_token=..., token=... in prose
    (re.compile(r"(token=)[^&\s\"'#]+", re.IGNORECASE), rf"\g<1>{REDACTED}"),
    # a "token" key in JSON or a Python repr, e.g. an auth.refresh frame at debug level
    (re.compile(r"([\"']token[\"']\s*:\s*b?[\"'])[^\"']*", re.IGNORECASE), rf"\g<1>{REDACTED}"),
    # an Authorization header as `Authorization: x`, `"authorization": "x"` or an ASGI
    # `(b'authorization', b'x')` pair; the value runs to the closing quote or line end
    (
        re.compile(
            r"(authorization(?:[\"']?\s*[:=]|[\"']\s*,)\s*b?[\"']?)[^\"'\n,}]+",
            re.IGNORECASE,
        ),
        rf"\g<1>{REDACTED}",
    ),
    (re.compile(r"(bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE), rf"\g<1>{REDACTED}"),
    # anything shaped like a JWT (a JSON header, base64url, starts `eyJ`); the signature may
    # be empty, as in an `alg: none` token
    (re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), REDACTED),
)


# Configured secrets (INTERNAL_API_SECRET), redacted wherever they appear, whatever their shape.
_protected: set[str] = set()


def protect(secret: str) -> None:
    """Redact this exact value from every log line from now on."""
    if secret:
        _protected.add(secret)


def redact(text: str) -> str:
    """Return `text` with secrets, tokens, JWTs and Authorization values replaced by a marker."""
    for secret in _protected:
        text = text.replace(secret, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact_value(value: object) -> object:
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact(str(value))


class RedactingFilter(logging.Filter):
    """Rewrites a record in place so no handler after it can see a secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact the message, its arguments, allowed extras and any exception text."""
        template = record.msg if isinstance(record.msg, str) else str(record.msg)
        try:
            message = _interpolate(template, record.args)
        except (TypeError, ValueError, KeyError):
            # The call does not match its format, so which argument holds a secret
            # cannot be known: keep the redacted format string, drop the arguments.
            record.msg = f"{redact(template)} (log arguments dropped: they do not fit the format)"
            record.args = None
        else:
            clean = redact(message)
            if clean != message:
                _replace_message(record, template, clean)
        for key in EXTRA_FIELDS:
            if key in record.__dict__:
                record.__dict__[key] = _redact_value(record.__dict__[key])
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def _interpolate(template: str, args: tuple[object, ...] | Mapping[str, object] | None) -> str:
    return template % args if args else template


def _replace_message(record: logging.LogRecord, template: str, clean: str) -> None:
    """Store the redacted message, keeping format and arguments apart when that is exact."""
    if isinstance(record.args, Mapping):
        args: tuple[object, ...] | Mapping[str, object] | None = {
            key: _redact_value(value) for key, value in record.args.items()
        }
    else:
        args = tuple(_redact_value(arg) for arg in record.args or ())
    structured = redact(template)
    try:
        exact = _interpolate(structured, args) == clean
    except (TypeError, ValueError, KeyError):
        exact = False
    if exact:
        # Formatters that read the arguments (uvicorn's access line) keep them.
        record.msg, record.args = structured, args
    else:
        # The secret only appeared once the arguments were interpolated
        # (for example "token=%s"), so only the finished message is safe.
        record.msg, record.args = clean, None


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: ts, level, logger, event and allowed extras."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as a single line of JSON."""
        return json.dumps(self.fields(record), ensure_ascii=False, default=str)

    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        """Return the JSON object for `record`."""
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key in EXTRA_FIELDS:
            if key in record.__dict__:
                out[key] = record.__dict__[key]
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        return out


class AccessJsonFormatter(JsonFormatter):
    """Formats uvicorn's access records with the request line's parts as fields."""

    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        """Return the JSON object, adding client_addr, method, full_path, version, status."""
        out = super().fields(record)
        if isinstance(record.args, tuple) and len(record.args) == len(ACCESS_FIELDS):
            out.update(zip(ACCESS_FIELDS, record.args, strict=True))
        return out


def log_config(level: str) -> dict[str, Any]:
    """Return a `logging.config.dictConfig` dict for our loggers and uvicorn's, at `level`."""
    # uvicorn's TRACE level must have its name before dictConfig can parse "TRACE".
    logging.addLevelName(TRACE_LOG_LEVEL, "TRACE")
    upper = level.upper()
    return {
        "version": 1,
        # Loggers created at import time (ours, SQLAlchemy's, httpx's) must keep working.
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": RedactingFilter}},
        "formatters": {
            "json": {"()": JsonFormatter},
            "access": {"()": AccessJsonFormatter},
        },
        "handlers": {
            # One stream for everything keeps lines in order in `fly logs`.
            "json": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stdout",
                "formatter": "json",
                "filters": ["redact"],
            },
            "access": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stdout",
                "formatter": "access",
                "filters": ["redact"],
            },
        },
        "root": {"handlers": ["json"], "level": upper},
        "loggers": {
            "uvicorn": {"handlers": ["json"], "level": upper, "propagate": False},
            "uvicorn.error": {"level": upper},
            "uvicorn.access": {"handlers": ["access"], "level": upper, "propagate": False},
            # aiosqlite logs every statement with its parameters (states, chat) at DEBUG.
            "aiosqlite": {"level": "INFO"},
        },
    }


def configure_logging(level: str) -> None:
    """Install `log_config(level)` and route `warnings` through it, so nothing bypasses JSON."""
    logging.config.dictConfig(log_config(level))
    logging.captureWarnings(True)


def install_redaction() -> None:
    """Redact uvicorn's own loggers even when uvicorn configured logging itself.

    A plain `uvicorn app.main:app` logs each WebSocket handshake's path, token included, on
    `uvicorn.error` at INFO and query strings on `uvicorn.access`; a filter on those loggers
    rewrites every record before any handler sees it.
    """
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())
    last_resort = logging.lastResort
    if last_resort is not None and not any(
        isinstance(f, RedactingFilter) for f in last_resort.filters
    ):
        last_resort.addFilter(RedactingFilter())
