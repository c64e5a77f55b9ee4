"""The FAISS index: scopes, deletes and tombstones, replacement, rebuild journal."""

from __future__ import annotations

import numpy as np
import pytest

from semcache.config import IndexConfig
from semcache.errors import EmbeddingError
from semcache.index.faiss import FaissIndex


def unit(rows):
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.fixture
def clustered():
    rng = np.random.default_rng(0)
    base = rng.normal(size=16)
    near = base + 0.01 * rng.normal(size=(100, 16))
    far = rng.normal(size=(1000, 16))
    return unit(base[None, :])[0], unit(np.vstack([near, far]))


def test_search_is_confined_to_its_scope():
    idx = FaissIndex(4)
    idx.add("a", ["x"], unit([[1, 0, 0, 0]]))
    idx.add("b", ["y"], unit([[0.9, 0.1, 0, 0]]))
    assert [k for k, _ in idx.search("b", unit([[1, 0, 0, 0]])[0], 4)] == ["y"]
    assert idx.search("c", unit([[1, 0, 0, 0]])[0], 4) == []


def test_tombstones_do_not_hide_live_neighbours(clustered):
    q, X = clustered
    idx = FaissIndex(16, IndexConfig(hnsw_min_entries=100, compact_ratio=0.5))
    keys = [f"k{i}" for i in range(len(X))]
    idx.add("s", keys, X)
    idx.wait()
    assert idx.stats()["hnsw_scopes"] == 1
    idx.remove(keys[:100])  # every close neighbour of q is deleted
    hits = idx.search("s", q, 4)
    assert len(hits) == 4 and all(k not in keys[:100] for k, _ in hits)


def test_compaction_keeps_the_live_vectors(clustered):
    q, X = clustered
    idx = FaissIndex(16, IndexConfig(hnsw_min_entries=100, compact_ratio=0.25))
    keys = [f"k{i}" for i in range(len(X))]
    idx.add("s", keys, X)
    idx.wait()
    idx.remove(keys[100:500])  # past the compaction ratio: rebuilt
    idx.wait()
    assert idx.stats()["tombstones"] == 0 and len(idx) == 700
    assert idx.search("s", X[3], 1)[0][0] == "k3"


def test_duplicate_keys_in_one_add_leave_no_ghost():
    idx = FaissIndex(4)
    idx.add("s", ["d", "d"], unit([[1, 0, 0, 0], [0, 1, 0, 0]]))
    assert len(idx) == 1 and idx.search("s", unit([[0, 1, 0, 0]])[0], 2)[0][0] == "d"
    idx.remove(["d"])
    assert idx.search("s", unit([[0, 1, 0, 0]])[0], 2) == []


def test_replacing_a_key_moves_it_between_scopes():
    idx = FaissIndex(4)
    idx.add("a", ["k"], unit([[1, 0, 0, 0]]))
    idx.add("b", ["k"], unit([[1, 0, 0, 0]]))
    assert idx.search("a", unit([[1, 0, 0, 0]])[0], 1) == [] and len(idx) == 1


def test_bad_vectors_are_refused_and_change_nothing():
    idx = FaissIndex(4)
    idx.add("s", ["ok"], unit([[1, 0, 0, 0]]))
    with pytest.raises(EmbeddingError):
        idx.add("s", ["nan"], np.full((1, 4), np.nan, dtype=np.float32))
    with pytest.raises(EmbeddingError):
        idx.add("s", ["dim"], np.ones((1, 5), dtype=np.float32))
    assert len(idx) == 1


def test_journal_replays_changes_made_during_a_rebuild():
    old, fresh = FaissIndex(4), FaissIndex(4)
    old.start_journal()
    old.add("s", ["new"], unit([[1, 0, 0, 0]]))
    old.remove(["gone"])
    fresh.add("s", ["gone"], unit([[0, 1, 0, 0]]))
    fresh.replay(old.take_journal())
    assert "new" in fresh and "gone" not in fresh


def test_the_hnsw_switch_runs_in_the_background_and_keeps_late_changes(clustered):
    q, X = clustered
    idx = FaissIndex(16, IndexConfig(hnsw_min_entries=500))
    keys = [f"k{i}" for i in range(len(X))]
    idx.add("s", keys[:600], X[:600])  # crosses the threshold: a build starts
    idx.add("s", keys[600:], X[600:])  # while it runs, more arrive...
    idx.remove(keys[:50])  # ...and some go
    idx.wait()
    st = idx.stats()
    assert st["hnsw_scopes"] == 1 and st["entries"] == len(X) - 50
    found = {k for k, _ in idx.search("s", X[700], 3)}
    assert "k700" in found
    assert all(k not in keys[:50] for k, _ in idx.search("s", q, 10))


def test_synchronous_rebuilds_when_asked():
    idx = FaissIndex(4, IndexConfig(hnsw_min_entries=3, background_rebuild=False))
    idx.add("s", ["a", "b", "c"], unit(np.eye(4)[:3]))
    assert idx.stats()["hnsw_scopes"] == 1
