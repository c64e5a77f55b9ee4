"""The sidecar: an ASGI app built by :func:`create_app` from a :class:`ServerConfig`.

No module-level state: every app owns its cache, batcher, metrics registry, token
table and upstream client, opened in the app's lifespan and closed with it. Blocking
work (SQL, Redis, embedding, FAISS) runs in worker threads; only an exact L1 hit is
answered on the event loop.

Routes (the OpenAPI document at ``/openapi.json`` has the details)::

    GET  /healthz  /readyz  /metrics
    POST /v1/lookup    POST /v1/explain    POST /v1/entries    GET /v1/entries
    GET  /v1/entries/{id}    DELETE /v1/entries/{id}
    POST /v1/invalidate    POST /v1/flush    POST /v1/feedback    GET /v1/stats
    POST /v1/index/rebuild    GET /v1/index/check
    POST /v1/chat/completions    GET /v1/models    (OpenAI-compatible proxy)

The document is made for client generators and for schemathesis: typed request and
response models, readable operation ids, every status documented, and the rules each
route enforces written in its schema (so a schema-valid body is never a 422).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Annotated, Any

from pydantic import BaseModel

from ..async_cache import AsyncSemanticCache
from ..config import UNSET
from ..errors import (
    BackendError,
    ConfigurationError,
    InvalidInputError,
    MissingDependencyError,
    SchemaVersionError,
    SemcacheError,
    UnknownEntryError,
)
from ..keys import Request as CacheRequest
from ..keys import build_request
from ..types import Selector
from .auth import AuthError, Principal
from .config import ServerConfig
from .models import (
    EntryList,
    EntryView,
    ErrorBody,
    ExplainRequest,
    ExplainResponse,
    FeedbackRequest,
    FeedbackResponse,
    FlushResponse,
    JSON_TEXT_SCHEMA,
    HealthResponse,
    IndexCheckResponse,
    IndexRebuildResponse,
    InvalidateRequest,
    InvalidateResponse,
    LookupRequest,
    LookupResponse,
    ReadyResponse,
    StatsResponse,
    StoreRequest,
    StoreResponse,
)

try:
    import httpx
    from fastapi import APIRouter, FastAPI, Path, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.openapi.utils import get_openapi
    from starlette.routing import Match
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise MissingDependencyError(getattr(exc, "name", None) or "fastapi", "server") from exc

from .sidecar import PrincipalDep, Sidecar, SidecarDep, error_response

__all__ = ["Sidecar", "create_app"]

log = logging.getLogger("semcache.server")

_ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "The cache refused the request.",
    401: "Missing or invalid token.",
    403: "The token may not do this (another tenant's namespace; an admin route).",
    404: "No such entry (for this token).",
    409: "The cache's configuration does not allow this.",
    413: "The request body is too large.",
    422: "Malformed JSON, invalid fields, or a body that breaks a rule of its schema.",
    503: "A tier the request needs is unavailable.",
}


def errors(*codes: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route for these error statuses (``ErrorBody`` each);
    ``descriptions`` (``e404="..."``) replace the default words."""
    return {
        code: {
            "model": ErrorBody,
            "description": descriptions.get(f"e{code}", _ERROR_DESCRIPTIONS[code]),
        }
        for code in codes
    }


#: A route that needs a token and uses the cache.
_CACHE_ERRORS = (400, 401, 403, 409, 503)
#: ... and takes a JSON body.
_BODY_ERRORS = (*_CACHE_ERRORS, 413, 422)
# The id of GET and DELETE /v1/entries/{entry_id}, and their documented 404.
_EntryId = Annotated[str, Path(min_length=1, max_length=256)]


