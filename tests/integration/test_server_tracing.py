"""OpenTelemetry traces through the sidecar's proxy: the caller's ``traceparent`` is the
parent of the server span, the upstream request carries a ``traceparent`` of the same
trace, and the lookup, the upstream call and the store are spans of that trace.

The spans go to an SDK provider with an in-memory exporter that is handed to semcache
alone (:func:`semcache.tracing.set_tracer_provider`), never installed as
OpenTelemetry's global provider: that one can be set only once per process, so a test
that set it would leak into every later test. Each test gets a fresh provider and
puts the global one back (``None``) at teardown.
"""

from __future__ import annotations

import asyncio
import hashlib

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from semcache.server.app import create_app
from tests._sidecar import TENANT_A, auth, in_process, server_config

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
BODY = {"model": "stand-in-1", "messages": [{"role": "user", "content": "What is the capital of France?"}]}
TENANT = "tenant-a"  # TENANT_A's namespace


def _hex(n: int, width: int) -> str:
    return format(n, f"0{width}x")


def _upstream_traceparent(upstream, i: int = -1) -> tuple[str, str]:
    """The (trace id, parent span id) of the ``traceparent`` the upstream's ``i``-th call carried."""
    value = upstream.headers[i]["traceparent"]
    version, trace_id, span_id, flags = value.split("-")
    assert version == "00" and int(flags, 16) & 1  # sampled
    return trace_id, span_id


def _by_name(spans, name: str):
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


def _assert_no_raw_tenant(spans) -> None:
    for s in spans:
        for value in s.attributes.values():
            assert TENANT not in str(value), (s.name, s.attributes)


async def test_a_miss_is_one_trace_from_the_callers_traceparent_to_the_upstream(sidecar, upstream, exporter):
    r = await sidecar.post(
        "/v1/chat/completions", json=BODY, headers={**auth(TENANT_A), "traceparent": TRACEPARENT}
    )
    assert r.status_code == 200 and r.headers["x-semcache"] == "miss"
    spans = exporter.get_finished_spans()
    server = _by_name(spans, "POST /v1/chat/completions")
    assert server.kind is trace.SpanKind.SERVER
    # a child of the caller's span, in the caller's trace
    assert _hex(server.context.trace_id, 32) == TRACE_ID
    assert server.parent is not None and _hex(server.parent.span_id, 16) == PARENT_ID
    assert server.attributes["http.route"] == "/v1/chat/completions"
    assert server.attributes["http.response.status_code"] == 200
    lookup = _by_name(spans, "semcache.lookup")
    call = _by_name(spans, "POST")
    store = _by_name(spans, "semcache.store")
    # lookup, upstream call and store: children of the server span, in the same trace
    for s in (lookup, call, store):
        assert s.context.trace_id == server.context.trace_id, s.name
        assert s.parent is not None and s.parent.span_id == server.context.span_id, s.name
    # the upstream request carried the upstream span's own context
    trace_id, span_id = _upstream_traceparent(upstream)
    assert trace_id == TRACE_ID and span_id == _hex(call.context.span_id, 16)
    assert call.kind is trace.SpanKind.CLIENT
    assert call.attributes["http.request.method"] == "POST"
    assert call.attributes["server.address"] == "127.0.0.1"
    assert call.attributes["http.response.status_code"] == 200
    assert call.attributes["url.full"].endswith("/chat/completions")
    # the lookup went through the micro-batcher: a batch of one, a miss
    assert lookup.attributes["semcache.decision"] == "miss"
    assert lookup.attributes["semcache.batch_size"] == 1
    assert lookup.attributes["semcache.embedding_ms"] > 0
    want = hashlib.sha256(TENANT.encode()).hexdigest()[:16]
    assert lookup.attributes["semcache.tenant"] == want and store.attributes["semcache.tenant"] == want
    assert store.attributes["semcache.durable"] is True
    # in time order: the lookup ends before the upstream call starts, the store after it ends
    assert lookup.end_time <= call.start_time and call.end_time <= store.start_time
    _assert_no_raw_tenant(spans)


