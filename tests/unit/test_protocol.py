"""decode_client_message against PROTOCOL.md: every client type, valid and invalid, by property."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.errors import CloseCode
from app.protocol import (
    MESSAGES,
    DecodeFailure,
    Empty,
    Frame,
    MapSwitchMsg,
    MessageTable,
    PingMsg,
    TokenMoveMsg,
    TokenRef,
    both,
    decode_client_message,
    encode,
    encode_frame,
    from_client,
)
from app.rules import new_state

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Parametrized properties run once per field: fewer examples each keeps the whole file quick.
PER_FIELD = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- the schema of every client payload, as PROTOCOL.md "Messages" states it --------------------

ID, NAME, GIVEN_NAME, URL, COORD, SIZE, EXTENT, BOOL, REAL, ZONES, METADATA, JWT = (
    "id",
    "name",
    "given name",
    "url",
    "coord",
    "size",
    "extent",
    "bool",
    "real",
    "zones",
    "metadata",
    "jwt",
)
POINTS, COLOR, LABEL = "points", "color", "label"

# type -> (required fields, optional fields), each field -> kind
SCHEMA: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "token.add": (
        {
            "token_id": ID,
            "name": NAME,
            "x": COORD,
            "y": COORD,
            "width": EXTENT,
            "height": EXTENT,
            "visible": BOOL,
        },
        {"character_id": ID, "image_url": URL},
    ),
    "token.move": ({"token_id": ID, "x": COORD, "y": COORD}, {}),
    "token.remove": ({"token_id": ID}, {}),
    "token.update": (
        {"token_id": ID},
        {"name": GIVEN_NAME, "image_url": URL, "width": SIZE, "height": SIZE, "visible": BOOL},
    ),
    "fog.update": ({"zones": ZONES}, {}),
    "map.set": (
        {"map_id": ID, "image_url": URL, "grid_size": SIZE, "width": SIZE, "height": SIZE},
        {"name": GIVEN_NAME, "map_metadata": METADATA},
    ),
    "map.switch": ({"map_id": ID}, {}),
    "map.rename": ({"map_id": ID, "new_name": NAME}, {}),
    "map.delete": ({"map_id": ID}, {}),
    "scene.darkness": ({"darkness_level": REAL}, {}),
    "auth.refresh": ({"token": JWT}, {}),
    "token.grab": ({"token_id": ID}, {}),
    "token.release": ({"token_id": ID}, {}),
    "pointer.ping": ({"x": COORD, "y": COORD}, {}),
    "cursor.move": ({"x": COORD, "y": COORD}, {}),
    "ruler.update": ({"points": POINTS}, {"color": COLOR, "label": LABEL}),
}
# Types whose payload, when sent at all, carries nothing: any object is read as empty.
EMPTY_PAYLOADS = ("cursor.hide", "ruler.clear")

MESSAGE_CLASS: dict[str, Any] = {tag: row.envelope for tag, row in MESSAGES.client.items()}

ALL_FIELDS = [
    (kind, field, field_kind)
    for kind, (required, optional) in SCHEMA.items()
    for field, field_kind in {**required, **optional}.items()
]
REQUIRED_FIELDS = [(kind, field) for kind, (required, _) in SCHEMA.items() for field in required]
NUMERIC_FIELDS = [(k, f, fk) for k, f, fk in ALL_FIELDS if fk in {COORD, SIZE, EXTENT, REAL}]
URL_FIELDS = [(k, f) for k, f, fk in ALL_FIELDS if fk == URL]


def is_optional(kind: str, field: str) -> bool:
    """Whether PROTOCOL.md lets a client leave `field` of `kind` out (then "" and null mean so)."""
    return field in SCHEMA[kind][1]


def not_blank(value: Any) -> bool:
    """Whether `value` is neither "" nor null, which in an optional field mean absent."""
    return value is not None and not (isinstance(value, str) and value == "")


# --- strategies of valid values -----------------------------------------------------------------

coords = st.one_of(
    st.integers(-10_000_000, 10_000_000),
    st.floats(-10_000_000, 10_000_000, allow_nan=False, allow_infinity=False),
)
sizes = st.one_of(
    st.integers(1, 10_000_000),
    st.floats(0, 10_000_000, exclude_min=True, allow_nan=False, allow_infinity=False),
)
reals = st.one_of(st.integers(-(10**15), 10**15), st.floats(allow_nan=False, allow_infinity=False))
# Every client string but a JWT refuses NUL (Postgres jsonb cannot store it).
texts = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
ids = st.text(texts, min_size=1, max_size=128)
names = st.text(texts, max_size=200)

_segment = st.text(
    alphabet=st.characters(
        categories=["L", "N"], include_characters="-._~!$&'()*+,;=:@%", exclude_characters="\\"
    ),
    min_size=1,
    max_size=12,
)
_path = st.lists(_segment, min_size=1, max_size=4).map("/".join)
_host = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,12}[a-z0-9])?(\.[a-z]{2,6}){1,2}(:[0-9]{2,5})?\Z")
absolute_urls = st.builds(
    lambda scheme, host, path: f"{scheme}://{host}/{path}",
    st.sampled_from(["https", "http", "HTTPS", "Http"]),
    _host,
    _path,
)
# A relative path never starts with a scheme: its first segment holds no ':'.
relative_urls = st.builds(
    lambda lead, first, rest: f"{lead}{first}{rest}",
    st.sampled_from(["", "/", "./", "../"]),
    _segment.filter(lambda s: ":" not in s),
    st.one_of(st.just(""), _path.map(lambda p: "/" + p)),
)
urls = st.one_of(absolute_urls, relative_urls)

points = st.fixed_dictionaries({"x": coords, "y": coords})
lines = st.lists(points, max_size=4)
metadata = st.fixed_dictionaries(
    {},
    optional={
        "walls": st.lists(lines, max_size=3),
        "object_walls": st.lists(lines, max_size=3),
        "portals": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "position": points,
                    "bounds": st.lists(points, min_size=2, max_size=2),
                    "rotation": reals,
                    "closed": st.booleans(),
                    "freestanding": st.booleans(),
                },
            ),
            max_size=3,
        ),
        "lights": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "position": points,
                    "range": reals,
                    "intensity": reals,
                    "color": st.text(texts, max_size=64),
                    "shadows": st.booleans(),
                },
            ),
            max_size=3,
        ),
        "environment": st.fixed_dictionaries(
            {},
            optional={
                "baked_lighting": st.booleans(),
                "ambient_light": st.text(texts, max_size=64),
            },
        ),
    },
)
zones = st.lists(
    st.fixed_dictionaries(
        {"x": coords, "y": coords, "w": sizes, "h": sizes, "visible": st.booleans()}
    ),
    max_size=6,
)

VALID: dict[str, st.SearchStrategy[Any]] = {
    ID: ids,
    NAME: names,
    GIVEN_NAME: st.text(texts, min_size=1, max_size=200),
    URL: urls,
    COORD: coords,
    SIZE: sizes,
    EXTENT: st.one_of(st.just(0), sizes),
    BOOL: st.booleans(),
    REAL: reals,
    ZONES: zones,
    METADATA: metadata,
    JWT: st.text(min_size=1, max_size=300),
    POINTS: st.lists(points, min_size=1, max_size=64),
    COLOR: st.from_regex(r"\A#([0-9A-Fa-f]{3,4}|[0-9A-Fa-f]{6}|[0-9A-Fa-f]{8})\Z"),
    LABEL: st.text(texts, min_size=1, max_size=64),
}


def payloads(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    """Valid payloads of the client message `kind`."""
    required, optional = SCHEMA[kind]
    return st.fixed_dictionaries(
        {field: VALID[k] for field, k in required.items()},
        optional={field: VALID[k] for field, k in optional.items()},
    )


# --- strategies of invalid values ---------------------------------------------------------------

_json_scalars = st.one_of(
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.booleans(),
    st.none(),
)
_containers = st.one_of(
    st.lists(st.integers(0, 9), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(0, 9), max_size=2),
)
not_strings = st.one_of(
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    _containers,
)
not_numbers = st.one_of(st.text(max_size=8), st.booleans(), st.none(), _containers)
not_bools = st.one_of(
    st.integers(-2, 2),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["true", "false", ""]),
    st.none(),
    _containers,
)

WRONG_TYPE: dict[str, st.SearchStrategy[Any]] = {
    ID: not_strings,
    NAME: not_strings,
    GIVEN_NAME: not_strings,
    URL: not_strings,
    JWT: not_strings,
    COORD: not_numbers,
    SIZE: not_numbers,
    EXTENT: not_numbers,
    REAL: not_numbers,
    BOOL: not_bools,
    ZONES: st.one_of(
        st.text(max_size=5),
        st.integers(),
        st.booleans(),
        st.none(),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
        st.lists(_json_scalars, min_size=1, max_size=3),
    ),
    METADATA: st.one_of(
        st.text(max_size=5),
        st.integers(),
        st.booleans(),
        st.lists(st.integers(), max_size=2),
        st.fixed_dictionaries({"walls": st.one_of(st.integers(), st.text(max_size=3))}),
        st.fixed_dictionaries({"walls": st.just([[{"x": "0", "y": 0}]])}),
        st.fixed_dictionaries({"lights": st.just([{"range": "far"}])}),
        st.fixed_dictionaries({"portals": st.just([{"closed": 1}])}),
        st.fixed_dictionaries({"environment": st.just({"baked_lighting": "yes"})}),
    ),
    POINTS: st.one_of(
        st.text(max_size=5),
        st.integers(),
        st.booleans(),
        st.none(),
        st.fixed_dictionaries({"x": coords, "y": coords}),
        st.lists(_json_scalars, min_size=1, max_size=3),
        st.just([{"x": "1", "y": 0}]),
    ),
    COLOR: not_strings,
    LABEL: not_strings,
}

# Schemes other than http(s), protocol-relative and backslash tricks, whitespace, controls.
BAD_URLS = [
    "",
    "javascript:alert(1)",
    "JavaScript:alert(document.cookie)",
    " javascript:alert(1)",
    "java\tscript:alert(1)",
    "data:image/png;base64,iVBORw0KGgo=",
    "data:text/html,<script>alert(1)</script>",
    "vbscript:msgbox(1)",
    "file:///etc/passwd",
    "ftp://host.example/x.png",
    "blob:https://host.example/1",
    "ws://host.example/x",
    "mailto:gm@example.com",
    "//evil.example/x.png",
    "/\\evil.example/x.png",
    "\\\\evil.example\\x.png",
    "https:\\\\evil.example",
    "https://evil.example\\@good.example/x.png",
    "https:evil.example/x.png",
    "https:/evil.example/x.png",
    "https://",
    "https:///evil.example/x.png",
    "https://host.example/a b.png",
    " https://host.example/x.png",
    "https://host.example/x.png ",
    "https://host.example/x.png\n",
    "\nhttps://host.example/x.png",
    "https://host.example/\x00.png",
    "https://host.example/\x7f.png",
    "\u00a0https://host.example/x.png",
    "https://host.example/\u2028x.png",
    "https://host.example/\u3000x.png",
    "maps/a b.png",
    "maps\\a.png",
    "maps/x.png\n",
    "https://host.example/x.png\r",
]

BEYOND = 10_000_000
OUT_OF_RANGE: dict[str, st.SearchStrategy[Any]] = {
    ID: st.one_of(st.just(""), st.text(min_size=129, max_size=300)),
    NAME: st.text(min_size=201, max_size=400),
    GIVEN_NAME: st.text(min_size=201, max_size=400),
    # BAD_URLS are each tested in every place by a parametrized test below.
    URL: urls.map(lambda u: u + "/" + "a" * 2048),
    COORD: st.one_of(
        st.floats(min_value=BEYOND, exclude_min=True, allow_infinity=False),
        st.floats(max_value=-BEYOND, exclude_max=True, allow_infinity=False),
        st.integers(min_value=BEYOND + 1, max_value=10**30),
        st.integers(min_value=-(10**30), max_value=-BEYOND - 1),
    ),
    EXTENT: st.one_of(
        st.floats(max_value=0, exclude_max=True, allow_nan=False, allow_infinity=False),
        st.integers(max_value=-1, min_value=-(10**9)),
        st.floats(min_value=10_000_000, exclude_min=True, allow_infinity=False),
    ),
    SIZE: st.one_of(
        st.just(0),
        st.just(-0.0),
        st.floats(max_value=0, allow_nan=False, allow_infinity=False),
        st.integers(max_value=0, min_value=-(10**9)),
    ),
    ZONES: st.lists(
        st.fixed_dictionaries(
            {"x": coords, "y": coords, "w": st.just(0), "h": sizes, "visible": st.booleans()}
        ),
        min_size=1,
        max_size=3,
    ),
    METADATA: st.one_of(
        st.just({"walls": [[{"x": BEYOND + 1, "y": 0}]]}),
        st.just({"object_walls": [[{"x": 0, "y": -BEYOND - 1}]]}),
        st.just({"portals": [{"position": {"x": 0, "y": 1e8}}]}),
        st.just({"lights": [{"color": "f" * 65}]}),
        st.just({"environment": {"ambient_light": "f" * 65}}),
    ),
    POINTS: st.one_of(
        st.just([]),
        st.lists(points, min_size=65, max_size=80),
        st.just([{"x": BEYOND + 1, "y": 0}]),
        st.just([{"x": 0}]),
    ),
    # Only hex colours: nothing a page could read as more CSS than a colour.
    COLOR: st.sampled_from(
        ["red", "#ff", "#fffff", "#ggg", "fff", "#fff;background:url(x)", "#fff ", "#fff\n"]
    ),
    LABEL: st.one_of(st.text(texts, min_size=65, max_size=80), st.just("a\x00b")),
}

# --- helpers ------------------------------------------------------------------------------------


def frame(kind: Any, payload: Any = None, *, ascii_only: bool = True, **envelope: Any) -> str:
    """A client frame as JSON text."""
    message: dict[str, Any] = {"type": kind, **envelope}
    if payload is not None:
        message["payload"] = payload
    return json.dumps(message, ensure_ascii=ascii_only)


def failure(data: str | bytes) -> str:
    """The protocol error code decoding `data` gives; fails the test when it decodes."""
    with pytest.raises(DecodeFailure) as caught:
        decode_client_message(data)
    return caught.value.code


def with_raw(kind: str, payload: dict[str, Any], field: str, literal: str) -> str:
    """A frame whose `field` holds the raw JSON text `literal` (which json.dumps cannot write)."""
    marker = "__raw_literal__"
    return frame(kind, {**payload, field: marker}).replace(f'"{marker}"', literal)


def invent(value: Any, marker: str) -> Any:
    """`value` with a client-invented field added to every object in it."""
    if isinstance(value, dict):
        inner = {key: invent(item, marker) for key, item in value.items()}
        return {**inner, "x_invented": marker}
    if isinstance(value, list):
        return [invent(item, marker) for item in value]
    return value


ORIGIN = {"x": 0.0, "y": 0.0}
# What the server stores and sends for a dd2vtt part's field a client left out: Go's zero value.
GO_ZEROS: dict[str, dict[str, Any]] = {
    "portals": {
        "position": ORIGIN,
        "bounds": [ORIGIN, ORIGIN],
        "rotation": 0.0,
        "closed": False,
        "freestanding": False,
    },
    "lights": {"position": ORIGIN, "range": 0.0, "intensity": 0.0, "color": "", "shadows": False},
}
GO_ENVIRONMENT = {"baked_lighting": False, "ambient_light": ""}


def as_read(payload: dict[str, Any]) -> dict[str, Any]:
    """`payload` as the server reads it: its dd2vtt parts with every field (PROTOCOL.md)."""
    metadata = payload.get("map_metadata")
    if not isinstance(metadata, dict):
        return payload
    filled = {**metadata, "environment": {**GO_ENVIRONMENT, **metadata.get("environment", {})}}
    for part, zeros in GO_ZEROS.items():
        if part in metadata:
            filled[part] = [{**zeros, **item} for item in metadata[part]]
    return {**payload, "map_metadata": filled}


client_types = st.sampled_from(sorted(SCHEMA))
MAP = {"map_id": "m1", "image_url": "maps/m1.webp", "grid_size": 64, "width": 10, "height": 10}

# --- valid messages -----------------------------------------------------------------------------


@SETTINGS
@given(data=st.data(), ascii_only=st.booleans())
def test_every_valid_payload_decodes_to_its_struct_with_exactly_the_fields_sent(
    data: st.DataObject, ascii_only: bool
) -> None:
    kind = data.draw(client_types)
    payload = data.draw(payloads(kind))
    message = decode_client_message(frame(kind, payload, ascii_only=ascii_only))
    assert type(message) is MESSAGE_CLASS[kind]
    assert msgspec.to_builtins(message.payload) == as_read(payload)


@SETTINGS
@given(
    data=st.data(),
    envelope=st.fixed_dictionaries(
        {},
        optional={
            "campaign_id": _json_scalars | st.text(max_size=10),
            "user_id": _json_scalars | st.text(max_size=10),
            "seq": _json_scalars,
            "x_invented": _json_scalars | _containers,
        },
    ),
)
def test_envelope_fields_a_client_sends_besides_type_and_payload_are_ignored(
    data: st.DataObject, envelope: dict[str, Any]
) -> None:
    kind = data.draw(client_types)
    payload = data.draw(payloads(kind))
    message = decode_client_message(frame(kind, payload, **envelope))
    assert type(message) is MESSAGE_CLASS[kind]
    assert msgspec.to_builtins(message.payload) == as_read(payload)


@SETTINGS
@given(data=st.data())
def test_client_invented_payload_fields_are_dropped_at_every_depth(data: st.DataObject) -> None:
    kind = data.draw(client_types)
    payload = data.draw(payloads(kind))
    message = decode_client_message(frame(kind, invent(payload, "MARKER-7f3a")))
    assert msgspec.to_builtins(message.payload) == as_read(payload)
    reencoded = msgspec.json.encode(message.payload)
    assert b"x_invented" not in reencoded
    assert b"MARKER-7f3a" not in reencoded


@SETTINGS
@given(payload=st.one_of(st.none(), st.just({}), _json_scalars, _containers))
def test_a_ping_decodes_with_or_without_a_payload(payload: Any) -> None:
    text = json.dumps({"type": "ping"} if payload is None else {"type": "ping", "payload": payload})
    assert type(decode_client_message(text)) is PingMsg


@pytest.mark.parametrize("kind", EMPTY_PAYLOADS)
@PER_FIELD
@given(payload=st.one_of(st.none(), st.dictionaries(st.text(max_size=5), _json_scalars)))
def test_a_cursor_hide_or_ruler_clear_decodes_empty_with_or_without_an_object_payload(
    kind: str, payload: dict[str, Any] | None
) -> None:
    message = decode_client_message(frame(kind, payload))
    assert type(message) is MESSAGE_CLASS[kind]
    assert message.payload == Empty()


@pytest.mark.parametrize("kind", EMPTY_PAYLOADS)
def test_a_cursor_hide_or_ruler_clear_whose_payload_is_not_an_object_is_invalid_payload(
    kind: str,
) -> None:
    assert failure(json.dumps({"type": kind, "payload": [1]})) == "invalid_payload"


@SETTINGS
@given(url=urls, where=st.sampled_from(URL_FIELDS), data=st.data())
def test_http_https_and_relative_image_urls_are_accepted_everywhere_an_image_url_goes(
    url: str, where: tuple[str, str], data: st.DataObject
) -> None:
    kind, field = where
    payload = {**data.draw(payloads(kind)), field: url}
    message = decode_client_message(frame(kind, payload))
    assert getattr(message.payload, field) == url


# An optional image_url of "" means absent (tests/unit/test_lenient_input.py).
BAD_URL_CASES = [
    (url, where) for where in URL_FIELDS for url in BAD_URLS if url or not is_optional(*where)
]


@pytest.mark.parametrize(
    ("url", "where"), BAD_URL_CASES, ids=[f"{u!a}-{k}.{f}" for u, (k, f) in BAD_URL_CASES]
)
def test_a_dangerous_or_malformed_image_url_is_invalid_payload_wherever_it_goes(
    url: str, where: tuple[str, str]
) -> None:
    kind, field = where
    payload = {
        "token_id": "t1",
        "name": "n",
        "x": 0,
        "y": 0,
        "width": 1,
        "height": 1,
        "visible": True,
        "map_id": "m1",
        "grid_size": 64,
    }
    required, optional = SCHEMA[kind]
    payload = {key: value for key, value in payload.items() if key in required or key in optional}
    payload[field] = url
    assert failure(frame(kind, payload)) == "invalid_payload"


@SETTINGS
@given(payload=payloads("token.add"))
def test_frames_decode_from_bytes_as_from_text(payload: dict[str, Any]) -> None:
    text = frame("token.add", payload, ascii_only=False)
    assert decode_client_message(text.encode()) == decode_client_message(text)


def test_a_dd2vtt_field_a_client_leaves_out_is_read_as_the_go_services_zero_value() -> None:
    metadata = {"portals": [{"closed": True}], "lights": [{"range": 6}], "walls": []}
    text = frame("map.set", {**MAP, "map_metadata": metadata})
    assert msgspec.to_builtins(decode_client_message(text).payload.map_metadata) == {
        "walls": [],
        "portals": [{**GO_ZEROS["portals"], "closed": True}],
        "lights": [{**GO_ZEROS["lights"], "range": 6}],
        "environment": GO_ENVIRONMENT,
    }


# --- invalid envelopes ----------------------------------------------------------------------------

NOT_JSON = [
    "",
    " ",
    "{",
    "}",
    "nul",
    "{'type': 'ping'}",
    '{"type": "ping",}',
    '{"type": "ping"} x',
    '{"type": "ping" "payload": {}}',
    "NaN",
    "Infinity",
    "\x00",
    # A value the schema refuses, then broken JSON: the JSON error must still win.
    '{"type": "token.move", "payload": {"token_id": 5',
    '{"type": "token.move", "payload": {"token_id": "t1", "x": 1e8, "y": 0, "n": "\\ud800"}}',
    '{"type": "ping", "payload": {"a": 1e999}, ]',
    '{"type": "ping", "payload": 1e999}x',
    '{"type": 5, "payload": {',
    "[1, 2",
]


@pytest.mark.parametrize("text", NOT_JSON)
def test_text_that_is_not_json_is_invalid_json(text: str) -> None:
    assert failure(text) == "invalid_json"


@pytest.mark.parametrize(
    "data", [b"\xff\xfe", b"\x80", b'{"type": "\xc3"}', b"\x00\x01\x02", b'{"type":"ping"}\xff']
)
def test_bytes_that_are_not_utf8_json_are_invalid_json(data: bytes) -> None:
    assert failure(data) == "invalid_json"


@SETTINGS
@given(data=st.data())
def test_every_truncated_or_trailing_garbage_frame_is_invalid_json(data: st.DataObject) -> None:
    kind = data.draw(client_types)
    text = frame(kind, data.draw(payloads(kind)))
    cut = data.draw(st.integers(0, len(text) - 1))
    assert failure(text[:cut]) == "invalid_json"
    assert failure(text + data.draw(st.sampled_from(["x", "}", ",", "{}", '"']))) == "invalid_json"


@SETTINGS
@given(value=st.one_of(_json_scalars, st.text(max_size=10), st.lists(_json_scalars, max_size=3)))
def test_json_that_is_not_an_object_is_invalid_message(value: Any) -> None:
    assert failure(json.dumps(value)) == "invalid_message"


@SETTINGS
@given(obj=st.dictionaries(st.text(max_size=8).filter(lambda k: k != "type"), _json_scalars))
def test_an_object_without_a_type_is_invalid_message(obj: dict[str, Any]) -> None:
    assert failure(json.dumps(obj)) == "invalid_message"


@SETTINGS
@given(kind=st.one_of(_json_scalars, _containers), payload=st.one_of(st.none(), st.just({})))
def test_a_type_that_is_not_a_string_is_invalid_message(kind: Any, payload: Any) -> None:
    assert failure(frame(kind, payload)) == "invalid_message"


SERVER_ONLY_TYPES = sorted(set(MESSAGES.server) - set(MESSAGES.client))


@SETTINGS
@given(
    kind=st.one_of(
        st.sampled_from([*SERVER_ONLY_TYPES, "Token.Add", "token.add ", "TOKEN.MOVE", ""]),
        st.text(max_size=20),
    ).filter(lambda k: k not in MESSAGE_CLASS),
    payload=st.one_of(st.none(), st.just({}), st.just({"token_id": "t1", "x": 1, "y": 2})),
)
def test_a_type_the_server_does_not_accept_from_clients_is_unknown_type(
    kind: str, payload: Any
) -> None:
    assert failure(frame(kind, payload)) == "unknown_type"


def test_an_unknown_type_is_reported_even_when_its_payload_is_malformed() -> None:
    assert failure('{"type": "token.teleport", "payload": [1, 2]}') == "unknown_type"


# --- invalid payloads -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(SCHEMA))
def test_a_message_without_its_payload_is_invalid_payload(kind: str) -> None:
    assert failure(frame(kind)) == "invalid_payload"


@SETTINGS
@given(data=st.data(), payload=st.one_of(_json_scalars, st.text(max_size=5), st.lists(st.none())))
def test_a_payload_that_is_not_an_object_is_invalid_payload(
    data: st.DataObject, payload: Any
) -> None:
    kind = data.draw(client_types)
    text = json.dumps({"type": kind, "payload": payload})
    assert failure(text) == "invalid_payload"


@pytest.mark.parametrize(("kind", "field"), REQUIRED_FIELDS)
@PER_FIELD
@given(data=st.data())
def test_a_payload_missing_a_required_field_is_invalid_payload(
    kind: str, field: str, data: st.DataObject
) -> None:
    payload = data.draw(payloads(kind))
    del payload[field]
    assert failure(frame(kind, payload)) == "invalid_payload"


@pytest.mark.parametrize(("kind", "field", "field_kind"), ALL_FIELDS)
@PER_FIELD
@given(data=st.data())
def test_a_field_of_the_wrong_json_type_is_invalid_payload(
    kind: str, field: str, field_kind: str, data: st.DataObject
) -> None:
    required = field in SCHEMA[kind][0]
    wrong = data.draw(WRONG_TYPE[field_kind].filter(lambda v: required or not_blank(v)))
    payload = {**data.draw(payloads(kind)), field: wrong}
    assert failure(frame(kind, payload)) == "invalid_payload"


OUT_OF_RANGE_FIELDS = [(k, f, fk) for k, f, fk in ALL_FIELDS if fk in OUT_OF_RANGE]


@pytest.mark.parametrize(("kind", "field", "field_kind"), OUT_OF_RANGE_FIELDS)
@PER_FIELD
@given(data=st.data())
def test_a_value_outside_its_limit_is_invalid_payload(
    kind: str, field: str, field_kind: str, data: st.DataObject
) -> None:
    value = data.draw(
        OUT_OF_RANGE[field_kind].filter(lambda v: not_blank(v) or not is_optional(kind, field))
    )
    payload = {**data.draw(payloads(kind)), field: value}
    assert failure(frame(kind, payload)) == "invalid_payload"


# NaN and Infinity are not JSON at all; 1e999 is JSON but no finite float.
NON_FINITE = {
    "NaN": "invalid_json",
    "-NaN": "invalid_json",
    "Infinity": "invalid_json",
    "-Infinity": "invalid_json",
    "nan": "invalid_json",
    "inf": "invalid_json",
    "1e999": "invalid_payload",
    "-1e999": "invalid_payload",
    "1E400": "invalid_payload",
    "-2.5e308": "invalid_payload",
}


@pytest.mark.parametrize(("kind", "field", "field_kind"), NUMERIC_FIELDS)
@PER_FIELD
@given(data=st.data(), literal=st.sampled_from(sorted(NON_FINITE)))
def test_nan_infinity_and_1e999_in_any_number_field_are_refused_with_the_right_code(
    kind: str, field: str, field_kind: str, data: st.DataObject, literal: str
) -> None:
    del field_kind
    text = with_raw(kind, data.draw(payloads(kind)), field, literal)
    assert failure(text) == NON_FINITE[literal]


@pytest.mark.parametrize("literal", ["1e999", "-1e999", "NaN", "Infinity"])
def test_non_finite_numbers_inside_dd2vtt_metadata_are_refused(literal: str) -> None:
    base = {
        "map_id": "m1",
        "image_url": "maps/m1.webp",
        "grid_size": 64,
        "width": 10,
        "height": 10,
    }
    for metadata in (
        '{"lights": [{"range": %s}]}',
        '{"lights": [{"intensity": %s}]}',
        '{"portals": [{"rotation": %s}]}',
        '{"walls": [[{"x": %s, "y": 0}]]}',
    ):
        text = with_raw("map.set", base, "map_metadata", metadata % literal)
        assert failure(text) == ("invalid_payload" if "e" in literal else "invalid_json")


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        (10_000_000, True),
        (-10_000_000, True),
        (10_000_000.000001, False),
        (-10_000_000.000001, False),
        (10_000_001, False),
    ],
)
def test_coordinates_are_bounded_by_ten_million_inclusive(value: float, accepted: bool) -> None:
    text = frame("token.move", {"token_id": "t1", "x": value, "y": 0})
    if accepted:
        assert decode_client_message(text).payload.x == value
    else:
        assert failure(text) == "invalid_payload"


@pytest.mark.parametrize(
    ("field", "length", "accepted"),
    [
        ("token_id", 128, True),
        ("token_id", 129, False),
        ("character_id", 128, True),
        ("character_id", 129, False),
        ("name", 200, True),
        ("name", 201, False),
    ],
)
def test_id_and_name_lengths_are_bounded_exactly_as_the_limits_table_says(
    field: str, length: int, accepted: bool
) -> None:
    payload = {
        "token_id": "t1",
        "name": "n",
        "x": 0,
        "y": 0,
        "width": 1,
        "height": 1,
        "visible": True,
        field: "é" * length,
    }
    text = frame("token.add", payload, ascii_only=False)
    if accepted:
        assert getattr(decode_client_message(text).payload, field) == "é" * length
    else:
        assert failure(text) == "invalid_payload"


@pytest.mark.parametrize(("length", "accepted"), [(2048, True), (2049, False)])
def test_an_image_url_may_be_2048_characters_and_no_more(length: int, accepted: bool) -> None:
    url = "https://cdn.example/" + "a" * (length - len("https://cdn.example/"))
    text = frame("token.update", {"token_id": "t1", "image_url": url})
    if accepted:
        assert decode_client_message(text).payload.image_url == url
    else:
        assert failure(text) == "invalid_payload"


def test_a_map_rename_new_name_of_201_characters_is_invalid_payload() -> None:
    assert failure(frame("map.rename", {"map_id": "m", "new_name": "n" * 201})) == "invalid_payload"


# --- what the server encodes --------------------------------------------------------------------


def test_a_reply_frame_carries_no_seq_and_a_broadcast_frame_does() -> None:
    pong = Frame(type="pong", campaign_id="c", user_id="u", payload=Empty())
    reply = json.loads(encode_frame(pong))
    assert reply == {"type": "pong", "campaign_id": "c", "user_id": "u", "payload": {}}
    event = Frame(type="token.remove", campaign_id="c", user_id="u", seq=3, payload=TokenRef("t"))
    assert json.loads(encode_frame(event))["seq"] == 3


def test_a_fresh_campaign_encodes_empty_collections_and_leaves_absent_optionals_out() -> None:
    state = json.loads(encode(new_state("c1")))
    assert state == {
        "campaign_id": "c1",
        "grid_size": 64,
        "map_width": 0,
        "map_height": 0,
        "darkness_level": 0,
        "tokens": {},
        "fog_zones": [],
        "saved_maps": {},
        "seq": 0,
    }


@SETTINGS
@given(payload=payloads("token.add"))
def test_a_decoded_token_reencodes_without_nulls(payload: dict[str, Any]) -> None:
    message = decode_client_message(frame("token.add", payload))
    assert None not in json.loads(encode(message.payload)).values()


# --- the message table and the close codes -------------------------------------------------------


def test_the_contract_above_covers_every_client_message_type_of_the_message_table() -> None:
    # chat.send's content takes any JSON value (null included): tests/unit/test_chat.py checks it.
    assert set(SCHEMA) | {"ping", "chat.send", *EMPTY_PAYLOADS} == set(MESSAGES.client)


def test_a_message_type_declared_twice_for_one_direction_is_refused() -> None:
    with pytest.raises(ValueError, match="declared twice"):
        MessageTable(both(TokenMoveMsg, numbered=True), from_client(TokenMoveMsg, numbered=True))


def test_a_type_sent_both_ways_needs_a_payload_the_server_may_send() -> None:
    with pytest.raises(TypeError, match="ServerPayload"):
        both(MapSwitchMsg, numbered=True)


def test_an_envelope_whose_payload_is_any_json_needs_its_schema_payload_named() -> None:
    with pytest.raises(TypeError, match="payload="):
        from_client(PingMsg, numbered=False)


def test_every_close_code_is_sent_somewhere_in_the_server() -> None:
    app_dir = Path(__file__).resolve().parents[2] / "app"
    sources = "".join(
        path.read_text(encoding="utf-8")
        for path in app_dir.rglob("*.py")
        if path.name != "errors.py"
    )
    unused = [code.name for code in CloseCode if f"CloseCode.{code.name}" not in sources]
    assert unused == []


def test_a_close_code_the_server_never_sends_has_no_member() -> None:
    assert CloseCode.of(4401) is CloseCode.UNAUTHORIZED
    assert CloseCode.of(1000) is None
    assert CloseCode.of(1006) is None
