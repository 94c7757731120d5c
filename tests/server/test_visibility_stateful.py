"""Random tables on a real server: each player mirror is the GM state as that player may see it.

A GM and two players send random sequences of token, fog, darkness and map messages (and the
players drop and resume). After every step, each connected player's mirror, built only from
the frames it received, equals the GM's mirror filtered to visible tokens; the GM's mirror
equals the server's own state; every message got the answer the rules predict; and no frame
sent to a player named a token it could not see.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from app.model import Role
from app.protocol import encode
from tests.support.harness import TIMEOUT, Peer, RunningServer, serve, settings_for
from tests.support.mirror import Mirror

T = TypeVar("T")

GM_USER = "gm-ann"
PLAYER_USERS = ("pl-bob", "pl-cat")
OWNERS = (GM_USER, *PLAYER_USERS, "pl-zed")
MAP_IDS = ("mp-north", "mp-south", "mp-east")
NAMES = ("Goblin", "Wizard", "Barrel", "Horse")
IMAGES = ("https://cdn.example/i/a.png", "https://cdn.example/i/b.png", "/assets/c.png")
MAP_FIELDS = ("map_id", "map_url", "grid_size", "map_width", "map_height", "map_metadata")
SCENE_FIELDS = (*MAP_FIELDS, "darkness_level", "fog_zones")
# Replies that carry no state: answers to our pings, and flush notices that may come any time.
QUIET = frozenset({"pong", "state.saved"})

coords = st.integers(min_value=-50, max_value=50)
sizes = st.sampled_from([1, 2, 3])
zones = st.lists(
    st.fixed_dictionaries(
        {"x": coords, "y": coords, "w": sizes, "h": sizes, "visible": st.booleans()}
    ),
    max_size=3,
)
metadata = st.none() | st.just({"walls": [[{"x": 0, "y": 0}, {"x": 3, "y": 0}]]})


class World:
    """One server on one event loop, driven step by step from hypothesis's synchronous rules."""

    def __init__(self, tmp_path: Path, policy: str, **overrides: Any) -> None:
        self.policy = policy
        self.loop = asyncio.new_event_loop()
        # Every example is a new campaign: flush and evict them soon, or hundreds of idle
        # sessions from a long shrink pile up in one server.
        options: dict[str, Any] = {"rate_per_second": 1e6, "rate_burst": 10**6}
        options |= {"flush_interval": 0.2, "evict_grace": 0.2, **overrides}
        self._serving = serve(settings_for(tmp_path, token_policy=policy, **options))
        self.server: RunningServer = self.run(self._serving.__aenter__())
        self._tokens: dict[tuple[str, Role], str] = {}

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        """Run `work` on the server's loop, bounded by a timeout."""

        async def bounded() -> T:
            async with asyncio.timeout(TIMEOUT * 3):
                return await work

        return self.loop.run_until_complete(bounded())

    def token(self, user: str, role: Role) -> str:
        """A dev token for `user`, minted once: signing one takes a tenth of a second."""
        key = (user, role)
        if key not in self._tokens:
            self._tokens[key] = self.server.token(user, role)
        return self._tokens[key]

    def nodelay(self) -> None:
        """Turn Nagle off on the server's sockets, as uvicorn does when it binds a port itself.

        The harness hands uvicorn a socket made without IPPROTO_TCP, so asyncio leaves
        TCP_NODELAY off and a second frame in a row waits ~40 ms for a delayed ACK; a step is
        several frames, and that wait would dominate this test's run time.
        """
        for connection in self.server.server.server_state.connections:
            sock = connection.transport.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self) -> None:
        """Stop the server and the loop."""
        try:
            self.run(self._serving.__aexit__(None, None, None))
        finally:
            self.loop.close()


