"""Every wire type of protocol v1, the persisted state shape, and the one decoder and encoder."""

from __future__ import annotations

import struct
from typing import Annotated, Any, Final

import msgspec
from msgspec import UNSET, Meta, Raw, Struct, UnsetType

# --- constrained scalars: limits are types ---------------------------------------------------

# Strings never carry NUL: Postgres jsonb refuses `\u0000`, which would fail every flush.
# Patterns are also JSON Schema patterns, so they keep to what JavaScript regexes share:
# `(?![\s\S])` is the end of the string (`$` would allow a trailing newline).
NO_NUL = r"^[^\x00]*(?![\s\S])"
Id = Annotated[str, Meta(min_length=1, max_length=128, pattern=NO_NUL)]
Name = Annotated[str, Meta(max_length=200, pattern=NO_NUL)]
# http(s) URLs or relative paths; never another scheme, a protocol-relative `//host`, a
# backslash (browsers read `/\host` as `//host`), whitespace or control characters.
ImageUrl = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=2048,
        pattern=(
            r"^(?:[Hh][Tt][Tt][Pp][Ss]?://[^\s\\/\x00-\x1f\x7f][^\s\\\x00-\x1f\x7f]*"
            r"|(?![A-Za-z][A-Za-z0-9+.-]*:)(?!/[/\\])[^\s\\\x00-\x1f\x7f]+)(?![\s\S])"
        ),
    ),
]
Coord = Annotated[float, Meta(ge=-10_000_000, le=10_000_000)]
Size = Annotated[float, Meta(gt=0, le=10_000_000)]
Short = Annotated[str, Meta(max_length=64, pattern=NO_NUL)]
JwtText = Annotated[str, Meta(min_length=1, max_length=16_384)]

# --- state (persisted, and the body of state.sync) --------------------------------------------


class Token(Struct, omit_defaults=True):
    """One token on the active map; `owner_id` is stamped by the server."""

    token_id: Id
    name: Name
    x: Coord
    y: Coord
    width: Size
    height: Size
    visible: bool
    character_id: Id | UnsetType = UNSET
    image_url: ImageUrl | UnsetType = UNSET
    owner_id: Id | UnsetType = UNSET


class FogZone(Struct):
    """A fog rectangle."""

    x: Coord
    y: Coord
    w: Size
    h: Size
    visible: bool


class Point(Struct):
    """A dd2vtt point, in grid squares."""

    x: Coord
    y: Coord


class Portal(Struct, omit_defaults=True):
    """A dd2vtt door or window."""

    position: Point | UnsetType = UNSET
    bounds: list[Point] | UnsetType = UNSET
    rotation: float | UnsetType = UNSET
    closed: bool | UnsetType = UNSET
    freestanding: bool | UnsetType = UNSET


class Light(Struct, omit_defaults=True):
    """A dd2vtt light source."""

    position: Point | UnsetType = UNSET
    range: float | UnsetType = UNSET
    intensity: float | UnsetType = UNSET
    color: Short | UnsetType = UNSET
    shadows: bool | UnsetType = UNSET


class Environment(Struct, omit_defaults=True):
    """dd2vtt scene lighting."""

    baked_lighting: bool | UnsetType = UNSET
    ambient_light: Short | UnsetType = UNSET


class MapMetadata(Struct, omit_defaults=True):
    """The dd2vtt (Universal VTT) data of an imported map."""

    walls: list[list[Point]] | UnsetType = UNSET
    object_walls: list[list[Point]] | UnsetType = UNSET
    portals: list[Portal] | UnsetType = UNSET
    lights: list[Light] | UnsetType = UNSET
    environment: Environment | UnsetType = UNSET

    def point_count(self) -> int:
        """How many points the metadata holds, for the per-map limit."""
        count = 0
        for lines in (self.walls, self.object_walls):
            if lines is not UNSET:
                count += sum(len(line) for line in lines)
        if self.portals is not UNSET:
            for portal in self.portals:
                count += (portal.position is not UNSET) + (
                    len(portal.bounds) if portal.bounds is not UNSET else 0
                )
        if self.lights is not UNSET:
            count += sum(light.position is not UNSET for light in self.lights)
        return count


class SavedMap(Struct):
    """A map in the library, with the tokens and fog it had when last active."""

    name: Name
    image_url: ImageUrl
    grid_size: Size
    width: Size
    height: Size
    tokens: dict[str, Token] = {}
    fog_zones: list[FogZone] = []
    map_metadata: MapMetadata | UnsetType = UNSET


