"""OpenTelemetry spans of the library (:mod:`semcache.tracing`): one per lookup, per
store and per batch of either, with the decision, the tier, the kind, the similarity,
why a semantic candidate was refused, the batch size, the embedding time and the
hashed tenant; and nothing at all without opentelemetry installed.

The spans go to an SDK provider with an in-memory exporter that is handed to semcache
alone (:func:`semcache.tracing.set_tracer_provider`), never installed as
OpenTelemetry's global provider: that one can be set only once per process, so a test
that set it would leak into every later test. Each test gets a fresh provider and
puts the global one back (``None``) at teardown. What needs the global provider (the
sidecar's exporter set up from ``OTEL_*``) runs in a subprocess.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import textwrap
import threading
from typing import ClassVar

import numpy as np
import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import TracerProvider

from semcache import CacheConfig, MemoryConfig, Policy, SemanticCache, SQLConfig, tracing
from semcache.embedders import HashingEmbedder
from semcache.verify import CallableVerifier

NS = "acme-secret-tenant"
HASHED = hashlib.sha256(NS.encode()).hexdigest()[:16]
Q = "What is the capital of France?"
NEAR = "what is the capital of france"


def _cache(sqlite_url: str | None = None, verifier: object = None, **policy: object) -> SemanticCache:
    policy.setdefault("sweep_interval_seconds", None)
    policy.setdefault("log_poll_seconds", None)
    policy.setdefault("similarity_threshold", 0.8)
    cfg = CacheConfig(
        memory=MemoryConfig(),
        sql=SQLConfig(url=sqlite_url) if sqlite_url else None,
        embedder=HashingEmbedder(64),
        policy=Policy(verifier=verifier, **policy),  # type: ignore[arg-type]
    )
    return SemanticCache(cfg).open()


@pytest.fixture
def cache(sqlite_url):
    c = _cache(sqlite_url)
    yield c
    c.close()


def _spans(exporter, name: str) -> list:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def _only(exporter, name: str):
    found = _spans(exporter, name)
    assert len(found) == 1, [s.name for s in exporter.get_finished_spans()]
    return found[0]


def _assert_no_raw_namespace(exporter) -> None:
    spans = exporter.get_finished_spans()
    assert spans
    for s in spans:
        for value in s.attributes.values():
            assert NS not in str(value), (s.name, dict(s.attributes))
        for event in s.events:
            for value in event.attributes.values():
                assert NS not in str(value), (s.name, event.name)


def test_a_miss(cache, exporter):
    assert cache.get(Q, namespace=NS) is None
    span = _only(exporter, "semcache.lookup")
    assert span.attributes["semcache.decision"] == "miss"
    assert span.attributes["semcache.tenant"] == HASHED
    assert "semcache.tier" not in span.attributes and "semcache.kind" not in span.attributes
    assert "semcache.batch_size" not in span.attributes
    _assert_no_raw_namespace(exporter)


def test_a_store_then_an_exact_hit(cache, exporter):
    cache.set(Q, "Paris", namespace=NS)
    store = _only(exporter, "semcache.store")
    assert store.attributes["semcache.tenant"] == HASHED
    assert store.attributes["semcache.durable"] is True
    assert store.attributes["semcache.embedding_ms"] > 0
    exporter.clear()
    hit = cache.get(Q, namespace=NS)
    assert hit is not None and hit.kind == "exact"
    span = _only(exporter, "semcache.lookup")
    assert span.attributes["semcache.decision"] == "hit"
    assert span.attributes["semcache.tier"] == "l1"
    assert span.attributes["semcache.kind"] == "exact"
    assert span.attributes["semcache.similarity"] == 1.0
    assert "semcache.embedding_ms" not in span.attributes  # the exact path never embeds
    _assert_no_raw_namespace(exporter)


def test_the_exact_path_alone_is_a_lookup_span(cache, exporter):
    req = cache.request(Q, namespace=NS)
    assert cache.lookup_exact(req) is None
    assert _only(exporter, "semcache.lookup").attributes["semcache.decision"] == "miss"
    cache.store(req, "Paris")
    exporter.clear()
    assert cache.lookup_exact(req) is not None
    span = _only(exporter, "semcache.lookup")
    assert span.attributes["semcache.kind"] == "exact" and span.attributes["semcache.tier"] == "l1"


def test_an_exact_hit_from_a_lower_tier_names_it(sqlite_url, exporter):
    with _cache(sqlite_url) as first:
        first.set(Q, "Paris", namespace=NS)
    with _cache(sqlite_url) as second:  # an empty L1: L3 answers
        exporter.clear()
        assert second.get(Q, namespace=NS) is not None
    assert _only(exporter, "semcache.lookup").attributes["semcache.tier"] == "l3"


def test_a_semantic_hit_has_its_similarity_and_embedding_time(cache, exporter):
    cache.set(Q, "Paris", namespace=NS)
    exporter.clear()
    hit = cache.get(NEAR, namespace=NS)
    assert hit is not None and hit.kind == "semantic"
    span = _only(exporter, "semcache.lookup")
    assert span.attributes["semcache.decision"] == "hit"
    assert span.attributes["semcache.kind"] == "semantic"
    assert span.attributes["semcache.similarity"] == pytest.approx(hit.similarity)
    assert 0.8 <= span.attributes["semcache.similarity"] < 1.0
    assert span.attributes["semcache.embedding_ms"] > 0
    assert "semcache.refused_by" not in span.attributes


def test_a_candidate_below_the_threshold_is_refused_by_it(cache, exporter):
    cache.set(Q, "Paris", namespace=NS)
    exporter.clear()
    assert cache.get(NEAR, namespace=NS, threshold=0.999) is None
    span = _only(exporter, "semcache.lookup")
    assert span.attributes["semcache.decision"] == "miss"
    assert span.attributes["semcache.refused_by"] == "threshold"
    assert 0.8 <= span.attributes["semcache.similarity"] < 0.999


def test_a_candidate_a_guard_vetoes_is_refused_by_it(cache, exporter):
    cache.set("what is 2 plus 3", "5", namespace=NS)
    exporter.clear()
    assert cache.get("what is 2 plus 4", namespace=NS, threshold=0.5) is None
    span = _only(exporter, "semcache.lookup")
    assert span.attributes["semcache.decision"] == "miss"
    assert span.attributes["semcache.refused_by"] == "guard"
    assert span.attributes["semcache.similarity"] >= 0.5


@pytest.mark.parametrize("score, decision", [(0.1, "miss"), (0.9, "hit")])
def test_the_verifier_decides_and_its_refusal_is_named(exporter, score, decision):
    verifier = CallableVerifier(lambda pairs: np.full(len(pairs), score), verifier_id="fixed")
    with _cache(verifier=verifier, verifier_threshold=0.5, similarity_floor=0.5) as c:
        c.set(Q, "Paris", namespace=NS)
        exporter.clear()
        hit = c.get(NEAR, namespace=NS)
    assert (hit is not None) == (decision == "hit")
    span = _only(exporter, "semcache.lookup")
    assert span.attributes["semcache.decision"] == decision
    if decision == "hit":
        assert span.attributes["semcache.verifier_score"] == pytest.approx(0.9)
        assert "semcache.refused_by" not in span.attributes
    else:
        assert span.attributes["semcache.refused_by"] == "verifier"
        assert span.attributes["semcache.similarity"] >= 0.5


def test_batches_are_one_span_each_with_their_size(cache, exporter):
    entries = cache.set_many([{"prompt": f"question number {w}", "value": w, "namespace": NS} for w in ("one", "two", "three")])
    assert len(entries) == 3
    store = _only(exporter, "semcache.store")
    assert store.attributes["semcache.batch_size"] == 3
    assert store.attributes["semcache.tenant"] == HASHED
    assert store.attributes["semcache.embedding_ms"] > 0
    exporter.clear()
    reqs = [cache.request(p, namespace=NS) for p in ("question number one", "an unrelated thing entirely", "question number two")]
    outcomes = cache.lookup_many(reqs)
    assert [o.hit is not None for o in outcomes] == [True, False, True]
    # one span for the batch: the lookups it makes are not spans of their own
    span = _only(exporter, "semcache.lookup")
    assert span.attributes["semcache.batch_size"] == 3
    assert span.attributes["semcache.hits"] == 2 and span.attributes["semcache.misses"] == 1
    assert span.attributes["semcache.tenant"] == HASHED
    assert span.attributes["semcache.embedding_ms"] > 0
    assert "semcache.decision" not in span.attributes  # three decisions: none is the batch's
    _assert_no_raw_namespace(exporter)


def test_a_batch_of_one_has_that_lookups_decision(cache, exporter):
    cache.set(Q, "Paris", namespace=NS)
    exporter.clear()
    (outcome,) = cache.lookup_many([cache.request(NEAR, namespace=NS)])
    assert outcome.hit is not None
    span = _only(exporter, "semcache.lookup")
    assert span.attributes["semcache.batch_size"] == 1
    assert span.attributes["semcache.decision"] == "hit" and span.attributes["semcache.kind"] == "semantic"


def test_a_batch_of_several_tenants_names_none(cache, exporter):
    cache.lookup_many([cache.request(Q, namespace=NS), cache.request(Q, namespace="other")])
    assert "semcache.tenant" not in _only(exporter, "semcache.lookup").attributes


def test_an_l1_hit_answered_alone_is_a_span_and_an_l1_miss_is_none(cache, exporter):
    req = cache.request(Q, namespace=NS)
    assert cache.lookup_memory(req) is None
    assert exporter.get_finished_spans() == ()  # not a miss: nothing else was asked
    cache.store(req, "Paris")
    exporter.clear()
    assert cache.lookup_memory(req) is not None
    span = _only(exporter, "semcache.lookup")
    assert span.attributes["semcache.tier"] == "l1" and span.attributes["semcache.decision"] == "hit"
    assert span.end_time >= span.start_time


def test_the_spans_are_children_of_the_callers_span(cache, exporter):
    caller = TracerProvider().get_tracer("the caller")
    with caller.start_as_current_span("caller") as parent:
        cache.set(Q, "Paris", namespace=NS)
        cache.get(Q, namespace=NS)
    for name in ("semcache.store", "semcache.lookup"):
        span = _only(exporter, name)
        assert span.parent is not None and span.parent.span_id == parent.get_span_context().span_id
        assert span.context.trace_id == parent.get_span_context().trace_id


def test_an_error_marks_the_span(cache, exporter):
    from opentelemetry.trace import StatusCode

    from semcache.errors import InvalidInputError

    with pytest.raises(InvalidInputError):
        cache.get(Q, namespace=NS, threshold=2.0)
    span = _only(exporter, "semcache.lookup")
    assert span.status.status_code is StatusCode.ERROR
    assert [e.name for e in span.events] == ["exception"]


def test_tenant_hash():
    assert tracing.tenant_hash(NS) == HASHED and len(HASHED) == 16
    assert tracing.tenant_hash("a") != tracing.tenant_hash("b")


def test_no_provider_records_nothing(cache):
    # the fixture is not used: semcache's own provider is unset, and no global one is
    from opentelemetry import trace

    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        pytest.skip("a global tracer provider is set in this process")
    assert tracing._tracer() is None
    cache.set(Q, "Paris", namespace=NS)
    assert cache.get(NEAR, namespace=NS) is not None


_BLOCKED = """
import sys

