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
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..config import UNSET
from ..errors import BackendError, InvalidInputError, SemcacheError
from ..keys import Request as CacheRequest
from ..keys import build_request
from ..openai_compat import (
    FORMAT_CHAT_CHUNK,
    FORMAT_CHAT_COMPLETION,
    FORMAT_KEY,
    STREAM_KEY,
    chunks_to_completion,
    completion_to_chunks,
    model_of,
    uncacheable_reason,
    usage_of,
)
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
from ..streaming import AsyncRecordingStream
from ..types import Hit
from .auth import Principal
from .models import ChatCompletionBody, ErrorBody
from .proxy_support import HostDep, PrincipalDep, ProxyHost

if TYPE_CHECKING:
    import numpy as np

__all__ = ["Proxy", "proxy_router"]

log = logging.getLogger("semcache.server")

#: Upstream response headers worth handing back to the caller.
_PASS_BACK = (
    "content-type",
    "x-request-id",
    "retry-after",
    "openai-processing-ms",
    "openai-version",
)
_PASS_BACK_PREFIXES = ("x-ratelimit-",)
#: Caller headers forwarded upstream (besides the key).
_FORWARD = ("openai-organization", "openai-project", "openai-beta", "user-agent")
#: Upstream request headers that decide whose account answers (and whether it may).
_CREDENTIALS = ("authorization", "openai-organization", "openai-project")


def _flight_key(cache_key: str, headers: dict[str, str]) -> str:
    """The single-flight key: the cache key plus a digest of the upstream credentials.

    With callers' own keys, two identical requests made with different keys must not
    share one upstream call: a bad key's 401 (or a rate limit on one account) would
    otherwise be handed to a caller whose key is fine, and vice versa.
    """
    digest = hashlib.sha256()
    for name in _CREDENTIALS:
        digest.update(name.encode("ascii") + b"\0" + headers.get(name, "").encode("utf-8") + b"\0")
    return f"{cache_key}:{digest.hexdigest()[:32]}"