class CampaignState(Struct):
    """The live table; the persisted JSON and state.sync share this shape."""

    campaign_id: str
    map_id: Id | UnsetType = UNSET
    map_url: ImageUrl | UnsetType = UNSET
    grid_size: Size = 64
    map_width: float = 0
    map_height: float = 0
    darkness_level: float = 0
    tokens: dict[str, Token] = {}
    fog_zones: list[FogZone] = []
    map_metadata: MapMetadata | UnsetType = UNSET
    saved_maps: dict[str, SavedMap] | UnsetType = UNSET
    seq: int = 0
    epoch: str | UnsetType = UNSET


# --- client -> server payloads -----------------------------------------------------------------


class TokenRef(Struct):
    """A payload naming one token."""

    token_id: Id


class TokenMove(Struct):
    """token.move payload."""

    token_id: Id
    x: Coord
    y: Coord


class TokenUpdate(Struct, omit_defaults=True):
    """token.update payload: only the fields given change; `visible`, `owner_id` are GM-only."""

    token_id: Id
    name: Name | UnsetType = UNSET
    image_url: ImageUrl | UnsetType = UNSET
    width: Size | UnsetType = UNSET
    height: Size | UnsetType = UNSET
    visible: bool | UnsetType = UNSET
    owner_id: Id | UnsetType = UNSET


class FogUpdate(Struct):
    """fog.update payload: the zones replace all zones."""

    zones: list[FogZone]


class MapSet(Struct, omit_defaults=True):
    """map.set payload (and its broadcast, which always carries the stored name)."""

    map_id: Id
    image_url: ImageUrl
    grid_size: Size
    width: Size
    height: Size
    name: Name | UnsetType = UNSET
    map_metadata: MapMetadata | UnsetType = UNSET


class MapRef(Struct):
    """A payload naming one map of the library."""

    map_id: Id


class MapRename(Struct):
    """map.rename payload."""

    map_id: Id
    new_name: Name


class SceneDarkness(Struct):
    """scene.darkness payload; finite, clamped to 0..1 when applied."""

    darkness_level: float


class AuthRefresh(Struct):
    """auth.refresh payload: a fresh JWT for the same user."""

    token: JwtText


class Empty(Struct):
    """A payload with nothing in it."""


# --- client -> server messages: one tagged union -----------------------------------------------


class TokenAddMsg(Struct, tag_field="type", tag="token.add"):
    payload: Token


class TokenMoveMsg(Struct, tag_field="type", tag="token.move"):
    payload: TokenMove


class TokenRemoveMsg(Struct, tag_field="type", tag="token.remove"):
    payload: TokenRef


class TokenUpdateMsg(Struct, tag_field="type", tag="token.update"):
    payload: TokenUpdate


class FogUpdateMsg(Struct, tag_field="type", tag="fog.update"):
    payload: FogUpdate


class MapSetMsg(Struct, tag_field="type", tag="map.set"):
    payload: MapSet


class MapSwitchMsg(Struct, tag_field="type", tag="map.switch"):
    payload: MapRef


class MapRenameMsg(Struct, tag_field="type", tag="map.rename"):
    payload: MapRename


class MapDeleteMsg(Struct, tag_field="type", tag="map.delete"):
    payload: MapRef


class SceneDarknessMsg(Struct, tag_field="type", tag="scene.darkness"):
    payload: SceneDarkness


class PingMsg(Struct, tag_field="type", tag="ping"):
    payload: Any = None


class AuthRefreshMsg(Struct, tag_field="type", tag="auth.refresh"):
    payload: AuthRefresh


ClientMessage = (
    TokenAddMsg
    | TokenMoveMsg
    | TokenRemoveMsg
    | TokenUpdateMsg
    | FogUpdateMsg
    | MapSetMsg
    | MapSwitchMsg
    | MapRenameMsg
    | MapDeleteMsg
    | SceneDarknessMsg
    | PingMsg
    | AuthRefreshMsg
)

CLIENT_TYPES: Final[dict[str, type[Any]]] = {
    "token.add": Token,
    "token.move": TokenMove,
    "token.remove": TokenRef,
    "token.update": TokenUpdate,
    "fog.update": FogUpdate,
    "map.set": MapSet,
    "map.switch": MapRef,
    "map.rename": MapRename,
    "map.delete": MapRef,
    "scene.darkness": SceneDarkness,
    "ping": Empty,
    "auth.refresh": AuthRefresh,
}

# --- server -> client payloads -----------------------------------------------------------------


class MapEntry(Struct):
    """One map of the library as map.list shows it."""

    map_id: str
    name: str
    image_url: str


class MapList(Struct, omit_defaults=True):
    """map.list payload."""

    maps: list[MapEntry]
    active_map_id: str | UnsetType = UNSET


class StateSaved(Struct):
    """state.saved payload: the highest seq now durable."""

    seq: int


