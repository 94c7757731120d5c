"""app.chat against PROTOCOL.md "Chat and dice": checks, audiences, history, rate, the pipeline."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable, Coroutine
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeVar

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.auth import Identity
from app.auth.roles import DevClaimRoles
from app.chat import (
    MAX_CONTENT_DEPTH,
    Audience,
    CampaignChat,
    ChatLog,
    ChatRate,
    compose,
    created_at_text,
    is_member,
    message_of,
    owns_character,
    read_send,
)
from app.config import ChatLimits
from app.errors import CloseCode, CloseConnection, Refusal
from app.model import Actor, Role
from app.persistence.chat import MemoryChatStore, StoredMessage
from app.protocol import CampaignState, ChatHistory, ChatMessage, ChatSend, SavedMap, Token

pytestmark = pytest.mark.anyio

T = TypeVar("T")
TIMEOUT = 5.0
LIMITS = ChatLimits()
GM = Actor("gm1", "gm")
ALICE = Actor("alice", "player")
BOB = Actor("bob", "player")
CAROL = Actor("carol", "player")
MOMENT = datetime(2026, 2, 19, 10, 55, 13, 987654, tzinfo=UTC)
_send_decoder = msgspec.json.Decoder(ChatSend)


async def within(coroutine: Coroutine[Any, Any, T]) -> T:
    """Await with the test's timeout."""
    async with asyncio.timeout(TIMEOUT):
        return await coroutine


def send(**payload: Any) -> ChatSend:
    """A chat.send payload as the connection would decode it from JSON."""
    payload.setdefault("content", {"text": "hello"})
    return _send_decoder.decode(json.dumps(payload))


def refusal(code: str, call: Any, *args: Any, **kwargs: Any) -> str:
    """Call, expecting a Refusal with `code`; return its message."""
    with pytest.raises(Refusal) as raised:
        call(*args, **kwargs)
    assert raised.value.code == code, raised.value.message
    return raised.value.message


def attempt(call: Callable[..., T], *args: Any) -> T | Refusal:
    """The call's result, or the Refusal it raised."""
    try:
        return call(*args)
    except Refusal as refused:
        return refused


def message(
    number: int,
    sender: str = "alice",
    *,
    gm_only: bool = False,
    recipient: str | None = None,
    text: str = "hi",
) -> ChatMessage:
    """A chat.message as the log holds it."""
    request = read_send(
        send(content={"text": text}, gm_only=gm_only, recipient_id=recipient), sender, LIMITS
    )
    stored = compose(
        request,
        campaign_id="c1",
        user_id=sender,
        username=None,
        message_id=f"m{number:05d}",
        moment=MOMENT + timedelta(seconds=number),
    )
    return message_of(stored)


def ids(history: msgspec.Raw) -> list[str]:
    """The message ids of a chat.history payload, in order."""
    return [m.id for m in msgspec.json.decode(history, type=ChatHistory).messages]


# --- reading chat.send -------------------------------------------------------------------------


def test_a_minimal_chat_send_is_public_with_an_empty_message_type() -> None:
    request = read_send(send(content="hello"), "alice", LIMITS)
    assert (request.message_type, request.content, request.gm_only) == ("", '"hello"', False)
    assert (request.recipient_id, request.character_id, request.roll) == (None, None, None)


@pytest.mark.parametrize("absent", ["", None])
def test_an_empty_string_or_null_optional_field_means_absent(absent: str | None) -> None:
    payload = send(
        message_type=absent, gm_only=None, recipient_id=absent, character_id=absent, roll=absent
    )
    request = read_send(payload, "alice", LIMITS)
    assert request == read_send(send(), "alice", LIMITS)


def test_a_missing_content_is_refused_but_null_content_is_a_value() -> None:
    with pytest.raises(msgspec.ValidationError, match="missing required field `content`"):
        _send_decoder.decode(b'{"message_type":"text"}')
    assert read_send(send(content=None), "alice", LIMITS).content == "null"


