"""The OpenAI-compatible proxy: ``POST /v1/chat/completions`` answered from the cache or upstream.

Point the official ``openai`` client at the sidecar by changing only ``base_url``. A
request is reduced to a cache request exactly like the decorator does it (the last
user turn is matched; model, params, earlier turns and the tenant are scope), looked
up through the micro-batcher, and on a hit answered from the stored completion,
streamed or not, whichever way it was stored. On a miss the request goes to the
configured upstream; a successful, cacheable answer is stored (with the vector the
lookup already computed) before the caller sees its end. Upstream errors are passed
through with their status and nothing is stored.

Response headers: ``X-Semcache: hit|miss|bypass``, and on a hit ``X-Semcache-Kind``
(exact/semantic), ``X-Semcache-Similarity``, ``X-Semcache-Tier``,
``X-Semcache-Entry-Id``, ``X-Semcache-Age``.

Request headers: ``Cache-Control: no-cache`` skips the lookup, ``no-store`` skips the
store; ``X-Semcache-Tags: a,b`` and ``X-Semcache-TTL: seconds`` label what is stored.
The semcache token goes in ``Authorization: Bearer`` (the ``openai`` client's
``api_key``) or in ``X-Semcache-Token``, which leaves ``Authorization`` free to carry
the caller's own upstream key when the sidecar has none configured.

One upstream call for many (:mod:`semcache.readthrough`): concurrent identical misses
(same cache key and upstream credentials) make one upstream call, streamed or not;
with Redis, replicas do the same through a lock, re-checking the cache once the lock
is theirs. Streamed and unstreamed requests lead separate flights. A streamed
leader's client gets the upstream stream live; its followers get the leader's answer
replayed as a stream once the leader's stream has ended with ``[DONE]`` (assembled and
cut again like a cache hit, so ``stream_options.include_usage`` is the follower's
own), with ``X-Semcache-Shared: 1``. A follower never inherits a failure: a leader's
error status sends each follower upstream on its own, and a leader whose stream
broke off, or whose client went away, releases its followers to start over (one of
them leads the next call).

Audits (``Policy.audit_rate > 0``, :mod:`semcache.audit`): a sampled semantic hit is
answered from the cache at once, and the same request is sent upstream in the
background, unstreamed (a streamed request too), with the very headers a miss of this
caller would carry (its own key, or the sidecar's: never another caller's). The fresh
``choices[0].message.content`` is compared with the cached one and kept as a
``source="llm"`` label; the fresh answer is never stored.

This module is the route and the per-request flow (look up, lead or follow, store);
the rest of the proxy lives beside it: :mod:`.proxy_upstream` (upstream calls,
forwarded and passed-back headers, credentials), :mod:`.proxy_stream` (relaying,
leading and replaying streams), :mod:`.proxy_convert` (request options, hit headers,
stored values as completions, error bodies) and :mod:`.proxy_support` (what the
proxy needs from the app that mounts it).
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ..errors import InvalidInputError, SemcacheError
from ..keys import Request as CacheRequest
from ..keys import build_request
from ..openai_compat import answer_text, chunks_to_completion
from ..readthrough import (
    OWN_CALL,
    AsyncLead,
    AsyncReadThrough,
    OwnCall,
    async_redis_lock,
    cacheable,
    finished,
)
from ..singleflight import AsyncRedisLock, SingleFlight
from ..types import Selector
from . import proxy_stream
from .auth import Principal
from .models import ChatCompletion, ChatCompletionBody, ErrorBody, ModelList
from .proxy_convert import (
    CacheOptions,
    as_completion,
    completion_metadata,
    error_json,
    hit_headers,
    wants_usage,
)
from .proxy_stream import Save, Shared, replay
from .proxy_support import HostDep, PrincipalDep, ProxyHost
from .proxy_upstream import (
    Upstream,
    call_upstream,
    flight_key,
    get_upstream,
    pass_back,
    upstream_headers,
)

if TYPE_CHECKING:
    import numpy as np

__all__ = ["DOCUMENTED_MODELS", "Proxy", "proxy_router"]

#: Models the proxy's document refers to by name without a route returning them as such.
DOCUMENTED_MODELS = (ChatCompletion,)

log = logging.getLogger("semcache.server")


class Proxy:
    """The proxy's per-app state: the flight table, the optional cross-replica lock, the read-through."""

    def __init__(self, sc: ProxyHost) -> None:
        self.sc = sc
        self.flights = SingleFlight()
        timeout = sc.config.upstream_timeout_seconds
        self.lock: AsyncRedisLock | None = async_redis_lock(
            sc.cache, timeout_seconds=min(timeout, 120.0)
        )
        # a follower waits out a slow leader (the upstream timeout bounds each of its
        # reads), then asks upstream itself
        self.readthrough: AsyncReadThrough[Shared] = AsyncReadThrough(
            self.flights, lock=lambda: self.lock, wait_seconds=2 * timeout, name="proxy"
        )

    # -- storing ---------------------------------------------------------------
    async def _store(
        self,
        req: CacheRequest,
        completion: dict[str, Any],
        embedding: np.ndarray | None,
        opts: CacheOptions,
        model: str,
    ) -> None:
        try:
            await self.sc.cache.store(
                req,
                completion,
                ttl_seconds=opts.ttl,
                tags=opts.tags,
                metadata=completion_metadata(completion, model, self.sc.config.prices),
                embedding=embedding,
            )
        except (SemcacheError, ValueError) as exc:  # the caller still gets its answer
            log.warning("could not store a completion: %s", exc)

    def _saver(
        self,
        req: CacheRequest,
        embedding: np.ndarray | None,
        opts: CacheOptions,
        model: str,
    ) -> Save | None:
        """What stores a streamed answer to ``req``, or ``None`` when it must not be stored."""
        if not opts.store:
            return None

        async def save(completion: dict[str, Any]) -> None:
            await self._store(req, completion, embedding, opts, model)

        return save

    async def _stored(self, req: CacheRequest) -> Upstream | None:
        """What another replica stored for this exact request meanwhile, as an upstream answer."""
        entry = await self.sc.cache.get_entry(req.key)
        if entry is None or entry.scope != req.scope:
            return None
        completion = as_completion(
            entry.value, entry.metadata, req.model or "", req.key, entry.created_at
        )
        if completion is None:
            return None
        return Upstream(
            200, json.dumps(completion).encode("utf-8"), {"content-type": "application/json"}
        )

    # -- the route -------------------------------------------------------------
    async def handle(
        self, request: Request, body: ChatCompletionBody, principal: Principal
    ) -> Response:
        """Answer one chat completion request."""
        sc = self.sc
        opts = CacheOptions(request)
        messages = body.message_dicts()
        payload = body.model_dump(exclude_unset=True)
        payload["model"] = body.model
        payload["messages"] = messages
        stream = bool(payload.get("stream"))
        params = {k: v for k, v in payload.items() if k not in ("model", "messages")}
        try:
            req = build_request(
                messages=messages, model=body.model, params=params, namespace=principal.tenant
            )
        except InvalidInputError as exc:
            if sc.upstream is None:
                # cache-only: a request the cache cannot key is never in it, so it is a miss
                # (nothing else could answer); the message says why it cannot be keyed
                return JSONResponse(
                    error_json(
                        f"cache miss and no upstream is configured: the request cannot be "
                        f"cached ({exc})",
                        "cache_miss",
                        404,
                    ),
                    status_code=404,
                    headers={"x-semcache": "bypass"},
                )
            # a valid OpenAI request the cache cannot key (no user turn, an image-only or
            # blank last turn, a very long model name): the upstream still answers it
            return await self._bypass(request, payload, principal, opts, stream)

        embedding = None
        if opts.lookup:
            t0 = time.perf_counter()
            result = await sc.batcher.lookup(req)
            embedding = result.embedding
            hit = result.hit
            sc.metrics.observe_lookup(
                "/v1/chat/completions", hit.kind if hit else "miss", time.perf_counter() - t0
            )
            if hit is not None:
                completion = as_completion(
                    hit.value, hit.entry.metadata, body.model, hit.key, hit.entry.created_at
                )
                if completion is not None:
                    self._audit(request, principal, payload, req, hit, completion)
                    if stream:
                        return replay(completion, hit_headers(hit), wants_usage(payload))
                    return JSONResponse(completion, headers=hit_headers(hit))
        marker = {"x-semcache": "miss" if opts.lookup else "bypass"}
        if sc.upstream is None:
            return JSONResponse(
                error_json(
                    "cache miss and no upstream is configured (set upstream_url)", "cache_miss", 404
                ),
                status_code=404,
                headers=marker,
            )
        headers = upstream_headers(request, principal, sc.config.upstream_api_key)
        include_usage = wants_usage(payload)

        async def lead(duty: AsyncLead[Shared]) -> Response:
            if stream:
                save = self._saver(req, embedding, opts, payload["model"])
                return await proxy_stream.lead(sc, duty, payload, headers, marker, save)
            up = await self._lead_plain(duty, payload, headers, req, embedding, opts)
            return Response(up.body, status_code=up.status, headers={**up.headers, **marker})

        async def follow(shared: Shared) -> Response | OwnCall:
            return self._follow(shared, stream, include_usage, body.model, req.key, marker)

        # streamed and unstreamed requests lead separate flights: each gets its own form
        # from the upstream (a plain answer always has usage, a stream only when asked)
        flight = flight_key(req.key, headers) + (":stream" if stream else "")
        return await self.readthrough.run(
            flight,
            lead=lead,
            follow=follow,
            recheck=lambda: self._stored(req),
            lock_key=req.key,
            single_flight=opts.lookup,
            use_lock=opts.lookup,
        )

    # -- audits ----------------------------------------------------------------
    def _audit(
        self,
        request: Request,
        principal: Principal,
        payload: dict[str, Any],
        req: CacheRequest,
        hit: Any,
        completion: dict[str, Any],
    ) -> None:
        """Maybe ask upstream again in the background (``Policy.audit_rate``); never raises."""
        sc = self.sc
        audits = getattr(sc.cache, "audits", None)
        if sc.upstream is None or audits is None:
            return
        try:
            if not audits.wants(hit):
                return
            # the caller's own credentials, exactly as its miss would send them
            headers = upstream_headers(request, principal, sc.config.upstream_api_key)
            headers["accept"] = "application/json"
            body = {k: v for k, v in payload.items() if k not in ("stream", "stream_options")}
            cached = answer_text(completion)
            audits.submit_async(hit, req, lambda: self._fresh(body, headers), cached)
        except Exception as exc:  # noqa: BLE001 - the caller's answer comes first
            log.warning("could not start an audit: %s", exc)

    async def _fresh(self, body: dict[str, Any], headers: dict[str, str]) -> str:
        """One unstreamed upstream call for an audit: the text of its answer (never stored)."""
        up = await call_upstream(self.sc, body, headers)
        if up.status != 200:
            raise RuntimeError(f"the upstream answered {up.status}")
        completion = json.loads(up.body)
        if not isinstance(completion, dict) or not cacheable(completion, stream=False, name="proxy audit"):
            raise ValueError("the upstream's answer is not one that would be cached")
        return answer_text(completion)

    def _follow(
        self,
        shared: Shared,
        stream: bool,
        include_usage: bool,
        model: str,
        key: str,
        marker: dict[str, str],
    ) -> Response | OwnCall:
        """A follower's answer from its leader's, or :data:`OWN_CALL` to ask upstream itself."""
        headers = {**marker, "x-semcache-shared": "1"}
        if isinstance(shared, Upstream):
            if not 200 <= shared.status < 300:
                # a leader's failure (timeout, rate limit, upstream hiccup) is its own: a
                # follower asks upstream itself rather than inherit someone else's error
                return OWN_CALL
            if not stream:
                return Response(
                    shared.body, status_code=shared.status, headers={**shared.headers, **headers}
                )
            try:
                completion = json.loads(shared.body)
            except ValueError:
                return OWN_CALL
            if not isinstance(completion, dict):
                return OWN_CALL
            if as_completion(completion, {}, model, key, 0) is None:
                return OWN_CALL
            return replay(completion, headers, include_usage)
        try:
            completion = chunks_to_completion(list(shared.chunks))
        except SemcacheError:
            return OWN_CALL  # chunks that cannot be assembled: replay nothing half-right
        if not stream:
            return JSONResponse(completion, headers=headers)
        return replay(completion, {**pass_back(shared.headers), **headers}, include_usage)

    async def _lead_plain(
        self,
        duty: AsyncLead[Shared],
        payload: dict[str, Any],
        headers: dict[str, str],
        req: CacheRequest,
        embedding: np.ndarray | None,
        opts: CacheOptions,
    ) -> Upstream:
        """Ask upstream, store a good answer, and share the answer (whatever it is) with the followers."""
        up: Upstream | None = None
        try:
            up = await call_upstream(self.sc, payload, headers)
            if up.status == 200 and opts.store:
                try:
                    completion = json.loads(up.body)
                except ValueError:
                    completion = None
                if (
                    isinstance(completion, dict)
                    and finished(completion)
                    and cacheable(completion, stream=False, name="proxy")
                ):
                    await self._store(req, completion, embedding, opts, payload["model"])
            return up
        finally:
            await duty.finish(up)

    async def _bypass(
        self,
        request: Request,
        payload: dict[str, Any],
        principal: Principal,
        opts: CacheOptions,
        stream: bool,
    ) -> Response:
        """Forward a request upstream untouched by the cache: no lookup, no flight, no store."""
        opts.lookup = opts.store = False
        marker = {"x-semcache": "bypass"}
        headers = upstream_headers(request, principal, self.sc.config.upstream_api_key)
        if stream:
            return await proxy_stream.relay(self.sc, payload, headers, marker, save=None, duty=None)
        up = await call_upstream(self.sc, payload, headers)
        return Response(up.body, status_code=up.status, headers={**up.headers, **marker})