class BodyLimitMiddleware:
    """Answer 413 for request bodies over ``max_bytes`` (declared or streamed), before any handler runs.

    Starlette's own ``max_body_size`` answers in ``text/plain``; this one answers in the
    same JSON error shape as every other error, which the ``openai`` client parses.
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Handle one ASGI call."""
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    await self._too_large(scope, receive, send)
                    return
        # buffer the body (every route reads it whole anyway) so that a chunked body
        # growing past the limit is refused too
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls wait for the disconnect, as Starlette expects

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Any, receive: Any, send: Any) -> None:
        resp = error_response(
            413, f"the request body is larger than {self.max_bytes} bytes", "request_too_large"
        )
        await resp(scope, receive, send)


def _hit_fields(hit: Any, include_value: bool) -> dict[str, Any]:
    from ..admin import value_fields

    out = {"hit": True, **hit.as_dict()}
    if include_value:
        out.update(value_fields(hit.value))
    return out


def _cache_request(
    body: LookupRequest | StoreRequest | InvalidateRequest | FeedbackRequest,
    namespace: str | None,
) -> CacheRequest:
    """The cache request for the prompt or messages and scope fields of ``body``."""
    return build_request(
        body.prompt,
        messages=body.message_dicts(),
        model=body.model,
        params=body.params,
        namespace=namespace,
    )


def _selector(sc: Sidecar, principal: Principal, body: InvalidateRequest) -> Selector:
    ns = principal.namespace(body.namespace)
    keys = list(body.keys)
    if body.entry_id is not None:
        keys.append(body.entry_id)
    if body.prompt is not None or body.messages is not None:
        keys.append(_cache_request(body, ns).key)
    return Selector(
        keys=tuple(dict.fromkeys(keys)),
        scope=body.scope,
        namespace=ns,
        model=body.model,
        tag=body.tag,
        older_than_seconds=body.older_than_seconds,
        prompt_pattern=body.prompt_pattern,
    )


def tier_state(status: Any) -> str:
    """A tier's health (``"ok"``, ``"down: …"``, ``"failed: …"``) as one word, its message dropped."""
    text = str(status)
    if text == "ok":
        return "ok"
    return "failed" if text.startswith("failed") else "down"


def readiness(health: Mapping[str, Any]) -> tuple[str, dict[str, str], list[str], str | None]:
    """Apply the readiness rule of ``/readyz`` to a cache's ``health()``.

    The durable tier is L3, or the lowest configured tier when there is no L3. When it
    is not ``ok`` the cache cannot serve durably: ``"down"`` (a 503). Another tier that
    is not ``ok`` leaves the cache ``"degraded"`` (still a 200).

    Returns:
        The status, each tier's state word, the tiers that are not ``ok``, and (for a
        503) a reason naming the durable tier and its state.
    """
    tiers = {name: tier_state(status) for name, status in health.items()}
    not_ok = [name for name, state in tiers.items() if state != "ok"]
    if not not_ok:
        return "ready", tiers, [], None
    durable = "l3" if "l3" in tiers else next(reversed(tiers))
    if tiers[durable] != "ok":
        return "down", tiers, not_ok, f"{durable} (the durable tier) is {tiers[durable]}"
    return "degraded", tiers, not_ok, None


