"""Every wire type of protocol v1, the one message table, and the one decoder and encoder."""

from __future__ import annotations

import functools
import operator
import struct
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import UNSET, Meta, Raw, Struct, UnsetType

# --- constrained scalars: limits are types ---------------------------------------------------

# Strings never carry NUL: Postgres jsonb refuses `\u0000`, which would fail every flush.
# Patterns are also JSON Schema patterns, so they keep to what JavaScript regexes share:
# `(?![\s\S])` is the end of the string (`$` would allow a trailing newline).
NO_NUL = r"^[^\x00]*(?![\s\S])"
Id = Annotated[str, Meta(min_length=1, max_length=128, pattern=NO_NUL)]
Name = Annotated[str, Meta(max_length=200, pattern=NO_NUL)]
# An optional name is never empty: a client's "" means it gave none.
GivenName = Annotated[str, Meta(min_length=1, max_length=200, pattern=NO_NUL)]
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
# A token's size may be 0: the Go service took such tokens, and its frontend sends them.
Extent = Annotated[float, Meta(ge=0, le=10_000_000)]
Short = Annotated[str, Meta(max_length=64, pattern=NO_NUL)]
# A ruler's colour is a hex colour only, so that no client can slip CSS into another's page.
HexColor = Annotated[
    str, Meta(pattern=r"^#(?:[0-9A-Fa-f]{3,4}|[0-9A-Fa-f]{6}|[0-9A-Fa-f]{8})(?![\s\S])")
]
Label = Annotated[str, Meta(min_length=1, max_length=64, pattern=NO_NUL)]
JwtText = Annotated[str, Meta(min_length=1, max_length=16_384)]
# chat.send: `""` is allowed in a lenient id because it means "absent"; a present one is 1-128.
ChatType = Annotated[str, Meta(max_length=32, pattern=NO_NUL)]
LenientId = Annotated[str, Meta(max_length=128, pattern=NO_NUL)]
RollText = Annotated[str, Meta(max_length=200)]
Sign = Literal[1, -1]


class ServerPayload(Struct):
    """A payload the server sends: the only kind of value a Frame carries."""


# --- state (persisted, and the body of state.sync) --------------------------------------------


class Token(ServerPayload, omit_defaults=True):
    """One token on the active map; `owner_id` is stamped by the server."""

    token_id: Id
    name: Name
    x: Coord
    y: Coord
    width: Extent
    height: Extent
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
    """A point: in grid squares in dd2vtt metadata, in map coordinates (as tokens) in a ruler."""

    x: Coord
    y: Coord


def _origin() -> Point:
    return Point(0.0, 0.0)


def _two_origins() -> list[Point]:
    return [Point(0.0, 0.0), Point(0.0, 0.0)]


# The dd2vtt parts below always carry every field, as the Go service's structs did: a field a
# client leaves out is stored and sent as Go's zero value.


class Portal(Struct):
    """A dd2vtt door or window."""

    position: Point = msgspec.field(default_factory=_origin)
    bounds: list[Point] = msgspec.field(default_factory=_two_origins)
    rotation: float = 0.0
    closed: bool = False
    freestanding: bool = False


class Light(Struct):
    """A dd2vtt light source."""

    position: Point = msgspec.field(default_factory=_origin)
    range: float = 0.0
    intensity: float = 0.0
    color: Short = ""
    shadows: bool = False


class Environment(Struct):
    """dd2vtt scene lighting."""

    baked_lighting: bool = False
    ambient_light: Short = ""


class MapMetadata(Struct):
    """The dd2vtt (Universal VTT) data of an imported map; `environment` is always sent."""

    walls: list[list[Point]] | UnsetType = UNSET
    object_walls: list[list[Point]] | UnsetType = UNSET
    portals: list[Portal] | UnsetType = UNSET
    lights: list[Light] | UnsetType = UNSET
    environment: Environment = msgspec.field(default_factory=Environment)

    def point_count(self) -> int:
        """How many points the metadata holds, for the per-map limit."""
        count = 0
        for lines in (self.walls, self.object_walls):
            if lines is not UNSET:
                count += sum(len(line) for line in lines)
        if self.portals is not UNSET:
            count += sum(1 + len(portal.bounds) for portal in self.portals)
        if self.lights is not UNSET:
            count += len(self.lights)
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