class EventStreamResponse(Response):
    """The media type of a streamed answer (only what the OpenAPI document shows first)."""

    media_type = "text/event-stream"


#: Statuses an upstream answers that are passed through unchanged (the body as it wrote it).
_PASSED_THROUGH: dict[int | str, str] = {
    400: "The upstream rejected the request (passed through).",
    401: "Missing or invalid token, or (passed through) the upstream rejected the key.",
    403: "The token may not do this, or (passed through) the upstream refused.",
    404: "A miss with no upstream configured (cache-only mode), or (passed through) an "
    "upstream 404 (an unknown model, say).",
    413: "The request body is too large.",
    422: "Malformed JSON or invalid fields, or (passed through) the upstream's 422.",
    429: "The upstream's rate limit (passed through, with its `retry-after` and "
    "`x-ratelimit-*` headers).",
    500: "The upstream failed (passed through).",
    502: "The upstream is unreachable (or, passed through, its own 502).",
    503: "A tier is unavailable, or (passed through) the upstream is.",
    504: "The upstream timed out (or, passed through, its own 504).",
    "4XX": "Another upstream client error, passed through.",
    "5XX": "Another upstream server error, passed through.",
}
_HIT_HEADERS: dict[str, Any] = {
    "X-Semcache": {
        "description": "`hit` (from the cache), `miss` (from the upstream) or `bypass`.",
        "schema": {"type": "string", "enum": ["hit", "miss", "bypass"]},
    },
    "X-Semcache-Kind": {
        "description": "On a hit: `exact` or `semantic`.",
        "schema": {"type": "string", "enum": ["exact", "semantic"]},
    },
    "X-Semcache-Similarity": {"description": "On a hit: the similarity.", "schema": {"type": "string"}},
    "X-Semcache-Tier": {"description": "On a hit: the tier.", "schema": {"type": "string"}},
    "X-Semcache-Entry-Id": {"description": "On a hit: the entry.", "schema": {"type": "string"}},
    "X-Semcache-Age": {"description": "On a hit: seconds since stored.", "schema": {"type": "string"}},
}
_SSE_DESCRIPTION = (
    "Server-sent events: `data: {chat.completion.chunk}` lines, each followed by a blank "
    "line, and `data: [DONE]` last."
)


