"""The in-process index at scale: 8-bit HNSW storage with an exact re-score, memory
accounting, and key bookkeeping through removes, rebuild catch-up and replays."""

from __future__ import annotations

import numpy as np
import pytest

from semcache.config import IndexConfig
from semcache.errors import ConfigurationError
from semcache.index.faiss import FaissIndex


def unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def data(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(1, n // 20), dim))
    return unit(centres[rng.integers(0, len(centres), n)] + 0.6 * rng.normal(size=(n, dim)) / np.sqrt(dim))


def hnsw_index(dim: int, storage: str = "sq8", **kw: object) -> FaissIndex:
    return FaissIndex(dim, IndexConfig(hnsw_min_entries=200, background_rebuild=False, hnsw_storage=storage, **kw))  # type: ignore[arg-type]


def test_sq8_similarities_are_the_float32_ones_for_the_top_candidates():
    X = data(3000, 384)
    keys = [f"k{i}" for i in range(len(X))]
    idx = hnsw_index(384)
    idx.add("s", keys, X)
    assert idx.stats()["hnsw_scopes"] == 1
    rng = np.random.default_rng(1)
    Q = unit(X[:200] + 0.05 * rng.normal(size=(200, 384)) / np.sqrt(384))
    worst = 0.0
    for q in Q:
        hits = idx.search("s", q, 4)
        assert len(hits) == 4
        exact = np.array([float(X[int(k[1:])] @ q) for k, _ in hits])
        got = np.array([s for _, s in hits])
        worst = max(worst, float(np.abs(got - exact).max()))
        assert list(got) == sorted(got, reverse=True)  # best first, in exact order
    # the 8-bit codes alone are off by ~1e-3; the re-score on 16-bit copies is not
    assert worst < 1e-5


@pytest.mark.parametrize(("dim", "spread"), [(16, 0.05), (384, 0.1)])
def test_sq8_top1_separates_near_duplicates_like_float32(dim, spread):
    # 100 near-duplicates ~1e-3 (dim 16) / ~8e-3 (dim 384) apart in cosine, among 3000
    # others: the exact re-score must put each one first for itself. (Closer than
    # ~1e-3, the 8-bit walk may return another duplicate first, with its exact score.)
    rng = np.random.default_rng(0)
    base = rng.normal(size=dim) / np.sqrt(dim)
    X = unit(np.vstack([base + spread / np.sqrt(dim) * rng.normal(size=(100, dim)), rng.normal(size=(3000, dim))]))
    keys = [f"k{i}" for i in range(len(X))]
    idx = hnsw_index(dim)
    idx.add("s", keys, X)
    for i in range(100):
        assert idx.search("s", X[i], 1)[0][0] == f"k{i}"


def test_float32_storage_is_still_available_and_bigger():
    X = data(1000, 64)
    keys = [f"k{i}" for i in range(len(X))]
    small, big = hnsw_index(64, "sq8"), hnsw_index(64, "float32")
    small.add("s", keys, X)
    big.add("s", keys, X)
    assert small.search("s", X[5], 1)[0][0] == big.search("s", X[5], 1)[0][0] == "k5"
    assert small.memory_bytes()["vectors"] < big.memory_bytes()["vectors"]
    with pytest.raises(ConfigurationError):
        IndexConfig(hnsw_storage="int4")  # type: ignore[arg-type]


def test_memory_accounting_per_entry():
    dim, n = 384, 2000
    X = data(n, dim)
    keys = [f"{i:032x}" for i in range(n)]
    flat = FaissIndex(dim, IndexConfig(hnsw_min_entries=10**6))
    flat.add("s", keys, X)
    mb = flat.memory_bytes()
    assert mb["entries"] == n
    assert mb["vectors"] == n * (4 * dim + 8)  # float32 codes + the id map
    idx = hnsw_index(dim, hnsw_m=32)
    idx.add("s", keys, X)
    mb = idx.memory_bytes()
    per = mb["vectors"] / n
    # 8-bit codes + 16-bit copy + scale + id, and the graph (2M level-0 links of 4 bytes)
    lower = dim + 2 * dim + 4 + 8 + 2 * 32 * 4
    assert lower <= per <= lower + 120
    assert mb["total"] == mb["vectors"] + mb["python"]
    assert 100 < mb["python"] / n < 400  # key strings, two dicts, the live set
    assert mb["total"] / n < 2048
    assert idx.stats()["bytes_estimate"] == mb["vectors"]


def test_bookkeeping_after_removes_replacements_and_scope_moves():
    X = data(600, 32)
    idx = hnsw_index(32)
    keys = [f"k{i}" for i in range(600)]
    idx.add("a", keys[:300], X[:300])  # HNSW
    idx.add("b", keys[300:], X[300:])  # HNSW too
    assert idx.remove(keys[:50] + ["nope"]) == 50
    idx.add("b", keys[50:60], X[50:60])  # moved from a to b
    idx.add("a", keys[300:305], X[300:305])  # moved from b to a
    assert len(idx) == 550 and idx.keys() == set(keys[50:])
    assert all(idx.scope_of(k) == "b" for k in keys[50:60])
    assert all(idx.scope_of(k) == "a" for k in keys[300:305])
    assert idx.scope_of(keys[0]) is None and keys[0] not in idx
    for i in (55, 320):
        assert idx.search("b", X[i], 1)[0][0] == f"k{i}"
    assert idx.search("a", X[302], 1)[0][0] == "k302"
    for scope in ("a", "b"):
        for q in X[:60]:
            found = {k for k, _ in idx.search(scope, q, 10)}
            assert not found & set(keys[:50])  # removed keys never come back
            assert all(idx.scope_of(k) == scope for k in found)
    idx.remove(keys)
    assert len(idx) == 0 and idx.stats()["scopes"] == 0
    idx.add("a", ["again"], X[:1])  # a scope emptied and created again keeps working
    assert idx.search("a", X[0], 1)[0][0] == "again"


def test_rebuild_catches_up_with_adds_and_removes_made_during_the_build(monkeypatch):
    X = data(1500, 32)
    keys = [f"k{i}" for i in range(1500)]
    idx = FaissIndex(32, IndexConfig(hnsw_min_entries=400, background_rebuild=False))
    monkeypatch.setattr("semcache.index.faiss._CATCH_UP", 10)
    real_append = idx._append
    state = {"round": 0}

    def append(sc, vecs, ids):  # type: ignore[no-untyped-def]
        real_append(sc, vecs, ids)
        if sc.hnsw and state["round"] < 2:
            # writes arriving while the new graph is built (outside the lock in real life)
            state["round"] += 1
            lo = 400 + 300 * (state["round"] - 1)
            idx.add("s", keys[lo : lo + 300], X[lo : lo + 300])
            idx.remove(keys[state["round"] * 10 : state["round"] * 10 + 5])  # some in the snapshot
            idx.remove([keys[lo + 1]])  # one that arrived late

    monkeypatch.setattr(idx, "_append", append)
    idx.add("s", keys[:400], X[:400])  # reaches hnsw_min_entries: the build starts
    st = idx.stats()
    gone = set(keys[10:15]) | set(keys[20:25]) | {keys[401], keys[701]}
    assert st["hnsw_scopes"] == 1
    assert idx.keys() == set(keys[:1000]) - gone and len(idx) == 1000 - len(gone)
    for i in (3, 450, 999):
        assert idx.search("s", X[i], 1)[0][0] == f"k{i}"
    for k in gone:
        i = int(k[1:])
        assert k not in {h for h, _ in idx.search("s", X[i], 5)}


def test_journal_replay_onto_a_fresh_index_keeps_keys_exact():
    X = data(800, 32)
    keys = [f"k{i}" for i in range(800)]
    old = hnsw_index(32)
    old.add("s", keys[:500], X[:500])
    old.start_journal()
    old.add("s", keys[500:], X[500:])
    old.remove(keys[:100])
    old.add("t", keys[100:110], X[100:110])
    fresh = hnsw_index(32)
    fresh.add("s", keys[:500], X[:500])  # what a rebuild read from L3
    fresh.replay(old.take_journal())
    assert fresh.keys() == old.keys() == set(keys[100:])
    assert all(fresh.scope_of(k) == "t" for k in keys[100:110])
    assert fresh.search("s", X[700], 1)[0][0] == "k700"
    assert fresh.search("t", X[105], 1)[0][0] == "k105"


def test_deferred_bulk_load_switches_to_hnsw_once_at_the_end():
    X = data(1000, 32)
    keys = [f"k{i}" for i in range(1000)]
    idx = FaissIndex(32, IndexConfig(hnsw_min_entries=300, background_rebuild=False))
    with idx.deferred():
        for lo in range(0, 1000, 100):
            idx.add("s", keys[lo : lo + 100], X[lo : lo + 100])
            assert idx.stats()["hnsw_scopes"] == 0  # the flat index serves, exactly
        assert idx.search("s", X[7], 1)[0][0] == "k7"
    assert idx.stats()["hnsw_scopes"] == 1 and len(idx) == 1000
    assert idx.search("s", X[7], 1)[0][0] == "k7"
    failed = FaissIndex(32, IndexConfig(hnsw_min_entries=300, background_rebuild=False))
    with pytest.raises(RuntimeError), failed.deferred():
        failed.add("s", keys, X)
        raise RuntimeError("the L3 read failed")
    assert failed.stats()["hnsw_scopes"] == 0  # a failed load starts no build
