"""OpenTelemetry traces (the ``otel`` extra): a span per lookup, per store and per
upstream call, and the sidecar's server spans.

Without ``opentelemetry-api`` installed every function here does nothing. With it,
spans go to the tracer provider set by :func:`set_tracer_provider` or, by default,
to OpenTelemetry's global one; while neither is configured nothing is recorded (no
span is started), and attributes are only computed for a span that records.

Spans (the attribute list is in the README, "Traces"):

* ``semcache.lookup`` — one per :meth:`~semcache.SemanticCache.lookup` (and
  ``lookup_exact``), per :meth:`~semcache.SemanticCache.lookup_many` batch
  (``semcache.batch_size``) and per L1 hit answered on the event loop
  (:meth:`~semcache.SemanticCache.lookup_memory`);
* ``semcache.store`` — one per store, and per :meth:`~semcache.SemanticCache.set_many`;
* ``POST`` / ``GET`` (client) — one per upstream call of the proxy, whose request
  carries the span's W3C ``traceparent``;
* ``{method} {route}`` (server) — one per sidecar request (not the probes), a child
  of the caller's ``traceparent`` when it sent one.

A span inside a semcache span is part of it: the lookups a batch makes are not
spans of their own. The tenant (namespace) is never written: only its hash,
:func:`tenant_hash` (not a secret: it keeps names out of trace storage and still
groups by tenant).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace

    AVAILABLE = True
except ImportError:  # the otel extra is not installed: every function is a no-op
    AVAILABLE = False

__all__ = [
    "AVAILABLE",
    "Span",
    "TracingMiddleware",
    "client_span",
    "configure_from_env",
    "embedded",
    "fastapi_options",
    "inject",
    "refused",
    "set_tracer_provider",
    "tenant_hash",
    "traced",
    "untraced",
]

log = logging.getLogger("semcache")

P = ParamSpec("P")
R = TypeVar("R")

#: The instrumentation scope of semcache's spans.
TRACER_NAME = "semcache"
#: Sidecar paths that get no server span (probes and scrapes, every few seconds).
UNTRACED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

_override: Any = None  # the tracer of set_tracer_provider(), else None
_UNKNOWN: Any = object()
#: the API makes the global provider from this variable when it is first asked for
_PROVIDER_FROM_ENV = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ
_global: tuple[Any, Any] = (None, None)  # (the global provider, its tracer)


def set_tracer_provider(provider: Any) -> None:
    """Send semcache's spans to ``provider`` instead of OpenTelemetry's global provider
    (``None``: the global one again). For tests and hosts that keep their own provider;
    the global provider can only be set once per process."""
    global _override
    if provider is None or not AVAILABLE:
        _override = None
        return
    from ._version import __version__

    _override = provider.get_tracer(TRACER_NAME, __version__)


def _tracer() -> Any:
    """The tracer to use, or ``None`` when no provider is configured (nothing to record)."""
    global _global
    if _override is not None:
        return _override
    if not AVAILABLE:
        return None
    # a plain read of the global: get_tracer_provider() costs a microsecond or two a call
    provider = getattr(trace, "_TRACER_PROVIDER", _UNKNOWN)
    if provider is None:
        if not _PROVIDER_FROM_ENV:
            return None  # none set yet
        provider = trace.get_tracer_provider()
    elif provider is _UNKNOWN:
        provider = trace.get_tracer_provider()
    if provider is _global[0]:
        return _global[1]
    if isinstance(provider, trace.ProxyTracerProvider):
        return None
    from ._version import __version__

    _global = (provider, provider.get_tracer(TRACER_NAME, __version__))
    return _global[1]


@functools.lru_cache(maxsize=1024)
def tenant_hash(namespace: str) -> str:
    """The tenant as spans show it: the first 16 hex digits of the namespace's SHA-256."""
    return hashlib.sha256(namespace.encode("utf-8")).hexdigest()[:16]


class Span:
    """A recording semcache span, and what the code under it adds (embedding time, why a
    semantic candidate was refused)."""

    __slots__ = ("embed_seconds", "refusal", "span")

    def __init__(self, span: Any) -> None:
        self.span = span
        self.embed_seconds = 0.0
        self.refusal: tuple[str, float] | None = None

    def set(self, key: str, value: Any) -> None:
        """Set one attribute."""
        self.span.set_attribute(key, value)

    def tenant(self, namespaces: Sequence[str | None]) -> None:
        """``semcache.tenant``: the hash of the one namespace of these (none when mixed)."""
        distinct = set(namespaces)
        if len(distinct) == 1:
            (ns,) = distinct
            if ns is not None:
                self.set("semcache.tenant", tenant_hash(ns))

    def outcome(self, hit: Any) -> None:
        """One lookup's decision: the hit's tier, kind and similarity, or a miss and, when
        known, why the nearest semantic candidate was refused."""
        if hit is None:
            self.set("semcache.decision", "miss")
            if self.refusal is not None:
                self.set("semcache.refused_by", self.refusal[0])
                self.set("semcache.similarity", float(self.refusal[1]))
            return
        self.set("semcache.decision", "hit")
        self.set("semcache.tier", hit.tier)
        self.set("semcache.kind", hit.kind)
        self.set("semcache.similarity", float(hit.similarity))
        if hit.verifier_score is not None:
            self.set("semcache.verifier_score", float(hit.verifier_score))


