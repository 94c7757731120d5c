"""Lenient input, PROTOCOL.md "What the Go frontend may send": "" and null in an optional field
mean absent; everything else stays as strict as tests/unit/test_protocol.py says."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.config import Limits
from app.errors import Refusal
from app.model import Actor, Event, Rules
from app.protocol import MESSAGES, CampaignState, DecodeFailure, decode_client_message
from app.rules import apply, new_state
from tests.support.harness import map_payload, token_payload
from tests.unit.test_protocol import NAME, SCHEMA, VALID, as_read, failure, frame, payloads

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GM = Actor(user_id="gm-ada", role="gm")
PLAYER = Actor(user_id="player-bo", role="player")
RULES = Rules(limits=Limits())

# How a client may send an optional field: with a value, not at all, as "" or as null.
FORMS = ("present", "absent", "empty", "null")
BLANKS = {"empty": "", "null": None}
LENIENT_KINDS = sorted(kind for kind, (_, optional) in SCHEMA.items() if optional)
REQUIRED_FIELDS = [
    (kind, field, fk) for kind, (req, _) in SCHEMA.items() for field, fk in req.items()
]


@st.composite
def sent_and_meant(draw: st.DrawFn, kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A payload with every optional field in one of FORMS, and the payload it means."""
    required, optional = SCHEMA[kind]
    meant = {field: value for field, value in draw(payloads(kind)).items() if field in required}
    sent = dict(meant)
    for field, field_kind in optional.items():
        form = draw(st.sampled_from(FORMS))
        if form == "present":
            sent[field] = meant[field] = draw(VALID[field_kind])
        elif form in BLANKS:
            sent[field] = BLANKS[form]
    return sent, meant


def decoded(kind: str, payload: dict[str, Any]) -> Any:
    """The decoded message, or the error code decoding it gives."""
    try:
        return decode_client_message(frame(kind, payload, ascii_only=False))
    except DecodeFailure as refusal:
        return refusal.code


# --- the decoder -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", LENIENT_KINDS)
@SETTINGS
@given(data=st.data())
def test_an_optional_field_sent_as_empty_or_null_decodes_exactly_as_if_it_were_absent(
    kind: str, data: st.DataObject
) -> None:
    sent, meant = data.draw(sent_and_meant(kind))
    message = decode_client_message(frame(kind, sent, ascii_only=False))
    assert type(message) is MESSAGES.envelope(kind)
    assert msgspec.to_builtins(message.payload) == as_read(meant)
    assert message == decode_client_message(frame(kind, meant, ascii_only=False))


@pytest.mark.parametrize(("kind", "field", "field_kind"), REQUIRED_FIELDS)
@pytest.mark.parametrize("blank", ["", None], ids=["empty", "null"])
def test_a_required_field_sent_as_empty_or_null_stays_invalid_payload_unless_empty_is_its_value(
    kind: str, field: str, field_kind: str, blank: Any
) -> None:
    valid = {**_example(kind), field: blank}
    if blank == "" and field_kind == NAME:
        assert getattr(decode_client_message(frame(kind, valid)).payload, field) == ""
    else:
        assert failure(frame(kind, valid)) == "invalid_payload"


@pytest.mark.parametrize("blank", ["", None], ids=["empty", "null"])
def test_a_wrong_value_beside_a_blank_optional_field_is_still_invalid_payload(blank: Any) -> None:
    text = frame("token.update", {"token_id": "t1", "name": blank, "width": "wide"})
    assert failure(text) == "invalid_payload"
    text = frame("token.add", token_payload("t1", image_url=blank, x=1e8))
    assert failure(text) == "invalid_payload"


def test_the_message_without_optional_fields_has_no_lenient_pass_to_pay_for() -> None:
    assert MESSAGES.client["token.move"].optional == frozenset()


# --- the contract's examples -----------------------------------------------------------------


def test_token_add_with_an_empty_image_url_and_a_null_character_id_stores_neither() -> None:
    state = new_state("c1")
    sent = token_payload("t1", image_url="", character_id=None)
    apply(state, decode_client_message(frame("token.add", sent)), PLAYER, RULES)
    assert msgspec.to_builtins(state.tokens["t1"]) == {
        **token_payload("t1"),
        "owner_id": PLAYER.user_id,
    }


def test_token_add_of_zero_width_and_height_is_accepted() -> None:
    message = decode_client_message(frame("token.add", token_payload("t1", width=0, height=0)))
    assert (message.payload.width, message.payload.height) == (0, 0)


def test_token_add_without_visible_is_invalid_payload_rather_than_a_hidden_token() -> None:
    payload = token_payload("t1")
    del payload["visible"]
    assert failure(frame("token.add", payload)) == "invalid_payload"


