"""The wire contract as generated files: JSON Schema, AsyncAPI and TypeScript, from the message
table (app.protocol.MESSAGES) and the close codes (app.errors.CloseCode).

`python -m tools.schema` writes them; `python -m tools.schema --check` exits 1 when the committed
files differ from what the structs generate, so CI catches a protocol change nobody exported.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from app import protocol
from app.errors import CloseCode, Reconnect
from app.protocol import MESSAGES, MessageType, Numbering

ROOT: Final = Path(__file__).resolve().parent.parent
SCHEMA_DIR: Final = Path("schema")
TS_TYPES: Final = Path("clients/ts/src/protocol.ts")
TS_CLOSE_CODES: Final = Path("clients/ts/src/closecodes.generated.ts")
JSON_SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"

StampedId = Annotated[str, Meta(description="Ignored: the server stamps it from the connection.")]
ServerCampaign = Annotated[str, Meta(description="The campaign, stamped by the server.")]
ServerUser = Annotated[
    str, Meta(description="Whose action this is (for replies: the recipient), server-stamped.")
]
Seq = Annotated[int, Meta(ge=0, description="The campaign's event number (docs/PROTOCOL.md).")]


def _pascal(kind: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in kind.replace("-", ".").split("."))


def client_envelopes() -> dict[str, type[Struct]]:
    """One tagged envelope struct per client message type, keyed by type."""
    envelopes: dict[str, type[Struct]] = {}
    for kind, row in MESSAGES.client.items():
        payload: tuple[str, Any] | tuple[str, Any, Any] = (
            ("payload", row.payload | UnsetType, UNSET)
            if row.payload_optional
            else ("payload", row.payload)
        )
        envelopes[kind] = msgspec.defstruct(
            f"Client{_pascal(kind)}",
            [
                payload,
                ("campaign_id", StampedId | UnsetType, UNSET),
                ("user_id", StampedId | UnsetType, UNSET),
            ],
            tag_field="type",
            tag=kind,
            kw_only=True,
            omit_defaults=True,
            module=__name__,
            namespace={"__doc__": f"`{kind}`, client to server."},
        )
    return envelopes


def server_envelopes() -> dict[str, type[Struct]]:
    """One tagged envelope struct per server frame type, keyed by type; unknown keys refused."""
    envelopes: dict[str, type[Struct]] = {}
    for kind, row in MESSAGES.server.items():
        fields: list[tuple[str, Any] | tuple[str, Any, Any]] = [
            ("campaign_id", ServerCampaign),
            ("user_id", ServerUser),
        ]
        if row.numbering is Numbering.WHEN_BROADCAST:
            fields.append(("seq", Seq | UnsetType, UNSET))
        elif row.numbering is Numbering.ALWAYS:
            fields.append(("seq", Seq))
        fields.append(("payload", row.payload))
        envelopes[kind] = msgspec.defstruct(
            f"Server{_pascal(kind)}",
            fields,
            tag_field="type",
            tag=kind,
            kw_only=True,
            omit_defaults=True,
            forbid_unknown_fields=True,
            module=__name__,
            namespace={"__doc__": f"`{kind}`, server to client."},
        )
    return envelopes


@dataclass(frozen=True, slots=True)
class Direction:
    """The messages of one direction, as schema roots and their components."""

    envelopes: dict[str, type[Struct]]
    union: dict[str, Any]
    components: dict[str, Any]


def _direction(
    envelopes: dict[str, type[Struct]], ref: str, *, shared: frozenset[str] | None = None
) -> Direction:
    """The schema of one direction; for the server's (`shared` given), the fields it always
    sends are required, except in the structs clients send too (`shared`), which one schema
    must describe for both sides: as a client may send them."""
    structs = _struct_classes(envelopes.values())
    union_type: Any = union_of(envelopes.values())
    (union,), components = msgspec.json.schema_components([union_type], ref_template=ref)
    if shared is not None:
        for name, component in components.items():
            if name not in shared:
                _require_emitted_defaults(component, structs[name])
    return Direction(envelopes, union, components)


def union_of(types: Iterable[type[Struct]]) -> Any:
    """The union type of `types`, for a msgspec decoder or schema."""
    members = tuple(types)
    union: Any = members[0]
    for member in members[1:]:
        union = union | member
    return union


def _struct_classes(envelopes: Iterable[type[Struct]]) -> dict[str, type[Struct]]:
    found = {cls.__name__: cls for cls in envelopes}
    for value in vars(protocol).values():
        if isinstance(value, type) and issubclass(value, Struct):
            found.setdefault(value.__name__, value)
    return found


def _require_emitted_defaults(component: dict[str, Any], cls: type[Struct]) -> None:
    """Mark fields the server always sends as required (msgspec's schema describes input)."""
    if cls.__struct_config__.omit_defaults or "properties" not in component:
        return
    required = list(component.get("required", []))
    for field in msgspec.structs.fields(cls):
        if field.default is not UNSET and field.encode_name not in required:
            required.append(field.encode_name)
    component["required"] = [name for name in component["properties"] if name in required]


def client_direction(ref: str = "#/$defs/{name}") -> Direction:
    """Client-to-server messages."""
    return _direction(client_envelopes(), ref)


def server_direction(ref: str = "#/$defs/{name}") -> Direction:
    """Server-to-client messages, with the fields the server always sends required."""
    shared = frozenset(client_direction(ref).components)
    return _direction(server_envelopes(), ref, shared=shared)


# --- JSON Schema and AsyncAPI -----------------------------------------------------------------


def json_schema(direction: Direction, title: str, description: str) -> dict[str, Any]:
    """A standalone JSON Schema document for one direction."""
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "title": title,
        "description": description,
        **direction.union,
        "$defs": direction.components,
    }


