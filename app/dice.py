"""The dice roller: parse a roll expression, roll it with `secrets`, shape the result.

The grammar is PROTOCOL.md "Chat and dice". Where that text is silent, this module decides:

- Case-insensitive. A leading `/roll` or `/r` is stripped when whitespace (or the end) follows
  it; whitespace before it, or before or after any `+`/`-`, is allowed. A term itself holds no
  whitespace (`4d6 kh3` is the term `4d6` and the label `kh3`).
- Terms: `NdS`, `dS` (N is 1), `d%` and `Nd%` (S is 100), and integers 0..1,000,000. The first
  term may carry a sign; a leading `+` changes nothing. At most 20 terms, at most 100 dice per
  term and 100 in all before explosions, S 1..1000, the whole text at most 200 characters.
- Modifiers follow a dice term directly, in either order, each at most once: one keep/drop
  (`kh`, `kl`, `dh`, `dl`; `k` is `kh`, `d` is `dl`) with a count, which is required, and `!`.
  A keep count is 1..N and a drop count 0..N-1 (N as written), so a term always keeps a die.
  `!` on a 1-sided die is refused: it would always show its maximum.
- The expression ends at the first text that is neither a term nor an operator. The label is
  what follows it, when whitespace or `#` separates the two (a `#` itself is not part of the
  label), trimmed; an empty label is no label. Text touching a term (`2d20x`) is refused, and
  so is an operator with no term after it (`1d6 + fire`), so a typo is not taken for a label.
  NUL is refused anywhere (Postgres jsonb cannot store it).
- Canonical form: no whitespace, no leading `+`, every count written (`d20` is `1d20`, `d%` is
  `1d100`), `!` before the keep/drop, which is written in full (`kh1`, `dl1`; drops stay drops).
  The label is not part of it. The canonical form must itself fit in 200 characters (`d%` is
  longer written in full), so `parse(canonical(e))` always works and equals `e` without its label.
- Rolling goes term by term, left to right; in a term, the N dice first. With `!`, every die
  showing its maximum (extra dice included) adds one die at the end of the term's `dice`, while
  fewer than 100 dice have been rolled in all; a maximum that finds the 100 used up sets
  `capped: true` (the 100 minus the expression's N's are the extra dice the whole roll may
  add, first come first served). Keep/drop applies after explosions, to all the term's dice.
  Among equal dice the earlier is taken first: kept by `kh`/`kl`, dropped by `dh`/`dl`.
- Result: `sign` is 1 or -1; `constant` is the integer as written (never negative); a term's
  `value` is sign times the sum of its kept dice (or sign times the constant); `total` is the
  sum of the term values. `keep` is the canonical suffix string (`"kh1"`), `explode` and
  `capped` are `true` or absent, never `false`; `label` is absent when there is none.
- Errors: `DiceError` (a ValueError) whose message says what is wrong; positions are 0-based
  indexes into the text as given, prefix included.

The result's wire shapes (Roll, Term, Die) live in app.protocol with the other wire types.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal, Protocol

import msgspec
from msgspec import UNSET

from app.protocol import Die, Roll, Sign, Term

MAX_TEXT: Final = 200
MAX_TERMS: Final = 20
MAX_DICE: Final = 100
MAX_SIDES: Final = 1000
MAX_CONSTANT: Final = 1_000_000

KeepKind = Literal["kh", "kl", "dh", "dl"]

_KEEP_KINDS: Final[dict[str, KeepKind]] = {
    "kh": "kh",
    "kl": "kl",
    "dh": "dh",
    "dl": "dl",
    "k": "kh",
    "d": "dl",
}
_DIGITS: Final = "0123456789"


class DiceError(ValueError):
    """A roll expression refused; the message names what is wrong."""


# --- the parsed form ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Keep:
    """A keep/drop modifier: keep (`k*`) or drop (`d*`) the `count` highest or lowest dice."""

    kind: KeepKind
    count: int

    def __post_init__(self) -> None:
        if self.kind not in _KEEP_KINDS.values():
            raise DiceError(f"unknown keep/drop {self.kind!r}")

    @property
    def suffix(self) -> str:
        """The canonical text, e.g. "kh1"."""
        return f"{self.kind}{self.count}"


@dataclass(frozen=True, slots=True)
class DiceSpec:
    """A dice term as written: `count` dice of `sides` sides, with its modifiers."""

    sign: Sign
    count: int
    sides: int
    keep: Keep | None = None
    explode: bool = False

    def __post_init__(self) -> None:
        _check_sign(self.sign)
        if self.count < 1:
            raise DiceError(f"a dice term needs at least 1 die, got {self.count}")
        if self.count > MAX_DICE:
            raise DiceError(f"at most {MAX_DICE} dice per term, got {self.count}")
        if self.sides < 1:
            raise DiceError(f"a die needs at least 1 side, got {self.sides}")
        if self.sides > MAX_SIDES:
            raise DiceError(f"at most {MAX_SIDES} sides per die, got {self.sides}")
        if self.explode and self.sides == 1:
            raise DiceError("a 1-sided die cannot explode ('!'): it would never stop")
        if self.keep is not None:
            keeps = self.keep.kind.startswith("k")
            low, high = (1, self.count) if keeps else (0, self.count - 1)
            if not low <= self.keep.count <= high:
                what, dice = "keep" if keeps else "drop", "die" if self.count == 1 else "dice"
                allowed = str(low) if low == high else f"{low} to {high}"
                raise DiceError(
                    f"'{self.keep.suffix}' on {self.count} {dice}: "
                    f"the {what} count must be {allowed}"
                )


@dataclass(frozen=True, slots=True)
class ConstantSpec:
    """An integer term: `sign` times `constant`."""

    sign: Sign
    constant: int

    def __post_init__(self) -> None:
        _check_sign(self.sign)
        if not 0 <= self.constant <= MAX_CONSTANT:
            raise DiceError(f"a number is 0 to {MAX_CONSTANT}, got {self.constant}")


@dataclass(frozen=True, slots=True)
class Expression:
    """A parsed roll, reusable: its terms and its label."""

    terms: tuple[DiceSpec | ConstantSpec, ...]
    label: str | None = None

    def __post_init__(self) -> None:
        if not self.terms:
            raise DiceError("empty dice expression")
        if len(self.terms) > MAX_TERMS:
            raise DiceError(f"at most {MAX_TERMS} terms, got {len(self.terms)}")
        if self.dice_count > MAX_DICE:
            raise DiceError(f"at most {MAX_DICE} dice in all, got {self.dice_count}")
        written = len(canonical(self))
        if written > MAX_TEXT:
            raise DiceError(
                f"at most {MAX_TEXT} characters written in full (as in '1d100' for 'd%'), "
                f"got {written}"
            )
        if self.label is not None and (
            not self.label
            or self.label != self.label.strip()
            or len(self.label) > MAX_TEXT
            or "\x00" in self.label
        ):
            raise DiceError("a label is 1 to 200 characters, trimmed, without NUL")

    @property
    def dice_count(self) -> int:
        """How many dice the terms roll before explosions."""
        return sum(term.count for term in self.terms if isinstance(term, DiceSpec))


def _check_sign(sign: int) -> None:
    if sign not in (1, -1):
        raise DiceError(f"a sign is 1 or -1, got {sign}")


class RandomSource(Protocol):
    """Where dice come from: `randbelow(n)` is uniform over 0..n-1."""

    def randbelow(self, n: int, /) -> int: ...


class _Secrets:
    def randbelow(self, n: int, /) -> int:
        return secrets.randbelow(n)


SECRETS: Final[RandomSource] = _Secrets()


# --- parsing -----------------------------------------------------------------------------------


def parse(text: str) -> Expression:
    """Parse a roll expression (a `/roll ` prefix and a label allowed), or raise DiceError."""
    if len(text) > MAX_TEXT:
        raise DiceError(f"a roll is at most {MAX_TEXT} characters, got {len(text)}")
    nul = text.find("\x00")
    if nul >= 0:
        raise DiceError(f"NUL character at position {nul}")
    return _Parser(text).expression()


class _Parser:
    """A cursor over the text; each method reads one piece of the grammar."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def expression(self) -> Expression:
        self.space()
        self.prefix()
        self.space()
        if self.pos == len(self.text) or self.at("#"):
            raise DiceError("empty dice expression")
        sign: Sign = 1
        if self.at("+-"):
            sign = 1 if self.text[self.pos] == "+" else -1
            self.pos += 1
        terms: list[DiceSpec | ConstantSpec] = []
        while True:
            self.space()
            terms.append(self.term(sign))
            end = self.pos
            self.space()
            if not self.at("+-"):
                break
            sign = 1 if self.text[self.pos] == "+" else -1
            self.pos += 1
        if self.pos == end and self.pos < len(self.text) and not self.at("#"):
            raise DiceError(f"unknown text at {self.where()}")
        if self.at("#"):
            self.pos += 1
        label = self.text[self.pos :].strip()
        return Expression(tuple(terms), label or None)

    def prefix(self) -> None:
        for prefix in ("/roll", "/r"):
            end = self.pos + len(prefix)
            written = self.text[self.pos : end]
            followed = end >= len(self.text) or self.text[end].isspace()
            if written.isascii() and written.lower() == prefix and followed:
                self.pos = end
                return

    def term(self, sign: Sign) -> DiceSpec | ConstantSpec:
        start = self.pos
        number = self.digits()
        if not self.at("dD"):
            if not number:
                raise DiceError(f"expected a die or a number at {self.where()}")
            return self.checked(start, lambda: ConstantSpec(sign, int(number)))
        self.pos += 1
        if self.at("%"):
            self.pos += 1
            sides = 100
        else:
            written = self.digits()
            if not written:
                raise DiceError(f"expected the number of sides at {self.where()}")
            sides = int(written)
        keep: Keep | None = None
        explode = False
        while True:
            if self.at("!"):
                if explode:
                    raise DiceError(f"'!' given twice at position {self.pos}")
                explode = True
                self.pos += 1
            elif self.at("kKdD"):
                if keep is not None:
                    raise DiceError(f"a second keep/drop at {self.where()}")
                keep = self.keep()
            else:
                break
        count = int(number) if number else 1
        return self.checked(start, lambda: DiceSpec(sign, count, sides, keep, explode))

    def keep(self) -> Keep:
        start = self.pos
        self.pos += 1
        if self.at("hHlL"):
            self.pos += 1
        written = self.text[start : self.pos]
        kind = _KEEP_KINDS[written.lower()]
        count = self.digits()
        if not count:
            raise DiceError(f"'{written}' at position {start} needs a count, as in '{kind}1'")
        return Keep(kind, int(count))

    def checked(
        self, start: int, build: Callable[[], DiceSpec | ConstantSpec]
    ) -> DiceSpec | ConstantSpec:
        try:
            return build()
        except DiceError as error:
            raise DiceError(f"{error} (the term at position {start})") from None

    def digits(self) -> str:
        start = self.pos
        while self.at(_DIGITS):
            self.pos += 1
        return self.text[start : self.pos]

    def space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def at(self, chars: str) -> bool:
        return self.pos < len(self.text) and self.text[self.pos] in chars

    def where(self) -> str:
        if self.pos == len(self.text):
            return "the end"
        return f"position {self.pos}: {self.text[self.pos : self.pos + 12]!r}"


