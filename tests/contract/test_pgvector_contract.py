"""The tier contract suite again, on the SQL tier over PostgreSQL with pgvector: the same
tests, and after each one the invariant of the shared index — ``semcache_vectors`` holds
exactly the live rows' embeddings (a tombstone, a flush, a sweep or a rewrite without an
embedding leaves no vector behind)."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import text

from tests.contract.test_backend_contract import *  # noqa: F403 - the suite, run here with the fixture below
from tests.contract.test_backend_contract import NOW, make_entry

pytestmark = pytest.mark.pgvector


def _vectors_match_entries(b) -> None:
    with b.engine.connect() as conn:
        vectors = {r[0]: bytes(np.asarray(r[1], dtype=np.float32).tobytes()) for r in conn.execute(
            text("SELECT key, embedding::real[] FROM semcache_vectors"))}
        entries = {r[0]: bytes(r[1]) for r in conn.execute(
            text("SELECT key, embedding FROM semcache_entries WHERE NOT deleted AND embedding IS NOT NULL "
                 "AND embedder_id IS NOT NULL"))}
    assert vectors == entries


@pytest.fixture
def backend(pgvector_schema_url):  # noqa: F811 - replaces the suite's fixture in this module
    from semcache.tiers.sql import SQLBackend

    b = SQLBackend(pgvector_schema_url)
    b.open()
    assert b.has_vectors
    yield b
    _vectors_match_entries(b)
    b.close()


def test_vectors_are_written_replaced_and_removed_with_their_rows(backend):
    v1 = np.ones(4, dtype=np.float32) / 2
    v2 = np.array([1, 0, 0, 0], dtype=np.float32)
    backend.set(make_entry("k1", embedding=v1.tobytes()), NOW)
    assert backend.vector_search("s1", "hashing-4", v1, 3, ef_search=40, max_scan_tuples=1000)[0][0] == "k1"
    backend.set(make_entry("k1", embedding=v2.tobytes()), NOW)  # a rewrite replaces the vector
    (key, sim), = backend.vector_search("s1", "hashing-4", v2, 3, ef_search=40, max_scan_tuples=1000)
    assert key == "k1" and sim == pytest.approx(1.0)
    backend.set(make_entry("k1"), NOW)  # rewritten without an embedding: out of the index
    assert backend.vector_search("s1", "hashing-4", v2, 3, ef_search=40, max_scan_tuples=1000) == []
    backend.set(make_entry("k2", embedding=v2.tobytes()), NOW)
    backend.delete(["k2"], version=10**18)  # a tombstone takes the vector
    assert backend.vector_search("s1", "hashing-4", v2, 3, ef_search=40, max_scan_tuples=1000) == []