def merged_components(client: Direction, server: Direction) -> dict[str, Any]:
    """Both directions' components in one namespace; a shared struct must read the same."""
    merged = dict(client.components)
    for name, component in server.components.items():
        if name in merged and merged[name] != component:
            raise ValueError(f"{name} is sent by both sides but reads differently in each")
        merged[name] = component
    return dict(sorted(merged.items()))


def _message(row: MessageType, envelope: type[Struct], client_to_server: bool) -> dict[str, Any]:
    direction = "client to server" if client_to_server else "server to client"
    message: dict[str, Any] = {
        "name": row.tag,
        "title": f"{row.tag} ({direction})",
        "payload": {"$ref": f"#/components/schemas/{envelope.__name__}"},
    }
    if row.payload.__doc__:
        message["summary"] = row.payload.__doc__.strip().split("\n")[0]
    notes = []
    if client_to_server and row.gm_only:
        notes.append("Only a GM may send it (a player gets `error` `forbidden`).")
    if client_to_server and row.direction is not protocol.Direction.BOTH and row.numbered:
        notes.append("A change: what it causes is broadcast with seqs.")
    if not client_to_server:
        notes.append(_NUMBERING[row.numbering])
    message["description"] = " ".join(notes)
    return message


_NUMBERING: Final = {
    Numbering.ALWAYS: "Numbered: carries the campaign's `seq`.",
    Numbering.NEVER: "Not numbered: carries no `seq`.",
    Numbering.WHEN_BROADCAST: (
        "Numbered when broadcast; the copy a join gets right after its state.sync has no `seq`."
    ),
}


def asyncapi() -> dict[str, Any]:
    """An AsyncAPI 3 document of the /ws channel, from the server's point of view."""
    ref = "#/components/schemas/{name}"
    client, server = client_direction(ref), server_direction(ref)
    messages: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for client_to_server, direction in ((True, client), (False, server)):
        rows = MESSAGES.client if client_to_server else MESSAGES.server
        for kind, envelope in direction.envelopes.items():
            name = envelope.__name__
            messages[name] = _message(rows[kind], envelope, client_to_server)
            action = "receive" if client_to_server else "send"
            operations[f"{action}{name}"] = {
                "action": action,
                "channel": {"$ref": "#/channels/table"},
                "title": f"{action} {kind}",
                "messages": [{"$ref": f"#/channels/table/messages/{name}"}],
            }
    query = {
        "type": "object",
        "properties": {
            "campaign": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$"},
            "token": {"type": "string", "description": "The JWT (or Authorization: Bearer)."},
            "since": {"type": "string", "pattern": "^[0-9]{1,18}$", "description": "Resume."},
            "epoch": {"type": "string", "description": "Resume: the epoch `since` belongs to."},
        },
        "required": ["campaign"],
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "vtt-realtime",
            "version": "1",
            "description": (
                "The virtual tabletop's realtime protocol v1 (docs/PROTOCOL.md). Generated by "
                "`python -m tools.schema` from app/protocol.py; do not edit."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "development": {
                "host": "127.0.0.1:8080",
                "protocol": "ws",
                "description": "`make run`: SQLite and dev auth.",
            }
        },
        "channels": {
            "table": {
                "address": "/ws",
                "title": "One campaign's table",
                "description": (
                    "One WebSocket per client and campaign. `x-close-codes` lists every close "
                    "code the server sends and what a reconnecting client should do."
                ),
                "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in messages},
                "bindings": {"ws": {"method": "GET", "query": query, "bindingVersion": "0.1.0"}},
                "x-close-codes": [
                    {
                        "code": int(code),
                        "name": code.name,
                        "meaning": code.meaning,
                        "reconnect": code.reconnect.value,
                    }
                    for code in CloseCode
                ],
            }
        },
        "operations": operations,
        "components": {
            "schemas": merged_components(client, server),
            "messages": messages,
        },
    }


