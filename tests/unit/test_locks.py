"""Drag locks alone, on an injected clock: grants, refusals, takeover, renewal, expiry."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from app.locks import DragLocks, Grab, Holder
from app.model import Role

TIMEOUT = 5.0
GM = Holder("gm", "gm", "gm-1")
ALICE = Holder("alice", "player", "alice-1")
BOB = Holder("bob", "player", "bob-1")


def test_a_free_token_is_granted_and_then_refused_to_another_player() -> None:
    locks = DragLocks(TIMEOUT)

    assert locks.grab("t1", ALICE, 0.0) is Grab.GRANTED
    assert locks.grab("t1", BOB, 0.0) is Grab.REFUSED
    assert locks.holder("t1") == ALICE
    assert not locks.may_change("t1", "bob")
    assert locks.may_change("t1", "alice")
    assert locks.may_change("t2", "bob")


def test_a_gm_takes_a_lock_from_a_player_but_not_from_another_gm() -> None:
    locks = DragLocks(TIMEOUT)
    other_gm = Holder("gm2", "gm", "gm2-1")
    locks.grab("t1", ALICE, 0.0)

    assert locks.grab("t1", GM, 0.0) is Grab.TAKEN_OVER
    assert locks.holder("t1") == GM
    assert locks.grab("t1", other_gm, 0.0) is Grab.REFUSED
    assert locks.grab("t1", ALICE, 0.0) is Grab.REFUSED


def test_grabbing_again_renews_and_another_tab_of_the_same_user_takes_over() -> None:
    locks = DragLocks(TIMEOUT)
    locks.grab("t1", ALICE, 0.0)
    other_tab = Holder("alice", "player", "alice-2")

    assert locks.grab("t1", ALICE, 4.0) is Grab.RENEWED
    assert locks.expire(8.0) == []
    assert locks.grab("t1", other_tab, 8.0) is Grab.TAKEN_OVER
    assert locks.drop_connection("alice-1") == []
    assert locks.holder("t1") == other_tab


def test_a_lock_not_renewed_for_the_idle_timeout_expires() -> None:
    locks = DragLocks(TIMEOUT)
    locks.grab("t1", ALICE, 0.0)
    locks.grab("t2", BOB, 1.0)

    assert locks.next_expiry() == 5.0
    locks.renew("t1", "alice", 3.0)
    locks.renew("t2", "alice", 3.0)  # not alice's: changes nothing
    assert locks.expire(5.9) == []
    assert locks.expire(6.0) == ["t2"]
    assert locks.expire(8.0) == ["t1"]
    assert locks.next_expiry() is None


def test_release_needs_the_holder_and_forget_does_not() -> None:
    locks = DragLocks(TIMEOUT)
    locks.grab("t1", ALICE, 0.0)
    locks.grab("t2", ALICE, 0.0)

    assert not locks.release("t1", "bob")
    assert locks.release("t1", "alice")
    assert not locks.release("t1", "alice")
    assert locks.forget("t2")
    assert not locks.forget("t2")
    assert len(locks) == 0


def test_a_disconnect_ends_only_that_connections_locks() -> None:
    locks = DragLocks(TIMEOUT)
    locks.grab("t1", ALICE, 0.0)
    locks.grab("t2", BOB, 0.0)

    assert locks.drop_connection("alice-1") == ["t1"]
    assert locks.held() == {"t2": BOB}
    assert locks.clear() == ["t2"]


USERS: dict[str, Role] = {"gm": "gm", "alice": "player", "bob": "player"}
TOKENS = ("t1", "t2")


class TwoPlayersAndAGm(RuleBasedStateMachine):
    """Grabs, moves, releases, disconnects and time passing, checked against a simple model."""

    def __init__(self) -> None:
        super().__init__()
        self.locks = DragLocks(TIMEOUT)
        self.now = 0.0
        self.model: dict[str, tuple[str, float]] = {}
        self.positions = dict.fromkeys(TOKENS, 0)

    def _expire_model(self) -> None:
        self.model = {t: (u, e) for t, (u, e) in self.model.items() if e > self.now}

    @rule(seconds=st.sampled_from([0.0, 0.5, 2.0, 5.0, 6.0]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        self._expire_model()
        expired = self.locks.expire(self.now)
        assert set(expired).isdisjoint(self.model)

    @rule(user=st.sampled_from(sorted(USERS)), token=st.sampled_from(TOKENS))
    def grab(self, user: str, token: str) -> None:
        outcome = self.locks.grab(token, Holder(user, USERS[user], user), self.now)
        current = self.model.get(token)
        allowed = (
            current is None
            or current[0] == user
            or (USERS[user] == "gm" and USERS[current[0]] != "gm")
        )
        assert (outcome is not Grab.REFUSED) == allowed
        if allowed:
            self.model[token] = (user, self.now + TIMEOUT)

    @rule(user=st.sampled_from(sorted(USERS)), token=st.sampled_from(TOKENS), x=st.integers())
    def move(self, user: str, token: str, x: int) -> None:
        applied = self.locks.may_change(token, user)
        current = self.model.get(token)
        assert applied == (current is None or current[0] == user)
        if applied:
            self.positions[token] = x
            self.locks.renew(token, user, self.now)
            if current is not None:
                self.model[token] = (user, self.now + TIMEOUT)

    @rule(user=st.sampled_from(sorted(USERS)), token=st.sampled_from(TOKENS))
    def release(self, user: str, token: str) -> None:
        released = self.locks.release(token, user)
        current = self.model.get(token)
        assert released == (current is not None and current[0] == user)
        if released:
            del self.model[token]

    @rule(user=st.sampled_from(sorted(USERS)))
    def disconnect(self, user: str) -> None:
        gone = self.locks.drop_connection(user)
        assert set(gone) == {t for t, (u, _) in self.model.items() if u == user}
        self.model = {t: v for t, v in self.model.items() if v[0] != user}

    @invariant()
    def at_most_one_holder_per_token_and_it_matches_the_model(self) -> None:
        held = self.locks.held()
        assert {t: h.user_id for t, h in held.items()} == {t: u for t, (u, _) in self.model.items()}


TwoPlayersAndAGm.TestCase.settings = settings(max_examples=200, stateful_step_count=40)
test_two_players_and_a_gm_never_hold_one_token_at_once = TwoPlayersAndAGm.TestCase