@pytest.mark.parametrize(
    ("payload", "where"),
    [
        ({"message_type": "x" * 33}, "message_type"),
        ({"recipient_id": "u" * 129}, "recipient_id"),
        ({"character_id": 7}, "character_id"),
        ({"gm_only": "yes"}, "gm_only"),
        ({"roll": "1" * 201}, "roll"),
        ({"message_type": "a\x00b"}, "message_type"),
    ],
)
def test_a_field_of_the_wrong_type_or_length_is_refused_when_decoded(
    payload: dict[str, Any], where: str
) -> None:
    with pytest.raises(msgspec.ValidationError, match=where):
        send(**payload)


def texts(max_size: int | None = None) -> st.SearchStrategy[str]:
    return st.text(
        st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=max_size
    )


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts(max_size=8), inner),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_any_json_content_without_nul_is_kept_as_its_compact_encoding(value: Any) -> None:
    compact = msgspec.json.encode(value)
    if len(compact) > LIMITS.max_content_bytes:
        refusal("invalid_payload", read_send, send(content=value), "alice", LIMITS)
        return
    request = read_send(send(content=value), "alice", LIMITS)
    assert request.content.encode() == compact
    assert json.loads(request.content) == json.loads(json.dumps(value))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(list(ChatSend.__struct_fields__)), json_values))
def test_any_payload_is_either_read_or_refused_with_a_payload_or_request_code(
    payload: dict[str, Any],
) -> None:
    try:
        decoded = _send_decoder.decode(json.dumps(payload))
    except msgspec.ValidationError:
        return
    request = attempt(read_send, decoded, "alice", LIMITS)
    if isinstance(request, Refusal):
        assert request.code in {"invalid_payload", "invalid_request"}
        assert request.message
        return
    assert not (request.gm_only and request.recipient_id is not None)
    assert request.recipient_id != "alice"
    assert len(request.content.encode()) <= LIMITS.max_content_bytes


def test_content_over_8_kib_encoded_is_refused_naming_its_size() -> None:
    text = "x" * (LIMITS.max_content_bytes - 2)  # the quotes make it 8,192 bytes exactly
    assert read_send(send(content=text), "alice", LIMITS).content == f'"{text}"'
    message = refusal("invalid_payload", read_send, send(content=text + "x"), "alice", LIMITS)
    assert message == "chat.send content is 8193 bytes encoded; at most 8192"


def test_content_is_measured_in_its_compact_encoding_not_as_sent() -> None:
    content = {"text": "y" * 8000}
    spaced = '{"content":  {  "text" :  "' + "y" * 8000 + '"  }' + " " * 500 + "}"
    request = read_send(_send_decoder.decode(spaced), "alice", LIMITS)
    assert request.content == json.dumps(content, separators=(",", ":"))


@pytest.mark.parametrize(
    "content", ["a\x00b", {"k": ["ok", "nul\x00"]}, {"key\x00": 1}, [[{"deep": "\x00"}]]]
)
def test_content_holding_a_nul_anywhere_is_refused(content: Any) -> None:
    message = refusal("invalid_payload", read_send, send(content=content), "alice", LIMITS)
    assert message == "chat.send content holds a NUL character"


def test_content_nesting_deeper_than_64_is_refused_however_deep() -> None:
    deepest_allowed = json.loads("[" * MAX_CONTENT_DEPTH + "]" * MAX_CONTENT_DEPTH)
    assert read_send(send(content=deepest_allowed), "alice", LIMITS)
    for depth in (MAX_CONTENT_DEPTH + 1, 2000):
        raw = b'{"content":' + b"[" * depth + b"]" * depth + b"}"
        payload = ChatSend(content=msgspec.Raw(raw[len(b'{"content":') : -1]))
        message = refusal("invalid_payload", read_send, payload, "alice", LIMITS)
        assert message == "chat.send content nests more than 64 deep"