# --- TypeScript ---------------------------------------------------------------------------------


def _ts_literal(value: Any) -> str:
    return json.dumps(value)


def _ts_type(schema: Mapping[str, Any]) -> str:
    """The TypeScript type of one (non-component) schema."""
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " | ".join(_ts_type(option) for option in schema["anyOf"])
    if "enum" in schema:
        return " | ".join(_ts_literal(value) for value in schema["enum"])
    kind = schema.get("type")
    if kind is None:
        return "unknown"
    if kind == "string":
        return "string"
    if kind in {"number", "integer"}:
        return "number"
    if kind == "boolean":
        return "boolean"
    if kind == "null":
        return "null"
    if kind == "array":
        item = _ts_type(schema["items"])
        return f"Array<{item}>" if "|" in item else f"{item}[]"
    if kind == "object" and "properties" not in schema:
        return f"Record<string, {_ts_type(schema.get('additionalProperties', {}))}>"
    raise ValueError(f"no TypeScript mapping for schema {schema!r}")


def _ts_note(schema: Mapping[str, Any]) -> str:
    """A property's description and limits, for its doc comment (the pattern stays in JSON)."""
    notes = [str(schema["description"])] if "description" in schema else []
    shortest, longest = schema.get("minLength"), schema.get("maxLength")
    if shortest is not None and longest is not None:
        notes.append(f"{shortest}-{longest} chars.")
    elif longest is not None:
        notes.append(f"At most {longest} chars.")
    bounds = [
        f"{operator} {schema[key]}"
        for key, operator in (
            ("minimum", ">="),
            ("exclusiveMinimum", ">"),
            ("maximum", "<="),
            ("exclusiveMaximum", "<"),
        )
        if key in schema
    ]
    if bounds:
        notes.append(", ".join(bounds) + ".")
    return " ".join(notes).replace("*/", "*\\/")


def _ts_component(name: str, schema: Mapping[str, Any]) -> str:
    lines = []
    description = schema.get("description")
    if description:
        lines.append(f"/** {description} */")
    properties: Mapping[str, Any] = schema.get("properties", {})
    if schema.get("type") != "object":
        raise ValueError(f"component {name} is not an object schema")
    if not properties:
        lines.append(f"export type {name} = Record<string, never>;")
        return "\n".join(lines)
    required = set(schema.get("required", []))
    lines.append(f"export interface {name} {{")
    for prop, prop_schema in properties.items():
        note = _ts_note(prop_schema)
        if note:
            lines.append(f"  /** {note} */")
        optional = "" if prop in required else "?"
        lines.append(f"  {prop}{optional}: {_ts_type(prop_schema)};")
    lines.append("}")
    return "\n".join(lines)


def typescript() -> str:
    """TypeScript declarations of every message, generated from the JSON Schema."""
    client, server = client_direction(), server_direction()
    components = merged_components(client, server)
    client_names = [envelope.__name__ for envelope in client.envelopes.values()]
    server_names = [envelope.__name__ for envelope in server.envelopes.values()]
    parts = [
        "// Generated by `python -m tools.schema` (make schema) from schema/*.json, which is\n"
        "// generated from app/protocol.py. Do not edit: change the structs and regenerate.",
        *(_ts_component(name, schema) for name, schema in components.items()),
        "/** Every message a client may send. */\n"
        f"export type ClientMessage ={_ts_union(client_names)};",
        "/** Every frame the server sends. */\n"
        f"export type ServerMessage ={_ts_union(server_names)};",
        'export type ClientMessageType = ClientMessage["type"];',
        'export type ServerMessageType = ServerMessage["type"];',
        "/** The payload a client sends with a message of type `K`. */\n"
        "export type ClientPayload<K extends ClientMessageType> = "
        'Extract<ClientMessage, { type: K }>["payload"];',
        "/** The server frame of type `K`. */\n"
        "export type ServerFrame<K extends ServerMessageType> = "
        "Extract<ServerMessage, { type: K }>;",
        "export const CLIENT_MESSAGE_TYPES = "
        f"{_ts_tuple(client.envelopes)} as const satisfies readonly ClientMessageType[];",
        "export const SERVER_MESSAGE_TYPES = "
        f"{_ts_tuple(server.envelopes)} as const satisfies readonly ServerMessageType[];",
        "/** What only a GM may send; a player's gets `error` `forbidden`. */\n"
        "export const GM_ONLY_MESSAGE_TYPES = "
        f"{_ts_tuple(tag for tag, row in MESSAGES.client.items() if row.gm_only)}"
        " as const satisfies readonly ClientMessageType[];",
        "/** Server frames that never carry a `seq`. */\n"
        "export const UNNUMBERED_SERVER_TYPES = "
        f"{_ts_tuple(tag for tag, row in MESSAGES.server.items() if not row.numbered)}"
        " as const satisfies readonly ServerMessageType[];",
    ]
    return "\n\n".join(parts) + "\n"


