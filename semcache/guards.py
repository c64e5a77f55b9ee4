"""Cheap lexical guards that veto a semantic-cache candidate that is plainly a different question.

A sentence embedding places "flights from Paris to Rome" and "flights from Rome to Paris"
(or "a 16 year old" and "a 17 year old") almost on top of each other, so a cosine threshold
alone cannot keep them apart. After the threshold has chosen a candidate, each guard compares
the query with the candidate's stored prompt and rejects the pair when a surface feature that
changes the meaning differs: the numbers (``numbers``), who fills a role such as "from X" or
"by X" (``order``), the polarity (``negation``) or a named entity (``entities``).

Guards are pure functions of two strings (no I/O, no model) with precompiled regexes; one
costs some microseconds to a few tens of microseconds per pair. Which ones are on by default
(:data:`DEFAULT_GUARDS`) was decided by measurement on labeled paraphrase data (QQP and
PAWS-Wiki, ``benchmarks/guard_study.py``): a guard is on only if it removes more false hits
than the correct hits it costs. The recommended policy when the best candidate fails a guard
is to miss, not to fall through to the next candidate (measured: falling through gains nothing).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Protocol, runtime_checkable

from .errors import ConfigurationError

__all__ = [
    "DEFAULT_GUARDS",
    "GUARD_NAMES",
    "EntityGuard",
    "Guard",
    "GuardResult",
    "NegationGuard",
    "NumberGuard",
    "OrderGuard",
    "build_guards",
    "extract_entities",
    "extract_numbers",
    "negation_cues",
    "run_guards",
    "slot_fillers",
]


@dataclass(frozen=True)
class GuardResult:
    """The verdict of one guard on one (query, candidate) pair."""

    name: str
    passed: bool
    detail: str = ""


@runtime_checkable
class Guard(Protocol):
    """A named veto: ``guard(query, candidate)`` says whether the candidate may be served."""

    name: str

    def __call__(self, query: str, candidate: str) -> GuardResult:
        """Compare ``query`` with ``candidate`` and return the verdict."""
        ...


# --------------------------------------------------------------------------- tokens


def _wordset(words: str) -> frozenset[str]:
    """Return the whitespace-separated words of ``words`` as a frozenset."""
    return frozenset(words.split())


# Words, with an apostrophe suffix kept attached so "isn't" / "Stefani's" stay one token;
# the curly apostrophe is common in pasted prompts.
_WORD_RE = re.compile(r"[A-Za-z0-9]+(?:['\u2019][A-Za-z]+)*")

_STOPWORDS = _wordset(
    """
    a an the this that these those some any each every all both either
    i me my mine we us our ours you your yours he him his she her hers it its they them their
    theirs one ones someone somebody something anyone anybody anything
    is am are was were be been being do does did doing done have has had having
    can could will would shall should may might must ought
    what which who whom whose when where why how whether if then than so as
    and or but nor not no yes of in on at by for with without from to into onto
    about above below over under up down out off again further once here there
    very too also just only more most less least much many such own same other another
    get got make made go goes going way best good better really
    s t d ll m o re ve y
    """
)

# Words that behave like determiners: they sit between a slot word and its filler
# ("from *the* USA", "by *his* brother") and are skipped when finding the filler.
_DETERMINERS = _wordset("a an the this that these those my our your his her its their some any")


def _words(text: str) -> list[str]:
    """Return the word tokens of ``text`` in order, case preserved."""
    return _WORD_RE.findall(text)


# --------------------------------------------------------------------------- numbers

# Digits with optional thousands separators and a decimal part ("1,000.50", "3.5", "2017"),
# optionally a 'k' or an ordinal/plural suffix ("10k", "30th", "1990s").
_NUM_RE = re.compile(
    r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(k\b|st\b|nd\b|rd\b|th\b|s\b)?", re.IGNORECASE
)

_UNITS = {
    "zero": 0, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19,
}  # fmt: skip
# "one" is left out on purpose: in questions it is mostly a pronoun ("which one is better",
# "one of the best"), and treating it as 1 vetoes paraphrases.
_TENS = {
    "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
    "eighty": 80, "ninety": 90,
}  # fmt: skip
_SCALES = {"hundred": 100, "thousand": 1_000, "million": 1_000_000, "billion": 1_000_000_000}
_ORDINALS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7,
    "eighth": 8, "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12, "thirteenth": 13,
    "fourteenth": 14, "fifteenth": 15, "sixteenth": 16, "seventeenth": 17, "eighteenth": 18,
    "nineteenth": 19, "twentieth": 20, "thirtieth": 30, "fortieth": 40, "fiftieth": 50,
    "sixtieth": 60, "seventieth": 70, "eightieth": 80, "ninetieth": 90, "hundredth": 100,
}  # fmt: skip
_NUMBER_WORD_RE = re.compile(
    r"\b(?:("
    + "|".join(_TENS)
    + r")(?:[-\s]("
    + "|".join(k for k in _UNITS if k != "zero")
    + r"|one))?|("
    + "|".join(_UNITS)
    + r"))\b(?:\s+("
    + "|".join(_SCALES)
    + r")\b)?",
    re.IGNORECASE,
)
# A cheap pre-check: most prompts hold no number at all, and then the full extraction is skipped.
_MAYBE_NUMBER_RE = re.compile(
    r"\d|\b(?:" + "|".join([*_UNITS, *_TENS, *_ORDINALS]) + r")\b", re.IGNORECASE
)
_DIGIT_SCALE_RE = re.compile(
    r"(?<![\w.])(\d+(?:\.\d+)?)\s+(" + "|".join(_SCALES) + r")\b", re.IGNORECASE
)
# "19th" is caught by the digit pattern; spelled ordinals make "nineteenth" and "twenty-first"
# comparable with it.
_ORDINAL_RE = re.compile(
    r"\b(?:(" + "|".join(_TENS) + r")[-\s])?(" + "|".join(_ORDINALS) + r")\b", re.IGNORECASE
)


def _canon(value: Decimal) -> str:
    """Return a canonical string for a number so that 3, 3.0 and 3.00 compare equal."""
    normalized = value.normalize()
    # normalize() writes 1000 as 1E+3; quantize back to an integer for whole numbers.
    if normalized == normalized.to_integral_value():
        return str(normalized.quantize(Decimal(1)))
    return str(normalized)


def extract_numbers(text: str, *, words: bool = True, ordinals: bool = True) -> Counter[str]:
    """Return the multiset of numbers in ``text`` (digits, and number words if ``words``)."""
    found: Counter[str] = Counter()
    # Spans already read, so "5 million" is not also read as 5 and "twenty-first" not as 20.
    taken: list[tuple[int, int]] = []

    def free(m: re.Match[str]) -> bool:
        return not any(start <= m.start() < end for start, end in taken)

    for m in _DIGIT_SCALE_RE.finditer(text):
        # "5 million" and "5,000,000" are the same number.
        found[_canon(Decimal(m.group(1)) * _SCALES[m.group(2).lower()])] += 1
        taken.append(m.span())
    for m in _NUM_RE.finditer(text):
        if not free(m):
            continue
        try:
            value = Decimal(m.group(1).replace(",", "") + (m.group(2) or ""))
        except InvalidOperation:  # pragma: no cover - the regex only admits valid decimals
            continue
        if (m.group(3) or "").lower() == "k":
            value *= 1000
        found[_canon(value)] += 1
    if ordinals:
        for m in _ORDINAL_RE.finditer(text):
            tens, unit = m.groups()
            found[str(_TENS.get((tens or "").lower(), 0) + _ORDINALS[unit.lower()])] += 1
            taken.append(m.span())
    if words:
        for m in _NUMBER_WORD_RE.finditer(text):
            if not free(m):
                continue
            tens, unit, single, scale = m.groups()
            if tens:
                value_i = _TENS[tens.lower()] + (
                    1 if unit and unit.lower() == "one" else _UNITS.get((unit or "").lower(), 0)
                )
            else:
                value_i = _UNITS[single.lower()]
            if scale:
                value_i *= _SCALES[scale.lower()]
            found[str(value_i)] += 1
    return found


def _fmt(counter: Counter[str]) -> str:
    """Return a short, stable rendering of a multiset for explain output."""
    return "{" + ", ".join(sorted(counter.elements())) + "}"


class NumberGuard:
    """Reject when the query and the candidate mention different numbers."""

    def __init__(
        self,
        name: str = "numbers",
        *,
        words: bool = True,
        ordinals: bool = True,
        multiset: bool = False,
        require_both: bool = True,
    ) -> None:
        self.name = name
        self.words = words
        self.ordinals = ordinals
        # Sets by default: repeating a number ("22 days ... still 22 days?") does not make
        # it a different question; measured, multisets changed nothing but cost a hit or two.
        self.multiset = multiset
        # A number on one side only ("How do I crack SSC CGL 2016?" vs "How do I crack SSC
        # CGL?") is mostly a detail added to the same question: on QQP vetoing it lost more
        # correct hits than false hits it removed, so by default both sides need numbers.
        self.require_both = require_both

    def __call__(self, query: str, candidate: str) -> GuardResult:
        """Compare the numbers of ``query`` and ``candidate``."""
        q_maybe = _MAYBE_NUMBER_RE.search(query) is not None
        c_maybe = _MAYBE_NUMBER_RE.search(candidate) is not None
        if not q_maybe and not c_maybe:
            return GuardResult(self.name, True)
        if self.require_both and not (q_maybe and c_maybe):
            return GuardResult(self.name, True)
        q = extract_numbers(query, words=self.words, ordinals=self.ordinals)
        c = extract_numbers(candidate, words=self.words, ordinals=self.ordinals)
        if self.require_both and (not q or not c):
            return GuardResult(self.name, True)
        same = q == c if self.multiset else set(q) == set(c)
        if same:
            return GuardResult(self.name, True, _fmt(q) if q else "")
        return GuardResult(self.name, False, f"numbers differ: {_fmt(q)} vs {_fmt(c)}")


# --------------------------------------------------------------------------- negation

# Negating the verb: "is X safe" vs "isn't X safe", "why do" vs "why don't".
_VERBAL_NEGATION = _wordset("not never cannot")
# Negating a noun phrase or a circumstance: "with/without a passport", "no chance".
_NOMINAL_NEGATION = _wordset("no none nobody nothing neither nor nowhere noone without")
# Phrases that contain a negation word but do not negate the question: "X, or not?" and
# "why or why not?" ask the same thing as "X?"; "not only ... but", "no matter", "little to no"
# and "No. 5" are not negations either.
_NON_NEGATING_RE = re.compile(
    r"\b(?:or\s+(?:why\s+)?not|or\s+no|not\s+only|no\s+matter|no\s+doubt|nothing\s+but"
    r"|little\s+(?:to|or)\s+no)\b|\bno\.",
    re.IGNORECASE,
)
_NT_RE = re.compile(r"n['\u2019]t$", re.IGNORECASE)
# Apostrophe-less contractions are common in typed questions ("dont", "isnt", "cant").
_BARE_NT = _wordset(
    """
    dont doesnt didnt isnt arent wasnt werent cant couldnt wont wouldnt shouldnt
    havent hasnt hadnt mustnt neednt aint
    """
)


def negation_cues(text: str, *, nominal: bool = True) -> list[str]:
    """Return the negation cues of ``text`` in order ("not", "isn't", "never", ...)."""
    cleaned = _NON_NEGATING_RE.sub(" ", text)
    cues = []
    for word in _words(cleaned):
        low = word.lower()
        if (
            low in _VERBAL_NEGATION
            or low in _BARE_NT
            or _NT_RE.search(low)
            or (nominal and low in _NOMINAL_NEGATION)
        ):
            cues.append(low)
    return cues


class NegationGuard:
    """Reject when one side is negated and the other is not."""

    def __init__(
        self, name: str = "negation", *, mode: str = "presence", nominal: bool = False
    ) -> None:
        if mode not in ("presence", "parity", "count"):
            raise ConfigurationError(f"unknown negation mode {mode!r}")
        self.name = name
        # Nominal cues (no, without, nothing, ...) mostly sit in an extra clause of a longer
        # paraphrase ("... without any risk?"), so on QQP they vetoed more correct hits than
        # false ones; only verbal negation is compared by default.
        self.nominal = nominal
        # presence: any cue vs none; parity: odd vs even count (double negation cancels);
        # count: the number of cues must match.
        self.mode = mode

    def __call__(self, query: str, candidate: str) -> GuardResult:
        """Compare the polarity of ``query`` and ``candidate``."""
        q = negation_cues(query, nominal=self.nominal)
        c = negation_cues(candidate, nominal=self.nominal)
        if self.mode == "presence":
            same = bool(q) == bool(c)
        elif self.mode == "parity":
            same = len(q) % 2 == len(c) % 2
        else:
            same = len(q) == len(c)
        if same:
            return GuardResult(self.name, True)
        return GuardResult(self.name, False, f"negation differs: {q or 'none'} vs {c or 'none'}")


# --------------------------------------------------------------------------- order / roles

# Words that give the phrase after them a role: "from X to Y", "X better than Y", "designed by
# X and written by Y", "moved to X and settled in Y". When two words shared by query and
# candidate trade these roles, the sentences say different things even though their bags of
# words (and embeddings) are nearly equal. Symmetric connectives (and, or, vs, between) are left
# out on purpose: "Python vs Java" asks the same as "Java vs Python". "as" was measured and
# dropped: "X (also known as Y)" and "re-elected as head and secured ..." vetoed paraphrases.
DIRECTIONAL_SLOTS: frozenset[str] = _wordset(
    """
    from to into onto than towards toward
    by in at for of with on under over after before via
    """
)
_SLOT_ALIASES = {"towards": "to", "toward": "to", "onto": "into"}
# "X is different from Y" is symmetric even though "from" is directional.
_SYMMETRIC_BEFORE_SLOT = _wordset("different differs differ differently distinguish")
# Coordination keeps a slot open: "from Oakland, Fresno and Reno to ..." puts the three
# cities in the "from" slot.
_COORD = frozenset({"and", "or", "&", ","})
_SLOT_TOKEN_RE = re.compile(r"[A-Za-z0-9]+(?:['\u2019][A-Za-z]+)*|[,;:.?!()\"&]")


def _norm(token: str) -> str:
    """Lowercase and drop a possessive so "Stefani's" and "Stefani" are one word."""
    low = token.lower()
    if low.endswith(("'s", "\u2019s")):
        return low[:-2]
    return low


@dataclass
class _Slots:
    """The directional slots of one text: who fills each, and where each word first occurs."""

    fill: dict[str, set[str]]
    first_slot: dict[str, int]
    first_word: dict[str, int]


def _parse_slots(text: str, slot_words: frozenset[str]) -> _Slots:
    """Find the phrase after each slot word (with its coordinated continuations)."""
    fill: dict[str, set[str]] = {}
    first_slot: dict[str, int] = {}
    first_word: dict[str, int] = {}
    current: str | None = None
    in_run = False  # inside the content-word run that fills ``current``
    prev = ""
    for pos, raw in enumerate(_SLOT_TOKEN_RE.findall(text)):
        low = _norm(raw)
        first_word.setdefault(low, pos)
        if low in slot_words and prev not in _SYMMETRIC_BEFORE_SLOT:
            current = _SLOT_ALIASES.get(low, low)
            fill.setdefault(current, set())
            first_slot.setdefault(current, pos)
            in_run = False
        elif current is not None:
            if low in _COORD:
                in_run = False  # a list continues the slot: the next run fills it too
            elif low in _DETERMINERS and not in_run:
                pass  # "from *the* USA"
            elif low in _STOPWORDS or not low[0].isalnum():
                current = None  # any other function word or punctuation ends the phrase
            else:
                fill[current].add(low)
                in_run = True
        prev = low
    return _Slots(fill, first_slot, first_word)


def slot_fillers(text: str, slot_words: frozenset[str] = DIRECTIONAL_SLOTS) -> dict[str, set[str]]:
    """Map each directional slot word in ``text`` to the content words that fill it."""
    return _parse_slots(text, slot_words).fill


class OrderGuard:
    """Reject when two shared words trade roles ("from A to B" vs "from B to A")."""

    def __init__(self, name: str = "order", *, slot_words: Iterable[str] | None = None) -> None:
        self.name = name
        self.slot_words = DIRECTIONAL_SLOTS if slot_words is None else frozenset(slot_words)

    def __call__(self, query: str, candidate: str) -> GuardResult:
        """Look for a pair of shared words that swapped places around a slot word."""
        q, c = _parse_slots(query, self.slot_words), _parse_slots(candidate, self.slot_words)
        common = q.fill.keys() & c.fill.keys()
        if not common:
            return GuardResult(self.name, True)
        shared = q.first_word.keys() & c.first_word.keys()
        for slot in common:
            left = (q.fill[slot] - c.fill[slot]) & shared  # filled the slot in the query only
            came = (c.fill[slot] - q.fill[slot]) & shared  # filled it in the candidate only
            for x in left:
                for y in came:
                    if self._swapped(q, c, slot, x, y):
                        return GuardResult(
                            self.name, False, f"'{slot}' slot: {x!r} in query, {y!r} in candidate"
                        )
        return GuardResult(self.name, True)

    @staticmethod
    def _swapped(q: _Slots, c: _Slots, slot: str, x: str, y: str) -> bool:
        """Say whether x and y traded places, not merely whether the phrasing moved."""
        # Slot exchange: "from Paris to Rome" vs "from Rome to Paris".
        for other in q.fill.keys() & c.fill.keys():
            if other != slot and x in c.fill[other] and y in q.fill[other]:
                return True
        # Head exchange: "kilometers to miles" vs "miles to kilometers", where the other word
        # sits before the slot word rather than in a slot of its own.
        return c.first_word[x] < c.first_slot[slot] and q.first_word[y] < q.first_slot[slot]


# --------------------------------------------------------------------------- entities

# A capitalised word or an acronym; the first word of a sentence is skipped because
# capitalisation there carries no information.
_SENT_START_RE = re.compile(r"(?:^|[.?!]\s+|[\"(]\s*)([A-Za-z][\w'\u2019]*)")


def extract_entities(text: str) -> set[str]:
    """Return the lowercased capitalised words of ``text`` that are not sentence starters."""
    starters = {m.start(1) for m in _SENT_START_RE.finditer(text)}
    out = set()
    for m in _WORD_RE.finditer(text):
        word = m.group(0)
        if m.start() in starters or not word[0].isupper():
            continue
        low = _norm(word)
        if low in _STOPWORDS or low == "i":
            continue
        out.add(low)
    return out


def _stem(word: str) -> str:
    """Return a crude stem so "India"/"Indian" and "Russia"/"Russians" compare equal."""
    return word[:5]


class EntityGuard:
    """Reject when a capitalised name on one side is replaced by a different one on the other."""

    def __init__(self, name: str = "entities", *, substitution_only: bool = True) -> None:
        self.name = name
        # An extra name on one side ("... in Mac OS X", "Harry" vs "Harry Potter") is usually
        # a detail added to the same question; a name *replaced* by another ("Patriots" vs
        # "49ers", "India" vs "Nigeria") is a different question. Only substitutions veto.
        self.substitution_only = substitution_only

    def __call__(self, query: str, candidate: str) -> GuardResult:
        """Compare the named entities of ``query`` and ``candidate``."""
        # Compare against every word of the other side so "India" matches "india": prompts
        # are typed with careless capitalisation.
        q_words = {_stem(_norm(w)) for w in _words(query)}
        c_words = {_stem(_norm(w)) for w in _words(candidate)}
        only_q = sorted(e for e in extract_entities(query) if _stem(e) not in c_words)
        only_c = sorted(e for e in extract_entities(candidate) if _stem(e) not in q_words)
        differ = (only_q and only_c) if self.substitution_only else (only_q or only_c)
        if differ:
            return GuardResult(self.name, False, f"entities differ: {only_q} vs {only_c}")
        return GuardResult(self.name, True)


# --------------------------------------------------------------------------- registry

_FACTORIES: dict[str, Callable[[], Guard]] = {
    "numbers": NumberGuard,
    "negation": NegationGuard,
    "order": OrderGuard,
    "entities": EntityGuard,
}

GUARD_NAMES: tuple[str, ...] = tuple(_FACTORIES)

# Chosen with benchmarks/guard_study.py on QQP and PAWS-Wiki (cosine threshold 0.85-0.95):
# "numbers" and "order" remove several times more false hits than the correct hits they cost;
# "negation" removed about as many correct hits as false ones (QQP's duplicates include pairs
# like "Does honey spoil?" / "Why doesn't honey spoil?") and "entities" likewise, so both are
# opt-in.
DEFAULT_GUARDS: tuple[str, ...] = ("numbers", "order")


def build_guards(names: Iterable[str] | None = None) -> list[Guard]:
    """Instantiate guards by name (``None`` gives :data:`DEFAULT_GUARDS`)."""
    if isinstance(names, str):
        # A bare string would otherwise be iterated character by character.
        names = [names]
    chosen = DEFAULT_GUARDS if names is None else tuple(names)
    guards: list[Guard] = []
    for name in chosen:
        try:
            factory = _FACTORIES[name]
        except KeyError:
            raise ConfigurationError(
                f"unknown guard {name!r}; known guards: {', '.join(GUARD_NAMES)}"
            ) from None
        guards.append(factory())
    return guards


def run_guards(guards: Sequence[Guard], query: str, candidate: str) -> list[GuardResult]:
    """Run every guard on the pair and return all the results (for explain output)."""
    return [guard(query, candidate) for guard in guards]