@dataclass
class Seat:
    """One participant: their connection, their mirror, and what they saw while away."""

    user: str
    role: Role
    peer: Peer | None = None
    mirror: Mirror = field(default_factory=Mirror)
    read: int = 0
    seen_while_away: set[str] = field(default_factory=set)
    missed_a_resync: bool = False

    @property
    def online(self) -> bool:
        """Whether the seat is connected."""
        return self.peer is not None

    def connected(self) -> Peer:
        """The live peer of an online seat."""
        assert self.peer is not None
        return self.peer

    def new_frames(self) -> tuple[list[dict[str, Any]], list[str]]:
        """The frames (decoded and raw) received since the last call, pongs and saves aside."""
        peer = self.connected()
        frames, raws = peer.received[self.read :], peer.raw[self.read :]
        self.read = len(peer.received)
        kept = [(f, r) for f, r in zip(frames, raws, strict=True) if f["type"] not in QUIET]
        return [f for f, _ in kept], [r for _, r in kept]


def visible(tokens: dict[str, Any]) -> dict[str, Any]:
    """The tokens a player may see."""
    return {tid: token for tid, token in tokens.items() if token["visible"]}


def scene_of(state: dict[str, Any]) -> dict[str, Any]:
    """The map and scene fields of a state, as a client holds them."""
    return {key: state.get(key) for key in SCENE_FIELDS}


