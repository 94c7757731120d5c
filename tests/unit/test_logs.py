"""JSON log lines and redaction: the formatter, the filter and the logging config, in-process."""

from __future__ import annotations

import io
import json
import logging
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from app.logs import (
    AccessJsonFormatter,
    JsonFormatter,
    RedactingFilter,
    log_config,
    redact,
)

SECRET = "SeCrEt-" + uuid.uuid4().hex
# A JWT-shaped value (header {"alg":"RS256"}, a payload, a signature) made of the secret.
JWT = f"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyXzEifQ.{SECRET}"


class Capture:
    """A private logger whose handler is configured exactly like the ones in log_config."""

    def __init__(self, formatter: logging.Formatter, name: str) -> None:
        self.stream = io.StringIO()
        handler = logging.StreamHandler(self.stream)
        handler.addFilter(RedactingFilter())
        handler.setFormatter(formatter)
        self.logger = logging.getLogger(name)
        self.logger.handlers = [handler]
        self.logger.propagate = False
        self.logger.setLevel(logging.DEBUG)

    def lines(self) -> list[dict[str, Any]]:
        """Every line written so far, each parsed as JSON."""
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]

    def only(self) -> dict[str, Any]:
        """The single line written so far."""
        (line,) = self.lines()
        return line


@pytest.fixture
def app_log() -> Iterator[Capture]:
    capture = Capture(JsonFormatter(), f"test.app.{uuid.uuid4().hex}")
    yield capture
    capture.logger.handlers = []


@pytest.fixture
def access_log() -> Iterator[Capture]:
    capture = Capture(AccessJsonFormatter(), f"test.access.{uuid.uuid4().hex}")
    yield capture
    capture.logger.handlers = []


def test_a_message_becomes_one_json_object_with_ts_level_logger_and_event(
    app_log: Capture,
) -> None:
    app_log.logger.warning("session %s loaded", "c1")

    line = app_log.only()
    assert line["event"] == "session c1 loaded"
    assert line["level"] == "warning"
    assert line["logger"] == app_log.logger.name
    assert line["ts"].endswith("+00:00")
    assert set(line) == {"ts", "level", "logger", "event"}


def test_allowed_extras_become_fields_and_any_other_extra_is_dropped(app_log: Capture) -> None:
    app_log.logger.info(
        "refused",
        extra={
            "campaign_id": "c1",
            "user_id": "user_2abc",
            "code": 4403,
            "reason": "not a member",
            "payload": {"token_id": "t1"},
            "headers": {"x": "y"},
        },
    )

    line = app_log.only()
    assert line["campaign_id"] == "c1"
    assert line["user_id"] == "user_2abc"
    assert line["code"] == 4403
    assert line["reason"] == "not a member"
    assert "payload" not in line
    assert "headers" not in line


def test_a_token_in_the_message_is_redacted(app_log: Capture) -> None:
    app_log.logger.info(f"GET /ws?campaign=c1&token={SECRET}&since=4")

    line = app_log.only()
    assert SECRET not in json.dumps(line)
    assert line["event"] == "GET /ws?campaign=c1&token=[redacted]&since=4"


def test_a_token_in_an_argument_is_redacted(app_log: Capture) -> None:
    app_log.logger.info("path %s", f"/ws?token={SECRET}")

    assert app_log.only()["event"] == "path /ws?token=[redacted]"


def test_a_token_that_only_appears_once_arguments_are_interpolated_is_redacted(
    app_log: Capture,
) -> None:
    app_log.logger.info("token=%s campaign=%s", SECRET, "c1")

    assert app_log.only()["event"] == "token=[redacted] campaign=c1"


def test_a_token_in_an_extra_value_is_redacted(app_log: Capture) -> None:
    app_log.logger.info("refused", extra={"reason": f"bad query token={SECRET}"})

    assert app_log.only()["reason"] == "bad query token=[redacted]"


def test_a_jwt_anywhere_is_redacted(app_log: Capture) -> None:
    frame = json.dumps({"type": "auth.refresh", "payload": {"jwt": JWT}})
    app_log.logger.debug("< TEXT %s", frame)
    app_log.logger.info("cookie __session=%s; theme=dark", JWT)

    text = app_log.stream.getvalue()
    assert SECRET not in text
    assert "eyJ" not in text
    assert len(app_log.lines()) == 2


def test_a_jwt_with_an_empty_signature_is_redacted(app_log: Capture) -> None:
    app_log.logger.info("alg none token eyJhbGciOiJub25lIn0.eyJzdWIiOiIke1NFQ1JFVH0ifQ.")

    assert "eyJ" not in app_log.only()["event"]


def test_a_token_field_in_a_json_frame_is_redacted_even_when_it_is_not_a_jwt(
    app_log: Capture,
) -> None:
    app_log.logger.debug('< TEXT {"type":"auth.refresh","payload":{"token":"%s"}}', SECRET)

    assert app_log.only()["event"] == (
        '< TEXT {"type":"auth.refresh","payload":{"token":"[redacted]"}}'
    )


@pytest.mark.parametrize(
    "template",
    [
        "headers {'authorization': 'Bearer %s', 'host': 'vtt'}",
        'headers {"Authorization": "Basic %s"}',
        "scope headers [(b'host', b'vtt'), (b'authorization', b'Bearer %s')]",
        "Authorization: Bearer %s",
        "authorization=%s",
        "sent bearer %s to the JWKS server",
    ],
)
def test_an_authorization_header_value_never_appears(app_log: Capture, template: str) -> None:
    app_log.logger.info(template, SECRET)

    event = app_log.only()["event"]
    assert SECRET not in event
    assert "[redacted]" in event