def test_a_bad_roll_is_invalid_payload_naming_what_is_wrong() -> None:
    message = refusal("invalid_payload", read_send, send(roll="2d20x"), "alice", LIMITS)
    assert message == "chat.send roll: unknown text at position 4: 'x'"


def test_gm_only_with_a_recipient_is_invalid_request() -> None:
    payload = send(gm_only=True, recipient_id="bob")
    assert "either gm_only or to a recipient_id" in refusal(
        "invalid_request", read_send, payload, "alice", LIMITS
    )


def test_a_whisper_to_oneself_is_invalid_request() -> None:
    refusal("invalid_request", read_send, send(recipient_id="alice"), "alice", LIMITS)


# --- audiences ---------------------------------------------------------------------------------

VIEWERS: list[tuple[str, Role]] = [
    ("alice", "player"),
    ("bob", "player"),
    ("carol", "player"),
    ("gm1", "gm"),
    ("gm2", "gm"),
]


@pytest.mark.parametrize(
    ("audience", "seen_by"),
    [
        (Audience("alice"), {"alice", "bob", "carol", "gm1", "gm2"}),
        (Audience("alice", gm_only=True), {"alice", "gm1", "gm2"}),
        (Audience("gm1", gm_only=True), {"gm1", "gm2"}),
        (Audience("alice", recipient="bob"), {"alice", "bob"}),
        (Audience("gm1", recipient="carol"), {"gm1", "carol"}),
    ],
)
def test_public_messages_reach_everyone_gm_only_the_gms_and_sender_whispers_the_two(
    audience: Audience, seen_by: set[str]
) -> None:
    assert {user for user, role in VIEWERS if audience.includes(user, role)} == seen_by


def test_a_message_knows_its_audience() -> None:
    assert Audience.of(message(1, "alice", recipient="bob")) == Audience("alice", False, "bob")
    assert Audience.of(message(2, "bob", gm_only=True)) == Audience("bob", True, None)


# --- messages ----------------------------------------------------------------------------------


def test_created_at_is_rfc_3339_utc_at_whole_seconds() -> None:
    paris = datetime(2026, 2, 19, 11, 55, 13, 999999, tzinfo=timezone(timedelta(hours=1)))
    assert created_at_text(paris) == "2026-02-19T10:55:13Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", message_of(compose_now()).created_at)


def compose_now(**payload: Any) -> StoredMessage:
    request = read_send(send(**payload), "alice", LIMITS)
    return compose(request, campaign_id="c1", user_id="alice", username=None)


def test_a_message_omits_absent_optional_fields_and_never_sends_null() -> None:
    encoded = json.loads(msgspec.json.encode(message_of(compose_now())))
    assert set(encoded) == {
        "id",
        "campaign_id",
        "user_id",
        "message_type",
        "content",
        "gm_only",
        "created_at",
    }
    assert encoded["gm_only"] is False
    assert None not in encoded.values()


def test_a_message_carries_every_optional_field_it_has_in_the_contract_order() -> None:
    request = read_send(
        send(message_type="roll", recipient_id="bob", character_id="pc1", roll="d20+2 hit"),
        "alice",
        LIMITS,
    )
    stored = compose(request, campaign_id="c1", user_id="alice", username="Alice", moment=MOMENT)
    encoded = json.loads(msgspec.json.encode(message_of(stored)))
    assert list(encoded) == [
        "id",
        "campaign_id",
        "user_id",
        "username",
        "character_id",
        "recipient_id",
        "message_type",
        "content",
        "gm_only",
        "created_at",
        "roll",
    ]
    assert encoded["roll"]["expression"] == "1d20+2"
    assert encoded["roll"]["label"] == "hit"


class Scripted:
    """Dice results in order (0-based)."""

    def __init__(self, *results: int) -> None:
        self.results = list(results)

    def randbelow(self, n: int, /) -> int:
        return self.results.pop(0)