class CampaignState(ServerPayload):
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


# --- payloads of what clients send (most are broadcast back as they were applied) ---------------


class TokenRef(ServerPayload):
    """A payload naming one token."""

    token_id: Id


class TokenMove(ServerPayload):
    """token.move payload."""

    token_id: Id
    x: Coord
    y: Coord


class TokenUpdate(ServerPayload, omit_defaults=True):
    """token.update payload: only the fields given change; `visible`, `owner_id` are GM-only."""

    token_id: Id
    name: GivenName | UnsetType = UNSET
    image_url: ImageUrl | UnsetType = UNSET
    width: Size | UnsetType = UNSET
    height: Size | UnsetType = UNSET
    visible: bool | UnsetType = UNSET
    owner_id: Id | UnsetType = UNSET


class FogUpdate(ServerPayload):
    """fog.update payload: the zones replace all zones."""

    zones: list[FogZone]


class MapSet(ServerPayload, omit_defaults=True):
    """map.set payload (and its broadcast, which always carries the stored name)."""

    map_id: Id
    image_url: ImageUrl
    grid_size: Size
    width: Size
    height: Size
    name: GivenName | UnsetType = UNSET
    map_metadata: MapMetadata | UnsetType = UNSET


class MapRef(Struct):
    """A payload naming one map of the library."""

    map_id: Id


class MapRename(Struct):
    """map.rename payload."""

    map_id: Id
    new_name: Name


class SceneDarkness(ServerPayload):
    """scene.darkness payload; finite, clamped to 0..1 when applied."""

    darkness_level: float


class AuthRefresh(Struct):
    """auth.refresh payload: a fresh JWT for the same user."""

    token: JwtText


class ChatSend(Struct, kw_only=True):
    """chat.send payload, read leniently: `""` or null optional fields mean absent.

    `content` is any JSON value (checked and re-encoded by app.chat); `roll` is an expression
    the server rolls (app.dice), never a result.
    """

    content: Raw
    message_type: ChatType | None = ""
    gm_only: bool | None = False
    recipient_id: LenientId | None = None
    character_id: LenientId | None = None
    roll: RollText | None = None


class Empty(ServerPayload):
    """A payload with nothing in it."""


# --- payloads only the server sends ------------------------------------------------------------


class MapEntry(Struct):
    """One map of the library as map.list shows it."""

    map_id: str
    name: str
    image_url: str


class MapList(ServerPayload):
    """map.list payload; `active_map_id` is "" when no map is active, as the Go service sent it."""

    maps: list[MapEntry]
    active_map_id: str


class StateSaved(ServerPayload):
    """state.saved payload: the highest seq now durable."""

    seq: int


class StateResume(ServerPayload):
    """state.resume payload: the missed events from_seq..to_seq follow, then live traffic."""

    from_seq: int
    to_seq: int
    epoch: str


class ErrorPayload(ServerPayload):
    """error payload."""

    code: str
    message: str


class Die(Struct, kw_only=True):
    """One die rolled, and whether it counts toward its term."""

    value: int
    kept: bool


class Term(Struct, kw_only=True, omit_defaults=True):
    """A rolled term: dice (`count`, `sides`, `keep?`, `explode?`, `dice`) or a `constant`.

    Dice are in roll order (explosions after the N); `value` is the signed sum of the kept dice,
    or the signed constant. One Struct holds both shapes: a dice term sets `count`, `sides`,
    `dice` (and `keep`, `explode`), a constant term sets `constant`; the rest stay UNSET and
    are omitted, so the wire is exactly the contract's two shapes while msgspec can decode it
    and describe it in a JSON Schema. Any other mix is refused, also when decoding.
    """

    sign: Sign
    count: int | UnsetType = UNSET
    sides: int | UnsetType = UNSET
    keep: str | UnsetType = UNSET
    explode: bool | UnsetType = UNSET
    dice: list[Die] | UnsetType = UNSET
    constant: int | UnsetType = UNSET
    value: int

    def __post_init__(self) -> None:
        dice_fields = (self.count, self.sides, self.dice)
        if self.constant is UNSET:
            valid = all(field is not UNSET for field in dice_fields)
        else:
            valid = all(field is UNSET for field in (*dice_fields, self.keep, self.explode))
        if not valid:
            # msgspec turns a ValueError raised while decoding into a ValidationError.
            raise ValueError("a roll term has either `constant` or `count`, `sides`, `dice`")


