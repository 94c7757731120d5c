"""The generated contract files: current, self-consistent, and true to what the server sends."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from app.protocol import MESSAGES, decode_client_message
from tests.support.harness import (
    Peer,
    RunningServer,
    map_payload,
    serve,
    settings_for,
    token_payload,
)
from tools.schema import (
    ROOT,
    SCHEMA_DIR,
    TS_TYPES,
    client_envelopes,
    generated_files,
    server_envelopes,
    stale_files,
    union_of,
    write_files,
)

SERVER_SCHEMA = ROOT / SCHEMA_DIR / "server-messages.json"
CLIENT_SCHEMA = ROOT / SCHEMA_DIR / "client-messages.json"
ASYNCAPI = ROOT / SCHEMA_DIR / "asyncapi.json"


def test_the_committed_files_are_what_the_structs_generate() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tools.schema", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"run `make schema` and commit the result:\n{result.stderr}"


def test_check_names_a_file_that_drifted_and_writing_repairs_it(tmp_path: Path) -> None:
    assert sorted(write_files(tmp_path)) == sorted(generated_files())
    assert stale_files(tmp_path) == []
    drifted = tmp_path / TS_TYPES
    drifted.write_text(drifted.read_text(encoding="utf-8") + "// edited by hand\n")
    (tmp_path / SCHEMA_DIR / "asyncapi.json").unlink()
    assert sorted(stale_files(tmp_path)) == sorted([TS_TYPES, SCHEMA_DIR / "asyncapi.json"])
    assert sorted(write_files(tmp_path)) == sorted([TS_TYPES, SCHEMA_DIR / "asyncapi.json"])
    assert stale_files(tmp_path) == []


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part]
    return node


@pytest.mark.parametrize("path", [SERVER_SCHEMA, CLIENT_SCHEMA, ASYNCAPI], ids=lambda p: p.name)
def test_every_reference_in_a_generated_document_resolves(path: Path) -> None:
    document = json.loads(path.read_text(encoding="utf-8"))
    refs = _refs(document)
    assert refs
    for ref in refs:
        assert _resolve(document, ref) is not None, ref


def test_the_asyncapi_document_has_an_operation_for_every_message_both_ways() -> None:
    document = json.loads(ASYNCAPI.read_text(encoding="utf-8"))
    assert document["asyncapi"] == "3.0.0"
    assert document["channels"]["table"]["address"] == "/ws"
    sent = {
        _resolve(document, _resolve(document, op["messages"][0]["$ref"])["$ref"])["name"]
        for op in document["operations"].values()
        if op["action"] == "send"
    }
    received = {
        _resolve(document, _resolve(document, op["messages"][0]["$ref"])["$ref"])["name"]
        for op in document["operations"].values()
        if op["action"] == "receive"
    }
    assert sent == set(MESSAGES.server)
    assert received == set(MESSAGES.client)


# --- frames against the committed JSON Schema ------------------------------------------------

# One of each ephemeral signal, as a GM sends them.
SIGNALS: list[tuple[str, dict[str, Any]]] = [
    ("pointer.ping", {"x": 3, "y": 4}),
    ("cursor.move", {"x": 1.5, "y": 2}),
    ("cursor.hide", {}),
    (
        "ruler.update",
        {"points": [{"x": 0, "y": 0}, {"x": 5, "y": 0}], "color": "#f80", "label": "25 ft"},
    ),
    ("ruler.clear", {}),
]
KINDS = frozenset(kind for kind, _ in SIGNALS)


def _errors(
    instance: Any, schema: dict[str, Any] | bool, document: dict[str, Any], at: str
) -> list[str]:
    """What in `instance` breaks `schema`: the subset of JSON Schema the generator emits."""
    if isinstance(schema, bool):
        return [] if schema else [f"{at}: not allowed"]
    if "$ref" in schema:
        return _errors(instance, _resolve(document, schema["$ref"]), document, at)
    if "anyOf" in schema:
        options = [_errors(instance, option, document, at) for option in schema["anyOf"]]
        return [] if any(not found for found in options) else [f"{at}: matches no option"]
    if "enum" in schema and instance not in schema["enum"]:
        return [f"{at}: {instance!r} not in {schema['enum']}"]
    kind = schema.get("type")
    checks = {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "null": lambda v: v is None,
    }
    if kind is not None and not checks[kind](instance):
        return [f"{at}: {instance!r} is not {kind}"]
    found: list[str] = []
    if kind == "object":
        properties = schema.get("properties", {})
        found += [
            f"{at}: missing {key}" for key in schema.get("required", []) if key not in instance
        ]
        for key, value in instance.items():
            if key in properties:
                found += _errors(value, properties[key], document, f"{at}.{key}")
            elif "additionalProperties" in schema:
                found += _errors(value, schema["additionalProperties"], document, f"{at}.{key}")
    if kind == "array":
        for i, item in enumerate(instance):
            found += _errors(item, schema["items"], document, f"{at}[{i}]")
    return found


async def _every_kind_of_frame(server: RunningServer) -> list[str]:
    """Raw frames of every server type, as a GM and a player receive them."""
    gm = await server.join("schema", "alice", "gm", skip=frozenset())
    player = await server.join("schema", "bob", skip=frozenset())
    await gm.request("token.add", token_payload("t1", image_url="/img/t1.png"))
    await gm.send("token.grab", {"token_id": "t1"})
    await player.until(lambda f: f["type"] == "token.grabbed")
    await gm.send("token.release", {"token_id": "t1"})
    await player.until(lambda f: f["type"] == "token.released")
    for kind, payload in SIGNALS:
        await gm.send(kind, payload)
        relayed = await player.until(lambda f: f["type"] in KINDS)
        assert relayed["type"] == kind
    await gm.request("token.add", token_payload("hidden", visible=False))
    await gm.request("token.move", {"token_id": "t1", "x": 64, "y": 64})
    await gm.request("token.update", {"token_id": "hidden", "visible": True})
    await gm.request("fog.update", {"zones": [{"x": 0, "y": 0, "w": 64, "h": 64, "visible": True}]})
    await gm.request("scene.darkness", {"darkness_level": 0.5})
    await gm.request("token.remove", {"token_id": "t1"})
    await gm.request("map.set", map_payload("m1", name="One"))
    await gm.until(lambda f: f["type"] == "map.list")
    await gm.request("map.set", map_payload("m2"))
    await gm.send("map.switch", {"map_id": "m1"})
    await gm.until(lambda f: f["type"] == "state.sync")
    await gm.request("token.remove", {"token_id": "nope"})
    roll = {"content": {"text": "I strike"}, "character_id": "npc-1", "roll": "2d20kh1+5 hit"}
    await gm.send("chat.send", roll)
    await gm.until(lambda f: f["type"] == "chat.message")
    await player.send("chat.send", {"content": "psst", "recipient_id": "alice"})
    await gm.until(lambda f: f["type"] == "chat.message" and f["user_id"] == "bob")
    await gm.roundtrip()
    if not any(f["type"] == "state.saved" for f in gm.received):
        await gm.until(lambda f: f["type"] == "state.saved")
    await player.roundtrip()
    since = max(f["seq"] for f in player.received if "seq" in f)
    epoch = next(f for f in reversed(player.received) if f["type"] == "state.sync")["payload"]
    await player.close()
    await gm.until(lambda f: f["type"] == "presence.leave")
    await gm.request("token.add", token_payload("t2"))
    query = {"since": since, "epoch": epoch["epoch"]}
    resumed = await Peer.open(server.ws_url("schema", server.token("bob"), **query))
    await resumed.expect("state.resume")
    await resumed.expect("token.add")
    late = await server.join("schema", "carol")
    assert len(late.history["payload"]["messages"]) == 1
    await gm.close()
    await resumed.close()
    await late.close()
    return gm.raw + player.raw + resumed.raw + late.raw


@pytest.mark.anyio
async def test_every_frame_the_server_sends_matches_the_committed_schema(tmp_path: Path) -> None:
    async with serve(settings_for(tmp_path, flush_interval=0.05, presence_grace=0.05)) as server:
        raw_frames = await _every_kind_of_frame(server)
    document = json.loads(SERVER_SCHEMA.read_text(encoding="utf-8"))
    strict = msgspec.json.Decoder(union_of(server_envelopes().values()))
    seen: set[str] = set()
    for raw in raw_frames:
        frame = json.loads(raw)
        seen.add(frame["type"])
        assert _errors(frame, document, document, "$") == [], raw
        strict.decode(raw)
    assert seen == set(MESSAGES.server)


def test_client_examples_valid_by_the_schema_are_accepted_by_the_server_decoder() -> None:
    document = json.loads(CLIENT_SCHEMA.read_text(encoding="utf-8"))
    examples: list[dict[str, Any]] = [
        {"type": "token.add", "payload": token_payload("t1", character_id="c1")},
        {"type": "token.move", "payload": {"token_id": "t1", "x": 1.5, "y": -2}},
        {"type": "token.remove", "payload": {"token_id": "t1"}},
        {"type": "token.update", "payload": {"token_id": "t1", "visible": False}},
        {"type": "fog.update", "payload": {"zones": []}},
        {"type": "map.set", "payload": map_payload("m1", name="Crypt")},
        {"type": "map.switch", "payload": {"map_id": "m1"}},
        {"type": "map.rename", "payload": {"map_id": "m1", "new_name": "Vault"}},
        {"type": "map.delete", "payload": {"map_id": "m1"}},
        {"type": "scene.darkness", "payload": {"darkness_level": 0.3}},
        {"type": "ping"},
        {"type": "auth.refresh", "payload": {"token": "a.b.c"}, "campaign_id": "ignored"},
        {
            "type": "chat.send",
            "payload": {"content": {"text": "hi"}, "recipient_id": "", "roll": "1d20+2 attack"},
        },
        {"type": "token.grab", "payload": {"token_id": "t1"}},
        {"type": "token.release", "payload": {"token_id": "t1"}},
        *({"type": kind, "payload": payload} for kind, payload in SIGNALS),
        {"type": "cursor.hide"},
    ]
    assert {example["type"] for example in examples} == set(MESSAGES.client)
    strict = msgspec.json.Decoder(union_of(client_envelopes().values()))
    for example in examples:
        assert _errors(example, document, document, "$") == [], example
        raw = json.dumps(example)
        strict.decode(raw)
        decode_client_message(raw)
    assert _errors({"type": "token.move", "payload": {"x": 1}}, document, document, "$")
