"""Unit tests for semcache.guards: each guard on pairs it must reject and pairs it must pass."""

from __future__ import annotations

import time

import pytest

from semcache.errors import ConfigurationError
from semcache.guards import (
    DEFAULT_GUARDS,
    GUARD_NAMES,
    EntityGuard,
    Guard,
    GuardResult,
    NegationGuard,
    NumberGuard,
    OrderGuard,
    build_guards,
    extract_numbers,
    negation_cues,
    run_guards,
    slot_fillers,
)

# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    ("query", "candidate"),
    [
        ("Can a 19 year old date a 16 year old?", "Can a 19 year old date a 17 year old?"),
        ("Is JU conducting a spot round in 2015?", "Is ju conducting a spot round in 2016?"),
        ("How can you turn $2,000 into $10,000?", "How can I turn $10,000 into $10 million?"),
        ("Mole fraction of 30% NaOH?", "Mole fraction of 20 % NaOH?"),
        ("What is 1.5 times 3?", "What is 1.25 times 3?"),
        ("Best gifts for a five year old?", "Best gifts for a six year old?"),
        ("Gifts for a 19th wedding anniversary?", "Gifts for a 13th wedding anniversary?"),
    ],
)
def test_number_guard_rejects_changed_numbers(query: str, candidate: str) -> None:
    result = NumberGuard()(query, candidate)
    assert not result.passed
    assert result.name == "numbers"
    assert "numbers differ" in result.detail


@pytest.mark.parametrize(
    ("query", "candidate"),
    [
        (
            "How can I lose 10 pounds in 4 days?",
            "What's the fastest way to lose 10 pounds in 4 days?",
        ),
        ("What happened on 10 December 1947?", "What happened on December 10, 1947?"),
        ("Is 1,000 a big number?", "Is 1000 a big number?"),
        ("Of these eighteen countries, which?", "Of these 18 states, which?"),
        ("What were the 1990s like?", "What was life like in the 1990s?"),
        ("Which is best: 10k or 12k?", "Which is best: 10000 or 12000?"),
        ("Did it cost 5 million?", "Did it cost 5,000,000?"),
        ("Art of the nineteenth century", "Art of the 19th century"),
        ("Art of the twenty-first century", "Art of the 21st century"),
        ("Is 3.0 bigger than e?", "Is 3 bigger than e?"),
        # "one" is a pronoun far more often than a number in questions.
        ("Which one is better?", "Which is better?"),
    ],
)
def test_number_guard_passes_same_numbers(query: str, candidate: str) -> None:
    assert NumberGuard()(query, candidate).passed


def test_number_guard_default_ignores_number_on_one_side_only() -> None:
    query, candidate = "How can I crack SSC CGL 2016?", "How can I crack SSC CGL?"
    assert NumberGuard()(query, candidate).passed
    assert not NumberGuard(require_both=False)(query, candidate).passed


def test_number_guard_multiset_counts_repeats() -> None:
    query, candidate = "Is 7 times 7 equal to 49?", "Is 7 equal to 49?"
    assert NumberGuard()(query, candidate).passed
    assert not NumberGuard(multiset=True)(query, candidate).passed


def test_extract_numbers_normalises_forms() -> None:
    found = extract_numbers("1,000.50 and 5 million and 10k and twenty-five and 30th and 33d")
    assert set(found) == {"1000.5", "5000000", "10000", "25", "30", "33"}
    assert "1" not in extract_numbers("Which one is the best?")
    assert set(extract_numbers("twenty-first")) == {"21"}  # not 20 and 21


# --------------------------------------------------------------------------- negation


@pytest.mark.parametrize(
    ("query", "candidate"),
    [
        ("Is coffee bad for you?", "Isn't coffee bad for you?"),
        ("Why doesn't Mark Zuckerberg use Quora?", "Does Mark Zuckerberg use Quora?"),
        ("Why can't we open our third eye?", "How can we open the third eye?"),
        ("What do you do under the influence?", "What can't you do under the influence?"),
        ("Why dont people like cats?", "Why do people like cats?"),
        ("Is it safe to swim after eating?", "Is it not safe to swim after eating?"),
        ("Should I never use a VPN?", "Should I use a VPN?"),
        ("Why does my car start?", "Why won\u2019t my car start?"),
    ],
)
def test_negation_guard_rejects_flipped_polarity(query: str, candidate: str) -> None:
    result = NegationGuard()(query, candidate)
    assert not result.passed
    assert "negation differs" in result.detail