def test_the_server_rolls_the_dice_and_the_roll_is_stored_with_the_message() -> None:
    request = read_send(send(roll="/r 2d20kh1+5"), "alice", LIMITS)
    stored = compose(request, campaign_id="c1", user_id="alice", username=None, rng=Scripted(3, 17))
    assert stored.roll is not None
    assert json.loads(stored.roll)["total"] == 23
    rolled = message_of(stored).roll
    assert not isinstance(rolled, msgspec.UnsetType)
    assert (rolled.expression, rolled.total) == ("2d20kh1+5", 23)


def test_a_stored_roll_that_no_longer_decodes_is_left_out_of_the_message() -> None:
    stored = replace(compose_now(), roll='{"expression": "1d6"}')
    assert message_of(stored).roll is msgspec.UNSET


# --- the rate ------------------------------------------------------------------------------------


def test_the_chat_rate_allows_a_burst_of_10_then_2_a_second_per_user() -> None:
    rate = ChatRate(LIMITS.rate_per_second, LIMITS.rate_burst)
    for _ in range(10):
        rate.check("alice", 100.0)
    message = refusal("rate_limited", rate.check, "alice", 100.0)
    assert message == "at most 2 chat messages a second (bursts of 10)"
    rate.check("bob", 100.0)
    rate.check("alice", 100.5)
    refusal("rate_limited", rate.check, "alice", 100.5)
    refusal("rate_limited", rate.check, "alice", 100.7)


def test_a_sustained_flood_is_refused_message_by_message_at_the_rate_and_never_more() -> None:
    rate = ChatRate(2.0, 10)
    accepted = 0
    for step in range(20 * 20):  # 20 messages a second for 20 seconds
        outcome = attempt(rate.check, "alice", step / 20)
        if isinstance(outcome, Refusal):
            assert outcome.code == "rate_limited"
        else:
            accepted += 1
    assert accepted == 10 + 40 - 1  # the burst, then 2 a second after the first 1/20 s


# --- the log and history -----------------------------------------------------------------------


def test_history_is_filtered_for_the_recipient_before_it_is_limited_to_100() -> None:
    log = ChatLog(LIMITS)
    for number in range(300):
        whisper = number % 3 != 0
        log.append(message(number, "bob", recipient="carol" if whisper else None))
    alice = ids(log.history_for("alice", "player"))
    assert len(alice) == 100
    assert alice == [f"m{n:05d}" for n in range(0, 300, 3)]
    assert ids(log.history_for("carol", "player")) == [f"m{n:05d}" for n in range(200, 300)]
    assert ids(log.history_for("gm1", "gm")) == ids(log.history_for("alice", "player"))


def test_gm_only_history_reaches_gms_and_its_sender_only() -> None:
    log = ChatLog(LIMITS)
    log.append(message(1, "alice", gm_only=True))
    log.append(message(2, "gm1", gm_only=True))
    log.append(message(3, "bob"))
    assert ids(log.history_for("alice", "player")) == ["m00001", "m00003"]
    assert ids(log.history_for("bob", "player")) == ["m00003"]
    assert ids(log.history_for("gm2", "gm")) == ["m00001", "m00002", "m00003"]


def test_history_is_at_most_512_kib_encoded_keeping_the_newest_messages() -> None:
    log = ChatLog(LIMITS)
    for number in range(100):
        log.append(message(number, text="z" * 8000))
    history = log.history_for("alice", "player")
    assert len(history) <= LIMITS.history_bytes
    kept = ids(history)
    assert kept == [f"m{n:05d}" for n in range(100 - len(kept), 100)]
    one_more = len(msgspec.json.encode(message(99 - len(kept), text="z" * 8000))) + 1
    assert len(history) + one_more > LIMITS.history_bytes