class Roll(Struct, kw_only=True, omit_defaults=True):
    """A rolled expression, as a chat message carries it."""

    expression: str
    label: str | UnsetType = UNSET
    total: int
    capped: bool | UnsetType = UNSET
    terms: list[Term]


class ChatMessage(ServerPayload, kw_only=True, omit_defaults=True):
    """chat.message payload, and one entry of chat.history."""

    id: str
    campaign_id: str
    user_id: str
    username: str | UnsetType = UNSET
    character_id: str | UnsetType = UNSET
    recipient_id: str | UnsetType = UNSET
    message_type: str
    content: Raw
    gm_only: bool
    created_at: str
    roll: Roll | UnsetType = UNSET


class ChatHistory(ServerPayload, omit_defaults=True):
    """chat.history payload: oldest first; `incomplete` when stored messages could not be read."""

    messages: list[ChatMessage]
    incomplete: bool | UnsetType = UNSET


# --- presence and drag locks (never stored, never numbered) ------------------------------------


class PresenceMember(Struct, kw_only=True, omit_defaults=True):
    """One user at the table; `connections` is 0 while their grace on leaving runs."""

    user_id: str
    role: Literal["gm", "player"]
    username: str | UnsetType = UNSET
    connections: int


class PresenceSync(ServerPayload):
    """presence.sync payload: everyone at the table, in arrival order."""

    members: list[PresenceMember]


class PresenceJoin(ServerPayload, omit_defaults=True):
    """presence.join payload: a user's first connection arrived."""

    user_id: str
    role: Literal["gm", "player"]
    username: str | UnsetType = UNSET


class PresenceLeave(ServerPayload):
    """presence.leave payload: a user's last connection has been gone for the grace."""

    user_id: str


class TokenHold(ServerPayload):
    """token.grabbed payload: who holds the token's drag lock now."""

    token_id: str
    user_id: str


# --- ephemeral signals: relayed to the other members, never stored ------------------------------


class Spot(ServerPayload):
    """pointer.ping and cursor.move payload: a point on the map."""

    x: Coord
    y: Coord


class Ruler(ServerPayload, omit_defaults=True):
    """ruler.update payload: the measured path, with an optional colour and label."""

    points: Annotated[list[Point], Meta(min_length=1, max_length=64)]
    color: HexColor | UnsetType = UNSET
    label: Label | UnsetType = UNSET


# --- what clients send: one envelope per type, its tag and payload (the table says the rest) -----


class ClientMessage(Struct, tag_field="type"):
    """A message from a client; each subclass is one type, its `payload` typed there."""

    payload: Any


class TokenAddMsg(ClientMessage, tag="token.add"):
    payload: Token


class TokenMoveMsg(ClientMessage, tag="token.move"):
    payload: TokenMove


class TokenRemoveMsg(ClientMessage, tag="token.remove"):
    payload: TokenRef


class TokenUpdateMsg(ClientMessage, tag="token.update"):
    payload: TokenUpdate


class FogUpdateMsg(ClientMessage, tag="fog.update"):
    payload: FogUpdate


class MapSetMsg(ClientMessage, tag="map.set"):
    payload: MapSet


class MapSwitchMsg(ClientMessage, tag="map.switch"):
    payload: MapRef


class MapRenameMsg(ClientMessage, tag="map.rename"):
    payload: MapRename


class MapDeleteMsg(ClientMessage, tag="map.delete"):
    payload: MapRef


class SceneDarknessMsg(ClientMessage, tag="scene.darkness"):
    payload: SceneDarkness


class PingMsg(ClientMessage, tag="ping"):
    # Whatever a ping carries is ignored, as the Go service did.
    payload: Any = None


class AuthRefreshMsg(ClientMessage, tag="auth.refresh"):
    payload: AuthRefresh