class VisibilityMachine(RuleBasedStateMachine):
    """A GM and two players at one table; the rules are what they send."""

    def __init__(self, world: World) -> None:
        super().__init__()
        self.world = world
        self.campaign = f"c-{uuid.uuid4().hex[:12]}"
        self.salt = uuid.uuid4().hex[:8]
        self.ids: list[str] = []
        self.received: dict[int, list[dict[str, Any]]] = {}
        self.raws: dict[int, list[str]] = {}
        self.gm = Seat(GM_USER, "gm")
        self.players = [Seat(user, "player") for user in PLAYER_USERS]
        for seat in (self.gm, *self.players):
            self._connect(seat)

    # --- plumbing ------------------------------------------------------------------------------

    def _connect(self, seat: Seat, **query: Any) -> None:
        server = self.world.server
        url = server.ws_url(self.campaign, self.world.token(seat.user, seat.role), **query)
        seat.peer = self.world.run(Peer.open(url))
        self.world.nodelay()
        seat.read = 0
        self.world.run(seat.peer.roundtrip())
        frames, _ = seat.new_frames()
        for frame in frames:
            seat.mirror.apply(frame)

    @property
    def seats(self) -> list[Seat]:
        """Every connected seat, the GM first."""
        return [s for s in (self.gm, *self.players) if s.online]

    def new_id(self) -> str:
        """A fresh token id: fixed length, so no id is a substring of another or of any field."""
        token_id = f"tk{len(self.ids):03d}{self.salt}"
        self.ids.append(token_id)
        return token_id

    def seat_for(self, data: st.DataObject) -> Seat:
        """Someone connected to act."""
        return self.pick(data, self.seats, "actor")

    def pick(self, data: st.DataObject, seats: list[Seat], label: str) -> Seat:
        """One of `seats`, drawn by user name so that a failing example reads well."""
        user = data.draw(st.sampled_from([seat.user for seat in seats]), label=label)
        return next(seat for seat in seats if seat.user == user)

    def target(self, data: st.DataObject) -> str:
        """A token id: mostly one on the active map, sometimes any id ever used."""
        live = sorted(self.gm.mirror.tokens)
        if live and data.draw(st.integers(0, 3), label="live") > 0:
            return data.draw(st.sampled_from(live), label="token")
        return data.draw(st.sampled_from(self.ids), label="token")

    def expected_token_error(self, seat: Seat, token_id: str) -> str | None:
        """The error a move, update or remove of `token_id` by `seat` should get."""
        token = self.gm.mirror.tokens.get(token_id)
        if token is None or (seat.role == "player" and not token["visible"]):
            return "not_found"
        if seat.role == "player" and self.world.policy == "owner":
            return None if token.get("owner_id") == seat.user else "forbidden"
        return None

    def step(
        self,
        sender: Seat,
        kind: str,
        payload: dict[str, Any],
        error: str | None,
        answer: str | None = None,
    ) -> None:
        """Send one message, wait until everyone has handled it, and check what came back."""
        before = self.shown()
        peer = sender.connected()
        self.world.run(peer.send(kind, payload))
        self.settle(sender)
        frames = self.received[id(sender)]
        errors = [f["payload"]["code"] for f in frames if f["type"] == "error"]
        if error is not None:
            assert errors == [error], (kind, payload, frames)
            for seat in self.seats:
                numbered = [f for f in self.received[id(seat)] if "seq" in f]
                assert numbered == [], f"a refused {kind} was broadcast: {numbered}"
        else:
            assert errors == [], (kind, payload, frames)
            answers = [f for f in frames if f.get("seq") and f["user_id"] == sender.user]
            assert answers, f"{kind} by {sender.user} was not broadcast to its sender"
            assert answers[0]["type"] == (answer or kind)
        named = str(payload.get("token_id", ""))
        for seat in self.players:
            if seat.online:
                self.check_leaks(seat, before, named if seat is sender else "")

    def settle(self, first: Seat) -> None:
        """Ping from `first`, then from everyone else, and apply what each received."""
        order = [first, *(s for s in self.seats if s is not first)]
        self.received, self.raws = {}, {}
        for seat in order:
            self.world.run(seat.connected().roundtrip())
            frames, raws = seat.new_frames()
            for frame in frames:
                seat.mirror.apply(frame)
            self.received[id(seat)] = frames
            self.raws[id(seat)] = raws
        shown = self.shown()
        for seat in self.players:
            if not seat.online:
                seat.seen_while_away |= shown

    def shown(self) -> set[str]:
        """The ids of the tokens players may see now: visible ones on the active map."""
        return set(visible(self.gm.mirror.tokens))

    def check_leaks(self, seat: Seat, before: set[str], named: str) -> None:
        """No frame of this step names a token the player could not see before or after it."""
        after = self.shown()
        for frame, raw in zip(self.received[id(seat)], self.raws[id(seat)], strict=True):
            for token_id in self.ids:
                if token_id not in raw:
                    continue
                if frame["type"] == "error" and token_id == named:
                    continue
                if token_id in after:
                    continue
                if token_id in before:
                    assert frame["type"] == "token.remove", f"{seat.user} got {raw}"
                    assert frame["payload"] == {"token_id": token_id}, raw
                    continue
                raise AssertionError(f"{seat.user} was sent hidden token {token_id}: {raw}")

    # --- tokens --------------------------------------------------------------------------------

    @rule(
        data=st.data(),
        is_visible=st.booleans(),
        x=coords,
        y=coords,
        name=st.sampled_from(NAMES),
        image=st.none() | st.sampled_from(IMAGES),
        replace_existing=st.sampled_from([False, False, True]),
    )
    def add(
        self,
        data: st.DataObject,
        is_visible: bool,
        x: int,
        y: int,
        name: str,
        image: str | None,
        replace_existing: bool,
    ) -> None:
        """Someone adds a token, or re-adds one with a known id."""
        seat = self.seat_for(data)
        token_id = self.target(data) if replace_existing and self.ids else self.new_id()
        if seat.role == "player":
            is_visible = data.draw(st.sampled_from([True, True, True, is_visible]), label="shown")
        payload: dict[str, Any] = {"token_id": token_id, "name": name, "x": x, "y": y}
        payload |= {"width": 1, "height": 1, "visible": is_visible}
        if image is not None:
            payload["image_url"] = image
        existing = self.gm.mirror.tokens.get(token_id)
        error = None
        if seat.role == "player":
            if not is_visible or (existing is not None and not existing["visible"]):
                error = "forbidden"
            elif existing is not None and self.world.policy == "owner":
                error = None if existing.get("owner_id") == seat.user else "forbidden"
        self.step(seat, "token.add", payload, error)
        if error is None:
            assert self.gm.mirror.tokens[token_id]["owner_id"] == seat.user

    @rule(x=coords, name=st.sampled_from(NAMES))
    def ambush(self, x: int, name: str) -> None:
        """The GM adds a hidden token: players must hear nothing of it."""
        token_id = self.new_id()
        payload = {"token_id": token_id, "name": name, "x": x, "y": x, "width": 2, "height": 2}
        self.step(self.gm, "token.add", payload | {"visible": False}, None)
        for seat in self.players:
            if seat.online:
                assert self.received[id(seat)] == [], f"{seat.user} heard of the ambush"

    @precondition(lambda self: self.ids)
    @rule(data=st.data(), x=coords, y=coords)
    def move(self, data: st.DataObject, x: int, y: int) -> None:
        """Someone moves a token."""
        seat = self.seat_for(data)
        token_id = self.target(data)
        payload = {"token_id": token_id, "x": x, "y": y}
        self.step(seat, "token.move", payload, self.expected_token_error(seat, token_id))

    @precondition(lambda self: self.ids)
    @rule(
        data=st.data(),
        name=st.none() | st.sampled_from(NAMES),
        image=st.none() | st.sampled_from(IMAGES),
        width=st.none() | sizes,
        is_visible=st.none() | st.booleans(),
        owner=st.none() | st.sampled_from(OWNERS),
    )
    def update(
        self,
        data: st.DataObject,
        name: str | None,
        image: str | None,
        width: int | None,
        is_visible: bool | None,
        owner: str | None,
    ) -> None:
        """Someone updates a token: any fields, visibility and owner included."""
        seat = self.seat_for(data)
        token_id = self.target(data)
        fields = {
            "name": name,
            "image_url": image,
            "width": width,
            "visible": is_visible,
            "owner_id": owner,
        }
        payload = {"token_id": token_id} | {k: v for k, v in fields.items() if v is not None}
        error = self.expected_token_error(seat, token_id)
        gm_only = is_visible is not None or owner is not None
        if error is None and seat.role == "player" and gm_only:
            error = "forbidden"
        self.step(seat, "token.update", payload, error)

    @precondition(lambda self: self.ids)
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        """Someone removes a token."""
        seat = self.seat_for(data)
        token_id = self.target(data)
        payload = {"token_id": token_id}
        self.step(seat, "token.remove", payload, self.expected_token_error(seat, token_id))

    @precondition(lambda self: self.gm.mirror.tokens)
    @rule(data=st.data())
    def toggle(self, data: st.DataObject) -> None:
        """The GM hides a visible token or reveals a hidden one."""
        token_id = data.draw(st.sampled_from(sorted(self.gm.mirror.tokens)), label="token")
        hidden = not self.gm.mirror.tokens[token_id]["visible"]
        self.step(self.gm, "token.update", {"token_id": token_id, "visible": hidden}, None)

    @precondition(lambda self: self.gm.mirror.tokens)
    @rule(data=st.data(), owner=st.sampled_from(OWNERS))
    def hand_over(self, data: st.DataObject, owner: str) -> None:
        """The GM gives a token to someone (under the owner policy, only they may touch it)."""
        token_id = data.draw(st.sampled_from(sorted(self.gm.mirror.tokens)), label="token")
        self.step(self.gm, "token.update", {"token_id": token_id, "owner_id": owner}, None)

    @precondition(
        lambda self: (
            any(s.online for s in self.players)
            and not all(t["visible"] for t in self.gm.mirror.tokens.values())
        )
    )
    @rule(data=st.data(), kind=st.sampled_from(["move", "update", "reveal", "remove", "add"]))
    def player_guesses_a_hidden_id(self, data: st.DataObject, kind: str) -> None:
        """A player names a hidden token: not_found, as if it did not exist (add: forbidden)."""
        seat = self.pick(data, [s for s in self.players if s.online], "player")
        hidden = sorted(tid for tid, t in self.gm.mirror.tokens.items() if not t["visible"])
        token_id = data.draw(st.sampled_from(hidden), label="token")
        payload: dict[str, Any] = {"token_id": token_id}
        error = "not_found"
        if kind == "move":
            payload |= {"x": 1, "y": 1}
        elif kind == "update":
            payload["name"] = NAMES[0]
        elif kind == "reveal":
            payload["visible"] = True
        elif kind == "add":
            payload |= {"name": NAMES[0], "x": 0, "y": 0, "width": 1, "height": 1, "visible": True}
            error = "forbidden"
        message = "token.update" if kind == "reveal" else f"token.{kind}"
        self.step(seat, message, payload, error)

    @precondition(lambda self: not all(t["visible"] for t in self.gm.mirror.tokens.values()))
    @rule(
        data=st.data(),
        kind=st.sampled_from(["move", "update", "remove"]),
        x=coords,
        name=st.sampled_from(NAMES),
    )
    def gm_works_in_secret(self, data: st.DataObject, kind: str, x: int, name: str) -> None:
        """The GM moves, renames or removes a hidden token: players must hear nothing of it."""
        hidden = sorted(tid for tid, t in self.gm.mirror.tokens.items() if not t["visible"])
        token_id = data.draw(st.sampled_from(hidden), label="token")
        payload: dict[str, Any] = {"token_id": token_id}
        if kind == "move":
            payload |= {"x": x, "y": x}
        elif kind == "update":
            payload["name"] = name
        self.step(self.gm, f"token.{kind}", payload, None)
        for seat in self.players:
            if seat.online:
                assert self.received[id(seat)] == [], f"{seat.user} heard of a hidden {kind}"

    # --- scene and maps ------------------------------------------------------------------------

    @rule(data=st.data(), fog=zones, level=st.sampled_from([0.0, 0.25, 1.0]))
    def scene(self, data: st.DataObject, fog: list[dict[str, Any]], level: float) -> None:
        """Someone replaces the fog or sets the darkness (GM only)."""
        seat = self.seat_for(data)
        error = None if seat.role == "gm" else "forbidden"
        if data.draw(st.booleans(), label="fog"):
            self.step(seat, "fog.update", {"zones": fog}, error)
        else:
            self.step(seat, "scene.darkness", {"darkness_level": level}, error)

    @rule(
        data=st.data(),
        map_id=st.sampled_from(MAP_IDS),
        image=st.sampled_from(IMAGES),
        grid=st.sampled_from([32, 64, 70]),
        width=st.sampled_from([640, 1280]),
        name=st.none() | st.sampled_from(["Cave", "Keep"]),
        extra=metadata,
    )
    def maps(
        self,
        data: st.DataObject,
        map_id: str,
        image: str,
        grid: int,
        width: int,
        name: str | None,
        extra: dict[str, Any] | None,
    ) -> None:
        """Someone sets a map (new or in the library) or switches maps (GM only)."""
        seat = self.pick(data, [self.gm, self.gm, self.gm, *self.seats], "by")
        gm = seat.role == "gm"
        known = map_id in self.library
        if data.draw(st.booleans(), label="switch"):
            error = "forbidden" if not gm else None if known else "not_found"
            self.step(seat, "map.switch", {"map_id": map_id}, error, "state.sync")
        else:
            payload: dict[str, Any] = {"map_id": map_id, "image_url": image, "grid_size": grid}
            payload |= {"width": width, "height": 480}
            if name is not None:
                payload["name"] = name
            if extra is not None:
                payload["map_metadata"] = extra
            error = None if gm else "forbidden"
            self.step(seat, "map.set", payload, error, "state.sync" if known else "map.set")
        if known and error is None:
            for player in self.players:
                player.missed_a_resync |= not player.online

    @property
    def library(self) -> set[str]:
        """The map ids the GM's last map.list named (the active map among them)."""
        maps = self.gm.mirror.maps or {"maps": []}
        return {entry["map_id"] for entry in maps["maps"]}

    # --- players leaving and resuming ----------------------------------------------------------

    @rule(data=st.data())
    def reconnect(self, data: st.DataObject) -> None:
        """A player's connection drops, or a dropped player comes back, resuming or afresh."""
        seat = self.pick(data, self.players, "player")
        if seat.online:
            self.world.run(seat.connected().close())
            seat.peer = None
            seat.seen_while_away = self.shown()
            seat.missed_a_resync = False
        elif data.draw(st.booleans(), label="resume"):
            self.resume(seat)
        else:
            seat.mirror = Mirror()
            self._connect(seat)
            self.check_greeting(seat, self.shown())

    def resume(self, seat: Seat) -> None:
        """Reconnect `seat`: a replay of what it missed, or a fresh state.sync after a resync."""
        since, epoch = seat.mirror.seq, seat.mirror.state["epoch"]
        resumed_before = len(seat.mirror.resumes)
        self._connect(seat, since=since, epoch=epoch)
        resumes = seat.mirror.resumes
        if seat.missed_a_resync:
            assert len(resumes) == resumed_before, f"{seat.user} resumed across a resync"
            assert seat.mirror.state["epoch"] == epoch
        else:
            assert len(resumes) == resumed_before + 1, f"{seat.user} was not resumed"
            assert resumes[-1]["from_seq"] == since + 1
            assert resumes[-1]["to_seq"] == self.gm.mirror.seq
        self.check_greeting(seat, self.shown() | seat.seen_while_away)

    def check_greeting(self, seat: Seat, allowed: set[str]) -> None:
        """What a reconnected player was sent names only tokens it was allowed to see."""
        for raw in seat.connected().raw:
            for token_id in self.ids:
                assert token_id in allowed or token_id not in raw, f"{seat.user} got {raw}"

    # --- invariants ----------------------------------------------------------------------------

    @invariant()
    def players_see_the_gms_state_without_hidden_tokens(self) -> None:
        gm = self.gm.mirror
        for seat in self.players:
            if not seat.online:
                continue
            mine = seat.mirror
            assert mine.tokens == visible(gm.tokens), seat.user
            assert scene_of(mine.state) == scene_of(gm.state), seat.user
            assert mine.maps == gm.maps, seat.user
            assert "saved_maps" not in mine.state, seat.user

    @invariant()
    def the_gm_sees_the_servers_state(self) -> None:
        session = self.world.server.services.manager.sessions[self.campaign]
        truth = msgspec.json.decode(encode(session.state))
        gm = self.gm.mirror.state
        assert gm["tokens"] == truth["tokens"]
        assert scene_of(gm) == scene_of(truth)
        assert gm["saved_maps"] == truth["saved_maps"]
        assert self.gm.mirror.seq == truth["seq"]

    def teardown(self) -> None:
        for seat in self.seats:
            self.world.run(seat.connected().close())


@pytest.fixture(params=["open", "owner"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    """A server with the given token policy, on a loop of its own."""
    running = World(tmp_path, request.param)
    yield running
    running.close()


# Shrinking a failure replays hundreds of examples; give it room to print a minimal one.
@pytest.mark.timeout(300)
def test_every_player_mirror_equals_the_gms_state_filtered_to_what_they_may_see(
    world: World,
) -> None:
    run_state_machine_as_test(
        # Any factory will do; hypothesis annotates the parameter as a class.
        lambda: VisibilityMachine(world),  # type: ignore[arg-type]
        settings=settings(
            max_examples=25,
            stateful_step_count=30,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
            report_multiple_bugs=False,
        ),
    )