def test_history_is_oldest_first_and_an_empty_log_gives_an_empty_list() -> None:
    log = ChatLog(LIMITS)
    assert msgspec.json.decode(log.history_for("a", "player")) == {"messages": []}
    for number in (3, 1, 2):
        log.append(message(number))
    assert ids(log.history_for("alice", "player")) == ["m00003", "m00001", "m00002"]


def test_the_log_keeps_the_last_k_messages_and_is_bounded_in_bytes() -> None:
    log = ChatLog(replace(LIMITS, memory_messages=5))
    for number in range(8):
        log.append(message(number))
    assert ids(log.history_for("alice", "player")) == [f"m{n:05d}" for n in range(3, 8)]
    size = len(msgspec.json.encode(message(0, text="w" * 3000)))
    small = ChatLog(replace(LIMITS, memory_bytes=size * 3))
    for number in range(6):
        small.append(message(number, text="w" * 3000))
    assert len(small) == 3
    assert ids(small.history_for("alice", "player")) == ["m00003", "m00004", "m00005"]


def test_a_message_already_logged_is_not_appended_twice() -> None:
    log = ChatLog(LIMITS)
    data = log.append(message(1))
    assert data == msgspec.json.encode(message(1))
    assert log.append(message(1)) is None
    assert len(log) == 1


def test_restoring_puts_stored_messages_before_live_ones_and_completes_the_log() -> None:
    log = ChatLog(LIMITS)
    log.incomplete = True
    log.append(message(5))
    log.append(message(6))
    assert msgspec.json.decode(log.history_for("alice", "player"))["incomplete"] is True
    log.restore([message(1), message(2), message(5)])
    history = log.history_for("alice", "player")
    assert ids(history) == ["m00001", "m00002", "m00005", "m00006"]
    assert "incomplete" not in msgspec.json.decode(history)


def test_an_incomplete_history_of_a_failed_load_is_empty_and_says_so() -> None:
    log = ChatLog(LIMITS)
    log.incomplete = True
    assert msgspec.json.decode(log.history_for("alice", "player")) == {
        "messages": [],
        "incomplete": True,
    }


# --- who may speak as whom, and to whom ----------------------------------------------------------


def test_a_player_owns_a_character_through_a_token_on_the_active_or_a_stored_map() -> None:
    def token(token_id: str, character: str, owner: str) -> Token:
        return Token(token_id, "T", 0, 0, 1, 1, True, character_id=character, owner_id=owner)

    stored = SavedMap("old", "/m.png", 64, 10, 10, tokens={"t2": token("t2", "pc2", "alice")})
    state = CampaignState(
        campaign_id="c1", tokens={"t1": token("t1", "pc1", "alice")}, saved_maps={"m0": stored}
    )
    assert owns_character(state, "alice", "pc1")
    assert owns_character(state, "alice", "pc2")
    assert not owns_character(state, "bob", "pc1")
    assert not owns_character(state, "alice", "npc")


class Roles:
    """A role resolver answering from a dict, or failing with `failure`."""

    def __init__(self, roles: dict[str, Role], failure: CloseCode | None = None) -> None:
        self.roles = roles
        self.failure = failure
        self.asked: list[str] = []

    async def role(self, campaign_id: str, identity: Identity) -> Role:
        self.asked.append(identity.user_id)
        if self.failure is not None:
            raise CloseConnection(self.failure, "cannot tell")
        if identity.user_id not in self.roles:
            raise CloseConnection(CloseCode.FORBIDDEN, "not a member")
        return self.roles[identity.user_id]


async def test_a_member_is_whoever_the_role_resolver_gives_a_role() -> None:
    roles = Roles({"bob": "player"})
    assert await within(is_member(roles, "c1", "bob"))
    assert not await within(is_member(roles, "c1", "mallory"))
    assert not await within(is_member(DevClaimRoles(), "c1", "bob"))