class ChatSendMsg(ClientMessage, tag="chat.send"):
    payload: ChatSend


class TokenGrabMsg(ClientMessage, tag="token.grab"):
    payload: TokenRef


class TokenReleaseMsg(ClientMessage, tag="token.release"):
    payload: TokenRef


class Signal(ClientMessage):
    """An ephemeral message: relayed to the other members as sent, never stored or numbered."""


class PointerPingMsg(Signal, tag="pointer.ping"):
    payload: Spot


class CursorMoveMsg(Signal, tag="cursor.move"):
    payload: Spot


class CursorHideMsg(Signal, tag="cursor.hide"):
    payload: Empty = msgspec.field(default_factory=Empty)


class RulerUpdateMsg(Signal, tag="ruler.update"):
    payload: Ruler


class RulerClearMsg(Signal, tag="ruler.clear"):
    payload: Empty = msgspec.field(default_factory=Empty)


# --- the message table: every message type, declared once -------------------------------------


class Direction(Enum):
    """Who sends a message type."""

    CLIENT = "client to server"
    SERVER = "server to client"
    # A client's change and the server's broadcast of it: one tag, one payload.
    BOTH = "both ways"


class Numbering(Enum):
    """Whether a message type takes one of the campaign's seqs (docs/PROTOCOL.md, Sequencing)."""

    NEVER = "never"
    ALWAYS = "always"
    # map.list: an event of its own when broadcast, but the copy a join gets right after its
    # state.sync is a reply and carries none.
    WHEN_BROADCAST = "when broadcast"


@dataclass(frozen=True, slots=True)
class MessageType:
    """One row of the message table; build rows with both(), from_client() and from_server()."""

    tag: str
    payload: type[Struct]
    direction: Direction
    numbering: Numbering
    gm_only: bool
    # What the decoder builds for this type, when clients send it.
    envelope: type[ClientMessage] | None
    # The payload's fields a client may leave out, and whether it may leave out the payload.
    optional: frozenset[str]
    payload_optional: bool

    @property
    def from_client(self) -> bool:
        """Whether clients send this type."""
        return self.direction is not Direction.SERVER

    @property
    def from_server(self) -> bool:
        """Whether the server sends this type."""
        return self.direction is not Direction.CLIENT

    @property
    def numbered(self) -> bool:
        """Whether this type takes a seq (for a client's message: whether it is a change)."""
        return self.numbering is not Numbering.NEVER

    @property
    def ephemeral(self) -> bool:
        """Whether this is an ephemeral signal: relayed, never stored, dropped when late."""
        return self.envelope is not None and issubclass(self.envelope, Signal)


def both(envelope: type[ClientMessage], *, numbered: bool, gm_only: bool = False) -> MessageType:
    """A row for a type clients send and the server broadcasts, with the same payload."""
    row = _client_row(envelope, Direction.BOTH, numbered, gm_only, None)
    if not issubclass(row.payload, ServerPayload):
        raise TypeError(
            f"{row.tag}: the server sends {row.payload.__name__}; make it a ServerPayload"
        )
    return row


def from_client(
    envelope: type[ClientMessage],
    *,
    numbered: bool,
    gm_only: bool = False,
    payload: type[Struct] | None = None,
) -> MessageType:
    """A row for a type only clients send; `numbered` when applying it is a numbered change.

    `payload` describes the payload in the schema when the envelope takes any JSON (ping).
    """
    return _client_row(envelope, Direction.CLIENT, numbered, gm_only, payload)


def from_server(
    tag: str, payload: type[ServerPayload], numbering: Numbering = Numbering.NEVER
) -> MessageType:
    """A row for a type only the server sends."""
    return MessageType(tag, payload, Direction.SERVER, numbering, False, None, frozenset(), False)


