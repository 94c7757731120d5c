"""Random drags on a real server: a GM and two players grab, move, release and drop out.

After every step, and from nothing but the frames each client received: no token ever has
two holders (a token.grabbed naming someone else over a held lock is only a GM taking a
player's), every client's view of the locks is the model's (players seeing none on the hidden
token), only the holder's moves applied while a lock was held (others got `locked`), and
every connected client's tokens are where the server has them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

from app.connection import Connection
from app.model import Role
from tests.server.test_visibility_stateful import World
from tests.support.harness import Peer, token_payload
from tests.support.mirror import Mirror
from tests.support.poll import poll

GM = "gm-ann"
PLAYERS = ("pl-bob", "pl-cat")
ROLES: dict[str, Role] = {GM: "gm", PLAYERS[0]: "player", PLAYERS[1]: "player"}
VISIBLE = ("t0", "t1")
HIDDEN = "h0"
TOKENS = (*VISIBLE, HIDDEN)
LOCK_EVENTS = frozenset({"token.grabbed", "token.released"})
QUIET = frozenset({"pong", "state.saved"})

coords = st.integers(min_value=-50, max_value=50)


@dataclass
class Seat:
    """One participant: their connection, their mirror, and the locks their frames show."""

    user: str
    peer: Peer | None = None
    mirror: Mirror = field(default_factory=Mirror)
    locks: dict[str, str] = field(default_factory=dict)
    read: int = 0

    @property
    def role(self) -> Role:
        """The seat's campaign role."""
        return ROLES[self.user]

    def connected(self) -> Peer:
        """The live peer of an online seat."""
        assert self.peer is not None
        return self.peer

    def take(self) -> list[dict[str, Any]]:
        """The frames received since the last take, applied to the mirror and the lock view."""
        peer = self.connected()
        frames = [f for f in peer.received[self.read :] if f["type"] not in QUIET]
        self.read = len(peer.received)
        for frame in frames:
            self.mirror.apply(frame)
            if frame["type"] in LOCK_EVENTS:
                self.see_lock_event(frame)
        return frames

    def see_lock_event(self, frame: dict[str, Any]) -> None:
        """Follow one lock event, checking it could come from a table of one dragger per token."""
        assert "seq" not in frame, frame
        token_id = frame["payload"]["token_id"]
        current = self.locks.get(token_id)
        if frame["type"] == "token.grabbed":
            holder = frame["payload"]["user_id"]
            assert frame["user_id"] == holder, frame
            if current is not None and current != holder:
                assert (ROLES[holder], ROLES[current]) == ("gm", "player"), (
                    f"{self.user} saw {holder} grab {token_id}, which {current} held"
                )
            self.locks[token_id] = holder
        else:
            assert current == frame["user_id"], f"{self.user} saw an unheld release: {frame}"
            del self.locks[token_id]