def canonical(expression: Expression) -> str:
    """The expression written in full without whitespace or label, e.g. "2d20kh1+5"."""
    parts: list[str] = []
    for index, term in enumerate(expression.terms):
        if term.sign < 0:
            parts.append("-")
        elif index:
            parts.append("+")
        if isinstance(term, ConstantSpec):
            parts.append(str(term.constant))
        else:
            parts.append(f"{term.count}d{term.sides}")
            if term.explode:
                parts.append("!")
            if term.keep is not None:
                parts.append(term.keep.suffix)
    return "".join(parts)


# --- rolling -----------------------------------------------------------------------------------


def roll(expression: Expression, rng: RandomSource) -> Roll:
    """Roll a parsed expression with dice from `rng`."""
    spare = MAX_DICE - expression.dice_count
    capped = False
    terms: list[Term] = []
    for spec in expression.terms:
        if isinstance(spec, ConstantSpec):
            value = spec.sign * spec.constant
            terms.append(Term(sign=spec.sign, constant=spec.constant, value=value))
            continue
        values = [rng.randbelow(spec.sides) + 1 for _ in range(spec.count)]
        if spec.explode:
            index = 0
            while index < len(values):
                if values[index] == spec.sides:
                    if spare:
                        values.append(rng.randbelow(spec.sides) + 1)
                        spare -= 1
                    else:
                        capped = True
                index += 1
        kept = _kept(values, spec.keep)
        terms.append(
            Term(
                sign=spec.sign,
                count=spec.count,
                sides=spec.sides,
                keep=spec.keep.suffix if spec.keep is not None else UNSET,
                explode=True if spec.explode else UNSET,
                dice=[Die(value=v, kept=k) for v, k in zip(values, kept, strict=True)],
                value=spec.sign * sum(v for v, k in zip(values, kept, strict=True) if k),
            )
        )
    return Roll(
        expression=canonical(expression),
        label=UNSET if expression.label is None else expression.label,
        total=sum(term.value for term in terms),
        capped=True if capped else UNSET,
        terms=terms,
    )


def roll_text(text: str) -> Roll:
    """Parse and roll with `secrets` randomness, or raise DiceError."""
    return roll(parse(text), SECRETS)


def _kept(values: list[int], keep: Keep | None) -> list[bool]:
    if keep is None:
        return [True] * len(values)
    highest = keep.kind in ("kh", "dh")
    order = sorted(range(len(values)), key=lambda i: (-values[i] if highest else values[i], i))
    chosen = set(order[: keep.count])
    keeps = keep.kind.startswith("k")
    return [(i in chosen) == keeps for i in range(len(values))]


# --- reading a stored roll back ----------------------------------------------------------------

_roll_decoder: Final = msgspec.json.Decoder(Roll)


def decode_roll(data: bytes | str) -> Roll:
    """Decode an encoded Roll, or raise msgspec.ValidationError / DecodeError."""
    return _roll_decoder.decode(data)