class _NoOtel:
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ImportError(f"{name} is blocked in this test")
        return None

sys.meta_path.insert(0, _NoOtel())
"""


def _run(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root, env=env, check=False
    )


def test_without_opentelemetry_semcache_works_and_traces_nothing(tmp_path):
    code = _BLOCKED + textwrap.dedent(f"""
        import asyncio
        from semcache import CacheConfig, MemoryConfig, Policy, SemanticCache, SQLConfig, tracing
        from semcache.embedders import HashingEmbedder

        assert tracing.AVAILABLE is False
        tracing.set_tracer_provider(object())  # ignored
        cfg = CacheConfig(memory=MemoryConfig(), sql=SQLConfig(url="sqlite:///{tmp_path}/c.db"),
                          embedder=HashingEmbedder(64), policy=Policy(similarity_threshold=0.8, verifier=None))
        with SemanticCache(cfg) as c:
            assert c.get("What is the capital of France?", namespace="t") is None
            c.set("What is the capital of France?", "Paris", namespace="t")
            assert c.get("What is the capital of France?", namespace="t").kind == "exact"
            assert c.get("what is the capital of france", namespace="t").kind == "semantic"
            c.set_many([{{"prompt": "p1", "value": 1}}, {{"prompt": "p2", "value": 2}}])
            outs = c.lookup_many([c.request("p1"), c.request("p2"), c.request("p3")])
            assert [o.hit is not None for o in outs] == [True, True, False]
            assert c.lookup_memory(c.request("p1")) is not None
        assert tracing.inject({{"a": "b"}}) == {{"a": "b"}}
        assert tracing.configure_from_env({{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}}) is None

        # the sidecar's middleware passes every request through
        seen = []

        async def app(scope, receive, send):
            seen.append(scope["path"])

        scope = {{"type": "http", "path": "/v1/lookup", "method": "POST", "headers": [(b"traceparent", b"00-x")]}}
        asyncio.run(tracing.TracingMiddleware(app)(scope, None, None))
        assert seen == ["/v1/lookup"]
        assert not any(m.startswith("opentelemetry") for m in sys.modules), sorted(
            m for m in sys.modules if m.startswith("opentelemetry"))
        print("ok")
    """)
    done = _run(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("ok")


class _Collector(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that keeps what it is sent."""

    received: ClassVar[list[tuple[str, bytes]]] = []
    got = threading.Event()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        type(self).received.append((self.path, body))
        type(self).got.set()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("service", [None, "my-sidecar"])