def _client_row(
    envelope: type[ClientMessage],
    direction: Direction,
    numbered: bool,
    gm_only: bool,
    payload: type[Struct] | None,
) -> MessageType:
    tag = str(envelope.__struct_config__.tag)
    declared = {field.name: field for field in msgspec.structs.fields(envelope)}["payload"]
    if payload is None:
        if not (isinstance(declared.type, type) and issubclass(declared.type, Struct)):
            raise TypeError(f"{tag}: the envelope's payload is not a Struct; pass payload=")
        payload = declared.type
    optional = frozenset(
        field.encode_name for field in msgspec.structs.fields(payload) if not field.required
    )
    numbering = Numbering.ALWAYS if numbered else Numbering.NEVER
    return MessageType(
        tag, payload, direction, numbering, gm_only, envelope, optional, not declared.required
    )


class MessageTable:
    """Every message type, by direction; the decoder, rules, metrics, schema and mirrors read it."""

    def __init__(self, *rows: MessageType) -> None:
        self.rows = rows
        self.client: Final = {row.tag: row for row in rows if row.from_client}
        self.server: Final = {row.tag: row for row in rows if row.from_server}
        if len(self.client) + len(self.server) != sum(
            row.from_client + row.from_server for row in rows
        ):
            raise ValueError("a message type is declared twice for one direction")
        self._envelopes = {row.tag: row.envelope for row in rows if row.envelope is not None}
        self._by_envelope = {
            envelope: self.client[tag] for tag, envelope in self._envelopes.items()
        }
        # A decoded client message's type, by its envelope: on every message's path.
        self.tag_of: Final[dict[type[ClientMessage], str]] = {
            envelope: tag for tag, envelope in self._envelopes.items()
        }

    @property
    def tags(self) -> frozenset[str]:
        """Every type, either way."""
        return frozenset(self.client) | frozenset(self.server)

    def of(self, message: ClientMessage) -> MessageType:
        """The row of a decoded client message."""
        return self._by_envelope[type(message)]

    def envelope(self, tag: str) -> type[ClientMessage]:
        """The envelope struct of a type clients send."""
        return self._envelopes[tag]

    def client_union(self) -> Any:
        """The union of every client envelope, for a decoder."""
        return functools.reduce(operator.or_, self._by_envelope)


# Adding a message type is adding its row (and, for a type clients send, its envelope above):
# the decoder, the GM-only check, the metrics' labels, the JSON Schema, AsyncAPI and TypeScript
# of tools/schema.py, and the test mirror follow. Its handling is still to be written.
MESSAGES: Final = MessageTable(
    both(TokenAddMsg, numbered=True),
    both(TokenMoveMsg, numbered=True),
    both(TokenRemoveMsg, numbered=True),
    both(TokenUpdateMsg, numbered=True),
    both(FogUpdateMsg, numbered=True, gm_only=True),
    both(MapSetMsg, numbered=True, gm_only=True),
    from_client(MapSwitchMsg, numbered=True, gm_only=True),
    from_client(MapRenameMsg, numbered=True, gm_only=True),
    from_client(MapDeleteMsg, numbered=True, gm_only=True),
    both(SceneDarknessMsg, numbered=True, gm_only=True),
    from_client(PingMsg, numbered=False, payload=Empty),
    from_client(AuthRefreshMsg, numbered=False),
    # Not a change to the table (app.rules never sees it): app.chat takes it, and the
    # chat.message it causes takes a seq.
    from_client(ChatSendMsg, numbered=False),
    from_client(TokenGrabMsg, numbered=False),
    from_client(TokenReleaseMsg, numbered=False),
    both(PointerPingMsg, numbered=False),
    both(CursorMoveMsg, numbered=False),
    both(CursorHideMsg, numbered=False),
    both(RulerUpdateMsg, numbered=False),
    both(RulerClearMsg, numbered=False),
    from_server("state.sync", CampaignState, Numbering.ALWAYS),
    from_server("state.resume", StateResume, Numbering.ALWAYS),
    from_server("state.saved", StateSaved),
    from_server("map.list", MapList, Numbering.WHEN_BROADCAST),
    from_server("pong", Empty),
    from_server("error", ErrorPayload),
    from_server("chat.message", ChatMessage, Numbering.ALWAYS),
    # To one client on a full join, right after its map.list.
    from_server("chat.history", ChatHistory),
    from_server("presence.sync", PresenceSync),
    from_server("presence.join", PresenceJoin),
    from_server("presence.leave", PresenceLeave),
    from_server("token.grabbed", TokenHold),
    from_server("token.released", TokenRef),
)


