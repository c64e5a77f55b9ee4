"""Pure fixtures shared by every test: a fake clock, the hashing embedder, caches on
SQLite in a temporary directory. Nothing here starts a server or loads a model."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import pytest

from semcache import CacheConfig, MemoryConfig, Policy, SemanticCache, SQLConfig
from semcache.embedders import HashingEmbedder


class FakeClock:
    """A settable clock: ``clock()`` returns the time, ``clock.advance(s)`` moves it."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def exporter() -> Iterator:
    """The spans semcache records during a test, in memory (needs the OpenTelemetry SDK):
    a provider of the test's own, given to :func:`semcache.tracing.set_tracer_provider`,
    so the process-wide provider is never set."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from semcache import tracing

    provider = TracerProvider()
    out = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(out))
    tracing.set_tracer_provider(provider)
    try:
        yield out
    finally:
        tracing.set_tracer_provider(None)
        provider.shutdown()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def hashing_embedder() -> HashingEmbedder:
    return HashingEmbedder(dim=64)


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/semcache.db"


@pytest.fixture
def key_prefix(request) -> str:
    """A Redis key prefix unique to this test (and xdist worker): no test ever flushes Redis."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid)[-120:]
    return f"semcache-test:{worker}:{name}:"


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get("SEMCACHE_TEST_REDIS_URL")
    if not url:
        _missing("SEMCACHE_TEST_REDIS_URL")
    return url


@pytest.fixture
def pg_url() -> str:
    url = os.environ.get("SEMCACHE_TEST_PG_URL")
    if not url:
        _missing("SEMCACHE_TEST_PG_URL")
    return url


@pytest.fixture
def pgvector_url() -> str:
    url = os.environ.get("SEMCACHE_TEST_PGVECTOR_URL")
    if not url:
        _missing("SEMCACHE_TEST_PGVECTOR_URL")
    return url


@pytest.fixture
def redis_cluster_urls() -> list[str]:
    """Every node of the test Redis Cluster (3 masters, a replica each)."""
    urls = os.environ.get("SEMCACHE_TEST_REDIS_CLUSTER_URL")
    if not urls:
        _missing("SEMCACHE_TEST_REDIS_CLUSTER_URL")
    return urls.split(",")


def _missing(var: str) -> None:
    # in CI the real servers are part of the run: their absence is a failure, not a skip
    if os.environ.get("CI"):
        pytest.fail(f"{var} is not set: scripts/test.sh starts the real server and sets it")
    pytest.skip(f"{var} is not set")


@pytest.fixture
def make_cache(clock, sqlite_url, hashing_embedder) -> Iterator:
    """Build open caches (closed at teardown); defaults: L1 + SQLite + hashing embedder."""
    made: list[SemanticCache] = []

    def make(**overrides) -> SemanticCache:
        kwargs = dict(
            memory=MemoryConfig(),
            sql=SQLConfig(url=sqlite_url),
            embedder=hashing_embedder,
            # cosine semantics: these caches test plumbing with a toy embedder (the
            # verifier has its own tests with fake verifiers)
            policy=Policy(similarity_threshold=0.8, verifier=None),
        )
        kwargs.update(overrides)
        cache = SemanticCache(CacheConfig(**kwargs), timer=clock).open()
        made.append(cache)
        return cache

    yield make
    for c in made:
        c.close()


@pytest.fixture
def pg_schema_url(pg_url, request) -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards."""
    yield from _fresh_schema(pg_url)


@pytest.fixture
def pgvector_schema_url(pgvector_url) -> Iterator[str]:
    """A URL on the PostgreSQL with pgvector whose search_path is a fresh schema (with
    ``public``, where the extension and its types live), dropped afterwards."""
    from sqlalchemy import create_engine, text

    admin = create_engine(pgvector_url)
    with admin.begin() as conn:
        conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector SCHEMA public"))
    admin.dispose()
    yield from _fresh_schema(pgvector_url, extra="public")


def _fresh_schema(pg_url: str, extra: str = "") -> Iterator[str]:
    import uuid
    from urllib.parse import quote

    from sqlalchemy import create_engine, text

    schema = "t_" + uuid.uuid4().hex[:12]
    admin = create_engine(pg_url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in pg_url else "?"
    path = f"{schema},{extra}" if extra else schema
    yield f"{pg_url}{sep}options={quote(f'-csearch_path={path}')}"
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


# -- the real servers' share of the run, printed at the end -----------------------------
_MARKED = ("redis", "redis_cluster", "postgres", "pgvector", "model")
_outcomes: dict[str, dict[str, int]] = {m: {"passed": 0, "failed": 0, "skipped": 0} for m in _MARKED}


def pytest_runtest_logreport(report):
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        for marker in _MARKED:
            if marker in report.keywords:
                _outcomes[marker][report.outcome] = _outcomes[marker].get(report.outcome, 0) + 1


def pytest_terminal_summary(terminalreporter):
    names = {
        "redis": "real Redis",
        "redis_cluster": "real Redis Cluster",
        "postgres": "real PostgreSQL",
        "pgvector": "real PostgreSQL with pgvector",
        "model": "real MiniLM model",
    }
    lines = [
        f"{names[marker]} tests — passed {c['passed']}, failed {c['failed']}, skipped {c['skipped']}"
        for marker, c in _outcomes.items()
        if any(c.values())
    ]
    if lines:
        terminalreporter.write_sep("-", "tests against real servers and the real model")
        for line in lines:
            terminalreporter.write_line(line)