class StateResume(Struct):
    """state.resume payload: the missed events from_seq..to_seq follow, then live traffic."""

    from_seq: int
    to_seq: int
    epoch: str


class ErrorPayload(Struct):
    """error payload."""

    code: str
    message: str


class Frame(Struct, kw_only=True, omit_defaults=True, gc=False):
    """The envelope of everything the server sends."""

    type: str
    campaign_id: str
    user_id: str
    seq: int | None = None
    payload: Any


SERVER_TYPES: Final[dict[str, type[Any]]] = {
    "state.sync": CampaignState,
    "state.resume": StateResume,
    "state.saved": StateSaved,
    "map.list": MapList,
    "token.add": Token,
    "token.move": TokenMove,
    "token.remove": TokenRef,
    "token.update": TokenUpdate,
    "fog.update": FogUpdate,
    "map.set": MapSet,
    "scene.darkness": SceneDarkness,
    "pong": Empty,
    "error": ErrorPayload,
}

# --- decoding and encoding ---------------------------------------------------------------------


class DecodeFailure(Exception):
    """A frame that is not a valid client message; `code` is the protocol error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Envelope(Struct):
    type: str
    payload: Raw = Raw(b"{}")


_message_decoder: Final = msgspec.json.Decoder(ClientMessage)
_envelope_decoder: Final = msgspec.json.Decoder(_Envelope)
_payload_decoders: Final = {name: msgspec.json.Decoder(t) for name, t in CLIENT_TYPES.items()}
_encoder: Final = msgspec.json.Encoder()


def decode_client_message(data: bytes | str) -> ClientMessage:
    """Decode one client frame, or raise DecodeFailure with the precise protocol error code."""
    try:
        message: ClientMessage = _message_decoder.decode(data)
        return message
    except msgspec.ValidationError:
        pass
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise _not_json(exc) from None
    # The typed decoder stopped at the first wrong value: classify the frame step by step.
    # Decoding as Raw checks the JSON syntax of the whole frame without converting values.
    try:
        msgspec.json.decode(data, type=Raw)
        envelope = _envelope_decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise DecodeFailure(
            "invalid_message", f"a message is a JSON object with a string `type`: {exc}"
        ) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise _not_json(exc) from None
    decoder = _payload_decoders.get(envelope.type)
    if decoder is None:
        raise DecodeFailure("unknown_type", f"unknown message type {envelope.type[:64]!r}")
    try:
        decoder.decode(envelope.payload)
    except msgspec.ValidationError as exc:
        detail = str(exc).replace("`$", "`$.payload")
        raise DecodeFailure(
            "invalid_payload", f"invalid {envelope.type} payload: {detail}"
        ) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise _not_json(exc) from None
    raise DecodeFailure("invalid_payload", f"invalid {envelope.type} message")


def _not_json(exc: Exception) -> DecodeFailure:
    return DecodeFailure("invalid_json", f"frame is not valid JSON (UTF-8 text): {exc}")


def encode(value: Any) -> bytes:
    """Encode any wire value to JSON bytes."""
    return _encoder.encode(value)


def encode_frame(frame: Frame) -> bytes:
    """Encode one outbound frame: the UTF-8 JSON a WebSocket text frame carries."""
    return _encoder.encode(frame)


def text_frame(payload: bytes) -> bytes:
    """One final, unmasked WebSocket text frame carrying `payload` (UTF-8 JSON).

    A server's frames are unmasked, so these bytes are the same for every recipient.
    """
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 65536:
        return struct.pack("!BBH", 0x81, 126, size) + payload
    return struct.pack("!BBQ", 0x81, 127, size) + payload


def decode_stored_state(data: bytes | str, campaign_id: str) -> CampaignState:
    """Decode a persisted state, accepting the Go service's nulls for empty collections."""
    raw = msgspec.json.decode(data)
    if not isinstance(raw, dict):
        raise msgspec.ValidationError("stored state is not a JSON object")
    _nulls_to_empty(raw)
    saved = raw.get("saved_maps")
    if saved is None:
        raw.pop("saved_maps", None)
    elif isinstance(saved, dict):
        for entry in saved.values():
            if isinstance(entry, dict):
                _nulls_to_empty(entry)
    raw.pop("epoch", None)
    raw["campaign_id"] = campaign_id
    for key in ("map_id", "map_url", "map_metadata"):
        if raw.get(key, UNSET) is None:
            del raw[key]
    return msgspec.convert(raw, CampaignState)


def _nulls_to_empty(obj: dict[str, Any]) -> None:
    if obj.get("tokens", 0) is None:
        obj["tokens"] = {}
    if obj.get("fog_zones", 0) is None:
        obj["fog_zones"] = []
    if obj.get("map_metadata", 0) is None:
        del obj["map_metadata"]