_current: contextvars.ContextVar[Span | None] = contextvars.ContextVar("semcache_span", default=None)


def traced(
    name: str, record: Callable[[Span, Any, Any], None], *, found_only: bool = False
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Run a method (``self, first, ...``) in a span named ``name``; ``record(span, first,
    result)`` adds the attributes once it returned. Inside another semcache span it is
    part of that one. ``found_only``: a span only when the result is not ``None``."""

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            tracer = _tracer()
            if tracer is None or _current.get() is not None:
                return fn(*args, **kwargs)
            if found_only:
                t0 = time.time_ns()
                result = fn(*args, **kwargs)
                if result is not None:
                    span = tracer.start_span(name, start_time=t0)
                    if span.is_recording():
                        _record(record, Span(span), args[1], result)
                    span.end()
                return result
            with tracer.start_as_current_span(name) as span:
                if not span.is_recording():
                    return fn(*args, **kwargs)
                s = Span(span)
                token = _current.set(s)
                try:
                    result = fn(*args, **kwargs)
                finally:
                    _current.reset(token)
                _record(record, s, args[1], result)
                return result

        return run

    return wrap


def _record(record: Callable[[Span, Any, Any], None], s: Span, first: Any, result: Any) -> None:
    """Add a span's attributes; a failure to do so never fails the call it traces."""
    try:
        record(s, first, result)
    except Exception:  # noqa: BLE001 - tracing must not break a lookup or a store
        log.debug("could not record the attributes of a %s span", TRACER_NAME, exc_info=True)


def embedded(seconds: float) -> None:
    """Add an embedding call's time to the current semcache span (``semcache.embedding_ms``)."""
    s = _current.get()
    if s is not None:
        s.embed_seconds += seconds
        s.set("semcache.embedding_ms", round(s.embed_seconds * 1e3, 3))


def refused(reason: str, similarity: float) -> None:
    """Note why the current lookup's semantic candidate was refused (``guard``,
    ``verifier``, ``verifier_error``, ``threshold``); written if the lookup misses."""
    s = _current.get()
    if s is not None:
        s.refusal = (reason, similarity)


# -- the recorders of the read and write paths -----------------------------------------
def record_lookup(s: Span, request: Any, hit: Any) -> None:
    """The attributes of one lookup."""
    s.tenant([request.namespace])
    s.outcome(hit)


def record_lookup_many(s: Span, requests: Sequence[Any], outcomes: Sequence[Any]) -> None:
    """The attributes of a batch of lookups (one lookup's own when it holds one)."""
    s.set("semcache.batch_size", len(requests))
    s.tenant([r.namespace for r in requests])
    hits = sum(1 for o in outcomes if o.hit is not None)
    errors = sum(1 for o in outcomes if o.error is not None)
    s.set("semcache.hits", hits)
    s.set("semcache.misses", len(outcomes) - hits - errors)
    if errors:
        s.set("semcache.errors", errors)
    if len(outcomes) == 1 and outcomes[0].error is None:
        s.outcome(outcomes[0].hit)


def record_store(s: Span, request: Any, entry: Any) -> None:
    """The attributes of one store."""
    s.tenant([request.namespace])
    s.set("semcache.durable", bool(entry.durable))


def record_store_many(s: Span, items: Any, entries: Sequence[Any]) -> None:
    """The attributes of a batch of stores."""
    s.set("semcache.batch_size", len(entries))
    s.tenant([e.namespace for e in entries])
    s.set("semcache.durable", all(e.durable for e in entries))


# -- HTTP: the proxy's upstream calls and the sidecar's server spans ---------------------
def inject(headers: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``headers`` with the current trace context (W3C ``traceparent``)."""
    out = dict(headers)
    if AVAILABLE:
        propagate.inject(out)
    return out


class _Client:
    """An upstream call's span (``None`` inside when nothing records)."""

    __slots__ = ("span",)

    def __init__(self, span: Any) -> None:
        self.span = span

    def status(self, code: int) -> None:
        """``http.response.status_code``; a status of 400 or more is an error."""
        if self.span is None:
            return
        self.span.set_attribute("http.response.status_code", code)
        if code >= 400:
            self.span.set_attribute("error.type", str(code))
            self.span.set_status(trace.StatusCode.ERROR)

    def failed(self, exc: BaseException) -> None:
        """The call got no response."""
        if self.span is None:
            return
        self.span.set_attribute("error.type", type(exc).__qualname__)
        self.span.set_status(trace.StatusCode.ERROR, str(exc))


@contextlib.contextmanager
def client_span(method: str, base_url: Any, path: str) -> Iterator[_Client]:
    """An HTTP client span for a call of ``path`` under ``base_url`` (an ``httpx.URL``),
    current inside the block (so :func:`inject` sends its ``traceparent``), with the HTTP
    client semantic-convention attributes."""
    tracer = _tracer()
    if tracer is None:
        yield _Client(None)
        return
    with tracer.start_as_current_span(method, kind=trace.SpanKind.CLIENT) as span:
        if not span.is_recording():
            yield _Client(None)
            return
        url = base_url.join(path)
        port = url.port or (443 if url.scheme == "https" else 80)
        span.set_attribute("http.request.method", method)
        span.set_attribute("server.address", url.host)
        span.set_attribute("server.port", port)
        span.set_attribute("url.full", str(url.copy_with(username=None, password=None, query=None)))
        yield _Client(span)


def untraced(scope: Mapping[str, Any]) -> bool:
    """Whether an ASGI request gets no server span (the probes and ``/metrics``)."""
    return scope.get("path") in UNTRACED_PATHS


def fastapi_options() -> dict[str, Any]:
    """The ``FastAPI(...)`` keywords of a FastAPI with native telemetry (its own server
    spans): the same paths untraced. Empty for a FastAPI without it."""
    import inspect

    from fastapi import FastAPI

    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    return {"telemetry": {"exclude": untraced}}


class TracingMiddleware:
    """ASGI middleware: a server span per HTTP request, a child of the caller's W3C
    ``traceparent`` when it sent one, named ``{method} {route template}``.

    A FastAPI that makes server spans itself (its native telemetry, on once a global
    provider is set) keeps its own: this one then adds nothing. With no tracer provider
    configured no span is made, but the caller's trace context is still current, so the
    proxy's upstream call carries it on.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Handle one ASGI call."""
        if (
            not AVAILABLE
            or scope["type"] != "http"
            or untraced(scope)
            or getattr(scope.get("fastapi.telemetry"), "span", None) is not None
        ):
            await self.app(scope, receive, send)
            return
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ())}
        parent = propagate.extract(carrier)
        tracer = _tracer()
        if tracer is None:
            token = otel_context.attach(parent)
            try:
                await self.app(scope, receive, send)
            finally:
                otel_context.detach(token)
            return
        method = str(scope.get("method", ""))
        status = [0]

        async def send_wrapper(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        with tracer.start_as_current_span(method, context=parent, kind=trace.SpanKind.SERVER) as span:
            try:
                await self.app(scope, receive, send_wrapper)
            finally:
                if span.is_recording():
                    route = getattr(scope.get("route"), "path", None)
                    if route:
                        span.update_name(f"{method} {route}")
                        span.set_attribute("http.route", route)
                    span.set_attribute("http.request.method", method)
                    span.set_attribute("url.path", str(scope.get("path", "")))
                    span.set_attribute("url.scheme", str(scope.get("scheme", "http")))
                    if status[0]:
                        span.set_attribute("http.response.status_code", status[0])
                        if status[0] >= 500:
                            span.set_status(trace.StatusCode.ERROR)


# -- the sidecar's exporter --------------------------------------------------------------
def configure_from_env(environ: Mapping[str, str] | None = None) -> Any:
    """Install an SDK tracer provider with the OTLP/HTTP exporter as the global one, when
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) or ``OTEL_TRACES_EXPORTER``
    is set and no provider is set yet; return it (``None``: nothing was changed).

    ``service.name`` is ``OTEL_SERVICE_NAME``, else ``semcache``; the exporter reads
    the standard ``OTEL_EXPORTER_OTLP_*`` variables. ``OTEL_TRACES_EXPORTER`` may name
    ``otlp`` (the default), ``console`` or ``none``; ``OTEL_SDK_DISABLED=true`` turns it off.
    """
    env = os.environ if environ is None else environ
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not names and not endpoint:
        return None
    if "none" in names or env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if not AVAILABLE:
        log.warning("OTEL_* is set but OpenTelemetry is not installed: pip install 'semcache-llm[otel]'")
        return None
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return None  # the host set its own provider: it is used as it is
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        log.warning("OTEL_* is set but the OpenTelemetry SDK is not installed: pip install 'semcache-llm[otel]'")
        return None
    service = env.get("OTEL_SERVICE_NAME") or "semcache"
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    for name in names or ["otlp"]:
        exporter: Any
        if name == "console":
            exporter = ConsoleSpanExporter()
        elif name == "otlp":
            protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            if protocol and protocol != "http/protobuf":
                log.warning("OTLP protocol %r is not supported here: traces are sent over http/protobuf", protocol)
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            except ImportError:
                log.warning("the OTLP/HTTP exporter is not installed: pip install 'semcache-llm[otel]'")
                continue
            exporter = OTLPSpanExporter()
        else:
            log.warning("OTEL_TRACES_EXPORTER=%s is not supported (otlp, console, none)", name)
            continue
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider
