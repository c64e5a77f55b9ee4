"""Fixtures for the unit tests only: SQLite files that start at the head schema, a
clock for the tiers' back-off, FAISS on one thread, and what collection built kept
out of the garbage collector's way."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._clocks import MonotonicClock

# FAISS builds its HNSW graphs with one OpenMP thread per core, in the background
# rebuild thread too; on a busy two-core machine those threads spin against each
# other (a 1,100-vector build: about 0.05 s on one thread, 0.5-1.2 s on all). The
# results are the same on one thread. OpenMP reads this when FAISS is first loaded,
# which is after this file (the root conftest does not load it).
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def backoff_clock() -> MonotonicClock:
    """The clock of the tiers' back-off windows: ``SemanticCache(monotonic=backoff_clock)``."""
    return MonotonicClock()


@pytest.fixture(scope="session")
def _head_schema_sqlite(tmp_path_factory) -> Path:
    """One SQLite file migrated to the head schema, copied for each test."""
    from semcache.tiers.sql import SQLBackend

    path = tmp_path_factory.mktemp("schema") / "head.db"
    backend = SQLBackend(f"sqlite:///{path}")
    backend.open()
    backend.close()
    return path


@pytest.fixture
def sqlite_url(tmp_path, _head_schema_sqlite) -> Iterator[str]:
    """A new SQLite file already at the head schema (migrating each one costs ~30 ms).

    Opening a cache on it still checks the revision; the migrations themselves are
    run once per session, by the fixture above.
    """
    path = tmp_path / "semcache.db"
    shutil.copyfile(_head_schema_sqlite, path)
    yield f"sqlite:///{path}"


def pytest_collection_finish(session) -> None:
    """Move what collection built (imported modules, parametrized values) out of the
    garbage collector's way: otherwise every full collection during the run walks it
    all again (about 0.8 s of CPU over the suite). Later objects are collected as usual."""
    import gc

    gc.collect()
    gc.freeze()