def test_an_exception_is_rendered_as_a_redacted_string_field(app_log: Capture) -> None:
    try:
        raise ValueError(f"cannot parse token={SECRET}")
    except ValueError:
        app_log.logger.exception("handshake failed", extra={"campaign_id": "c1"})

    line = app_log.only()
    assert isinstance(line["exception"], str)
    assert "Traceback" in line["exception"]
    assert "ValueError: cannot parse token=[redacted]" in line["exception"]
    assert SECRET not in json.dumps(line)
    assert line["campaign_id"] == "c1"


def test_a_message_that_is_not_a_string_is_rendered_and_redacted(app_log: Capture) -> None:
    app_log.logger.error(RuntimeError(f"bad token={SECRET}"))

    assert app_log.only()["event"] == "bad token=[redacted]"


def test_a_call_whose_arguments_do_not_fit_its_format_drops_them_rather_than_leak(
    app_log: Capture, capsys: pytest.CaptureFixture[str]
) -> None:
    app_log.logger.info("token=%s campaign=%s", SECRET)

    line = app_log.only()
    assert SECRET not in json.dumps(line)
    assert line["event"].startswith("token=[redacted] campaign=%s")
    assert SECRET not in capsys.readouterr().err


def test_mapping_arguments_are_redacted(app_log: Capture) -> None:
    app_log.logger.info("path %(path)s", {"path": f"/ws?token={SECRET}"})

    assert app_log.only()["event"] == "path /ws?token=[redacted]"


def test_uvicorns_access_line_becomes_fields_with_the_query_string_redacted(
    access_log: Capture,
) -> None:
    access_log.logger.info(
        '%s - "%s %s HTTP/%s" %d',
        "10.0.0.1:5123",
        "GET",
        f"/health?token={SECRET}",
        "1.1",
        200,
    )

    line = access_log.only()
    assert line["client_addr"] == "10.0.0.1:5123"
    assert line["method"] == "GET"
    assert line["full_path"] == "/health?token=[redacted]"
    assert line["http_version"] == "1.1"
    assert line["status_code"] == 200
    assert line["event"] == '10.0.0.1:5123 - "GET /health?token=[redacted] HTTP/1.1" 200'
    assert SECRET not in json.dumps(line)


def test_uvicorns_websocket_handshake_line_is_redacted(app_log: Capture) -> None:
    app_log.logger.info(
        '%s - "WebSocket %s" [accepted]', "10.0.0.1:5123", f"/ws?campaign=c1&token={JWT}"
    )

    assert app_log.only()["event"] == (
        '10.0.0.1:5123 - "WebSocket /ws?campaign=c1&token=[redacted]" [accepted]'
    )


def test_redaction_leaves_ordinary_protocol_text_alone() -> None:
    text = 'token.move {"token_id": "t1", "x": 1} invalid token: expired; authorization missing'

    assert redact(text) == text


def test_log_config_sends_uvicorns_loggers_through_the_json_formatter_and_the_filter() -> None:
    config = log_config("debug")

    handlers = config["handlers"]
    for handler in handlers.values():
        assert handler["filters"] == ["redact"]
    assert config["filters"]["redact"]["()"] is RedactingFilter
    loggers = config["loggers"]
    assert handlers[loggers["uvicorn"]["handlers"][0]]["formatter"] == "json"
    assert handlers[loggers["uvicorn.access"]["handlers"][0]]["formatter"] == "access"
    assert config["formatters"]["access"]["()"] is AccessJsonFormatter
    assert loggers["uvicorn.error"]["level"] == "DEBUG"
    assert config["root"]["level"] == "DEBUG"
    assert config["disable_existing_loggers"] is False


def test_an_allowed_extra_that_is_neither_text_nor_a_number_becomes_redacted_text(
    app_log: Capture,
) -> None:
    app_log.logger.warning("refused", extra={"reason": {"token": SECRET}, "rows": 3})

    line = app_log.only()
    assert line["reason"] == "{'token': '[redacted]'}"
    assert line["rows"] == 3


def test_a_stack_is_rendered_as_a_redacted_string_field(app_log: Capture) -> None:
    record = app_log.logger.makeRecord(
        app_log.logger.name, logging.INFO, __file__, 1, "tick", (), None
    )
    record.stack_info = f"Stack (most recent call last):\n  token={SECRET}"

    app_log.logger.handle(record)

    assert app_log.only()["stack"] == "Stack (most recent call last):\n  token=[redacted]"


def test_the_json_formatter_alone_renders_an_exception_it_is_handed() -> None:
    try:
        raise KeyError("t1")
    except KeyError:
        record = logging.LogRecord(
            "vtt", logging.ERROR, __file__, 1, "failed", None, sys.exc_info()
        )

    line = json.loads(JsonFormatter().format(record))

    assert line["exception"].startswith("Traceback")
    assert line["exception"].endswith("KeyError: 't1'")


def test_an_access_record_of_another_shape_keeps_only_the_common_fields(
    access_log: Capture,
) -> None:
    access_log.logger.info("%s - %s", "127.0.0.1:5000", "GET /health")

    line = access_log.only()
    assert line["event"] == "127.0.0.1:5000 - GET /health"
    assert "method" not in line