@dataclass(frozen=True, slots=True)
class _Upstream:
    """A finished upstream answer, shareable between single-flight followers."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Streamed:
    """A streamed upstream answer that ended with ``[DONE]``: its chunks, shareable."""

    chunks: tuple[dict[str, Any], ...]
    headers: dict[str, str] = field(default_factory=dict)


#: What a leader shares with its followers.
_Shared = _Upstream | _Streamed


class _Options:
    """Per-request cache controls from the request headers."""

    def __init__(self, request: Request) -> None:
        cc = {d.strip().lower() for d in request.headers.get("cache-control", "").split(",")}
        self.lookup = "no-cache" not in cc
        self.store = "no-store" not in cc
        tags = request.headers.get("x-semcache-tags", "")
        self.tags = tuple(t.strip() for t in tags.split(",") if t.strip())
        raw_ttl = request.headers.get("x-semcache-ttl")
        self.ttl: Any = UNSET
        if raw_ttl is not None:
            try:
                ttl = float(raw_ttl)
            except ValueError:
                raise InvalidInputError("X-Semcache-TTL must be a number of seconds") from None
            if not math.isfinite(ttl) or ttl <= 0 or ttl > 100 * 365 * 24 * 3600:
                raise InvalidInputError(
                    "X-Semcache-TTL must be a positive number of seconds (at most 100 years)"
                )
            self.ttl = ttl


def _hit_headers(hit: Hit) -> dict[str, str]:
    return {
        "x-semcache": "hit",
        "x-semcache-kind": hit.kind,
        "x-semcache-similarity": f"{hit.similarity:.4f}",
        "x-semcache-tier": hit.tier,
        "x-semcache-entry-id": hit.key,
        "x-semcache-age": f"{hit.age_seconds:.1f}",
    }


def _as_completion(
    value: Any, metadata: dict[str, Any], model: str, key: str, created: float
) -> dict[str, Any] | None:
    """The stored value as a ``chat.completion`` dict, or ``None`` when it cannot be one."""
    fmt = metadata.get(FORMAT_KEY)
    if isinstance(value, list) and (metadata.get(STREAM_KEY) or fmt == FORMAT_CHAT_CHUNK):
        try:
            return chunks_to_completion(value)
        except SemcacheError:
            return None
    if isinstance(value, dict) and isinstance(value.get("choices"), list) and value["choices"]:
        return value
    if isinstance(value, str) and value:
        # a plain answer stored through the JSON API under the same scope
        return {
            "id": f"chatcmpl-semcache-{key[:16]}",
            "object": "chat.completion",
            "created": int(created),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": value},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
        }
    return None


def _wants_usage(payload: dict[str, Any]) -> bool:
    """Whether a streamed request asked for the trailing usage chunk (``stream_options``)."""
    options = payload.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _sse(chunk: Any) -> bytes:
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode("utf-8") + b"\n\n"


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
        self.readthrough: AsyncReadThrough[_Shared] = AsyncReadThrough(
            self.flights, lock=lambda: self.lock, wait_seconds=2 * timeout, name="proxy"
        )

    # -- upstream --------------------------------------------------------------
    def _upstream_headers(self, request: Request, principal: Principal) -> dict[str, str]:
        headers = {
            "content-type": "application/json",
            "accept": request.headers.get("accept", "application/json"),
        }
        for name in _FORWARD:
            if name in request.headers:
                headers[name] = request.headers[name]
        key = self.sc.config.upstream_api_key
        if key:
            headers["authorization"] = f"Bearer {key}"
        elif not principal.token_in_authorization and "authorization" in request.headers:
            # the semcache token came another way (or auth is off): this is the caller's own key
            headers["authorization"] = request.headers["authorization"]
        return headers

    @staticmethod
    def _pass_back(headers: Any) -> dict[str, str]:
        return {
            k: v
            for k, v in headers.items()
            if k.lower() in _PASS_BACK or k.lower().startswith(_PASS_BACK_PREFIXES)
        }

    async def _call_upstream(self, payload: dict[str, Any], headers: dict[str, str]) -> _Upstream:
        import httpx

        assert self.sc.upstream is not None
        try:
            resp = await self.sc.upstream.post("chat/completions", json=payload, headers=headers)
        except httpx.TimeoutException:
            self.sc.metrics.upstream_requests.labels("0").inc()
            return _Upstream(504, _error_bytes("the upstream timed out", "upstream_timeout", 504))
        except httpx.HTTPError as exc:
            self.sc.metrics.upstream_requests.labels("0").inc()
            log.warning("upstream unreachable: %s", exc)
            return _Upstream(
                502, _error_bytes("the upstream is unreachable", "upstream_unreachable", 502)
            )
        self.sc.metrics.upstream_requests.labels(str(resp.status_code)).inc()
        return _Upstream(resp.status_code, resp.content, self._pass_back(resp.headers))

    # -- storing ---------------------------------------------------------------
    def _metadata(self, completion: dict[str, Any], request_model: str) -> dict[str, Any]:
        meta: dict[str, Any] = {FORMAT_KEY: FORMAT_CHAT_COMPLETION, "source": "proxy"}
        usage = usage_of(completion)
        if usage:
            meta["usage"] = usage
            price = self.sc.config.prices.get(request_model) or self.sc.config.prices.get(
                model_of(completion) or ""
            )
            if price is not None:
                meta["cost"] = (
                    usage.get("prompt_tokens", 0) * price[0]
                    + usage.get("completion_tokens", 0) * price[1]
                ) / 1e6
        return meta

    async def _store(
        self,
        req: CacheRequest,
        completion: dict[str, Any],
        embedding: np.ndarray | None,
        opts: _Options,
        model: str,
    ) -> None:
        try:
            await self.sc.cache.store(
                req,
                completion,
                ttl_seconds=opts.ttl,
                tags=opts.tags,
                metadata=self._metadata(completion, model),
                embedding=embedding,
            )
        except (SemcacheError, ValueError) as exc:  # the caller still gets its answer
            log.warning("could not store a completion: %s", exc)

    async def _stored(self, req: CacheRequest) -> _Upstream | None:
        """What another replica stored for this exact request meanwhile, as an upstream answer."""
        entry = await self.sc.cache.get_entry(req.key)
        if entry is None or entry.scope != req.scope:
            return None
        completion = _as_completion(
            entry.value, entry.metadata, req.model or "", req.key, entry.created_at
        )
        if completion is None:
            return None
        return _Upstream(
            200, json.dumps(completion).encode("utf-8"), {"content-type": "application/json"}
        )

    # -- the route -------------------------------------------------------------
    async def handle(
        self, request: Request, body: ChatCompletionBody, principal: Principal
    ) -> Response:
        """Answer one chat completion request."""
        sc = self.sc
        opts = _Options(request)
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
        except InvalidInputError:
            if sc.upstream is None:
                raise  # cache-only: nothing else could answer, so say why it cannot be keyed
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
                completion = _as_completion(
                    hit.value, hit.entry.metadata, body.model, hit.key, hit.entry.created_at
                )
                if completion is not None:
                    if stream:
                        return self._replay(completion, _hit_headers(hit), _wants_usage(payload))
                    return JSONResponse(completion, headers=_hit_headers(hit))
        marker = {"x-semcache": "miss" if opts.lookup else "bypass"}
        if sc.upstream is None:
            return JSONResponse(
                _error_json(
                    "cache miss and no upstream is configured (set upstream_url)", "cache_miss", 404
                ),
                status_code=404,
                headers=marker,
            )
        headers = self._upstream_headers(request, principal)
        include_usage = _wants_usage(payload)

        async def lead(duty: AsyncLead[_Shared]) -> Response:
            if stream:
                return await self._lead_stream(duty, payload, headers, req, embedding, opts, marker)
            up = await self._lead_plain(duty, payload, headers, req, embedding, opts)
            return Response(up.body, status_code=up.status, headers={**up.headers, **marker})

        async def follow(shared: _Shared) -> Response | OwnCall:
            return self._follow(shared, stream, include_usage, body.model, req.key, marker)

        # streamed and unstreamed requests lead separate flights: each gets its own form
        # from the upstream (a plain answer always has usage, a stream only when asked)
        flight = _flight_key(req.key, headers) + (":stream" if stream else "")
        return await self.readthrough.run(
            flight,
            lead=lead,
            follow=follow,
            recheck=lambda: self._stored(req),
            lock_key=req.key,
            single_flight=opts.lookup,
            use_lock=opts.lookup,
        )

    def _follow(
        self,
        shared: _Shared,
        stream: bool,
        include_usage: bool,
        model: str,
        key: str,
        marker: dict[str, str],
    ) -> Response | OwnCall:
        """A follower's answer from its leader's, or :data:`OWN_CALL` to ask upstream itself."""
        headers = {**marker, "x-semcache-shared": "1"}
        if isinstance(shared, _Upstream):
            if not 200 <= shared.status < 300:
                # a leader's failure (timeout, rate limit, upstream hiccup) is its own: a
                # follower asks upstream itself rather than inherit someone else's error
                return OWN_CALL
            if not stream:
                return Response(shared.body, status_code=shared.status, headers={**shared.headers, **headers})
            try:
                completion = json.loads(shared.body)
            except ValueError:
                return OWN_CALL
            if not isinstance(completion, dict) or _as_completion(completion, {}, model, key, 0) is None:
                return OWN_CALL
            return self._replay(completion, headers, include_usage)
        try:
            completion = chunks_to_completion(list(shared.chunks))
        except SemcacheError:
            return OWN_CALL  # chunks that cannot be assembled: replay nothing half-right
        if not stream:
            return JSONResponse(completion, headers=headers)
        return self._replay(completion, {**self._pass_back(shared.headers), **headers}, include_usage)

    async def _lead_plain(
        self,
        duty: AsyncLead[_Shared],
        payload: dict[str, Any],
        headers: dict[str, str],
        req: CacheRequest,
        embedding: np.ndarray | None,
        opts: _Options,
    ) -> _Upstream:
        """Ask upstream, store a good answer, and share the answer (whatever it is) with the followers."""
        up: _Upstream | None = None
        try:
            up = await self._call_upstream(payload, headers)
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
        opts: _Options,
        stream: bool,
    ) -> Response:
        """Forward a request upstream untouched by the cache: no lookup, no flight, no store."""
        opts.lookup = opts.store = False
        marker = {"x-semcache": "bypass"}
        headers = self._upstream_headers(request, principal)
        if stream:
            return await self._stream(payload, headers, None, None, opts, marker, None)
        up = await self._call_upstream(payload, headers)
        return Response(up.body, status_code=up.status, headers={**up.headers, **marker})

    def _replay(
        self, completion: dict[str, Any], headers: dict[str, str], include_usage: bool
    ) -> StreamingResponse:
        async def events() -> AsyncIterator[bytes]:
            for chunk in completion_to_chunks(completion, include_usage=include_usage):
                yield _sse(chunk)
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    async def _lead_stream(
        self,
        duty: AsyncLead[_Shared],
        payload: dict[str, Any],
        headers: dict[str, str],
        req: CacheRequest,
        embedding: np.ndarray | None,
        opts: _Options,
        marker: dict[str, str],
    ) -> Response:
        """Lead a streamed flight: the stream settles ``duty`` when it ends (or breaks off)."""
        settled = False
        try:
            response = await self._stream(payload, headers, req, embedding, opts, marker, duty)
            settled = True
            return response
        finally:
            if not settled:
                duty.drop()  # cancelled before the stream started: followers start over

    async def _stream(
        self,
        payload: dict[str, Any],
        headers: dict[str, str],
        req: CacheRequest | None,
        embedding: np.ndarray | None,
        opts: _Options,
        marker: dict[str, str],
        duty: AsyncLead[_Shared] | None,
    ) -> Response:
        import httpx

        sc = self.sc
        assert sc.upstream is not None

        async def failed(up: _Upstream) -> Response:
            if duty is not None:
                await duty.finish(up)  # the followers ask upstream themselves
            return Response(up.body, status_code=up.status, headers={**up.headers, **marker})

        try:
            upstream_req = sc.upstream.build_request(
                "POST", "chat/completions", json=payload, headers=headers
            )
            resp = await sc.upstream.send(upstream_req, stream=True)
        except httpx.TimeoutException:
            sc.metrics.upstream_requests.labels("0").inc()
            return await failed(
                _Upstream(504, _error_bytes("the upstream timed out", "upstream_timeout", 504), _JSON)
            )
        except httpx.HTTPError as exc:
            sc.metrics.upstream_requests.labels("0").inc()
            log.warning("upstream unreachable: %s", exc)
            return await failed(
                _Upstream(
                    502,
                    _error_bytes("the upstream is unreachable", "upstream_unreachable", 502),
                    _JSON,
                )
            )
        sc.metrics.upstream_requests.labels(str(resp.status_code)).inc()
        if resp.status_code != 200:
            try:
                content = await resp.aread()
            finally:
                await resp.aclose()
            return await failed(_Upstream(resp.status_code, content, self._pass_back(resp.headers)))
        passed_back = self._pass_back(resp.headers)

        async def chunks() -> AsyncIterator[dict[str, Any]]:
            """The upstream's SSE events as chunk dicts; an unfinished stream is an error."""
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue  # comments, keep-alives, event names
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                try:
                    yield json.loads(data)
                except ValueError as exc:
                    raise _BrokenStream("the upstream sent an event that is not JSON") from exc
            raise _BrokenStream("the upstream stream ended without [DONE]")

        async def store(items: list[Any]) -> None:
            if req is None or not opts.store or not cacheable(items, stream=True, name="proxy"):
                return
            try:
                completion = chunks_to_completion(items)
            except SemcacheError as exc:  # chunks the check let through but cannot assemble
                log.warning("could not assemble a streamed answer (%s); not storing it", exc)
                return
            if not finished(completion):
                # [DONE] without a finish_reason: the upstream may have cut the answer short
                log.warning("a streamed answer ended without a finish_reason; not storing it")
                return
            await self._store(req, completion, embedding, opts, payload["model"])

        async def on_complete(items: list[Any]) -> None:
            try:
                await store(items)
            finally:
                if duty is not None:  # a whole stream is shared, stored or not
                    await duty.finish(_Streamed(tuple(items), passed_back))

        recording = AsyncRecordingStream(
            chunks(), on_complete=on_complete, on_abandon=None if duty is None else duty.drop
        )

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in recording:
                    yield _sse(chunk)
                yield b"data: [DONE]\n\n"
            except (_BrokenStream, httpx.HTTPError) as exc:
                # the status line is long gone: tell the client in-band, store nothing
                log.warning("upstream stream failed (%s); nothing stored", exc)
                yield _sse(
                    {
                        "error": {
                            "message": f"upstream stream failed: {exc}",
                            "type": "upstream_error",
                            "code": 502,
                        }
                    }
                )
            finally:
                if not recording.completed:
                    await recording.aclose()
                await resp.aclose()

        return StreamingResponse(
            body(),
            media_type="text/event-stream",
            headers={**passed_back, **marker, "content-type": "text/event-stream"},
        )