async def test_an_exact_hit_is_a_lookup_span_of_its_own_request(sidecar, upstream, exporter):
    await sidecar.post("/v1/chat/completions", json=BODY, headers=auth(TENANT_A))
    exporter.clear()
    other_trace = "0af7651916cd43dd8448eb211c80319c"
    r = await sidecar.post(
        "/v1/chat/completions",
        json=BODY,
        headers={**auth(TENANT_A), "traceparent": f"00-{other_trace}-b7ad6b7169203331-01"},
    )
    assert r.headers["x-semcache"] == "hit" and upstream.calls == 1
    spans = exporter.get_finished_spans()
    assert sorted(s.name for s in spans) == ["POST /v1/chat/completions", "semcache.lookup"]
    server = _by_name(spans, "POST /v1/chat/completions")
    lookup = _by_name(spans, "semcache.lookup")
    assert _hex(lookup.context.trace_id, 32) == other_trace
    assert lookup.parent.span_id == server.context.span_id
    assert lookup.attributes["semcache.decision"] == "hit"
    assert lookup.attributes["semcache.tier"] == "l1"
    assert lookup.attributes["semcache.kind"] == "exact"
    assert lookup.attributes["semcache.similarity"] == 1.0
    _assert_no_raw_tenant(spans)


async def test_a_semantic_hit_records_its_similarity(sidecar, upstream, exporter):
    await sidecar.post("/v1/chat/completions", json=BODY, headers=auth(TENANT_A))
    exporter.clear()
    near = {**BODY, "messages": [{"role": "user", "content": "what is the capital of france"}]}
    r = await sidecar.post("/v1/chat/completions", json=near, headers=auth(TENANT_A))
    assert r.headers["x-semcache"] == "hit" and r.headers["x-semcache-kind"] == "semantic"
    lookup = _by_name(exporter.get_finished_spans(), "semcache.lookup")
    assert lookup.attributes["semcache.kind"] == "semantic"
    assert lookup.attributes["semcache.similarity"] == pytest.approx(
        float(r.headers["x-semcache-similarity"]), abs=1e-4
    )
    assert 0.8 <= lookup.attributes["semcache.similarity"] < 1.0


async def test_a_streamed_miss_carries_the_trace_upstream_and_stores_in_it(sidecar, upstream, exporter):
    r = await sidecar.post(
        "/v1/chat/completions",
        json={**BODY, "stream": True},
        headers={**auth(TENANT_A), "traceparent": TRACEPARENT},
    )
    assert r.status_code == 200 and "data: [DONE]" in r.text
    spans = exporter.get_finished_spans()
    server = _by_name(spans, "POST /v1/chat/completions")
    call = _by_name(spans, "POST")
    store = _by_name(spans, "semcache.store")
    assert {s.context.trace_id for s in spans} == {int(TRACE_ID, 16)}
    assert call.parent.span_id == server.context.span_id
    assert store.parent.span_id == server.context.span_id
    trace_id, span_id = _upstream_traceparent(upstream)
    assert trace_id == TRACE_ID and span_id == _hex(call.context.span_id, 16)


async def test_without_a_traceparent_the_server_span_starts_the_trace(sidecar, upstream, exporter):
    r = await sidecar.post("/v1/chat/completions", json=BODY, headers=auth(TENANT_A))
    assert r.status_code == 200
    spans = exporter.get_finished_spans()
    server = _by_name(spans, "POST /v1/chat/completions")
    assert server.parent is None
    trace_id, span_id = _upstream_traceparent(upstream)
    assert trace_id == _hex(server.context.trace_id, 32)
    assert span_id == _hex(_by_name(spans, "POST").context.span_id, 16)


async def test_an_upstream_error_status_marks_the_upstream_span(sidecar, upstream, exporter):
    bad = {**BODY, "messages": [{"role": "user", "content": "please fail [[error:503]]"}]}
    r = await sidecar.post("/v1/chat/completions", json=bad, headers=auth(TENANT_A))
    assert r.status_code == 503
    spans = exporter.get_finished_spans()
    call = _by_name(spans, "POST")
    assert call.attributes["http.response.status_code"] == 503
    assert call.attributes["error.type"] == "503"
    assert call.status.status_code is trace.StatusCode.ERROR
    assert not [s for s in spans if s.name == "semcache.store"]  # an error is not stored


async def test_probes_get_no_server_span(sidecar, exporter):
    assert (await sidecar.get("/healthz")).status_code == 200
    assert (await sidecar.get("/metrics")).status_code in (200, 401)
    assert exporter.get_finished_spans() == ()


async def test_with_no_provider_the_callers_traceparent_still_reaches_the_upstream(sidecar, upstream):
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        pytest.skip("a global tracer provider is set in this process")
    r = await sidecar.post(
        "/v1/chat/completions", json=BODY, headers={**auth(TENANT_A), "traceparent": TRACEPARENT}
    )
    assert r.status_code == 200
    # no span was made: the upstream gets the caller's own context
    assert _upstream_traceparent(upstream) == (TRACE_ID, PARENT_ID)