@pytest.mark.parametrize(
    ("failure", "code"),
    [(CloseCode.TRY_AGAIN_LATER, "db_error"), (CloseCode.INTERNAL_ERROR, "internal")],
)
async def test_a_role_resolver_that_cannot_tell_refuses_the_whisper(
    failure: CloseCode, code: str
) -> None:
    with pytest.raises(Refusal) as raised:
        await within(is_member(Roles({}, failure), "c1", "bob"))
    assert raised.value.code == code


# --- the pipeline --------------------------------------------------------------------------------


class Table:
    """A Roster: who is connected, and who owns which character."""

    def __init__(self, *connected: str, owned: tuple[str, str] | None = None) -> None:
        self.online = set(connected)
        self.owned = owned

    def connected(self, user_id: str) -> bool:
        return user_id in self.online

    def owns_character(self, user_id: str, character_id: str) -> bool:
        return self.owned == (user_id, character_id)


def campaign_chat(
    store: MemoryChatStore | None = None, roles: Roles | None = None, **limits: Any
) -> CampaignChat:
    return CampaignChat(
        "c1",
        replace(LIMITS, **limits),
        store or MemoryChatStore(),
        roles or Roles({"alice": "player", "bob": "player", "gm1": "gm", "dave": "player"}),
        clock=lambda: 0.0,
    )


async def test_an_accepted_message_is_stored_before_it_is_returned() -> None:
    store = MemoryChatStore()
    chat = campaign_chat(store)
    accepted = await within(chat.accept(ALICE, "Alice", send(roll="1d6"), Table("alice")))
    assert list(store.rows) == [accepted.id]
    row = store.rows[accepted.id]
    assert row.roll is not None
    assert accepted == message_of(row)
    assert (accepted.username, accepted.user_id, accepted.campaign_id) == ("Alice", "alice", "c1")


async def test_a_failed_insert_answers_db_error_stores_nothing_and_says_so_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryChatStore()
    store.outage = True
    with caplog.at_level(logging.WARNING, "vtt.chat"), pytest.raises(Refusal) as raised:
        await within(campaign_chat(store).accept(ALICE, None, send(), Table("alice")))
    assert (raised.value.code, raised.value.message) == (
        "db_error",
        "the message could not be stored",
    )
    assert store.rows == {}
    (record,) = [r for r in caplog.records if r.getMessage() == "chat message not stored"]
    assert (record.campaign_id, record.reason) == ("c1", "simulated outage")  # type: ignore[attr-defined]


async def test_an_unusable_chat_table_answers_db_error_naming_why() -> None:
    store = MemoryChatStore()
    store.unusable = "chat_messages lacks column gm_only"
    with pytest.raises(Refusal) as raised:
        await within(campaign_chat(store).accept(ALICE, None, send(), Table("alice")))
    assert raised.value.code == "db_error"
    assert raised.value.message == "chat is unavailable: chat_messages lacks column gm_only"


async def test_a_whisper_to_someone_neither_connected_nor_a_member_is_not_found() -> None:
    roles = Roles({"alice": "player"})
    chat = campaign_chat(roles=roles)
    with pytest.raises(Refusal) as raised:
        await within(chat.accept(ALICE, None, send(recipient_id="mallory"), Table("alice")))
    assert raised.value.code == "not_found"
    assert roles.asked == ["mallory"]


async def test_a_whisper_to_a_connected_user_asks_no_database() -> None:
    roles = Roles({}, failure=CloseCode.TRY_AGAIN_LATER)
    chat = campaign_chat(roles=roles)
    accepted = await within(chat.accept(ALICE, None, send(recipient_id="bob"), Table("bob")))
    assert (accepted.recipient_id, roles.asked) == ("bob", [])


async def test_a_whisper_to_a_member_who_is_away_is_stored_for_their_history() -> None:
    chat = campaign_chat()
    accepted = await within(chat.accept(ALICE, None, send(recipient_id="dave"), Table("alice")))
    assert accepted.recipient_id == "dave"