class DragLockMachine(RuleBasedStateMachine):
    """The model: who holds each token, and where each token is."""

    def __init__(self, world: World) -> None:
        super().__init__()
        self.world = world
        self.campaign = f"c-{uuid.uuid4().hex[:12]}"
        self.holders: dict[str, str] = {}
        self.seats = [Seat(GM), *(Seat(user) for user in PLAYERS)]
        self.connect(self.seats[0])
        gm = self.seats[0].connected()
        for token_id in TOKENS:
            payload = token_payload(token_id, visible=token_id != HIDDEN)
            self.world.run(gm.send("token.add", payload))
        for seat in self.seats[1:]:
            self.connect(seat)
        self.settle()
        self.positions = {tid: (0.0, 0.0) for tid in TOKENS}

    # --- plumbing ------------------------------------------------------------------------------

    def connect(self, seat: Seat) -> None:
        """A fresh join: a new mirror and lock view, built from the greeting alone."""
        token = self.world.token(seat.user, seat.role)
        url = self.world.server.ws_url(self.campaign, token)
        seat.peer = self.world.run(Peer.open(url))
        self.world.nodelay()
        seat.mirror, seat.locks, seat.read = Mirror(), {}, 0

    @property
    def online(self) -> list[Seat]:
        """The connected seats."""
        return [seat for seat in self.seats if seat.peer is not None]

    def settle(self) -> dict[str, list[dict[str, Any]]]:
        """Ping every online seat and take what each received, by user."""
        taken = {}
        for seat in self.online:
            self.world.run(seat.connected().roundtrip())
            taken[seat.user] = seat.take()
        return taken

    def pick(self, data: st.DataObject, label: str) -> Seat:
        """An online seat, drawn by user name."""
        users = [seat.user for seat in self.online]
        user = data.draw(st.sampled_from(users), label=label)
        return next(seat for seat in self.seats if seat.user == user)

    def send(self, seat: Seat, kind: str, payload: dict[str, Any]) -> list[str]:
        """Send one message, settle everyone, and return the error codes the sender got."""
        self.world.run(seat.connected().send(kind, payload))
        taken = self.settle()
        return [f["payload"]["code"] for f in taken[seat.user] if f["type"] == "error"]

    def unseen(self, seat: Seat, token_id: str) -> bool:
        """Whether `token_id` does not exist for `seat` (the hidden token, for a player)."""
        return token_id == HIDDEN and seat.role == "player"

    # --- rules ---------------------------------------------------------------------------------

    @precondition(lambda self: bool(self.online))
    @rule(data=st.data(), token_id=st.sampled_from(TOKENS))
    def grab(self, data: st.DataObject, token_id: str) -> None:
        """Someone grabs a token: granted, renewed, taken from a player by a GM, or refused."""
        seat = self.pick(data, "grabber")
        holder = self.holders.get(token_id)
        if self.unseen(seat, token_id):
            expected = ["not_found"]
        elif (
            holder is None
            or holder == seat.user
            or (seat.role == "gm" and ROLES[holder] == "player")
        ):
            expected = []
            self.holders[token_id] = seat.user
        else:
            expected = ["locked"]
        assert self.send(seat, "token.grab", {"token_id": token_id}) == expected

    @precondition(lambda self: bool(self.online))
    @rule(data=st.data(), token_id=st.sampled_from(TOKENS), x=coords, y=coords)
    def move(self, data: st.DataObject, token_id: str, x: int, y: int) -> None:
        """Someone moves a token, grabbed or not: only the holder's move lands while it is held."""
        seat = self.pick(data, "mover")
        holder = self.holders.get(token_id)
        if self.unseen(seat, token_id):
            expected = ["not_found"]
        elif holder is not None and holder != seat.user:
            expected = ["locked"]
        else:
            expected = []
            self.positions[token_id] = (float(x), float(y))
        payload = {"token_id": token_id, "x": x, "y": y}
        assert self.send(seat, "token.move", payload) == expected

    @precondition(lambda self: bool(self.online))
    @rule(data=st.data(), token_id=st.sampled_from(TOKENS))
    def release(self, data: st.DataObject, token_id: str) -> None:
        """Someone lets go of a token: it ends the lock only when they hold it."""
        seat = self.pick(data, "releaser")
        if self.holders.get(token_id) == seat.user:
            del self.holders[token_id]
        assert self.send(seat, "token.release", {"token_id": token_id}) == []

    @rule(data=st.data())
    def drop_out(self, data: st.DataObject) -> None:
        """Someone's connection closes (their locks end), or someone away comes back."""
        user = data.draw(st.sampled_from([seat.user for seat in self.seats]), label="who")
        seat = next(seat for seat in self.seats if seat.user == user)
        if seat.peer is None:
            self.connect(seat)
        else:
            self.world.run(seat.connected().close())
            seat.peer = None
            self.holders = {t: h for t, h in self.holders.items() if h != user}
            session = self.world.server.services.manager.sessions[self.campaign]

            def left() -> bool:
                return not any(
                    isinstance(m, Connection) and m.actor.user_id == user for m in session.members
                )

            self.world.run(poll(left, 10, f"{user} to leave"))
        self.settle()

    # --- invariants ----------------------------------------------------------------------------

    @invariant()
    def every_client_sees_the_locks_the_model_holds(self) -> None:
        for seat in self.online:
            expected = {
                token_id: holder
                for token_id, holder in self.holders.items()
                if not self.unseen(seat, token_id)
            }
            assert seat.locks == expected, seat.user

    @invariant()
    def every_client_has_every_token_where_the_model_and_the_server_have_it(self) -> None:
        session = self.world.server.services.manager.sessions[self.campaign]
        truth = {tid: (t.x, t.y) for tid, t in session.state.tokens.items()}
        assert truth == self.positions
        for seat in self.online:
            mine = {tid: (t["x"], t["y"]) for tid, t in seat.mirror.tokens.items()}
            expected = {tid: xy for tid, xy in truth.items() if not self.unseen(seat, tid)}
            assert mine == expected, seat.user

    @invariant()
    def the_server_holds_the_locks_the_model_holds(self) -> None:
        session = self.world.server.services.manager.sessions[self.campaign]
        held = session.ephemeral.locks.held()
        assert {tid: holder.user_id for tid, holder in held.items()} == self.holders

    def teardown(self) -> None:
        for seat in self.online:
            self.world.run(seat.connected().close())


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """A server whose locks never idle out during an example, on a loop of its own."""
    running = World(tmp_path, "open", lock_idle_timeout=600.0)
    yield running
    running.close()


@pytest.mark.timeout(300)
def test_one_dragger_per_token_and_every_client_converges_whatever_the_table_does(
    world: World,
) -> None:
    run_state_machine_as_test(
        lambda: DragLockMachine(world),  # type: ignore[arg-type]
        settings=settings(
            max_examples=20,
            stateful_step_count=25,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
            report_multiple_bugs=False,
        ),
    )
