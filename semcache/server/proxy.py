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
from ..singleflight import AsyncRedisLock, SingleFlight
from ..streaming import AsyncRecordingStream
from ..types import Hit
from .auth import Principal
from .models import ChatCompletionBody, ErrorBody
from .sidecar import PrincipalDep, Sidecar, SidecarDep

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


def _cacheable(value: Any, *, stream: bool = False) -> bool:
    """Whether an upstream answer may be stored; an answer that breaks the check may not."""
    try:
        return uncacheable_reason(value, stream=stream) is None
    except Exception as exc:  # noqa: BLE001 - an odd upstream body must not fail the caller
        log.warning("could not check an upstream answer (%s); not storing it", exc)
        return False


def _finished(completion: dict[str, Any]) -> bool:
    """Whether every choice says why it stopped; one that does not may be cut short."""
    choices = completion.get("choices")
    return (
        isinstance(choices, list)
        and bool(choices)
        and all(isinstance(c, dict) and c.get("finish_reason") for c in choices)
    )


def _wants_usage(payload: dict[str, Any]) -> bool:
    """Whether a streamed request asked for the trailing usage chunk (``stream_options``)."""
    options = payload.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _sse(chunk: Any) -> bytes:
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode("utf-8") + b"\n\n"


class Proxy:
    """The proxy's per-app state: single-flight table and the optional cross-replica lock."""

    def __init__(self, sc: Sidecar) -> None:
        self.sc = sc
        self.flights = SingleFlight()
        self.lock: AsyncRedisLock | None = None
        redis_tier = next(
            (
                t
                for t in sc.cache.sync.tiers
                if getattr(t, "name", "") == "l2" and hasattr(t, "client")
            ),
            None,
        )
        if redis_tier is not None and sc.cache.config.redis is not None:
            self.lock = AsyncRedisLock(
                redis_tier.client,
                prefix=f"{sc.cache.config.redis.prefix}lock:",
                timeout_seconds=min(sc.config.upstream_timeout_seconds, 120.0),
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
            await self.sc.run(
                self.sc.cache.sync.store,
                req,
                completion,
                ttl_seconds=opts.ttl,
                tags=opts.tags,
                metadata=self._metadata(completion, model),
                embedding=embedding,
            )
        except (SemcacheError, ValueError) as exc:  # the caller still gets its answer
            log.warning("could not store a completion: %s", exc)

    async def _fetch_and_store(
        self,
        payload: dict[str, Any],
        headers: dict[str, str],
        req: CacheRequest,
        embedding: np.ndarray | None,
        opts: _Options,
    ) -> _Upstream:
        """Leader of a flight: ask upstream (under the cross-replica lock if any), store a good answer."""
        token: str | None = None
        if self.lock is not None and opts.lookup:
            try:
                token, found = await self.lock.acquire_or_wait(
                    req.key, poll=lambda: self._stored(req)
                )
            except BackendError:
                token, found = None, None  # Redis trouble: go on without the lock
            if found is not None:
                return found  # type: ignore[no-any-return]
        try:
            up = await self._call_upstream(payload, headers)
            if up.status == 200 and opts.store:
                try:
                    completion = json.loads(up.body)
                except ValueError:
                    completion = None
                if (
                    isinstance(completion, dict)
                    and _finished(completion)
                    and _cacheable(completion)
                ):
                    await self._store(req, completion, embedding, opts, payload["model"])
            return up
        finally:
            if token is not None and self.lock is not None:
                try:
                    await self.lock.release(req.key, token)
                except BackendError:
                    pass  # it expires on its own

    async def _stored(self, req: CacheRequest) -> _Upstream | None:
        """What another replica stored for this exact request meanwhile, as an upstream answer."""
        entry = await self.sc.run(self.sc.cache.sync.get_entry, req.key)
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
        if stream:
            return await self._stream(payload, headers, req, embedding, opts, marker)
        if opts.lookup:
            up, shared = await self.flights.do_async(
                _flight_key(req.key, headers),
                lambda: self._fetch_and_store(payload, headers, req, embedding, opts),
            )
            if shared and not 200 <= up.status < 300:
                # a leader's failure (timeout, rate limit, upstream hiccup) is its own:
                # a follower asks upstream itself rather than inherit someone else's error
                up = await self._fetch_and_store(payload, headers, req, embedding, opts)
                shared = False
            if shared:
                marker["x-semcache-shared"] = "1"
        else:
            up = await self._fetch_and_store(payload, headers, req, embedding, opts)
        return Response(up.body, status_code=up.status, headers={**up.headers, **marker})

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
            return await self._stream(payload, headers, None, None, opts, marker)
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

    async def _stream(
        self,
        payload: dict[str, Any],
        headers: dict[str, str],
        req: CacheRequest | None,
        embedding: np.ndarray | None,
        opts: _Options,
        marker: dict[str, str],
    ) -> Response:
        import httpx

        sc = self.sc
        assert sc.upstream is not None
        try:
            upstream_req = sc.upstream.build_request(
                "POST", "chat/completions", json=payload, headers=headers
            )
            resp = await sc.upstream.send(upstream_req, stream=True)
        except httpx.TimeoutException:
            sc.metrics.upstream_requests.labels("0").inc()
            return JSONResponse(
                _error_json("the upstream timed out", "upstream_timeout", 504), 504, headers=marker
            )
        except httpx.HTTPError as exc:
            sc.metrics.upstream_requests.labels("0").inc()
            log.warning("upstream unreachable: %s", exc)
            return JSONResponse(
                _error_json("the upstream is unreachable", "upstream_unreachable", 502),
                502,
                headers=marker,
            )
        sc.metrics.upstream_requests.labels(str(resp.status_code)).inc()
        if resp.status_code != 200:
            content = await resp.aread()
            await resp.aclose()
            return Response(
                content,
                status_code=resp.status_code,
                headers={**self._pass_back(resp.headers), **marker},
            )

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

        async def on_complete(items: list[Any]) -> None:
            if req is None or not opts.store or not _cacheable(items, stream=True):
                return
            try:
                completion = chunks_to_completion(items)
            except SemcacheError as exc:  # chunks the check let through but cannot assemble
                log.warning("could not assemble a streamed answer (%s); not storing it", exc)
                return
            if not _finished(completion):
                # [DONE] without a finish_reason: the upstream may have cut the answer short
                log.warning("a streamed answer ended without a finish_reason; not storing it")
                return
            await self._store(req, completion, embedding, opts, payload["model"])

        recording = AsyncRecordingStream(chunks(), on_complete=on_complete)

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
            headers={
                **self._pass_back(resp.headers),
                **marker,
                "content-type": "text/event-stream",
            },
        )


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
        body: ChatCompletionBody, request: Request, sc: SidecarDep, principal: PrincipalDep
    ) -> Response:
        """OpenAI-compatible chat completions: answered from the cache, or forwarded upstream and stored."""
        return await sc.proxy.handle(request, body, principal)  # type: ignore[no-any-return]

    return router
