"""Generated labelled pairs for training the pair verifier: typical LLM prompts, each
with paraphrases (same meaning) and near-misses (a slot swapped for another value,
two roles exchanged, a negation, a changed number).

Everything here is written by the project (templates and word lists), so the pairs
may be used for any purpose. ``generate(n, seed)`` is deterministic for a seed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["Pair", "generate"]


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    label: int  # 1: the same question, 0: a different one
    kind: str


SLOTS: dict[str, list[str]] = {
    "lang": ["Python", "JavaScript", "Java", "C++", "Rust", "Go", "Ruby", "PHP", "Kotlin", "Swift", "TypeScript", "C#", "Scala", "Haskell", "R", "Perl", "Bash", "SQL", "Lua", "Elixir"],
    "op": ["reverse a list", "sort a dictionary by value", "read a file line by line", "remove duplicates from an array", "parse JSON", "convert a string to an integer", "merge two dictionaries", "check if a file exists", "split a string by commas", "get the current date", "make an HTTP request", "find the length of a string", "iterate over a map", "create a thread", "handle exceptions", "write unit tests", "flatten a nested list", "generate random numbers", "connect to a database", "format a float with two decimals"],
    "city": ["Paris", "Rome", "London", "Berlin", "Madrid", "Tokyo", "Delhi", "Sydney", "Toronto", "Chicago", "Boston", "Cairo", "Lagos", "Lima", "Oslo", "Vienna", "Prague", "Dublin", "Seoul", "Bangkok", "Manila", "Lisbon", "Athens", "Warsaw"],
    "country": ["France", "Italy", "Germany", "Spain", "Japan", "India", "Brazil", "Canada", "Mexico", "Egypt", "Kenya", "Norway", "Sweden", "Poland", "Greece", "Chile", "Peru", "Vietnam", "Turkey", "Ireland", "Portugal", "Nigeria", "Australia", "China"],
    "food": ["pancakes", "lasagna", "sourdough bread", "fried rice", "banana bread", "chocolate cake", "guacamole", "hummus", "risotto", "chicken curry", "tomato soup", "apple pie", "falafel", "pad thai", "omelette", "brownies"],
    "animal": ["cats", "dogs", "rabbits", "parrots", "horses", "goldfish", "hamsters", "turtles", "snakes", "ferrets"],
    "skill": ["learn guitar", "learn to swim", "improve my English", "lose weight", "learn machine learning", "get better at chess", "start running", "learn to draw", "speak in public", "learn to cook", "save money", "sleep better", "learn calculus", "write a novel", "start a business", "learn French"],
    "unit": ["Celsius", "Fahrenheit", "kilometers", "miles", "kilograms", "pounds", "liters", "gallons", "inches", "centimeters", "euros", "dollars"],
    "person": ["a teacher", "a doctor", "a lawyer", "a nurse", "a pilot", "a software engineer", "an architect", "a chef", "a dentist", "an accountant", "a pharmacist", "a journalist"],
    "thing": ["a laptop", "a phone", "a car", "a bike", "a camera", "a house", "a watch", "a tablet", "a TV", "a printer"],
    "topic": ["photosynthesis", "inflation", "black holes", "the French Revolution", "machine learning", "blockchain", "climate change", "the immune system", "quantum computing", "supply and demand", "the stock market", "plate tectonics", "DNA replication", "the Cold War", "compound interest", "gravity"],
    "num": ["2", "3", "5", "7", "10", "12", "15", "20", "30", "50", "100", "1000"],
}

# One meaning, several wordings. {x} and {y} are slots of the same kind when the frame
# says so; ``ordered`` frames change meaning when x and y trade places, ``symmetric``
# ones do not.
FRAMES: list[dict[str, object]] = [
    {"slots": ("op", "lang"), "forms": ["How do I {0} in {1}?", "How can I {0} in {1}?", "What is the best way to {0} in {1}?", "{1}: how to {0}?", "In {1}, how do you {0}?", "Show me how to {0} using {1}.", "What's the {1} code to {0}?", "how to {0} {1}"]},
    {"slots": ("food",), "forms": ["How do I make {0}?", "What is a good recipe for {0}?", "How can I cook {0} at home?", "Give me a recipe for {0}.", "What's the easiest way to make {0}?", "recipe for {0}"]},
    {"slots": ("country",), "forms": ["What is the capital of {0}?", "What's the capital city of {0}?", "Which city is the capital of {0}?", "Tell me the capital of {0}.", "capital of {0}?", "Name the capital of {0}."]},
    {"slots": ("skill",), "forms": ["How can I {0}?", "What is the best way to {0}?", "What are some tips to {0}?", "How do I {0} quickly?", "Any advice on how to {0}?", "What should I do to {0}?"]},
    {"slots": ("topic",), "forms": ["Explain {0} in simple terms.", "What is {0}?", "Can you explain {0} to me?", "How does {0} work?", "Give me a simple explanation of {0}.", "ELI5: {0}"]},
    {"slots": ("animal",), "forms": ["How often should I feed my {0}?", "How many times a day should {0} be fed?", "What is the right feeding schedule for {0}?", "How frequently do {0} need to eat?"]},
    {"slots": ("person",), "forms": ["How do I become {0}?", "What does it take to become {0}?", "What are the steps to become {0}?", "How can I start a career as {0}?", "What qualifications do I need to be {0}?"]},
    {"slots": ("thing",), "forms": ["How do I choose {0}?", "What should I look for when buying {0}?", "Tips for picking {0}?", "How can I pick a good {0}?".replace("a good a ", "a good ")]},
    {"slots": ("city", "city"), "ordered": True, "forms": ["How do I get from {0} to {1}?", "What is the best way to travel from {0} to {1}?", "How can I go from {0} to {1}?", "What's the fastest route from {0} to {1}?", "Travel options from {0} to {1}?"]},
    {"slots": ("city", "city"), "ordered": True, "forms": ["How long is the flight from {0} to {1}?", "How many hours does it take to fly from {0} to {1}?", "What is the flight time from {0} to {1}?", "Flight duration {0} to {1}?"]},
    {"slots": ("unit", "unit"), "ordered": True, "forms": ["How do I convert {0} to {1}?", "What is the formula to convert {0} into {1}?", "How can I change {0} into {1}?", "Convert {0} to {1}.", "What's the conversion from {0} to {1}?"]},
    {"slots": ("lang", "lang"), "ordered": True, "forms": ["How do I translate code from {0} to {1}?", "What is the best way to port a project from {0} to {1}?", "How can I migrate from {0} to {1}?", "Tips for moving a codebase from {0} to {1}?"]},
    {"slots": ("lang", "lang"), "symmetric": True, "forms": ["What is the difference between {0} and {1}?", "How does {0} differ from {1}?", "{0} vs {1}: what are the differences?", "Compare {0} and {1}.", "What are the main differences between {0} and {1}?"]},
    {"slots": ("country", "country"), "symmetric": True, "forms": ["Which is bigger, {0} or {1}?", "Is {0} larger than {1} or smaller?", "Compare the size of {0} and {1}.", "How does the area of {0} compare with {1}?"]},
    {"slots": ("country", "country"), "ordered": True, "forms": ["Do I need a visa to travel from {0} to {1}?", "Does a citizen of {0} need a visa for {1}?", "Visa requirements for {0} citizens visiting {1}?", "Can people from {0} enter {1} without a visa?"]},
    {"slots": ("num", "food"), "forms": ["How many calories are in {0} servings of {1}?", "What is the calorie count of {0} servings of {1}?", "Calories in {0} portions of {1}?", "How many kcal do {0} servings of {1} have?"]},
    {"slots": ("num", "skill"), "forms": ["Can I {1} in {0} weeks?", "Is it possible to {1} in {0} weeks?", "How can I {1} within {0} weeks?", "Is {0} weeks enough to {1}?"]},
    {"slots": ("num", "lang"), "forms": ["Write a {1} function that returns the first {0} prime numbers.", "In {1}, write code to get the first {0} primes.", "Give me {1} code that prints the first {0} prime numbers.", "How do I list the first {0} prime numbers in {1}?"]},
    {"slots": ("topic", "num"), "forms": ["Summarize {0} in {1} sentences.", "Give me a {1}-sentence summary of {0}.", "Explain {0} in {1} sentences.", "Describe {0} in exactly {1} sentences."]},
    {"slots": ("person", "thing"), "forms": ["Why would {0} need {1}?", "What does {0} use {1} for?", "How does {0} use {1} at work?"]},
]

NEGATIONS: list[tuple[str, str]] = [
    ("How do I {0}?", "How do I not {0}?"),
    ("Should I {0}?", "Should I not {0}?"),
    ("Why do people {0}?", "Why don't people {0}?"),
    ("Is it safe to {0}?", "Is it unsafe to {0}?"),
    ("Can I {0} without a license?", "Can I {0} with a license?"),
    ("What happens if I {0}?", "What happens if I don't {0}?"),
]

NEG_FILL = ["eat before swimming", "drink coffee at night", "run every day", "take ibuprofen with food", "sleep with the lights on", "charge my phone overnight", "use a VPN", "fly a drone", "fish in a lake", "sell food from home"]


# Rewrites that keep a question's meaning (function words, synonyms, spelling).
REWRITES: list[tuple[str, str]] = [
    ("How do I", "How can I"), ("How can I", "How do I"), ("What is", "What's"), ("What's", "What is"),
    ("What is the best way", "What's the best way"), ("best", "top"), ("the best way", "the easiest way"),
    ("How do I", "How should I"), ("someone", "somebody"), ("Can I", "Is it possible to"),
    ("find", "get"), ("make", "prepare"), ("a good", "a decent"), ("quickly", "fast"),
    ("Give me", "Provide"), ("Tell me", "Can you tell me"), ("Explain", "Describe"),
    ("How many", "What number of"), ("do you", "would you"), ("Should I", "Ought I to"),
    ("What are some", "What are a few"), ("simple", "plain"), ("?", " ?"), ("How does", "In what way does"),
]


def _rewrite(rng: random.Random, text: str) -> str | None:
    options = [(a, b) for a, b in REWRITES if a in text]
    if not options:
        return None
    a, b = rng.choice(options)
    return text.replace(a, b, 1)


def _fill(rng: random.Random, kinds: tuple[str, ...], distinct: bool = True) -> list[str]:
    out: list[str] = []
    for k in kinds:
        choices = [v for v in SLOTS[k] if not (distinct and v in out)]
        out.append(rng.choice(choices))
    return out


def _other(rng: random.Random, kind: str, avoid: list[str]) -> str:
    return rng.choice([v for v in SLOTS[kind] if v not in avoid])


def _frame_pairs(rng: random.Random) -> Iterator[Pair]:
    frame = rng.choice(FRAMES)
    kinds: tuple[str, ...] = frame["slots"]  # type: ignore[assignment]
    forms: list[str] = frame["forms"]  # type: ignore[assignment]
    vals = _fill(rng, kinds)
    f1, f2 = rng.sample(forms, 2)
    a = f1.format(*vals)
    close = _rewrite(rng, a)
    if close is not None and rng.random() < 0.6:
        yield Pair(a, close, 1, "rewrite")
    else:
        yield Pair(a, f2.format(*vals), 1, "paraphrase")
    # a slot replaced by another value of its kind, in the same wording (the near-miss
    # a cosine threshold lets through)
    i = rng.randrange(len(kinds))
    changed = list(vals)
    changed[i] = _other(rng, kinds[i], vals)
    b = f1.format(*changed)
    if rng.random() < 0.3:
        b = _rewrite(rng, b) or b
    yield Pair(a, b, 0, "num" if kinds[i] == "num" else "substitution")
    if len(kinds) == 2 and kinds[0] == kinds[1]:
        swapped = f1.format(vals[1], vals[0])
        if frame.get("symmetric"):
            yield Pair(a, swapped, 1, "symmetric swap")
        elif frame.get("ordered"):
            yield Pair(a, swapped, 0, "role swap")


def _negation(rng: random.Random) -> Iterator[Pair]:
    pos, neg = rng.choice(NEGATIONS)
    x = rng.choice(NEG_FILL)
    yield Pair(pos.format(x), neg.format(x), 0, "negation")


def _surface(rng: random.Random, text: str) -> str:
    """The same question with a surface change: politeness, case, punctuation."""
    t = text
    r = rng.random()
    if r < 0.25:
        t = rng.choice(["Please tell me: ", "Quick question: ", "Can you tell me ", "I was wondering, "]) + t[0].lower() + t[1:]
    elif r < 0.5:
        t = t.lower()
    elif r < 0.75:
        t = t.rstrip("?.") 
    else:
        t = t + rng.choice([" Thanks!", " Please answer briefly.", " (asking for a friend)"])
    return t


def generate(n: int, seed: int = 0) -> list[Pair]:
    """About ``n`` labelled pairs, deterministic for ``seed``; both orders of a pair are
    the caller's choice (the verifier is trained on both)."""
    rng = random.Random(seed)
    out: list[Pair] = []
    while len(out) < n:
        r = rng.random()
        if r < 0.1:
            out.extend(_negation(rng))
        else:
            pairs = list(_frame_pairs(rng))
            out.extend(pairs)
            if rng.random() < 0.3:
                p = pairs[0]
                out.append(Pair(p.a, _surface(rng, p.a), 1, "surface"))
    rng.shuffle(out)
    return out[:n]