@pytest.mark.parametrize(
    ("query", "candidate"),
    [
        ("Is coffee bad for you?", "Is coffee harmful to your health?"),
        ("Why isn't Pluto a planet?", "Why is Pluto not a planet?"),
        (
            "Would you date someone with schizophrenia?",
            "Would you date someone with schizophrenia? Why or why not?",
        ),
        ("Should I learn Java?", "Should I learn Java or not?"),
        ("How do I learn not only Python but also Go?", "How do I learn Python and Go?"),
        ("Can you list rational no. examples?", "Can you list rational number examples?"),
        # Nominal negation is off by default: it mostly sits in an added detail.
        ("How do I increase my height without surgery?", "How do I increase my height?"),
    ],
)
def test_negation_guard_passes_same_polarity(query: str, candidate: str) -> None:
    assert NegationGuard()(query, candidate).passed


def test_negation_modes_differ_on_double_negation() -> None:
    query, candidate = "It is not true that he never lied", "He lied"
    assert not NegationGuard(mode="presence")(query, candidate).passed
    assert NegationGuard(mode="parity")(query, candidate).passed
    assert not NegationGuard(mode="count")("not a not b", "not a b").passed
    assert NegationGuard(mode="presence")("not a not b", "not a b").passed


def test_negation_nominal_cues_are_opt_in() -> None:
    query, candidate = "Can I travel without a passport?", "Can I travel with a passport?"
    assert NegationGuard()(query, candidate).passed
    assert not NegationGuard(nominal=True)(query, candidate).passed
    assert negation_cues("I don't know, isnt it? Never.") == ["don't", "isnt", "never"]


def test_negation_guard_rejects_unknown_mode() -> None:
    with pytest.raises(ConfigurationError):
        NegationGuard(mode="majority")


# --------------------------------------------------------------------------- order


@pytest.mark.parametrize(
    ("query", "candidate"),
    [
        ("Flights from Paris to Rome", "Flights from Rome to Paris"),
        ("How do you convert kilometers to miles?", "How do I convert miles to kilometers?"),
        ("Is Flipkart better than Snapdeal?", "How is Snapdeal better than Flipkart?"),
        (
            "How do I transfer money from India to the USA?",
            "How do I transfer money from the USA to India?",
        ),
        (
            "All the productions are designed by Graham Spicer and written by Carlo Orlandi.",
            "All our productions are written by Graham Spicer and designed by Carlo Orlandi.",
        ),
        (
            "He moved to Connersville and settled in Indiana.",
            "He moved to Indiana and settled in Connersville.",
        ),
    ],
)
def test_order_guard_rejects_swapped_roles(query: str, candidate: str) -> None:
    result = OrderGuard()(query, candidate)
    assert not result.passed
    assert "slot" in result.detail


@pytest.mark.parametrize(
    ("query", "candidate"),
    [
        ("Flights from Paris to Rome", "Flights to Rome from Paris"),
        ("Cheap flights from Paris to Rome?", "What are cheap flights from Paris to Rome?"),
        # Symmetric connectives: the same question either way round.
        ("Python vs Java: which is better?", "Java vs Python: which is better?"),
        (
            "What is the difference between a virus and bacteria?",
            "What is the difference between bacteria and a virus?",
        ),
        ("How is the brain different from the mind?", "How is the mind different from the brain?"),
        # A reordered list keeps every item in the same slot.
        (
            "It is native to Panama, Honduras and Guatemala.",
            "It is native to Guatemala, Panama and Honduras.",
        ),
        (
            "Is it safe to use acrylic paint on your body?",
            "Is it safe to paint your body with acrylic paint?",
        ),
        ("How do I learn Python?", "What is the best way to learn Python?"),
    ],
)
def test_order_guard_passes_same_roles(query: str, candidate: str) -> None:
    assert OrderGuard()(query, candidate).passed


def test_slot_fillers_follow_coordination_and_skip_determiners() -> None:
    slots = slot_fillers("Is it cheaper to fly from the USA, Canada and Mexico to Rome?")
    assert slots["from"] == {"usa", "canada", "mexico"}
    assert "rome" in slots["to"]


def test_order_guard_custom_slot_words() -> None:
    query = "Ahmed served as deputy to Mohammed"
    candidate = "Mohammed served as deputy to Ahmed"
    assert not OrderGuard()(query, candidate).passed
    query = "Ahmed was hired as Mohammed's deputy"
    candidate = "Mohammed was hired as Ahmed's deputy"
    assert OrderGuard()(query, candidate).passed  # "as" is not a slot by default
    assert not OrderGuard(slot_words={"as"})(query, candidate).passed


# --------------------------------------------------------------------------- entities


def test_entity_guard_rejects_substituted_name() -> None:
    query = "What are good ways to taunt fans of the Patriots?"
    candidate = "What are good ways to taunt fans of the Giants?"
    result = EntityGuard()(query, candidate)
    assert not result.passed
    assert "patriots" in result.detail


@pytest.mark.parametrize(
    ("query", "candidate"),
    [
        ("Why didn't Genghis Khan invade India?", "Why didn't genghis khan invade india?"),
        ("Do Indian men treat women badly?", "Do men from India treat women badly?"),
        (
            "Why didn't Harry become an Obscurial?",
            "What stopped Harry Potter becoming an Obscurial?",
        ),
    ],
)
def test_entity_guard_passes_same_or_added_names(query: str, candidate: str) -> None:
    assert EntityGuard()(query, candidate).passed


def test_entity_guard_strict_mode_rejects_added_name() -> None:
    query, candidate = (
        "Why didn't Harry become an Obscurial?",
        "Why didn't Harry Potter become an Obscurial?",
    )
    assert not EntityGuard(substitution_only=False)(query, candidate).passed


# --------------------------------------------------------------------------- registry


def test_build_guards_defaults_and_names() -> None:
    guards = build_guards()
    assert [g.name for g in guards] == list(DEFAULT_GUARDS)
    assert set(DEFAULT_GUARDS) <= set(GUARD_NAMES)
    assert [g.name for g in build_guards(["negation", "numbers"])] == ["negation", "numbers"]
    assert build_guards([]) == []
    assert [g.name for g in build_guards("order")] == ["order"]  # a bare name, not its letters
    for guard in build_guards(GUARD_NAMES):
        assert isinstance(guard, Guard)


def test_build_guards_unknown_name() -> None:
    with pytest.raises(ConfigurationError, match="unknown guard 'sentiment'"):
        build_guards(["numbers", "sentiment"])


def test_run_guards_returns_every_result() -> None:
    guards = build_guards(GUARD_NAMES)
    results = run_guards(
        guards, "Flights from Paris to Rome in 2019", "Flights from Rome to Paris in 2019"
    )
    assert [r.name for r in results] == list(GUARD_NAMES)
    assert all(isinstance(r, GuardResult) for r in results)
    by_name = {r.name: r for r in results}
    assert by_name["numbers"].passed
    assert not by_name["order"].passed


def test_guard_result_is_frozen() -> None:
    result = GuardResult("numbers", True)
    with pytest.raises(AttributeError):
        result.passed = False  # type: ignore[misc]


def test_guards_are_fast() -> None:
    guards = build_guards(GUARD_NAMES)
    query = "How do I transfer 5,000 dollars from India to the USA without fees in 2017?"
    candidate = "How can I send $5000 from the US to India cheaply in 2016?"
    n = 500
    start = time.perf_counter()
    for _ in range(n):
        run_guards(guards, query, candidate)
    per_pair = (time.perf_counter() - start) / n
    # Generous bound (all four guards, slow CI): they must stay far below embedding cost.
    assert per_pair < 2e-3
