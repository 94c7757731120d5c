"""app.dice against PROTOCOL.md "Chat and dice" and the decisions in its docstring."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import replace

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.dice import (
    MAX_CONSTANT,
    MAX_DICE,
    MAX_SIDES,
    MAX_TERMS,
    MAX_TEXT,
    ConstantSpec,
    DiceError,
    DiceSpec,
    Expression,
    Keep,
    KeepKind,
    canonical,
    decode_roll,
    parse,
    roll,
    roll_text,
)
from app.protocol import Die, Roll, Sign, Term

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KINDS: tuple[KeepKind, ...] = ("kh", "kl", "dh", "dl")

# --- sources of dice ---------------------------------------------------------------------------


class Scripted:
    """Returns the given 0-based results in order, checking each is in range."""

    def __init__(self, *results: int) -> None:
        self.results = list(results)

    def randbelow(self, n: int, /) -> int:
        result = self.results.pop(0)
        assert 0 <= result < n
        return result


class Seeded:
    """Pseudo-random, showing the maximum with probability `bias` (to force explosions)."""

    def __init__(self, seed: int, bias: float) -> None:
        self.random = random.Random(seed)
        self.bias = bias

    def randbelow(self, n: int, /) -> int:
        if self.random.random() < self.bias:
            return n - 1
        return self.random.randrange(n)


sources = st.builds(Seeded, st.integers(0, 2**32), st.sampled_from([0.0, 0.2, 0.6, 0.95, 1.0]))

# --- valid expressions, and ways of writing them -----------------------------------------------


@st.composite
def keeps(draw: st.DrawFn, count: int) -> Keep:
    kind = draw(st.sampled_from(KINDS))
    if kind.startswith("k"):
        return Keep(kind, draw(st.integers(1, count)))
    return Keep(kind, draw(st.integers(0, count - 1)))


# A label arrives in a JSON text frame, which cannot carry a lone surrogate (it is refused as
# invalid_json before any roll), so none is generated here.
labels = (
    st.text(
        st.characters(codec="utf-8", exclude_characters="\x00"),
        min_size=1,
        max_size=40,
    )
    .map(str.strip)
    .filter(bool)
)


@st.composite
def expressions(draw: st.DrawFn, labelled: bool = True) -> Expression:
    spare = MAX_DICE
    terms: list[DiceSpec | ConstantSpec] = []
    for _ in range(draw(st.integers(1, MAX_TERMS))):
        sign: Sign = draw(st.sampled_from([1, -1]))
        term: DiceSpec | ConstantSpec
        if spare and draw(st.booleans()):
            count = draw(st.integers(1, spare))
            sides = draw(st.sampled_from([1, 2, 4, 6, 20, 100, MAX_SIDES]) | st.integers(1, 1000))
            keep = draw(st.none() | keeps(count))
            term = DiceSpec(sign, count, sides, keep, sides > 1 and draw(st.booleans()))
        else:
            term = ConstantSpec(
                sign, draw(st.sampled_from([0, 1, MAX_CONSTANT]) | st.integers(0, MAX_CONSTANT))
            )
        try:  # stop when the canonical form would pass 200 characters
            Expression((*terms, term))
        except DiceError:
            break
        terms.append(term)
        if isinstance(term, DiceSpec):
            spare -= term.count
    label = draw(st.none() | labels) if labelled else None
    return Expression(tuple(terms), label)


@st.composite
def writings(draw: st.DrawFn, expression: Expression) -> str:
    """One of the many texts that parse to `expression`: case, spacing, aliases, prefixes."""
    spaces = st.sampled_from(["", "", " ", "  ", "\t"])
    out = [draw(st.sampled_from(["", "", "/roll ", "/r ", "/ROLL  ", "/R\t", " /Roll "]))]
    for index, term in enumerate(expression.terms):
        if index:
            out.append(draw(spaces) + ("+" if term.sign > 0 else "-") + draw(spaces))
        else:
            out.append("-" if term.sign < 0 else draw(st.sampled_from(["", "+", "+ "])))
        zeros = draw(st.sampled_from(["", "", "0", "00"]))
        if isinstance(term, ConstantSpec):
            out.append(zeros + str(term.constant))
            continue
        text = "" if term.count == 1 and draw(st.booleans()) else zeros + str(term.count)
        text += "d" + ("%" if term.sides == 100 and draw(st.booleans()) else str(term.sides))
        modifiers = ["!"] if term.explode else []
        if term.keep is not None:
            kind = term.keep.kind
            short = {"kh": "k", "dl": "d"}.get(kind)
            written = short if short and draw(st.booleans()) else kind
            modifiers.append(written + str(term.keep.count))
        text += "".join(draw(st.permutations(modifiers)))
        out.append(text.upper() if draw(st.booleans()) else text)
    label = expression.label
    if label is None:
        out.append(draw(st.sampled_from(["", " ", " #", "#", " # "])))
    elif label[0] not in "+-#" and draw(st.booleans()):
        out.append(draw(st.sampled_from([" ", "\t", "  "])) + label)
    else:
        out.append(draw(st.sampled_from(["#", " #", " # ", "#  "])) + label)
    return "".join(out)


@st.composite
def written_expressions(draw: st.DrawFn) -> tuple[Expression, str]:
    expression = draw(expressions())
    return expression, draw(writings(expression))


# --- what every roll must satisfy --------------------------------------------------------------


def is_dice(term: Term) -> bool:
    return term.constant is msgspec.UNSET and isinstance(term.dice, list)


def is_constant(term: Term) -> bool:
    return term.constant is not msgspec.UNSET and term.dice is msgspec.UNSET


def dice_of(term: Term) -> list[Die]:
    """The dice of a dice term (it must be one)."""
    assert isinstance(term.dice, list), term
    return term.dice


def check_roll(expression: Expression, result: Roll) -> None:
    assert result.expression == canonical(expression)
    assert result.label == (msgspec.UNSET if expression.label is None else expression.label)
    assert len(result.terms) == len(expression.terms)
    rolled = 0
    stopped = False
    for spec, term in zip(expression.terms, result.terms, strict=True):
        assert term.sign == spec.sign
        if isinstance(spec, ConstantSpec):
            assert is_constant(term)
            assert (term.constant, term.value) == (spec.constant, spec.sign * spec.constant)
            continue
        assert is_dice(term)
        assert (term.count, term.sides) == (spec.count, spec.sides)
        assert term.keep == (msgspec.UNSET if spec.keep is None else spec.keep.suffix)
        assert term.explode is (True if spec.explode else msgspec.UNSET)
        values = [die.value for die in dice_of(term)]
        assert all(1 <= value <= spec.sides for value in values)
        assert term.value == spec.sign * sum(die.value for die in dice_of(term) if die.kept)
        check_keep(spec.keep, [die.value for die in dice_of(term) if die.kept], values)
        extra = len(values) - spec.count
        rolled += len(values)
        if spec.explode:
            maxima = values.count(spec.sides)
            assert 0 <= extra <= maxima  # each maximum adds at most one die
            stopped = stopped or extra < maxima
        else:
            assert extra == 0
    assert result.total == sum(term.value for term in result.terms)
    assert rolled <= MAX_DICE
    assert result.capped is (True if stopped else msgspec.UNSET)
    if stopped:
        assert rolled == MAX_DICE


def check_keep(keep: Keep | None, kept: list[int], values: list[int]) -> None:
    if keep is None:
        assert kept == values
        return
    dropped = list((Counter(values) - Counter(kept)).elements())
    keeps = keep.kind.startswith("k")
    assert len(kept) == (keep.count if keeps else len(values) - keep.count)
    if keep.kind in ("kh", "dl") and dropped:
        assert min(kept) >= max(dropped)
    if keep.kind in ("kl", "dh") and dropped:
        assert max(kept) <= min(dropped)


# --- properties --------------------------------------------------------------------------------


@SETTINGS
@given(expressions(), sources)
def test_every_roll_keeps_its_dice_in_range_its_sums_right_and_its_cap(
    expression: Expression, source: Seeded
) -> None:
    check_roll(expression, roll(expression, source))


@SETTINGS
@given(written_expressions())
def test_every_way_of_writing_an_expression_parses_to_it(case: tuple[Expression, str]) -> None:
    expression, text = case
    if len(text) > MAX_TEXT:
        with pytest.raises(DiceError, match=f"at most {MAX_TEXT} characters, got {len(text)}"):
            parse(text)
    else:
        assert parse(text) == expression


@SETTINGS
@given(expressions())
def test_the_canonical_form_round_trips(expression: Expression) -> None:
    written = canonical(expression)
    assert len(written) <= MAX_TEXT
    assert " " not in written
    assert parse(written) == replace(expression, label=None)
    if expression.label is not None and len(written) + 3 + len(expression.label) <= MAX_TEXT:
        assert parse(f"{written} # {expression.label}") == expression


@SETTINGS
@given(expressions(), sources)
def test_an_encoded_roll_decodes_back_to_the_same_roll(
    expression: Expression, source: Seeded
) -> None:
    result = roll(expression, source)
    encoded = msgspec.json.encode(result)
    assert decode_roll(encoded) == result
    assert b"null" not in encoded
    assert b"false" not in encoded.replace(b'"kept":false', b"")


def grammar_soup() -> st.SearchStrategy[str]:
    return st.text(st.sampled_from("0123456789dDkKhHlL%!+-#/roll \t"), max_size=60)


@settings(max_examples=600, deadline=None)
@given(st.text(max_size=60) | grammar_soup() | st.text(max_size=250))
def test_any_text_either_parses_or_raises_dice_error(text: str) -> None:
    refusal = None
    try:
        expression = parse(text)
    except DiceError as error:
        refusal = str(error)
    if refusal is not None:
        assert refusal  # a refusal always says what is wrong
        return
    assert parse(canonical(expression)) == replace(expression, label=None)
    check_roll(expression, roll(expression, Seeded(0, 0.5)))


# --- worked examples ---------------------------------------------------------------------------


def test_the_contract_example_encodes_as_the_contract_shows() -> None:
    result = roll(parse("2d20kh1+5"), Scripted(3, 17))
    assert json.loads(msgspec.json.encode(result)) == {
        "expression": "2d20kh1+5",
        "total": 23,
        "terms": [
            {
                "sign": 1,
                "count": 2,
                "sides": 20,
                "keep": "kh1",
                "dice": [{"value": 4, "kept": False}, {"value": 18, "kept": True}],
                "value": 18,
            },
            {"sign": 1, "constant": 5, "value": 5},
        ],
    }


def test_a_negative_term_subtracts_its_kept_dice() -> None:
    result = roll(parse("10 - 4d6dl1"), Scripted(0, 5, 2, 3))
    dice = result.terms[1]
    assert is_dice(dice)
    assert [(d.value, d.kept) for d in dice_of(dice)] == [
        (1, False),
        (6, True),
        (3, True),
        (4, True),
    ]
    assert (dice.sign, dice.value, result.total) == (-1, -13, -3)


def test_an_exploding_die_adds_dice_at_the_end_while_it_shows_its_maximum() -> None:
    result = roll(parse("2d6!"), Scripted(5, 1, 5, 0))
    term = result.terms[0]
    assert is_dice(term)
    assert [d.value for d in dice_of(term)] == [6, 2, 6, 1]
    assert (term.value, result.capped) == (15, msgspec.UNSET)


def test_keep_and_drop_apply_after_explosions() -> None:
    kept = roll(parse("2d6!kh1"), Scripted(5, 0, 2)).terms[0]
    dropped = roll(parse("2d6d1!"), Scripted(5, 0, 2)).terms[0]
    assert is_dice(kept)
    assert is_dice(dropped)
    assert [d.kept for d in dice_of(kept)] == [True, False, False]
    assert [d.kept for d in dice_of(dropped)] == [True, False, True]
    assert (kept.value, dropped.value) == (6, 9)


@pytest.mark.parametrize(
    ("text", "results", "kept"),
    [
        ("3d6kh1", (5, 5, 0), [True, False, False]),
        ("3d6kl2", (0, 3, 0), [True, False, True]),
        ("3d6dl1", (0, 0, 5), [False, True, True]),
        ("3d6dh1", (5, 0, 5), [False, True, True]),
    ],
)
def test_among_equal_dice_the_earlier_is_taken_first(
    text: str, results: tuple[int, ...], kept: list[bool]
) -> None:
    term = roll(parse(text), Scripted(*results)).terms[0]
    assert is_dice(term)
    assert [d.kept for d in dice_of(term)] == kept


def test_explosions_stop_at_100_dice_in_all_and_say_capped() -> None:
    source = Scripted(*[5] * MAX_DICE)  # every die a six; a 101st die would be an IndexError
    result = roll(parse("50d6!+10+50d6!"), source)
    assert result.capped is True
    assert sum(len(dice_of(t)) for t in result.terms if is_dice(t)) == MAX_DICE
    assert result.total == 6 * MAX_DICE + 10


def test_earlier_terms_explode_first_when_extra_dice_run_out() -> None:
    result = roll(parse("1d6!+97d6+1d6!"), Scripted(5, 5, *[0] * 97, 5))
    first, _, last = result.terms
    assert is_dice(first)
    assert is_dice(last)
    assert ([d.value for d in dice_of(first)], [d.value for d in dice_of(last)]) == ([6, 6], [6])
    assert result.capped is True


def test_reaching_100_dice_without_a_stopped_explosion_is_not_capped() -> None:
    result = roll(parse("98d6+1d6!"), Scripted(*[0] * 98, 5, 0))
    assert result.capped is msgspec.UNSET
    assert sum(len(dice_of(t)) for t in result.terms if is_dice(t)) == MAX_DICE


# --- prefixes, case, labels --------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["/roll 2d20kh1+5", "/r 2d20kh1+5", "/ROLL 2D20KH1+5", "  /R\t2d20Kh1 + 5", "2d20k1+5"]
)
def test_a_roll_prefix_and_letter_case_do_not_matter(text: str) -> None:
    assert canonical(parse(text)) == "2d20kh1+5"


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("1d20+5 to hit", "to hit"),
        ("1d20+5#to hit", "to hit"),
        ("1d20 +5  #  Stealth (Dex)  ", "Stealth (Dex)"),
        ("/roll d% Wild Magic # table", "Wild Magic # table"),
        ("1d6 5 fire", "5 fire"),
        ("4d6 kh3", "kh3"),
        ("2d6 #", None),
        ("2d6   ", None),
        ("/r d8 MixedCase Ünïcode", "MixedCase Ünïcode"),
    ],
)
def test_the_text_after_the_expression_is_the_trimmed_label(text: str, label: str | None) -> None:
    assert parse(text).label == label


def test_a_labelled_roll_carries_its_label_and_an_unlabelled_one_omits_it() -> None:
    assert roll_text("d20 Initiative").label == "Initiative"
    assert b"label" not in msgspec.json.encode(roll_text("d20"))


@pytest.mark.parametrize(
    ("text", "written"),
    [("d%", "1d100"), ("3d%", "3d100"), ("+d6", "1d6"), ("4d6k3!", "4d6!kh3"), ("007", "7")],
)
def test_short_forms_are_written_in_full(text: str, written: str) -> None:
    assert canonical(parse(text)) == written


# --- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty dice expression"),
        ("   ", "empty dice expression"),
        ("/roll ", "empty dice expression"),
        ("/r", "empty dice expression"),
        ("# a label alone", "empty dice expression"),
        ("101d6", "at most 100 dice per term, got 101"),
        ("0d6", "a dice term needs at least 1 die, got 0"),
        ("1d1001", "at most 1000 sides per die, got 1001"),
        ("1d0", "a die needs at least 1 side, got 0"),
        ("+".join(["1"] * 21), "at most 20 terms, got 21"),
        ("60d6+41d6", "at most 100 dice in all, got 101"),
        ("1d6 # " + "x" * 195, "at most 200 characters, got 201"),
        ("+".join(["d1000!d0"] * 20), "at most 200 characters written in full"),
        ("1000001", "a number is 0 to 1000000, got 1000001"),
        ("2d20x", "unknown text at position 4: 'x'"),
        ("1d6,fire", "unknown text at position 3: ',fire'"),
        ("1d6+", "expected a die or a number at the end"),
        ("1d6++2", "expected a die or a number at position 4: '+2'"),
        ("1d6 + fire", "expected a die or a number at position 6: 'fire'"),
        ("fireball", "expected a die or a number at position 0: 'fireball'"),
        ("/rolld20", "expected a die or a number at position 0: '/rolld20'"),
        ("2d", "expected the number of sides at the end"),
        ("2dF", "expected the number of sides at position 2: 'F'"),
        ("4d6kh5", "'kh5' on 4 dice: the keep count must be 1 to 4"),
        ("4d6k0", "'kh0' on 4 dice: the keep count must be 1 to 4"),
        ("4d6dl4", "'dl4' on 4 dice: the drop count must be 0 to 3"),
        ("d6dh1", "'dh1' on 1 die: the drop count must be 0"),
        ("4d6kh", "'kh' at position 3 needs a count, as in 'kh1'"),
        ("4d6D", "'D' at position 3 needs a count, as in 'dl1'"),
        ("4d6kh1kl1", "a second keep/drop at position 6: 'kl1'"),
        ("1d6!!", "'!' given twice at position 4"),
        ("3d1!", "a 1-sided die cannot explode"),
        ("1d6\x00", "NUL character at position 3"),
    ],
)
def test_a_bad_expression_is_refused_naming_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(DiceError) as raised:
        parse(text)
    assert message in str(raised.value)


def test_a_dice_error_is_a_value_error() -> None:
    assert issubclass(DiceError, ValueError)


@pytest.mark.parametrize(
    "build",
    [
        lambda: DiceSpec(1, MAX_DICE + 1, 6),
        lambda: DiceSpec(1, 2, 6, Keep("kh", 3)),
        lambda: DiceSpec(2, 1, 6),  # type: ignore[arg-type]
        lambda: ConstantSpec(1, -1),
        lambda: Keep("kx", 1),  # type: ignore[arg-type]
        lambda: Expression(()),
        lambda: Expression((DiceSpec(1, 60, 6), DiceSpec(1, 41, 6))),
        lambda: Expression((ConstantSpec(1, 1),), " padded "),
        lambda: Expression((ConstantSpec(1, 1),), ""),
    ],
)
def test_an_expression_built_by_hand_keeps_the_same_limits(build: Callable[[], object]) -> None:
    with pytest.raises(DiceError):
        build()


def test_a_stored_term_that_is_neither_dice_nor_constant_is_refused() -> None:
    with pytest.raises(msgspec.ValidationError, match="either `constant` or"):
        decode_roll(b'{"expression":"1","total":1,"terms":[{"sign":1,"value":1}]}')


@pytest.mark.parametrize(
    "term",
    [
        b'{"sign":1,"constant":2,"count":1,"sides":6,"dice":[],"value":2}',
        b'{"sign":1,"constant":2,"explode":true,"value":2}',
        b'{"sign":1,"count":1,"sides":6,"value":2}',
    ],
)
def test_a_stored_term_mixing_or_missing_fields_of_either_shape_is_refused(term: bytes) -> None:
    with pytest.raises(msgspec.ValidationError, match="either `constant` or"):
        decode_roll(b'{"expression":"1","total":1,"terms":[' + term + b"]}")


def test_a_term_built_by_hand_with_both_shapes_is_refused() -> None:
    with pytest.raises(ValueError, match="either `constant` or"):
        Term(sign=1, constant=2, count=1, sides=6, dice=[], value=2)


def test_a_roll_has_a_json_schema_whose_term_carries_both_shapes_fields() -> None:
    schema = msgspec.json.schema(Roll)
    term = schema["$defs"]["Term"]
    assert set(term["properties"]) == {
        "sign",
        "count",
        "sides",
        "keep",
        "explode",
        "dice",
        "constant",
        "value",
    }
    assert set(term["required"]) == {"sign", "value"}


# --- the real source is fair -------------------------------------------------------------------


def chi_square_survival(x: float, df: int) -> float:
    """P(X > x) for chi-square with `df` degrees of freedom (the regularized gamma series)."""
    a, z = df / 2, x / 2
    term = math.exp(a * math.log(z) - z - math.lgamma(a + 1))
    total, n = term, 0
    while term > 1e-17 * total:
        n += 1
        term *= z / (a + n)
        total += term
    return 1 - total


def chi_square_critical(alpha: float, df: int) -> float:
    low, high = 0.0, 1000.0
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (middle, high) if chi_square_survival(middle, df) > alpha else (low, middle)
    return high


@pytest.mark.parametrize(("df", "published"), [(5, 20.515), (19, 43.820)])
def test_the_chi_square_helper_reproduces_the_published_999_critical_values(
    df: int, published: float
) -> None:
    assert chi_square_critical(0.001, df) == pytest.approx(published, abs=5e-4)


@pytest.mark.parametrize("sides", [6, 20])
def test_secrets_dice_are_uniform_by_chi_square(sides: int) -> None:
    # 60,000 dice through the real parse, roll and secrets source. A fair die fails at
    # alpha 1e-6 once in a million runs; a die that never shows a face scores in the thousands.
    counts = Counter(
        die.value
        for _ in range(600)
        for term in roll_text(f"100d{sides}").terms
        if is_dice(term)
        for die in dice_of(term)
    )
    assert sorted(counts) == list(range(1, sides + 1))
    expected = sum(counts.values()) / sides
    statistic = sum((counts[face] - expected) ** 2 / expected for face in range(1, sides + 1))
    assert statistic < chi_square_critical(1e-6, sides - 1)