class Frame(Struct, kw_only=True, omit_defaults=True, gc=False):
    """The envelope of everything the server sends."""

    type: str
    campaign_id: str
    user_id: str
    seq: int | None = None
    # Raw: a payload encoded before (a chat message, encoded once for the log and every frame).
    payload: ServerPayload | Raw


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


_message_decoder: Final = msgspec.json.Decoder(MESSAGES.client_union())
_envelope_decoder: Final = msgspec.json.Decoder(_Envelope)
_payload_decoders: Final = {
    tag: msgspec.json.Decoder(row.payload) for tag, row in MESSAGES.client.items()
}
_fields_decoder: Final = msgspec.json.Decoder(dict[str, Raw])
_BLANKS: Final = (Raw(b'""'), Raw(b"null"))
_encoder: Final = msgspec.json.Encoder()


def decode_client_message(data: bytes | str) -> ClientMessage:
    """Decode one client frame, or raise DecodeFailure with the precise protocol error code."""
    try:
        return _decode_client_message(data)
    except RecursionError:
        # msgspec stops at about a thousand levels; no message of the contract nests so deep.
        raise DecodeFailure("invalid_payload", "the frame nests too deep") from None


def _decode_client_message(data: bytes | str) -> ClientMessage:
    if isinstance(data, bytes):
        # A binary frame is read as a text frame's UTF-8 would be, all of it: msgspec checks
        # the strings it decodes, not the bytes a Raw field (chat content) keeps as they are.
        try:
            data = data.decode()
        except UnicodeDecodeError as exc:
            raise _not_json(exc) from None
    try:
        message: ClientMessage = _message_decoder.decode(data)
        return message
    except msgspec.ValidationError:
        pass
    except msgspec.DecodeError as exc:
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
    except msgspec.DecodeError as exc:
        raise _not_json(exc) from None
    row = MESSAGES.client.get(envelope.type)
    if row is None:
        raise DecodeFailure("unknown_type", f"unknown message type {envelope.type[:64]!r}")
    payload = _blanks_dropped(envelope.payload, row.optional) if row.optional else envelope.payload
    try:
        value = _payload_decoders[row.tag].decode(payload)
    except msgspec.ValidationError as exc:
        detail = str(exc).replace("`$", "`$.payload")
        raise DecodeFailure("invalid_payload", f"invalid {row.tag} payload: {detail}") from None
    except msgspec.DecodeError as exc:
        raise _not_json(exc) from None
    if payload is not envelope.payload:
        return MESSAGES.envelope(row.tag)(payload=value)
    raise DecodeFailure("invalid_payload", f"invalid {row.tag} message")


def _blanks_dropped(payload: Raw, optional: frozenset[str]) -> Raw | bytes:
    """`payload` without the optional fields it sends as "" or null, which mean absent.

    The Go service read them so and its frontend sends them; every optional field's type
    refuses both, so a payload that has any never got past the typed decoder.
    """
    try:
        fields = _fields_decoder.decode(payload)
    except msgspec.ValidationError:
        return payload
    kept = {
        key: value for key, value in fields.items() if key not in optional or value not in _BLANKS
    }
    return payload if len(kept) == len(fields) else _encoder.encode(kept)


def _not_json(exc: Exception) -> DecodeFailure:
    return DecodeFailure("invalid_json", f"frame is not valid JSON (UTF-8 text): {exc}")


def encode(value: Any) -> bytes:
    """Encode any wire value to JSON bytes."""
    return _encoder.encode(value)


def encode_frame(frame: Frame) -> bytes:
    """Encode one outbound frame: the UTF-8 JSON a WebSocket text frame carries."""
    return _encoder.encode(frame)


# The header of each text frame shorter than 126 bytes (most signals and moves).
_SHORT_HEADERS: Final = tuple(bytes((0x81, size)) for size in range(126))


def text_frame(payload: bytes) -> bytes:
    """One final, unmasked WebSocket text frame carrying `payload` (UTF-8 JSON).

    A server's frames are unmasked, so these bytes are the same for every recipient.
    """
    size = len(payload)
    if size < 126:
        return _SHORT_HEADERS[size] + payload
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