_GLOBAL_PROVIDER = """
import asyncio, json, sys, tempfile
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)

from semcache.server.app import create_app
from tests._sidecar import TENANT_A, auth, in_process, server_config
from tests.upstream import StandInUpstream


async def main(up):
    cfg = server_config(Path(tempfile.mkdtemp()), upstream_url=up.base_url, upstream_api_key="k")
    async with in_process(create_app(cfg)) as client:
        r = await client.post(
            "/v1/chat/completions", json=json.loads(sys.argv[2]),
            headers={**auth(TENANT_A), "traceparent": sys.argv[1]},
        )
        assert r.status_code == 200, r.text
        assert (await client.get("/healthz")).status_code == 200


with StandInUpstream() as up:
    asyncio.run(main(up))
    upstream_traceparent = up.headers[-1]["traceparent"]
spans = [
    {
        "name": s.name,
        "kind": s.kind.name,
        "trace": format(s.context.trace_id, "032x"),
        "id": format(s.context.span_id, "016x"),
        "parent": s.parent and format(s.parent.span_id, "016x"),
    }
    for s in exporter.get_finished_spans()
]
print(json.dumps({"upstream": upstream_traceparent, "spans": spans}))
"""


def test_with_a_global_provider_one_server_span_and_one_trace():
    """Set as OpenTelemetry's global provider (what ``semcache serve`` does from ``OTEL_*``),
    in a subprocess: whichever makes the server span (FastAPI's native telemetry, where
    the installed FastAPI has it, or semcache's middleware), there is exactly one, a
    child of the caller's span, and every span is in the caller's trace."""
    import json
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", _GLOBAL_PROVIDER, TRACEPARENT, json.dumps(BODY)],
        capture_output=True, text=True, timeout=120, cwd=root, env=env, check=False,
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    spans = got["spans"]
    servers = [s for s in spans if s["kind"] == "SERVER"]
    assert len(servers) == 1, spans  # the /healthz probe has none, the request one
    server = servers[0]
    assert server["name"] == "POST /v1/chat/completions" and server["parent"] == PARENT_ID
    assert {s["trace"] for s in spans} == {TRACE_ID}
    names = [s["name"] for s in spans]
    assert names.count("semcache.lookup") == 1 and names.count("semcache.store") == 1
    (call,) = [s for s in spans if s["kind"] == "CLIENT"]
    _, trace_id, span_id, _ = got["upstream"].split("-")
    assert trace_id == TRACE_ID and span_id == call["id"]
    # every span descends from the server span
    by_id = {s["id"]: s for s in spans}
    for s in spans:
        node = s
        while node["id"] != server["id"]:
            assert node["parent"] in by_id, (s, spans)
            node = by_id[node["parent"]]


async def test_a_batch_queued_behind_another_runs_in_its_own_callers_trace(exporter):
    """With one batch in flight, the next one is sent when the first ends: its lookup
    span must be in the trace of the request it serves, not the first batch's."""
    import threading

    import anyio

    from semcache import CacheConfig, MemoryConfig, Policy
    from semcache.async_cache import AsyncSemanticCache
    from semcache.embedders import HashingEmbedder
    from semcache.server.batching import MicroBatcher

    entered, release = threading.Event(), threading.Event()

    class Gated(HashingEmbedder):
        """Holds its first embedding call until released."""

        def embed(self, texts):
            if not entered.is_set():
                entered.set()
                assert release.wait(30)
            return super().embed(texts)

    cfg = CacheConfig(memory=MemoryConfig(), sql=None, embedder=Gated(64), policy=Policy(verifier=None))
    cache = AsyncSemanticCache(cfg)
    await cache.open()
    try:
        batcher = MicroBatcher(cache, window_seconds=0, max_batch=1, concurrency=1)
        caller = TracerProvider().get_tracer("the callers")
        with caller.start_as_current_span("first request") as first:
            one = asyncio.ensure_future(batcher.lookup(cache.request("the first question")))
        assert await anyio.to_thread.run_sync(entered.wait, 30)  # its batch is embedding
        with caller.start_as_current_span("second request") as second:
            two = asyncio.ensure_future(batcher.lookup(cache.request("the second question")))
        await asyncio.sleep(0)  # one loop turn: the second lookup is queued behind the first
        assert len(batcher._pending) == 1
        release.set()
        await asyncio.gather(one, two)
    finally:
        release.set()
        await cache.aclose()
    lookups = [s for s in exporter.get_finished_spans() if s.name == "semcache.lookup"]
    assert len(lookups) == 2
    parents = {s.parent.span_id for s in lookups}
    assert parents == {first.get_span_context().span_id, second.get_span_context().span_id}
    for s in lookups:
        want = first if s.parent.span_id == first.get_span_context().span_id else second
        assert s.context.trace_id == want.get_span_context().trace_id