def _api_router() -> APIRouter:
    router = APIRouter()

    @router.get("/healthz", response_model=HealthResponse, tags=["health"], operation_id="healthz")
    async def healthz() -> Any:
        """Liveness: the process answers."""
        return JSONResponse({"status": "ok"})

    @router.get(
        "/readyz",
        response_model=ReadyResponse,
        tags=["health"],
        operation_id="readyz",
        responses={
            503: {
                "model": ReadyResponse,
                "description": "Not ready: starting, or the durable tier (L3) is down or failed.",
            }
        },
    )
    async def readyz(sc: SidecarDep) -> Any:
        """Readiness: each tier's state, and whether the cache can serve durably.

        Each tier is ``ok``, ``down`` (unreachable: a server that does not answer) or
        ``failed`` (reachable but unusable: a corrupt SQLite file, say). The rule:

        - 503 ``starting`` until the cache is open;
        - 503 ``down`` when the durable tier — L3, or the lowest configured tier when
          there is no L3 — is not ``ok``: entries cannot be stored or found durably,
          so a load balancer should send traffic to a healthy replica; ``reason``
          names the tier and its state;
        - 200 ``degraded`` when another tier (L2, say) is not ``ok``: the cache still
          serves through the others; ``degraded`` lists those tiers;
        - 200 ``ready`` when every tier is ``ok``.

        Only the state word is returned, never a driver's message (it can name hosts,
        and this route needs no token); the sidecar logs the message when a tier's
        state changes.
        """
        if not sc.ready:
            return JSONResponse({"status": "starting", "tiers": {}}, status_code=503)
        try:
            health = await sc.cache.health()
        except SemcacheError as exc:  # the probe itself failed: report, do not guess
            log.warning("readiness probe failed: %s", type(exc).__name__)
            body: dict[str, Any] = {
                "status": "down",
                "tiers": {},
                "reason": f"the health probe failed ({type(exc).__name__})",
            }
            return JSONResponse(body, status_code=503)
        sc.note_tier_states(health)
        status, tiers, degraded, reason = readiness(health)
        stats = sc.cache.stats()
        index = stats.get("index")
        body = {
            "status": status,
            "tiers": tiers,
            "degraded": degraded,
            "index": {"vectors": index["entries"]} if isinstance(index, dict) else None,
            "embedder": stats.get("embedder"),
        }
        if reason is not None:
            body["reason"] = reason
        return JSONResponse(body, status_code=503 if status == "down" else 200)

    @router.get(
        "/metrics",
        tags=["health"],
        operation_id="metrics",
        response_class=Response,
        responses={
            200: {
                "description": "The Prometheus text exposition format.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    )
    async def metrics(sc: SidecarDep) -> Response:
        """Prometheus metrics (no token needed, like most scrape targets)."""
        from ..contrib.prometheus import CONTENT_TYPE_LATEST

        body = await sc.run(sc.metrics.render)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @router.post(
        "/v1/lookup",
        response_model=LookupResponse,
        tags=["cache"],
        operation_id="lookup",
        responses=errors(*_BODY_ERRORS),
    )
    async def lookup(body: LookupRequest, sc: SidecarDep, principal: PrincipalDep) -> Any:
        """Look a prompt up: exact first, then semantic within its scope (tenant included)."""
        req = _cache_request(body, principal.namespace(body.namespace))
        thr = UNSET if body.threshold is None else body.threshold
        t0 = time.perf_counter()
        result = await sc.batcher.lookup(req, threshold=thr, semantic=body.semantic)
        hit = result.hit
        sc.metrics.observe_lookup(
            "/v1/lookup", hit.kind if hit else "miss", time.perf_counter() - t0
        )
        if hit is None:
            return JSONResponse({"hit": False, "key": req.key})
        return JSONResponse({"key": req.key, **_hit_fields(hit, body.include_value)})

    @router.post(
        "/v1/explain",
        response_model=ExplainResponse,
        tags=["cache"],
        operation_id="explain",
        responses=errors(*_BODY_ERRORS),
    )
    async def explain(body: ExplainRequest, sc: SidecarDep, principal: PrincipalDep) -> Any:
        """Explain a lookup: the exact key, the nearest candidates with similarity and checks, the decision."""
        ns = principal.namespace(body.namespace)
        thr = UNSET if body.threshold is None else body.threshold
        out = await sc.cache.explain(
            body.prompt,
            messages=body.message_dicts(),
            model=body.model,
            params=body.params,
            namespace=ns,
            threshold=thr,
            k=body.k,
        )
        return JSONResponse(out)

    @router.post(
        "/v1/entries",
        response_model=StoreResponse,
        status_code=201,
        tags=["cache"],
        operation_id="store",
        responses=errors(*_BODY_ERRORS),
        openapi_extra={
            "responses": {
                "201": {
                    "links": {
                        "getEntry": {
                            "operationId": "getEntry",
                            "parameters": {"entry_id": "$response.body#/entry_id"},
                        },
                        "deleteEntry": {
                            "operationId": "deleteEntry",
                            "parameters": {"entry_id": "$response.body#/entry_id"},
                        },
                    }
                }
            }
        },
    )
    async def store(body: StoreRequest, sc: SidecarDep, principal: PrincipalDep) -> Any:
        """Store a response for a prompt in every tier and the index."""
        req = _cache_request(body, principal.namespace(body.namespace))
        # omitted: the policy's default TTL; an explicit null: never expire
        ttl = body.ttl_seconds if "ttl_seconds" in body.model_fields_set else UNSET
        entry = await sc.cache.store(
            req,
            body.value,
            ttl_seconds=ttl,
            tags=body.tags,
            metadata=body.metadata,
        )
        return JSONResponse(
            {
                "entry_id": entry.key,
                "scope": entry.scope,
                "namespace": entry.namespace,
                "created_at": entry.created_at,
                "expires_at": entry.expires_at,
            },
            status_code=201,
        )

    @router.get(
        "/v1/entries",
        response_model=EntryList,
        tags=["entries"],
        operation_id="listEntries",
        responses=errors(*_CACHE_ERRORS, 422),
    )
    async def list_entries(
        sc: SidecarDep,
        principal: PrincipalDep,
        namespace: Annotated[
            str | None, Query(description="Filter: namespace (tenants: their own).")
        ] = None,
        model: str | None = None,
        tag: str | None = None,
        scope: str | None = None,
        older_than_seconds: Annotated[float | None, Query(ge=0, le=1e12)] = None,
        prompt_pattern: str | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
        include_values: bool = False,
    ) -> Any:
        """List live entries, newest first, filtered and paginated."""
        from ..admin import entry_view

        ns = principal.namespace(namespace)
        sel = Selector(
            scope=scope,
            namespace=ns,
            model=model,
            tag=tag,
            older_than_seconds=older_than_seconds,
            prompt_pattern=prompt_pattern,
        )
        entries = await sc.cache.list_entries(
            None if sel.is_empty() else sel, limit=limit, offset=offset
        )
        now = sc.cache.timer()
        views = [entry_view(e, now, include_value=include_values) for e in entries]
        return JSONResponse({"entries": views, "limit": limit, "offset": offset})

    @router.get(
        "/v1/entries/{entry_id}",
        response_model=EntryView,
        tags=["entries"],
        operation_id="getEntry",
        responses=errors(*_CACHE_ERRORS, 404, 422),
    )
    async def get_entry(
        entry_id: _EntryId,
        sc: SidecarDep,
        principal: PrincipalDep,
    ) -> Any:
        """One entry, with its value."""
        from ..admin import entry_view

        entry = await sc.cache.get_entry(entry_id)
        if entry is None or (principal.tenant is not None and entry.namespace != principal.tenant):
            # another tenant's entry is indistinguishable from a missing one
            return error_response(404, "no such entry", "not_found")
        return JSONResponse(entry_view(entry, sc.cache.timer(), include_value=True))

    @router.delete(
        "/v1/entries/{entry_id}",
        response_model=InvalidateResponse,
        tags=["entries"],
        operation_id="deleteEntry",
        responses=errors(*_CACHE_ERRORS, 404, 413, 422),
    )
    async def delete_entry(
        entry_id: _EntryId,
        sc: SidecarDep,
        principal: PrincipalDep,
    ) -> Any:
        """Delete one entry from every tier and the index."""
        # the tenant is an AND term of the selector: another tenant's entry is never touched
        sel = Selector(keys=(entry_id,), namespace=principal.tenant)
        removed = await sc.cache.invalidate_selector(sel)
        if not removed:
            return error_response(404, "no such entry", "not_found")
        return JSONResponse({"removed": removed, "matched": None, "dry_run": False})

    @router.post(
        "/v1/invalidate",
        response_model=InvalidateResponse,
        tags=["entries"],
        operation_id="invalidate",
        responses=errors(*_BODY_ERRORS),
    )
    async def invalidate(body: InvalidateRequest, sc: SidecarDep, principal: PrincipalDep) -> Any:
        """Remove entries by id, exact prompt, scope, tag, model, pattern or age (criteria AND); or count them."""
        sel = _selector(sc, principal, body)
        if body.dry_run:
            n = await sc.cache.count(sel)
            return JSONResponse({"removed": 0, "matched": n, "dry_run": True})
        removed = await sc.cache.invalidate_selector(sel)
        return JSONResponse({"removed": removed, "matched": None, "dry_run": False})

    @router.post(
        "/v1/flush",
        response_model=FlushResponse,
        tags=["entries"],
        operation_id="flush",
        responses=errors(*_CACHE_ERRORS, 413),
    )
    async def flush(sc: SidecarDep, principal: PrincipalDep) -> Any:
        """Remove every entry: all of them for the admin, the tenant's own for a tenant token."""
        if principal.tenant is None:
            removed = await sc.cache.flush()
        else:
            removed = await sc.cache.invalidate_selector(Selector(namespace=principal.tenant))
        return JSONResponse({"removed": removed})

    @router.post(
        "/v1/feedback",
        response_model=FeedbackResponse,
        tags=["cache"],
        operation_id="feedback",
        responses=errors(
            *_BODY_ERRORS,
            404,
            e409="The report contradicts the entry: another scope than the entry's, or the "
            "entry's own prompt given as the request of a semantic hit.",
        ),
    )
    async def feedback(body: FeedbackRequest, sc: SidecarDep, principal: PrincipalDep) -> Any:
        """Report whether a hit answered its request correctly (the label is kept).

        A wrong semantic hit: this request is never answered by this entry again, in any
        replica. A wrong exact hit: the entry itself is wrong and is invalidated. A
        tenant reports only on its own entries (another tenant's is a 404).
        """
        ns = principal.namespace(body.namespace)
        entry = await sc.cache.get_entry(body.entry_id)
        if entry is None or (principal.tenant is not None and entry.namespace != principal.tenant):
            return error_response(404, "no such entry", "not_found")
        try:
            result = await sc.cache.feedback(
                entry_id=body.entry_id,
                correct=body.correct,
                prompt=body.prompt,
                messages=body.message_dicts(),
                model=body.model,
                params=body.params,
                namespace=ns,
                source=body.source,
            )
        except UnknownEntryError:  # removed meanwhile
            return error_response(404, "no such entry", "not_found")
        except InvalidInputError as exc:
            # a well-formed report that contradicts the entry (another scope; the entry's
            # own prompt as the request of a semantic hit): a conflict with what is stored
            return error_response(409, str(exc), "conflict")
        return JSONResponse(result.as_dict())

    @router.get(
        "/v1/stats",
        response_model=StatsResponse,
        tags=["admin"],
        operation_id="stats",
        responses=errors(401, 403),
    )
    async def stats(
        sc: SidecarDep,
        principal: PrincipalDep,
        namespace: Annotated[
            str | None,
            Query(description="One namespace's counters (a tenant token: its own, with or without this)."),
        ] = None,
    ) -> Any:
        """Cache counters: hits by tier and kind, misses, sets, errors, savings, index (the
        admin); one namespace's lookups, hits, misses, sets and savings for a tenant token,
        or for the admin with ``namespace``. Counted by this sidecar process since it started."""
        ns = principal.namespace(namespace)
        if ns is None:
            return JSONResponse(sc.cache.stats())
        return JSONResponse(sc.cache.namespace_stats(ns))

    @router.post(
        "/v1/index/rebuild",
        response_model=IndexRebuildResponse,
        tags=["admin"],
        operation_id="rebuildIndex",
        responses=errors(*_CACHE_ERRORS, 413, 422),
    )
    async def index_rebuild(sc: SidecarDep, principal: PrincipalDep, reembed: bool = False) -> Any:
        """Rebuild the in-process index from L3, optionally re-embedding entries without vectors (admin)."""
        principal.require_admin()
        n = await sc.cache.rebuild_index(reembed=reembed, progress=False)
        return JSONResponse({"vectors": n})

    @router.get(
        "/v1/index/check",
        response_model=IndexCheckResponse,
        tags=["admin"],
        operation_id="checkIndex",
        responses=errors(*_CACHE_ERRORS),
    )
    async def index_check(sc: SidecarDep, principal: PrincipalDep) -> Any:
        """Compare the index with L3 (admin)."""
        principal.require_admin()
        return JSONResponse(await sc.cache.check_index())

    return router


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app answers on the request's path: each method is
    tried against the routes, as routing would match it."""
    routes = request.app.router.routes
    return [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL
            for route in routes
        )
    ]


def _exact_key_rules(node: Any) -> None:
    """Rewrite pydantic's ``patternProperties`` (from a dict whose keys have a pattern) as
    what the validator does: every key must match (``propertyNames``), every value is of
    the value schema (``additionalProperties``). In place, everywhere in ``node``."""
    if isinstance(node, dict):
        pp = node.get("patternProperties")
        if isinstance(pp, dict) and len(pp) == 1 and "additionalProperties" not in node:
            ((pattern, value),) = pp.items()
            del node["patternProperties"]
            node["propertyNames"] = {"pattern": pattern}
            node["additionalProperties"] = value
        for v in node.values():
            _exact_key_rules(v)
    elif isinstance(node, list):
        for v in node:
            _exact_key_rules(v)


def _stream_schemas(doc: dict[str, Any]) -> None:
    """An event stream described by ``itemSchema`` (each event) keeps a ``schema`` of no
    type for the whole stream: FastAPI's default ``string`` would not hold for it read as
    the list of its events, as OpenAPI 3.2 reads it."""
    for item in doc.get("paths", {}).values():
        for op in item.values():
            for response in op.get("responses", {}).values():
                media = response.get("content", {}).get("text/event-stream")
                if isinstance(media, dict) and "itemSchema" in media:
                    media["schema"] = {
                        k: v for k, v in media.get("schema", {}).items() if k != "type"
                    }


def _openapi(
    app: FastAPI, auth: bool, DOCUMENTED_MODELS: tuple[type[BaseModel], ...]  # noqa: N803
) -> Callable[[], dict[str, Any]]:
    """The app's ``openapi()``: FastAPI's document, with the rules it cannot say itself."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
            )
            _exact_key_rules(doc)
            _stream_schemas(doc)
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            for model in DOCUMENTED_MODELS:  # named by a route's document, used by none's code
                schemas.setdefault(model.__name__, model.model_json_schema())
            schemas.setdefault("JsonText", JSON_TEXT_SCHEMA)
            if not auth:  # --no-auth: every caller is admin, no token is asked for
                doc.get("components", {}).pop("securitySchemes", None)
                for item in doc["paths"].values():
                    for op in item.values():
                        op.pop("security", None)
                        for code in ("401", "403"):
                            op.get("responses", {}).pop(code, None)
            app.openapi_schema = doc
        return app.openapi_schema

    return openapi


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AuthError)
    async def _auth(request: Request, exc: AuthError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return error_response(
            exc.status,
            exc.message,
            "authentication_error" if exc.status == 401 else "permission_error",
            headers=headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        details: list[dict[str, Any]] = [
            {
                "loc": [str(p) for p in e.get("loc", ())],
                "msg": str(e.get("msg", "")),
                "type": str(e.get("type", "")),
            }
            for e in exc.errors()
        ]
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        loc = [str(x) for x in first["loc"]]
        where = ".".join(loc[1:] if loc[:1] == ["body"] else loc)
        message = f"{where}: {first['msg']}" if where else str(first["msg"])
        return error_response(422, message, "invalid_request_error", details=details)

    @app.exception_handler(InvalidInputError)
    async def _invalid(request: Request, exc: InvalidInputError) -> JSONResponse:
        return error_response(422, str(exc), "invalid_request_error")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and isinstance(exc.__cause__, ValueError):
            # FastAPI answers 400 for a JSON body that is not UTF-8; it is malformed JSON like any other
            return error_response(
                422, "the request body is not valid JSON (UTF-8)", "invalid_request_error"
            )
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            # Starlette names the methods of the first route on the path; name them all
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
        return error_response(exc.status_code, str(exc.detail), "http_error", headers=headers)

    @app.exception_handler(SemcacheError)
    async def _semcache(request: Request, exc: SemcacheError) -> JSONResponse:
        if isinstance(exc, (BackendError, SchemaVersionError)):
            log.warning("%s: %s", type(exc).__name__, exc)
            return error_response(503, str(exc), "backend_unavailable")
        if isinstance(exc, ConfigurationError):
            return error_response(409, str(exc), "configuration_error")
        return error_response(400, str(exc), "semcache_error")


def create_app(
    config: ServerConfig | None = None,
    *,
    cache: AsyncSemanticCache | None = None,
    upstream_transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """Build the sidecar app. Nothing is opened until the app's lifespan starts.

    Args:
        config: the sidecar's configuration (default: ``ServerConfig()``).
        cache: an unopened cache to use instead of building one from ``config.cache``.
        upstream_transport: an ``httpx`` transport for the upstream (tests).

    Returns:
        A FastAPI (ASGI) application; ``app.state.sidecar`` holds its :class:`Sidecar`.
    """
    from ..contrib.prometheus import PrometheusMiddleware
    from ..tracing import TracingMiddleware, fastapi_options
    from .proxy import DOCUMENTED_MODELS, proxy_router

    cfg = config if config is not None else ServerConfig()
    sidecar = Sidecar(cfg, cache=cache, upstream_transport=upstream_transport)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await sidecar.open()
        try:
            yield
        finally:
            await sidecar.aclose()

    from .._version import __version__

    app = FastAPI(
        title="semcache sidecar",
        version=__version__,
        summary="A multi-level semantic cache for LLM calls: JSON API and OpenAI-compatible proxy.",
        lifespan=lifespan,
        # /docs is served below with Swagger UI's own files, not from a CDN (offline hosts)
        docs_url=None,
        redoc_url=None,
        **fastapi_options(),
    )
    _install_docs(app)
    app.state.sidecar = sidecar
    app.include_router(_api_router())
    app.include_router(proxy_router())
    app.openapi = _openapi(app, cfg.auth, DOCUMENTED_MODELS)  # type: ignore[method-assign]
    _install_error_handlers(app)
    # added last = outermost: metrics see every response, 413s included
    app.add_middleware(BodyLimitMiddleware, max_bytes=cfg.max_body_bytes)
    app.add_middleware(PrometheusMiddleware, metrics=sidecar.metrics)
    # outermost: a request's server span (a child of its traceparent) holds all its spans
    app.add_middleware(TracingMiddleware)
    return app


def _install_docs(app: FastAPI) -> None:
    """``/docs``: Swagger UI from the files of the ``swagger-ui-bundle`` package, served
    at ``/docs/assets``, so that the page works on a host with no internet access."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import HTMLResponse
    from fastapi.staticfiles import StaticFiles

    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:  # pragma: no cover - a server extra; without it there is no /docs
        return
    app.mount("/docs/assets", StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/docs/assets/favicon-32x32.png",
        )