def test_the_sidecar_exports_over_otlp_http_when_the_endpoint_is_set(tmp_path, service):
    _Collector.received, _Collector.got = [], threading.Event()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{server.server_address[1]}"
        if service:
            env["OTEL_SERVICE_NAME"] = service
        code = textwrap.dedent("""
            import json
            from opentelemetry import trace
            from semcache import CacheConfig, MemoryConfig, SemanticCache, tracing
            from semcache.embedders import HashingEmbedder

            provider = tracing.configure_from_env()
            assert provider is not None and trace.get_tracer_provider() is provider
            assert tracing.configure_from_env() is None  # set once: a second call changes nothing
            with SemanticCache(CacheConfig(memory=MemoryConfig(), sql=None, embedder=HashingEmbedder(64))) as c:
                c.get("What is the capital of France?", namespace="secret-tenant")
            assert provider.force_flush(10_000)
            print(json.dumps(dict(provider.resource.attributes)))
        """)
        done = _run(code, env)
        assert done.returncode == 0, done.stderr
        resource = json.loads(done.stdout.strip().splitlines()[-1])
        assert resource["service.name"] == (service or "semcache")
        assert _Collector.got.wait(10)
        paths = {p for p, _ in _Collector.received}
        assert paths == {"/v1/traces"}
        body = b"".join(b for _, b in _Collector.received)
        assert b"semcache.lookup" in body and b"semcache.tenant" in body
        assert (service or "semcache").encode() in body
        assert b"secret-tenant" not in body
    finally:
        server.shutdown()
        server.server_close()


def test_configure_from_env_leaves_things_alone():
    assert tracing.configure_from_env({}) is None  # nothing set: no provider made
    assert tracing.configure_from_env({"OTEL_TRACES_EXPORTER": "none"}) is None
    assert tracing.configure_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_SDK_DISABLED": "true"}) is None


def test_a_host_provider_is_kept():
    code = textwrap.dedent("""
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from semcache import tracing

        mine = TracerProvider()
        trace.set_tracer_provider(mine)
        assert tracing.configure_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}) is None
        assert trace.get_tracer_provider() is mine
        assert tracing._tracer() is not None  # semcache writes to the host's provider
        print("ok")
    """)
    done = _run(code)
    assert done.returncode == 0, done.stderr
