"""The pair verifier in the semantic read path, with fake verifiers that score by table.

Prompts are placed in a vector space at chosen cosine similarities from their query
(:class:`Space`), so each test states exactly which candidates the index finds, in
which order, and what the verifier says about each.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import math
from collections.abc import Iterator, Sequence

import numpy as np
import pytest

from semcache import (
    AsyncSemanticCache,
    CacheConfig,
    ConfigurationError,
    InvalidInputError,
    MemoryConfig,
    Policy,
    SemanticCache,
    VerifierError,
)
from semcache.config import DEFAULT_SIMILARITY_THRESHOLD
from semcache.embedders import CallableEmbedder
from semcache.verify import (
    MAX_PAIR_CHARS,
    Calibration,
    CalibrationPoint,
    CallableVerifier,
    CrossEncoderVerifier,
    PairVerifier,
    check_scores,
    resolve_verifier,
    validate_pairs,
)

DIM = 64


class Space:
    """An embedder over a table: queries on base directions, stored prompts at a chosen
    cosine from one, every other text on a direction of its own."""

    def __init__(self) -> None:
        self.vec: dict[str, np.ndarray] = {}
        self._free = iter(range(8, DIM))

    def _unit(self, i: int) -> np.ndarray:
        e = np.zeros(DIM)
        e[i] = 1.0
        return e

    def query(self, text: str, group: int = 0) -> str:
        self.vec[text] = self._unit(group)
        return text

    def near(self, text: str, cos: float, group: int = 0) -> str:
        self.vec[text] = cos * self._unit(group) + math.sqrt(1 - cos * cos) * self._unit(next(self._free))
        return text

    def __call__(self, texts: list[str]) -> np.ndarray:
        for t in texts:
            if t not in self.vec:
                self.vec[t] = self._unit(next(self._free))
        return np.stack([self.vec[t] for t in texts])


class FakeVerifier:
    """Scores a pair by the cached prompt (or the exact pair) from a table; records calls."""

    def __init__(
        self,
        scores: dict[object, float] | None = None,
        *,
        default: float = 0.0,
        calibration: Calibration | None = None,
        verifier_id: str = "fake-verifier",
    ) -> None:
        self.scores = dict(scores or {})
        self.default = default
        self.calibration = calibration
        self.verifier_id = verifier_id
        self.calls: list[list[tuple[str, str]]] = []

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        self.calls.append(list(pairs))
        return np.array([self.scores.get((a, b), self.scores.get(b, self.default)) for a, b in pairs])


class BrokenVerifier(FakeVerifier):
    def __init__(self, output: object = None, exc: BaseException | None = None) -> None:
        super().__init__()
        self.output, self.exc = output, exc

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        self.calls.append(list(pairs))
        if self.exc is not None:
            raise self.exc
        return self.output  # type: ignore[return-value]


@pytest.fixture
def space() -> Space:
    return Space()


@pytest.fixture
def make(clock, space) -> Iterator:
    """Open L1-only caches over :class:`Space` (closed at teardown)."""
    made: list[SemanticCache] = []

    def make(verifier: object, **policy: object) -> SemanticCache:
        if verifier is not None and "verifier_calibration" not in policy and getattr(verifier, "calibration", None) is None:
            policy.setdefault("verifier_threshold", 0.5)
        # the hand-made tables here are small: thresholds by their measured rates
        policy.setdefault("calibration_bound", "measured")
        policy.setdefault("sweep_interval_seconds", None)
        policy.setdefault("log_poll_seconds", None)
        cfg = CacheConfig(
            memory=MemoryConfig(),
            sql=None,
            embedder=CallableEmbedder(space, dim=DIM, model_id="space"),
            policy=Policy(verifier=verifier, **policy),  # type: ignore[arg-type]
        )
        cache = SemanticCache(cfg, timer=clock).open()
        made.append(cache)
        return cache

    yield make
    for c in made:
        c.close()


def three(space: Space, cache: SemanticCache, query: str = "how should I water a fern") -> tuple[str, str, str, str]:
    """A query and three stored prompts at cosine 0.95, 0.90 and 0.85 from it."""
    q = space.query(query)
    a = space.near("watering a fern", 0.95)
    b = space.near("fern watering schedule", 0.90)
    c = space.near("care of ferns indoors", 0.85)
    cache.set_many([{"prompt": p, "value": p} for p in (a, b, c)])
    return q, a, b, c


def stat(cache: SemanticCache, name: str) -> int:
    return cache._core.stats.snapshot().get(name, 0)


# -- choosing among candidates ------------------------------------------------------------
def test_the_nearest_candidate_that_clears_wins(make, space):
    v = FakeVerifier({"watering a fern": 0.9, "fern watering schedule": 0.9})
    cache = make(v)
    q, a, b, c = three(space, cache)
    hit = cache.get(q)
    assert hit is not None and hit.prompt == a and hit.kind == "semantic"
    assert hit.verifier_score == pytest.approx(0.9) and hit.as_dict()["verifier_score"] == 0.9
    # the nearest survivor is asked about first, alone; it cleared, so no other is scored
    assert v.calls == [[(q, a)]]


def test_the_second_candidate_wins_when_the_first_is_rejected(make, space):
    v = FakeVerifier({"watering a fern": 0.2, "fern watering schedule": 0.8, "care of ferns indoors": 0.99})
    cache = make(v)
    q, a, b, c = three(space, cache)
    hit = cache.get(q)
    assert hit is not None and hit.prompt == b and hit.verifier_score == pytest.approx(0.8)
    assert hit.similarity == pytest.approx(0.90, abs=1e-5)
    assert v.calls == [[(q, a)], [(q, b), (q, c)]]  # the nearest alone, then the rest together
    s = cache.stats()["verifier"]
    assert s["calls"] == 2 and s["pairs"] == 3 and s["rejections"] == 1 and s["errors"] == 0
    assert s["id"] == "fake-verifier"


def test_every_candidate_rejected_is_a_miss(make, space):
    v = FakeVerifier(default=0.3)
    cache = make(v)
    q, *_ = three(space, cache)
    assert cache.get(q) is None
    assert cache.stats()["misses"] == 1 and cache.stats()["verifier"]["rejections"] == 3


def test_verifier_top_k_bounds_the_pairs_scored(make, space):
    v = FakeVerifier({"care of ferns indoors": 0.99})  # only the third would clear
    cache = make(v, verifier_top_k=2)
    q, a, b, c = three(space, cache)
    assert cache.get(q) is None
    assert v.calls == [[(q, a)], [(q, b)]]


def test_a_guard_veto_skips_that_candidate_only(make, space):
    v = FakeVerifier(default=0.9)
    cache = make(v)
    q = space.query("what is 15 percent of 300")
    a = space.near("what is 15 percent of 200", 0.97)  # the numbers guard vetoes it
    b = space.near("compute 15 percent of 300", 0.90)
    cache.set_many([{"prompt": a, "value": "30"}, {"prompt": b, "value": "45"}])
    hit = cache.get(q)
    assert hit is not None and hit.prompt == b and hit.value == "45"
    assert v.calls == [[(q, b)]]  # the vetoed candidate never reaches the verifier
    assert cache.stats()["guard_rejections"] == {"numbers": 1}


def test_without_a_verifier_a_guard_veto_is_a_miss_as_before(make, space):
    cache = make(None, similarity_threshold=0.85)
    q = space.query("what is 15 percent of 300")
    a = space.near("what is 15 percent of 200", 0.97)
    b = space.near("compute 15 percent of 300", 0.90)
    cache.set_many([{"prompt": a, "value": "30"}, {"prompt": b, "value": "45"}])
    assert cache.get(q) is None  # the nearest decides alone
    assert cache.stats()["guard_rejections"] == {"numbers": 1}


def test_a_blocked_candidate_is_skipped(make, space):
    v = FakeVerifier(default=0.9)
    cache = make(v)
    q, a, b, c = three(space, cache)
    blocked_key = cache.request(a).key
    cache._core.blocked = lambda request_key, entry_key: entry_key == blocked_key
    hit = cache.get(q)
    assert hit is not None and hit.prompt == b
    assert v.calls == [[(q, b)]]  # the blocked nearest is never asked about


def test_a_blocked_candidate_is_skipped_without_a_verifier_too(make, space):
    cache = make(None, similarity_threshold=0.8)
    q, a, b, c = three(space, cache)
    blocked_key = cache.request(a).key
    cache._core.blocked = lambda request_key, entry_key: entry_key == blocked_key
    hit = cache.get(q)
    assert hit is not None and hit.prompt == b and hit.verifier_score is None


# -- when the verifier is not asked --------------------------------------------------------
def test_the_verifier_never_runs_on_an_exact_hit(make, space):
    v = FakeVerifier(default=0.9)
    cache = make(v)
    q, a, *_ = three(space, cache)
    hit = cache.get(a)
    assert hit is not None and hit.kind == "exact" and hit.verifier_score is None
    assert v.calls == [] and cache.stats()["verifier"]["calls"] == 0


def test_the_verifier_never_runs_below_the_floor(make, space):
    v = FakeVerifier(default=0.9)
    cache = make(v, similarity_floor=0.75)
    q = space.query("how should I water a fern")
    cache.set(space.near("watering a fern", 0.70), "x")
    assert cache.get(q) is None
    assert v.calls == [] and stat(cache, "misses") == 1
    assert cache.threshold_for(cache.request(q)) == 0.75


def test_a_lower_floor_lets_the_verifier_decide(make, space):
    v = FakeVerifier(default=0.9)
    cache = make(v, similarity_floor=0.6)
    q = space.query("how should I water a fern")
    cache.set(space.near("watering a fern", 0.70), "x")
    hit = cache.get(q)
    assert hit is not None and hit.similarity == pytest.approx(0.70, abs=1e-5) and len(v.calls) == 1


def test_a_cosine_threshold_still_applies_on_top_of_the_verifier(make, space):
    v = FakeVerifier(default=0.9)
    cache = make(v, similarity_threshold=0.92)
    q, a, b, c = three(space, cache)
    assert cache.threshold_for(cache.request(q)) == 0.92
    hit = cache.get(q)
    assert hit is not None and hit.prompt == a
    assert v.calls == [[(q, a)]]  # 0.90 and 0.85 are under the cosine threshold
    v.calls.clear()
    assert cache.get(q, threshold=0.97) is None and v.calls == []  # per call: nothing clears
    assert cache.get(q, threshold=0.5) is not None  # the floor still applies under a low one
    assert v.calls[-1] == [(q, a)]  # the nearest, past the floor, is asked about and clears


def test_namespace_thresholds_are_cosine_requirements_with_the_verifier(make, space):
    v = FakeVerifier(default=0.9)
    cache = make(v, namespace_thresholds={"strict": 0.99})
    q = space.query("how should I water a fern")
    cache.set(space.near("watering a fern", 0.95), "x", namespace="strict")
    cache.set("watering a fern", "y", namespace="loose")
    assert cache.get(q, namespace="strict") is None and v.calls == []
    assert cache.get(q, namespace="loose") is not None


def test_raw_cosine_threshold_without_a_verifier(make, space):
    cache = make(None)
    q = space.query("how should I water a fern")
    cache.set(space.near("watering a fern", 0.94), "x")
    req = cache.request(q)
    assert cache.threshold_for(req) == DEFAULT_SIMILARITY_THRESHOLD == 0.95
    assert cache.get(q) is None  # 0.94 < 0.95: the old default
    assert cache.get(q, threshold=0.9) is not None
    strict = make(None, similarity_threshold=0.9)
    strict.set("watering a fern", "x")
    hit = strict.get(q)
    assert hit is not None and hit.verifier_score is None and strict.verifier is None


# -- thresholds from the calibration ------------------------------------------------------
def _calibration(verifier_id: str, at_1pct: float, strict_at_1pct: float | None = None) -> Calibration:
    """A table: FHR 5% at 0.3, 1% at ``at_1pct``, 0 at 0.99; optionally a namespace 'strict'."""

    def table(t1: float) -> tuple[CalibrationPoint, ...]:
        return (
            CalibrationPoint(0.3, 0.05, 0.07, 0.95, 50, 950),
            CalibrationPoint(t1, 0.01, 0.018, 0.80, 10, 800),
            CalibrationPoint(0.99, 0.0, 0.003, 0.10, 0, 100),
        )

    spaces = {} if strict_at_1pct is None else {"strict": Calibration(verifier_id, table(strict_at_1pct), 1000, 1000, "test")}
    return Calibration(verifier_id, table(at_1pct), 1000, 1000, "test", spaces)


def test_the_threshold_comes_from_the_calibration_per_namespace(make, space):
    v = FakeVerifier({"watering a fern": 0.9}, calibration=_calibration("fake-verifier", 0.8, strict_at_1pct=0.95))
    cache = make(v)  # max_false_hit_rate=0.01 by default
    q = space.query("how should I water a fern")
    cache.set(space.near("watering a fern", 0.95), "x")
    cache.set("watering a fern", "x", namespace="strict")
    cache.set("watering a fern", "x", namespace="other")
    assert cache._core.verifier_threshold(None) == 0.8
    assert cache.get(q) is not None  # 0.9 >= 0.8
    assert cache.get(q, namespace="strict") is None  # its own table: 0.9 < 0.95
    assert cache.get(q, namespace="other") is not None  # no table of its own: the overall one
    ex = cache.explain(q, namespace="strict")
    assert ex["verifier_threshold"] == 0.95 and ex["candidates"][0]["decision"] == "rejected by verifier (0.900 < 0.950)"


def test_the_target_rate_picks_the_threshold(make, space):
    v = FakeVerifier({"watering a fern": 0.5}, calibration=_calibration("fake-verifier", 0.8))
    q = space.query("how should I water a fern")
    space.near("watering a fern", 0.95)
    strict, loose = make(v), make(v, max_false_hit_rate=0.05)
    for c in (strict, loose):
        c.set("watering a fern", "x")
    assert strict.get(q) is None and loose.get(q) is not None  # 0.5 vs thresholds 0.8 and 0.3
    assert loose._core.verifier_threshold(None) == 0.3


def test_a_raw_verifier_threshold_overrides_the_calibration(make, space):
    v = FakeVerifier({"watering a fern": 0.5}, calibration=_calibration("fake-verifier", 0.8))
    cache = make(v, verifier_threshold=0.4)
    q = space.query("how should I water a fern")
    cache.set(space.near("watering a fern", 0.95), "x")
    assert cache.get(q) is not None


def test_a_calibration_file_overrides_the_shipped_one(make, space, tmp_path):
    v = FakeVerifier({"watering a fern": 0.85}, calibration=_calibration("fake-verifier", 0.8))
    path = tmp_path / "cal.json"
    _calibration("fake-verifier", 0.9).to_json(path)
    q = space.query("how should I water a fern")
    space.near("watering a fern", 0.95)
    shipped, measured = make(v), make(v, verifier_calibration=str(path))
    for c in (shipped, measured):
        c.set("watering a fern", "x")
    assert shipped.get(q) is not None and measured.get(q) is None
    given = make(v, verifier_calibration=_calibration("fake-verifier", 0.5))
    assert given._core.verifier_threshold(None) == 0.5


def test_a_calibration_of_another_verifier_is_refused(clock, space):
    v = FakeVerifier(calibration=_calibration("some-other-verifier", 0.8))
    cfg = CacheConfig(memory=MemoryConfig(), sql=None, embedder=CallableEmbedder(space, dim=DIM, model_id="space"), policy=Policy(verifier=v))
    with pytest.raises(ConfigurationError, match="some-other-verifier"):
        SemanticCache(cfg, timer=clock).open()


def test_a_verifier_without_calibration_or_threshold_is_refused(clock, space):
    cfg = CacheConfig(memory=MemoryConfig(), sql=None, embedder=CallableEmbedder(space, dim=DIM, model_id="space"), policy=Policy(verifier=FakeVerifier()))
    with pytest.raises(ConfigurationError, match="no calibration"):
        SemanticCache(cfg, timer=clock).open()


# -- failures -------------------------------------------------------------------------------
def test_a_verifier_that_raises_makes_the_lookup_a_miss(make, space, caplog):
    v = BrokenVerifier(exc=RuntimeError("model crashed"))
    cache = make(v)
    q, *_ = three(space, cache)
    with caplog.at_level(logging.WARNING, logger="semcache"):
        assert cache.get(q) is None
        assert cache.get(q) is None
    s = cache.stats()
    assert s["verifier"]["errors"] == 2 and s["misses"] == 2 and s["hits"] == 0
    assert len([r for r in caplog.records if "verifier" in r.getMessage()]) == 1  # once a minute


@pytest.mark.parametrize(
    "output",
    [
        [0.9, 0.9],  # one score short
        [0.9, float("nan"), 0.9],
        [0.9, 1.5, 0.9],
        [-0.1, 0.9, 0.9],
        [[0.9, 0.9, 0.9]],
        ["high", "high", "high"],
        None,
    ],
    ids=["short", "nan", "above-one", "negative", "2d", "strings", "none"],
)
def test_unusable_scores_make_the_lookup_a_miss(make, space, output):
    cache = make(BrokenVerifier(output=output))
    q, *_ = three(space, cache)
    assert cache.get(q) is None and cache.stats()["verifier"]["errors"] == 1


def test_a_failing_verifier_raises_under_on_backend_error_raise(make, space):
    cache = make(BrokenVerifier(exc=RuntimeError("model crashed")), on_backend_error="raise")
    q, *_ = three(space, cache)
    with pytest.raises(VerifierError, match="model crashed"):
        cache.get(q)
    bad = make(BrokenVerifier(output=[2.0]), on_backend_error="raise")  # the nearest is asked about alone
    bad.set_many([{"prompt": p, "value": p} for p in ("watering a fern", "fern watering schedule", "care of ferns indoors")])
    with pytest.raises(VerifierError, match=r"outside \[0, 1\]"):
        bad.get(q)


def test_long_texts_are_cut_before_the_verifier_sees_them(make, space):
    v = FakeVerifier(default=0.9)
    cache = make(v, long_prompt="truncate")
    q = space.query("water " * 5000)  # 30,000 characters
    cache.set(space.near("watering a fern " * 2000, 0.95), "x")
    assert cache.get(q) is not None
    (a, b), = v.calls[0]
    assert len(a) == len(b) == MAX_PAIR_CHARS


# -- batches ----------------------------------------------------------------------------------
def test_lookup_many_scores_the_whole_batch_in_one_call(make, space):
    v = FakeVerifier({"fern care": 0.2, "fern watering": 0.9, "cactus watering": 0.8, "orchid light": 0.1})
    cache = make(v)
    q0 = space.query("how do I water a fern", 0)
    q1 = space.query("how often to water a cactus", 1)
    q2 = space.query("how much light for orchids", 2)
    q3 = space.query("what soil for roses", 3)
    space.near("fern care", 0.95, 0)
    space.near("fern watering", 0.90, 0)
    space.near("cactus watering", 0.93, 1)
    space.near("orchid light", 0.90, 2)
    space.near("rose soil", 0.60, 3)  # under the floor: nothing to score
    cache.set_many([{"prompt": p, "value": p} for p in ("fern care", "fern watering", "cactus watering", "orchid light", "rose soil")])
    exact = cache.request("fern care")
    outs = cache.lookup_many([cache.request(q) for q in (q0, q1, q2, q3)] + [exact])
    assert len(v.calls) == 1  # one verifier call for the batch, as one embedding call
    assert sorted(v.calls[0]) == sorted([(q0, "fern care"), (q0, "fern watering"), (q1, "cactus watering"), (q2, "orchid light")])
    hits = [o.hit for o in outs]
    assert [h.prompt if h else None for h in hits] == ["fern watering", "cactus watering", None, None, "fern care"]
    assert [h.kind if h else None for h in hits] == ["semantic", "semantic", None, None, "exact"]
    assert all(o.error is None for o in outs) and outs[3].embedding is not None
    s = cache.stats()
    assert s["misses"] == 2 and s["verifier"]["calls"] == 1 and s["verifier"]["pairs"] == 4


def test_lookup_many_with_a_failing_verifier_misses_every_scored_request(make, space):
    cache = make(BrokenVerifier(exc=RuntimeError("down")))
    q0 = space.query("how do I water a fern", 0)
    q1 = space.query("what soil for roses", 1)
    space.near("fern watering", 0.90, 0)
    cache.set("fern watering", "x")
    outs = cache.lookup_many([cache.request(q0), cache.request(q1)])
    assert [o.hit for o in outs] == [None, None] and all(o.error is None for o in outs)
    assert cache.stats()["misses"] == 2
    raising = make(BrokenVerifier(exc=RuntimeError("down")), on_backend_error="raise")
    raising.set("fern watering", "x")
    outs = raising.lookup_many([raising.request(q0), raising.request(q1)])
    assert isinstance(outs[0].error, VerifierError) and outs[1].error is None and outs[1].hit is None


def test_lookup_many_without_a_verifier_keeps_the_old_path(make, space):
    cache = make(None, similarity_threshold=0.85)
    q, a, b, c = three(space, cache)
    (out,) = cache.lookup_many([cache.request(q)])
    assert out.hit is not None and out.hit.prompt == a and out.hit.verifier_score is None


async def test_the_sidecar_batcher_makes_one_verifier_call_per_batch(clock, space):
    from semcache.server.batching import MicroBatcher

    v = FakeVerifier(default=0.9)
    stored = [space.near(f"stored question {i}", 0.9, i % 4) for i in range(4)]
    queries = [space.query(f"asked question {i}", i % 4) for i in range(4)]
    cfg = CacheConfig(
        memory=MemoryConfig(),
        sql=None,
        embedder=CallableEmbedder(space, dim=DIM, model_id="space"),
        policy=Policy(verifier=v, verifier_threshold=0.5, sweep_interval_seconds=None, log_poll_seconds=None),
    )
    async with AsyncSemanticCache(cfg, timer=clock) as cache:
        await cache.set_many([{"prompt": p, "value": p} for p in stored])
        sizes: list[int] = []
        b = MicroBatcher(cache, window_seconds=0.05, max_batch=32, on_batch=sizes.append)
        results = await asyncio.gather(*(b.lookup(cache.request(q)) for q in queries))
        await b.aclose()
    assert sizes == [4] and len(v.calls) == 1 and len(v.calls[0]) == 4
    assert [r.hit.prompt for r in results] == stored


# -- explain -------------------------------------------------------------------------------------
def test_explain_shows_every_candidate_score_and_decision(make, space):
    v = FakeVerifier({"fern watering schedule": 0.8, "watering a fern": 0.2, "care of ferns indoors": 0.95})
    cache = make(v, similarity_floor=0.8, verifier_top_k=6)
    q, a, b, c = three(space, cache, query="how should I water a fern 3 times a week")
    blocked = space.near("ferns and water", 0.97)
    vetoed = space.near("fern watering, 2 times a week", 0.96)  # another number: the guard vetoes
    low = space.near("a fern in the shade", 0.78)
    cache.set_many([{"prompt": p, "value": p} for p in (blocked, vetoed, low)])
    block_key = cache.request(blocked).key
    cache._core.blocked = lambda rk, ek: ek == block_key
    before = cache.stats()
    ex = cache.explain(q, k=10)
    assert ex["verifier"] == "fake-verifier" and ex["max_false_hit_rate"] == 0.01 and ex["verifier_threshold"] == 0.5
    assert ex["similarity_floor"] == 0.8 and ex["threshold"] == 0.8
    assert ex["decision"] == "hit" and ex["kind"] == "semantic" and ex["verifier_score"] == 0.8
    assert ex["entry_id"] == cache.request(b).key
    for cand in ex["candidates"]:
        assert {"entry_id", "similarity", "prompt", "passed_threshold", "guards", "verifier_score", "verifier_threshold", "decision"} <= cand.keys()
    decisions = [(cand["prompt"], cand["decision"], cand["verifier_score"]) for cand in ex["candidates"]]
    assert decisions == [
        (blocked, "blocked by feedback", None),
        (vetoed, "rejected by guard numbers", None),
        (a, "rejected by verifier (0.200 < 0.500)", 0.2),
        (b, "hit", 0.8),
        (c, "not considered", 0.95),  # scored in the same call, but after the winner
        (low, "below floor", None),
    ]
    after = cache.stats()
    assert after["verifier"]["calls"] == before["verifier"]["calls"] and after["hits"] == before["hits"]  # read-only
    hit = cache.get(q)  # the lookup decides as explain said
    assert hit is not None and hit.prompt == b and v.calls[-2:] == [[(q, a)], [(q, b), (q, c)]]
    assert [cand["prompt"] for cand in cache.explain(q, k=2)["candidates"]] == [blocked, vetoed]


def test_explain_without_a_verifier_keeps_its_old_decisions(make, space):
    cache = make(None, similarity_threshold=0.92)
    q, a, b, c = three(space, cache)
    ex = cache.explain(q)
    assert ex["verifier"] is None and ex["verifier_threshold"] is None and ex["max_false_hit_rate"] is None
    assert [c["decision"] for c in ex["candidates"]] == ["hit", "not considered", "not considered"]
    assert all(c["verifier_score"] is None for c in ex["candidates"])
    assert cache.explain(q, threshold=0.97)["candidates"][0]["decision"] == "below threshold"


def test_explain_reports_a_failing_verifier(make, space):
    cache = make(BrokenVerifier(exc=RuntimeError("boom")))
    q, *_ = three(space, cache)
    ex = cache.explain(q)
    assert ex["decision"] == "miss" and "boom" in ex["reason"]
    assert ex["candidates"][0]["decision"] == "verifier failed (RuntimeError)"


# -- the verifier objects -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "pairs",
    [
        "ab",
        5,
        [("a",)],
        [("a", "b", "c")],
        ["ab"],
        [("a", 1)],
        [(None, "b")],
        [("", "b")],
        [("a", "")],
        [("a\x00b", "b")],
        [("a", "\ud800")],
        [("a" * (MAX_PAIR_CHARS + 1), "b")],
    ],
    ids=["str", "int", "one", "three", "str-item", "int-text", "none-text", "empty-a", "empty-b", "nul", "surrogate", "too-long"],
)
def test_bad_pairs_are_invalid_input(pairs):
    with pytest.raises(InvalidInputError):
        validate_pairs(pairs)
    with pytest.raises(InvalidInputError):
        CallableVerifier(lambda p: [0.5] * len(p)).score(pairs)


def test_good_pairs_pass():
    assert validate_pairs([("a", "b"), ["c", "d"]]) == [("a", "b"), ("c", "d")]
    assert validate_pairs([]) == []


@pytest.mark.parametrize(
    "scores",
    [[0.5], [0.5, 0.5, 0.5], [[0.5, 0.5]], [0.5, float("nan")], [0.5, float("inf")], [0.5, -0.01], [0.5, 1.01], ["a", "b"], object()],
)
def test_bad_scores_are_a_verifier_error(scores):
    with pytest.raises(VerifierError):
        check_scores(scores, 2)
    with pytest.raises(VerifierError):
        CallableVerifier(lambda p: scores).score([("a", "b"), ("c", "d")])


def test_callable_verifier():
    seen: list[list[tuple[str, str]]] = []

    def fn(pairs):
        seen.append(pairs)
        return [0.0, 1]

    v = CallableVerifier(fn, verifier_id="mine")
    out = v.score([("a", "b"), ("c", "d")])
    assert out.dtype == np.float64 and out.tolist() == [0.0, 1.0] and seen == [[("a", "b"), ("c", "d")]]
    assert v.verifier_id == "mine" and v.calibration is None and isinstance(v, PairVerifier)
    assert CallableVerifier(fn).verifier_id.startswith("callable:")
    assert v.score([]).shape == (0,) and len(seen) == 1  # nothing to ask


def test_resolve_verifier():
    fake = FakeVerifier()
    assert resolve_verifier(None) is None and resolve_verifier(False) is None
    assert resolve_verifier(fake) is fake
    wrapped = resolve_verifier(lambda pairs: [0.5] * len(pairs))
    assert isinstance(wrapped, CallableVerifier)
    ce = resolve_verifier("cross-encoder/some-model")
    assert isinstance(ce, CrossEncoderVerifier) and ce.verifier_id == "cross-encoder:cross-encoder/some-model"
    assert not ce.loaded  # nothing loads until the first score
    for bad in (5, 1.5, [], True):
        with pytest.raises(ConfigurationError):
            resolve_verifier(bad)


def test_resolve_the_default_verifier():
    """The shipped model when it is installed, else a clear, typed error."""
    if importlib.util.find_spec("semcache.verify.model") is None:
        with pytest.raises(ConfigurationError, match="default verifier"):
            resolve_verifier("default")
        return
    try:
        v = resolve_verifier("default")
    except (ConfigurationError, VerifierError) as exc:  # the module is there, its files are not (yet)
        assert "verifier" in str(exc)
    else:
        assert isinstance(v, PairVerifier) and v.verifier_id


class _FakeCrossEncoder:
    def __init__(self, out: object, activation: object = None) -> None:
        self.out = out
        self.activation_fn = activation
        self.seen: list[object] = []

    def predict(self, pairs, **kw):
        self.seen.append((pairs, kw))
        return np.asarray(self.out)


class Identity:
    """Stands for torch.nn.Identity (the check is by type name)."""


def test_cross_encoder_outputs_become_probabilities():
    pairs = [("a", "b"), ("c", "d")]
    probs = CrossEncoderVerifier("m", model=_FakeCrossEncoder([0.2, 0.7]))
    assert probs.score(pairs).tolist() == pytest.approx([0.2, 0.7])
    logits = CrossEncoderVerifier("m", model=_FakeCrossEncoder([0.0, 0.5], activation=Identity()))
    assert logits.score(pairs).tolist() == pytest.approx([0.5, 1 / (1 + math.exp(-0.5))])
    wide = CrossEncoderVerifier("m", model=_FakeCrossEncoder([3.0, -2.0]))  # logits, whatever it claims
    assert wide.score(pairs).tolist() == pytest.approx([1 / (1 + math.exp(-3)), 1 / (1 + math.exp(2))])
    two = CrossEncoderVerifier("m", model=_FakeCrossEncoder([[0.0, 0.0], [0.0, math.log(3)]]))
    assert two.score(pairs).tolist() == pytest.approx([0.5, 0.75])
    column = CrossEncoderVerifier("m", model=_FakeCrossEncoder([[0.3], [0.6]]))
    assert column.score(pairs).tolist() == pytest.approx([0.3, 0.6])
    with pytest.raises(VerifierError):
        CrossEncoderVerifier("m", model=_FakeCrossEncoder([[0.1, 0.2, 0.7]] * 2)).score(pairs)
    with pytest.raises(InvalidInputError):
        probs.score([("a", "")])


# -- the policy ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_false_hit_rate": 0},
        {"max_false_hit_rate": 0.6},
        {"max_false_hit_rate": True},
        {"max_false_hit_rate": float("nan")},
        {"verifier_threshold": 1.5},
        {"verifier_threshold": -0.1},
        {"verifier_top_k": 0},
        {"verifier_top_k": 11},
        {"verifier_top_k": 2.0},
        {"similarity_floor": 1.5},
        {"similarity_threshold": 2},
        {"verifier": 5},
        {"verifier": ""},
        {"verifier_calibration": 5},
    ],
)
def test_bad_verifier_policy_is_a_configuration_error(kwargs):
    with pytest.raises(ConfigurationError):
        Policy(**kwargs)


def test_policy_defaults():
    p = Policy()
    assert p.verifier == "default" and p.max_false_hit_rate == 0.01 and p.verifier_threshold is None
    assert p.similarity_threshold is None and p.similarity_floor == 0.75 and p.verifier_top_k == 3
    assert Policy(verifier=None, similarity_threshold=0.9).similarity_threshold == 0.9


def test_env_settings_reach_the_policy(tmp_path):
    from semcache.server.config import ServerConfig

    cfg = CacheConfig.from_env(environ={"SEMCACHE_VERIFIER": "none", "SEMCACHE_EMBEDDER": "none"})
    assert cfg.policy.verifier is None
    cfg = CacheConfig.from_env(
        environ={
            "SEMCACHE_VERIFIER": "cross-encoder/x",
            "SEMCACHE_MAX_FALSE_HIT_RATE": "0.02",
            "SEMCACHE_VERIFIER_THRESHOLD": "0.7",
            "SEMCACHE_VERIFIER_CALIBRATION": str(tmp_path / "c.json"),
        }
    )
    p = cfg.policy
    assert p.verifier == "cross-encoder/x" and p.max_false_hit_rate == 0.02 and p.verifier_threshold == 0.7
    assert p.verifier_calibration == str(tmp_path / "c.json")
    assert CacheConfig.from_env(environ={}).policy.verifier == "default"
    server = ServerConfig.load(environ={}, verifier="none", max_false_hit_rate=0.05)
    assert server.cache.policy.verifier is None and server.cache.policy.max_false_hit_rate == 0.05
    assert ServerConfig.load(environ={}).describe()["verifier"] == "default"
    with pytest.raises(ConfigurationError):
        CacheConfig.from_env(environ={"SEMCACHE_MAX_FALSE_HIT_RATE": "0.9"})


def test_verifier_counters_reach_the_metrics(make, space):
    pytest.importorskip("prometheus_client")
    from semcache.contrib.prometheus import CacheMetrics

    v = FakeVerifier({"fern watering schedule": 0.9})
    cache = make(v)
    q, *_ = three(space, cache)
    assert cache.get(q) is not None
    text = CacheMetrics(cache).render().decode()
    # the nearest alone (rejected), then the other two together
    assert "semcache_verifier_calls_total 2.0" in text and "semcache_verifier_pairs_total 3.0" in text
    assert "semcache_verifier_rejections_total 1.0" in text and "semcache_verifier_errors_total 0.0" in text