def typescript_close_codes() -> str:
    """The close codes and what each asks of a reconnecting client, as TypeScript."""
    kinds = "".join(
        f"\n  /** {kind.advice} */\n  | {_ts_literal(kind.value)}" for kind in Reconnect
    )
    names = "".join(f"  /** {code.meaning} */\n  {code.name}: {int(code)},\n" for code in CloseCode)
    advice = "".join(f"  {int(code)}: {_ts_literal(code.reconnect.value)},\n" for code in CloseCode)
    final = ", ".join(str(int(code)) for code in CloseCode if code.reconnect is Reconnect.NEVER)
    parts = [
        "// Generated by `python -m tools.schema` (make schema) from app/errors.py. Do not edit:\n"
        "// change CloseCode there and regenerate.",
        "/** What a client should do after the server closed its connection. */\n"
        f"export type Reconnect ={kinds};",
        "/** Every close code the server sends, by name. */\n"
        f"export const CloseCode = {{\n{names}}} as const;",
        "export type CloseCode = (typeof CloseCode)[keyof typeof CloseCode];",
        "/** What each close code asks of a reconnecting client. */\n"
        f"export const RECONNECT: Readonly<Record<CloseCode, Reconnect>> = {{\n{advice}}};",
        "/** Close codes after which retrying cannot help. */\n"
        f"export const FINAL_CLOSE_CODES: ReadonlySet<number> = new Set([{final}]);",
        "/** What to do after a close with `code`; any other (1006: dropped) means backoff. */\n"
        "export function reconnectAfter(code: number): Reconnect {\n"
        "  const known: Readonly<Record<number, Reconnect | undefined>> = RECONNECT;\n"
        '  return known[code] ?? "backoff";\n'
        "}",
    ]
    return "\n\n".join(parts) + "\n"


def _ts_union(names: Iterable[str]) -> str:
    return "".join(f"\n  | {name}" for name in names)


def _ts_tuple(kinds: Iterable[str]) -> str:
    return "[\n" + "".join(f"  {_ts_literal(kind)},\n" for kind in kinds) + "]"


# --- files ----------------------------------------------------------------------------------------


def _json_text(document: Mapping[str, Any]) -> str:
    return json.dumps(document, indent=2) + "\n"


def generated_files() -> dict[Path, str]:
    """Every generated file, by path relative to the repository root, with its content."""
    client, server = client_direction(), server_direction()
    return {
        SCHEMA_DIR / "client-messages.json": _json_text(
            json_schema(
                client,
                "vtt-realtime: client-to-server messages (protocol v1)",
                "Every frame a client may send on /ws. Generated from app/protocol.py.",
            )
        ),
        SCHEMA_DIR / "server-messages.json": _json_text(
            json_schema(
                server,
                "vtt-realtime: server-to-client frames (protocol v1)",
                "Every frame the server sends on /ws. Generated from app/protocol.py.",
            )
        ),
        SCHEMA_DIR / "asyncapi.json": _json_text(asyncapi()),
        TS_TYPES: typescript(),
        TS_CLOSE_CODES: typescript_close_codes(),
    }


def stale_files(root: Path = ROOT) -> list[Path]:
    """The generated files whose committed content differs from what the code generates."""
    stale = []
    for path, content in generated_files().items():
        target = root / path
        if not target.is_file() or target.read_text(encoding="utf-8") != content:
            stale.append(path)
    return stale


def write_files(root: Path = ROOT) -> list[Path]:
    """Write every generated file; return the ones that changed."""
    changed = stale_files(root)
    for path, content in generated_files().items():
        if path in changed:
            target = root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content, encoding="utf-8")
    return changed


def main(argv: list[str] | None = None) -> int:
    """Write the generated files, or with --check report the stale ones and exit 1."""
    parser = argparse.ArgumentParser(prog="python -m tools.schema", description=__doc__)
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when a committed file is out of date"
    )
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        for path in stale:
            print(f"out of date: {path} (run `make schema`)", file=sys.stderr)
        return 1 if stale else 0
    for path in write_files():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