def test_semcache_serve_exports_the_trace_over_otlp_http(tmp_path, upstream):
    """``semcache serve`` with ``OTEL_EXPORTER_OTLP_ENDPOINT`` set sends its spans to that
    endpoint (``/v1/traces``, protobuf), as ``OTEL_SERVICE_NAME``, in the caller's trace."""
    import http.server
    import os
    import re
    import signal
    import subprocess
    import sys
    import threading
    import time
    from pathlib import Path

    import httpx

    bodies: list[bytes] = []
    arrived = threading.Condition()

    class Collector(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()
            with arrived:
                bodies.append(self.path.encode() + b"\n" + body)
                arrived.notify_all()

        def log_message(self, *args: object) -> None:
            pass

    collector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEMCACHE_", "OTEL_"))}
    env.update(
        HF_HUB_OFFLINE="1",
        PYTHONPATH=str(root),
        SEMCACHE_EMBEDDER="hashing",
        SEMCACHE_VERIFIER="none",
        SEMCACHE_TOKENS=f"{TENANT_A}={TENANT}",
        SEMCACHE_UPSTREAM_URL=upstream.base_url,
        SEMCACHE_UPSTREAM_API_KEY="sk-upstream",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{collector.server_address[1]}",
        OTEL_SERVICE_NAME="semcache-eu-1",
        OTEL_BSP_SCHEDULE_DELAY="50",  # ms: export soon after each span ends
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "semcache", "serve", "--port", "0"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        url = None
        while url is None:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "serve exited:\n" + "".join(lines)
            lines.append(line)
            m = re.search(r"listening on (http://\S+)", line)
            url = m.group(1) if m else None
        assert any("OpenTelemetry traces on" in line for line in lines), lines
        upstream.reset()
        r = httpx.post(
            url + "/v1/chat/completions", json=BODY,
            headers={**auth(TENANT_A), "traceparent": TRACEPARENT}, timeout=30,
        )
        assert r.status_code == 200 and r.headers["x-semcache"] == "miss"
        assert _upstream_traceparent(upstream)[0] == TRACE_ID
        wanted = [b"/v1/traces", b"semcache.lookup", b"semcache.store", b"POST /v1/chat/completions"]
        deadline = time.monotonic() + 30
        with arrived:
            while not all(w in b"".join(bodies) for w in wanted):
                assert arrived.wait(max(0.0, deadline - time.monotonic())), b"".join(bodies)[:2000]
        sent = b"".join(bodies)
        assert bytes.fromhex(TRACE_ID) in sent and bytes.fromhex(PARENT_ID) in sent
        assert b"service.name" in sent and b"semcache-eu-1" in sent
        assert TENANT.encode() not in sent
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        collector.shutdown()
        collector.server_close()


async def test_the_models_list_is_an_upstream_get_span_in_the_callers_trace(sidecar, exporter):
    r = await sidecar.get("/v1/models", headers={**auth(TENANT_A), "traceparent": TRACEPARENT})
    assert r.status_code == 200
    spans = exporter.get_finished_spans()
    server = _by_name(spans, "GET /v1/models")
    call = _by_name(spans, "GET")
    assert call.kind is trace.SpanKind.CLIENT and call.parent.span_id == server.context.span_id
    assert _hex(call.context.trace_id, 32) == TRACE_ID
    assert call.attributes["http.request.method"] == "GET"
    assert call.attributes["http.response.status_code"] == 200


async def test_an_unreachable_upstream_marks_the_upstream_span(tmp_path, exporter):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = server_config(tmp_path, upstream_url=f"http://127.0.0.1:{port}/v1", upstream_api_key="k")
    async with in_process(create_app(cfg)) as client:
        r = await client.post("/v1/chat/completions", json=BODY, headers=auth(TENANT_A))
    assert r.status_code == 502
    call = _by_name(exporter.get_finished_spans(), "POST")
    assert call.attributes["error.type"] == "ConnectError"
    assert call.status.status_code is trace.StatusCode.ERROR
    assert "http.response.status_code" not in call.attributes
    assert call.attributes["server.port"] == port