async def test_a_player_may_speak_only_as_a_character_whose_token_they_own() -> None:
    store = MemoryChatStore()
    store.characters.add(("c1", "alice", "pc-from-sql"))
    chat = campaign_chat(store)
    table = Table("alice", owned=("alice", "pc1"))
    for character in ("pc1", "pc-from-sql"):
        spoken = await within(chat.accept(ALICE, None, send(character_id=character), table))
        assert spoken.character_id == character
    with pytest.raises(Refusal) as raised:
        await within(chat.accept(BOB, None, send(character_id="pc1"), table))
    assert raised.value.code == "forbidden"
    as_npc = await within(chat.accept(GM, None, send(character_id="any-npc"), table))
    assert as_npc.character_id == "any-npc"


async def test_the_rate_is_checked_before_the_database_is_asked() -> None:
    store = MemoryChatStore()
    roles = Roles({"alice": "player"})
    chat = campaign_chat(store, roles, rate_burst=1)
    await within(chat.accept(ALICE, None, send(), Table("alice")))
    with pytest.raises(Refusal) as raised:
        await within(chat.accept(ALICE, None, send(recipient_id="zed"), Table("alice")))
    assert (raised.value.code, roles.asked, len(store.rows)) == ("rate_limited", [], 1)


async def test_loading_fills_the_log_from_storage_or_marks_it_incomplete() -> None:
    store = MemoryChatStore()
    store.usernames["bob"] = "Bob"
    for number in range(3):
        stored = compose(
            read_send(send(), "bob", LIMITS),
            campaign_id="c1",
            user_id="bob",
            username=None,
            message_id=f"m{number}",
            moment=MOMENT + timedelta(seconds=number),
        )
        await within(store.insert(stored))
    chat = campaign_chat(store, memory_messages=2)
    await within(chat.load())
    history = msgspec.json.decode(chat.log.history_for("alice", "player"), type=ChatHistory)
    assert [(m.id, m.username) for m in history.messages] == [("m1", "Bob"), ("m2", "Bob")]
    store.outage = True
    failed = campaign_chat(store)
    await within(failed.load())
    assert failed.log.incomplete


def test_the_chat_wire_structs_have_a_json_schema_with_the_roll_in_it() -> None:
    _, components = msgspec.json.schema_components([ChatSend, ChatMessage, ChatHistory])
    assert {"ChatSend", "ChatMessage", "ChatHistory", "Roll", "Term", "Die"} <= set(components)
    message_schema = components["ChatMessage"]
    assert set(message_schema["required"]) == {
        "id",
        "campaign_id",
        "user_id",
        "message_type",
        "content",
        "gm_only",
        "created_at",
    }
    assert components["ChatSend"]["required"] == ["content"]


class CountingChatStore(MemoryChatStore):
    """A MemoryChatStore that counts the loads of history."""

    def __init__(self) -> None:
        super().__init__()
        self.loads = 0

    async def recent(self, campaign_id: str, limit: int) -> list[StoredMessage]:
        self.loads += 1
        return await super().recent(campaign_id, limit)


async def test_a_failed_load_is_retried_after_the_interval_once_for_concurrent_joins() -> None:
    store = CountingChatStore()
    await within(store.insert(compose_now()))
    now = [0.0]
    chat = CampaignChat("c1", LIMITS, store, Roles({}), clock=lambda: now[0])
    store.outage = True
    await within(chat.load())
    store.outage = False

    now[0] = 9.9
    await within(chat.retry(10.0))
    assert (chat.log.incomplete, store.loads) == (True, 1)
    now[0] = 10.0

    async def both() -> None:
        await asyncio.gather(chat.retry(10.0), chat.retry(10.0))

    await within(both())
    assert (chat.log.incomplete, len(chat.log), store.loads) == (False, 1, 2)
    # A complete log is never loaded again.
    now[0] = 100.0
    await within(chat.retry(10.0))
    assert store.loads == 2