def _chat_responses() -> dict[int | str, dict[str, Any]]:
    out: dict[int | str, dict[str, Any]] = {
        200: {
            "description": (
                "With `stream: true`, server-sent events (`text/event-stream`); otherwise a "
                "`chat.completion` (`application/json`). The event stream is listed first: "
                "a client that reads only one of them reads the body as text, which is right "
                "for both."
            ),
            "headers": _HIT_HEADERS,
            "content": {
                "text/event-stream": {
                    # the whole stream (any: read as text); each event, in itemSchema
                    "schema": {"description": _SSE_DESCRIPTION},
                    "itemSchema": {
                        "type": "object",
                        "description": "One event: `data` is a `chat.completion.chunk` as JSON, or `[DONE]`.",
                        "properties": {
                            "data": {"type": "string"},
                            "event": {"type": "string"},
                            "id": {"type": "string"},
                            "retry": {"type": "integer"},
                        },
                        "required": ["data"],
                    },
                },
                "application/json": {"schema": {"$ref": "#/components/schemas/ChatCompletion"}},
            },
        }
    }
    for code, words in _PASSED_THROUGH.items():
        # named in full: the route's own media type (the event stream) is not the errors'
        out[code] = {
            "description": words,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
        }
    return out


def proxy_router() -> APIRouter:
    """The router with ``POST /v1/chat/completions`` and ``GET /v1/models``."""
    router = APIRouter()

    @router.post(
        "/v1/chat/completions",
        tags=["openai"],
        operation_id="chatCompletions",
        response_class=EventStreamResponse,
        responses=_chat_responses(),
    )
    async def chat_completions(
        body: ChatCompletionBody, request: Request, sc: HostDep, principal: PrincipalDep
    ) -> Response:
        """OpenAI-compatible chat completions: answered from the cache, or forwarded upstream and stored."""
        return await sc.proxy.handle(request, body, principal)  # type: ignore[no-any-return]

    @router.get(
        "/v1/models",
        tags=["openai"],
        operation_id="listModels",
        response_model=ModelList,
        responses={
            code: {"model": ErrorBody, "description": _PASSED_THROUGH[code]}
            for code in (401, 403, 404, 429, 500, 502, 503, 504, "4XX", "5XX")
        },
    )
    async def list_models(request: Request, sc: HostDep, principal: PrincipalDep) -> Response:
        """The models: the upstream's list (forwarded, with the same credentials as a chat
        call), or, cache-only, the models of the newest entries (the tenant's own for a
        tenant token)."""
        if sc.upstream is not None:
            headers = upstream_headers(request, principal, sc.config.upstream_api_key)
            up = await get_upstream(sc, "models", headers)
            return Response(up.body, status_code=up.status, headers=up.headers)
        models = await _cached_models(sc, principal)
        data = [{"id": m, "object": "model", "owned_by": "semcache"} for m in models]
        return JSONResponse({"object": "list", "data": data})

    return router


#: How many of the newest entries the cache-only ``/v1/models`` reads.
MODELS_SCAN = 1000


async def _cached_models(sc: ProxyHost, principal: Principal) -> list[str]:
    """The distinct models of the newest :data:`MODELS_SCAN` entries, in order of first sight."""
    sel = Selector(namespace=principal.tenant) if principal.tenant is not None else None
    seen: dict[str, None] = {}
    list_entries: Any = getattr(sc.cache, "list_entries", None)
    if list_entries is None:
        return []
    page = 500
    for offset in range(0, MODELS_SCAN, page):
        try:
            entries = await list_entries(sel, limit=page, offset=offset)
        except InvalidInputError:  # L1 only: nothing to list
            break
        for e in entries:
            if e.model:
                seen.setdefault(e.model, None)
        if len(entries) < page:
            break
    return list(seen)