def test_token_update_and_map_set_sizes_of_zero_stay_invalid_payload() -> None:
    assert failure(frame("token.update", {"token_id": "t1", "width": 0})) == "invalid_payload"
    assert failure(frame("map.set", map_payload("m1", height=0))) == "invalid_payload"


@pytest.mark.parametrize("blank", ["", None], ids=["empty", "null"])
def test_token_update_with_a_blank_name_changes_nothing_about_the_name(blank: Any) -> None:
    state = _table()
    update = {"token_id": "t1", "name": blank, "image_url": blank, "x_y": 1}
    apply(state, decode_client_message(frame("token.update", update)), PLAYER, RULES)
    assert state.tokens["t1"].name == "Token t1"
    assert state.tokens["t1"].image_url == "/t1.png"


@pytest.mark.parametrize("blank", ["", None], ids=["empty", "null"])
def test_a_players_token_update_with_a_blank_visible_is_no_visibility_change(blank: Any) -> None:
    state = _table()
    update = {"token_id": "t1", "visible": blank, "owner_id": blank, "width": 3}
    apply(state, decode_client_message(frame("token.update", update)), PLAYER, RULES)
    assert (state.tokens["t1"].visible, state.tokens["t1"].width) == (True, 3)


@pytest.mark.parametrize("blank", ["", None], ids=["empty", "null"])
def test_map_set_with_a_blank_name_and_null_metadata_gets_the_default_name(blank: Any) -> None:
    state = _table()
    sent = map_payload("m3", name=blank, map_metadata=None)
    events = apply(state, decode_client_message(frame("map.set", sent)), GM, RULES)
    assert msgspec.to_builtins(events[0].payload)["name"] == "Map 3"
    assert state.saved_maps is not msgspec.UNSET
    assert state.saved_maps["m3"].name == "Map 3"
    assert state.map_metadata is msgspec.UNSET


# --- through the rules: a lenient message is the message it means, a refusal changes nothing ---

TOKEN_IDS = st.sampled_from(["t1", "hidden", "fresh"])
MAP_IDS = st.sampled_from(["m1", "m2", "fresh"])


@SETTINGS
@given(
    kind=st.sampled_from(LENIENT_KINDS),
    actor=st.sampled_from([GM, PLAYER]),
    data=st.data(),
)
def test_the_rules_treat_a_lenient_message_as_the_one_it_means_and_a_refusal_changes_nothing(
    kind: str, actor: Actor, data: st.DataObject
) -> None:
    sent, meant = data.draw(sent_and_meant(kind))
    ids = {"token_id": TOKEN_IDS, "map_id": MAP_IDS}
    for field, ids_of in ids.items():
        if field in meant:
            sent[field] = meant[field] = data.draw(ids_of)
    assert _outcome(kind, sent, actor) == _outcome(kind, meant, actor)


def _outcome(kind: str, payload: dict[str, Any], actor: Actor) -> Any:
    """What applying the message does: (events, state after) or (refusal code, state after)."""
    state = _table()
    before = msgspec.to_builtins(state)
    message = decoded(kind, payload)
    if isinstance(message, str):
        return message, before
    try:
        events = apply(state, message, actor, RULES)
    except Refusal as refusal:
        assert msgspec.to_builtins(state) == before
        return refusal.code, before
    return _plain(events), msgspec.to_builtins(state)


def _plain(events: list[Event]) -> Any:
    return [(event.type, msgspec.to_builtins(event.payload)) for event in events]


def _table() -> CampaignState:
    """A campaign with two maps in the library, a visible and a hidden token."""
    state = new_state("c1")
    for map_id in ("m1", "m2"):
        apply(state, decode_client_message(frame("map.set", map_payload(map_id))), GM, RULES)
    for token in (
        token_payload("t1", image_url="/t1.png"),
        token_payload("hidden", visible=False),
    ):
        apply(state, decode_client_message(frame("token.add", token)), GM, RULES)
    return state


def _example(kind: str) -> dict[str, Any]:
    """A valid payload of `kind` with its required fields only."""
    examples: dict[str, dict[str, Any]] = {
        "token.add": token_payload("t1"),
        "token.move": {"token_id": "t1", "x": 1, "y": 2},
        "token.remove": {"token_id": "t1"},
        "token.update": {"token_id": "t1"},
        "fog.update": {"zones": []},
        "map.set": map_payload("m1"),
        "map.switch": {"map_id": "m1"},
        "map.rename": {"map_id": "m1", "new_name": "Crypt"},
        "map.delete": {"map_id": "m1"},
        "scene.darkness": {"darkness_level": 0.5},
        "auth.refresh": {"token": "a.b.c"},
        "token.grab": {"token_id": "t1"},
        "token.release": {"token_id": "t1"},
        "pointer.ping": {"x": 1, "y": 2},
        "cursor.move": {"x": 1, "y": 2},
        "ruler.update": {"points": [{"x": 1, "y": 2}]},
    }
    return examples[kind]