_JSON = {"content-type": "application/json"}


class _BrokenStream(Exception):
    """The upstream's stream broke off or sent garbage."""


def _error_json(message: str, type_: str, code: int) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "code": code}}


def _error_bytes(message: str, type_: str, code: int) -> bytes:
    return json.dumps(_error_json(message, type_, code)).encode("utf-8")


def proxy_router() -> APIRouter:
    """The router with ``POST /v1/chat/completions``."""
    router = APIRouter()

    @router.post(
        "/v1/chat/completions",
        tags=["openai"],
        responses={
            200: {
                "description": "A chat.completion (or, with stream=true, server-sent chunks).",
                "content": {"application/json": {}, "text/event-stream": {}},
            },
            401: {"model": ErrorBody},
            403: {"model": ErrorBody},
            404: {
                "model": ErrorBody,
                "description": "A miss with no upstream configured (cache-only mode).",
            },
            413: {"model": ErrorBody},
            422: {"model": ErrorBody},
        },
    )
    async def chat_completions(
        body: ChatCompletionBody, request: Request, sc: HostDep, principal: PrincipalDep
    ) -> Response:
        """OpenAI-compatible chat completions: answered from the cache, or forwarded upstream and stored."""
        return await sc.proxy.handle(request, body, principal)  # type: ignore[no-any-return]

    return router
