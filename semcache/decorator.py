"""The decorator around LLM calls: ``@cache.cached(...)`` and ``cache.wrap(fn, ...)``.

What a call is keyed on. The arguments are bound to the function's signature
(defaults applied). By name: ``prompt`` (a string) or ``messages`` (an OpenAI-style
list), ``model``, and every other argument as a generation param, all under the key
rules of :mod:`semcache.keys` (the system prompt, earlier turns, tools, temperature,
... must match exactly; only the last user turn is matched semantically; ``stream``,
``user``, ``timeout``, ... never split the cache). ``self``/``cls`` and the OpenAI
SDK's "not given" defaults are left out. Rename the arguments with ``prompt_arg``,
``messages_arg``, ``model_arg``; leave some out with ``ignore``; or take over with
``request_from(arguments) -> {"prompt"|"messages", "model", "params", "namespace"}``.
Without a model, the function's qualified name (or ``name=``) is part of the scope,
so two functions never answer each other's prompts.

Per-call controls, without touching the wrapped function's arguments: a context
manager (``contextvars``, so it follows threads started with a copied context and
asyncio tasks)::

    with cache.options(bypass=True): ...          # neither look up nor store
    with cache.options(lookup=False): ...         # call and store (refresh)
    with cache.options(store=False): ...          # look up, but never store
    with cache.options(ttl_seconds=60, threshold=0.95, tags=["faq"], namespace="tenant-a",
                       semantic=False): ...

What is stored and returned: the return value round-trips exactly for ``str``,
``bytes``, JSON values (dicts, lists) and OpenAI SDK responses (a hit returns a new
``ChatCompletion`` equal to the original; see :mod:`semcache.openai_compat`).
Responses that should not be cached (``None``, blank text, an ``error`` payload,
``finish_reason="content_filter"``, a completion with no content) are returned but
not stored; ``should_cache(value) -> bool`` replaces that rule (for a stream it gets
the list of items). Exceptions are never cached and reach the caller unchanged.

Streams: when the call returns an iterator (a generator, the OpenAI SDK's
``Stream``/``AsyncStream``), the caller gets it live, through a recording proxy; the
items are stored only when the stream is exhausted; one closed or dropped early, or
one that fails, stores nothing. A hit on a stored stream is replayed as a stream of
the same item type (``ChatCompletionChunk`` for OpenAI). A call with ``stream=True``
that hits a stored completion gets it as chunks, and ``stream=False`` on a stored
stream gets the assembled ``ChatCompletion``. Other values cannot be converted: such a
call is a miss that goes through to the function, and the stored form is kept.

One call for many: concurrent calls with the same exact key (threads, or asyncio
tasks) make one underlying call; the others wait for it (at most ``wait_seconds``)
and get a copy of its result, or its exception. With ``lock=True`` (needs Redis as
L2) processes sharing Redis do the same through a lock that expires after
``lock_timeout_seconds``. Waiters are counted in ``stats()["coalesced_calls"]``.
A call made by the thread (or task) that leads an identical call still in flight, e.g.
one holding the leader's stream unread, never waits on it: it calls on its own.

A cache tier that fails never turns a working call into an error: lookups follow
``Policy.on_backend_error`` and a failed store is logged, never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, fields, replace
from types import MappingProxyType
from typing import Any

from . import openai_compat as oc
from .config import UNSET
from .errors import ConfigurationError, InvalidInputError, SemcacheError, SerializationError
from .keys import Request, build_request, canonical_json
from .serde import dumps, loads
from .singleflight import AsyncRedisLock, FlightAbandoned, RedisLock, SingleFlight
from .streaming import (
    AsyncRecordingStream,
    AsyncReplayStream,
    RecordingStream,
    ReplayStream,
    is_stream,
)

__all__ = ["CachedFunction", "CallOptions", "current_options", "make_cached", "options"]

log = logging.getLogger("semcache")


@dataclass(frozen=True, kw_only=True)
class CallOptions:
    """Per-call controls (see :func:`options`); ``UNSET`` means the decorator's setting."""

    bypass: bool = False
    lookup: bool = True
    store: bool = True
    semantic: Any = UNSET
    ttl_seconds: Any = UNSET
    threshold: Any = UNSET
    tags: tuple[str, ...] = ()
    namespace: Any = UNSET


_OPTION_NAMES = frozenset(f.name for f in fields(CallOptions))
# the open ``with`` blocks, outermost first: (id(cache) or None for every cache, the
# controls the block names). Replaced, never mutated. Only named controls are kept,
# so an inner block overrides exactly what it names, even back to a default value.
_OPTIONS: contextvars.ContextVar[tuple[tuple[int | None, Mapping[str, Any]], ...]] = contextvars.ContextVar(
    "semcache_options", default=()
)


def _merge(base: CallOptions, given: Mapping[str, Any]) -> CallOptions:
    changes = dict(given)
    if "tags" in changes:
        tags = changes["tags"]
        if isinstance(tags, str):
            raise InvalidInputError("tags must be a list of strings, not a string")
        changes["tags"] = tuple(dict.fromkeys((*base.tags, *tags)))
    return replace(base, **changes)


@contextlib.contextmanager
def options(_owner: Any = None, **given: Any) -> Iterator[CallOptions]:
    """Set per-call controls for cached calls made inside the ``with`` block.

    Keyword args: ``bypass``, ``lookup``, ``store``, ``semantic``, ``ttl_seconds``,
    ``threshold``, ``tags`` (added to the decorator's), ``namespace``. Blocks nest;
    an inner block overrides exactly what it names, whether it is this module-level
    function (every cache's functions) or ``cache.options(...)`` (that cache's only).

    Raises:
        InvalidInputError: an unknown control name, or ``tags`` given as a string.
    """
    unknown = set(given) - _OPTION_NAMES
    if unknown:
        raise InvalidInputError(f"unknown cache option(s) {sorted(unknown)}; known: {sorted(_OPTION_NAMES)}")
    _merge(CallOptions(), given)  # reject bad values when the block opens, not at the first call
    owner = None if _owner is None else id(_owner)
    token = _OPTIONS.set((*_OPTIONS.get(), (owner, MappingProxyType(dict(given)))))
    try:
        yield current_options(_owner)
    finally:
        _OPTIONS.reset(token)


def current_options(owner: Any = None) -> CallOptions:
    """The controls in force for ``owner``'s cached calls (every cache's when ``None``).

    The open blocks apply outermost first: module-wide ones and ``owner``'s own, in
    the order they were opened.
    """
    mine = None if owner is None else id(owner)
    opts = CallOptions()
    for who, given in _OPTIONS.get():
        if who is None or who == mine:
            opts = _merge(opts, given)
    return opts


def _fn_kind(fn: Callable[..., Any]) -> str:
    """``"async"`` for coroutine and async-generator functions (seen through wrappers), else ``"sync"``."""
    call_method = type(fn).__dict__.get("__call__") if not inspect.isroutine(fn) else None
    for candidate in (fn, inspect.unwrap(fn), call_method):
        if candidate is None:
            continue
        target = inspect.unwrap(candidate)
        if inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target):
            return "async"
    return "sync"


def _is_not_given(v: Any) -> bool:
    # the OpenAI SDK's defaults for arguments the caller did not pass
    t = type(v)
    return t.__name__ in ("NotGiven", "Omit") and t.__module__.split(".")[0] == "openai"


_Shared = tuple[str, Any, Any]  # ("payload", serde bytes, metadata) | ("object", value, None)
# what decoding gives for a value stored as a stream when the call wants none, or the
# reverse, in a form that cannot be converted (anything but OpenAI chat completions)
_OTHER_FORM: Any = object()


class CachedFunction:
    """The logic behind one decorated function; its wrappers call :meth:`call` or :meth:`acall`.

    Args:
        cache: a :class:`~semcache.cache.SemanticCache` or :class:`~semcache.cache.AsyncSemanticCache`.
        fn: the function to wrap.
        prompt_arg, messages_arg, model_arg: argument names to read the prompt,
            the chat messages and the model from.
        request_from: a hook that maps the bound arguments (a dict) to
            ``build_request`` keywords, replacing the by-name rules.
        model: the model, when no argument names it.
        name: the scope name used when there is no model (default: the function's
            module and qualified name).
        namespace: a tenant/namespace string, or a callable of the bound arguments.
        params: extra fixed scope fields.
        ignore: argument names that never change the answer (clients, loggers).
        ttl_seconds, threshold, tags, semantic: defaults for every call.
        should_cache: ``value -> bool``, replacing the default uncacheable rule.
        single_flight: collapse concurrent identical calls in this process.
        wait_seconds: how long a waiting call waits before it calls on its own.
        lock: also collapse calls across processes with a Redis lock (``True``
            uses the cache's L2 Redis; or pass a :class:`~semcache.singleflight.RedisLock`).
        lock_timeout_seconds: the lock's expiry (how long a crashed holder blocks others).

    Raises:
        ConfigurationError: sync/async mismatch, no way to read the prompt, or a
            lock without Redis.
    """

    def __init__(
        self,
        cache: Any,
        fn: Callable[..., Any],
        *,
        prompt_arg: str = "prompt",
        messages_arg: str = "messages",
        model_arg: str = "model",
        request_from: Callable[[dict[str, Any]], Mapping[str, Any]] | None = None,
        model: str | None = None,
        name: str | None = None,
        namespace: str | Callable[[dict[str, Any]], str | None] | None = None,
        params: Mapping[str, Any] | None = None,
        ignore: Iterable[str] = (),
        ttl_seconds: Any = UNSET,
        threshold: Any = UNSET,
        tags: Iterable[str] = (),
        semantic: bool = True,
        should_cache: Callable[[Any], bool] | None = None,
        single_flight: bool = True,
        wait_seconds: float | None = 120.0,
        lock: bool | RedisLock | AsyncRedisLock = False,
        lock_timeout_seconds: float = 30.0,
    ) -> None:
        from .async_cache import AsyncSemanticCache

        if not callable(fn):
            raise ConfigurationError(f"cached() needs a function, got {type(fn).__name__}")
        self.is_async = isinstance(cache, AsyncSemanticCache)
        self.acache: Any = cache if self.is_async else None
        self.cache = cache.sync if self.is_async else cache
        self.fn = fn
        kind = _fn_kind(fn)
        label = getattr(fn, "__qualname__", repr(fn))
        if kind == "async" and not self.is_async:
            raise ConfigurationError(
                f"{label} is async but the cache is a SemanticCache: use AsyncSemanticCache for async functions"
            )
        if kind == "sync" and self.is_async:
            raise ConfigurationError(
                f"{label} is not async but the cache is an AsyncSemanticCache: use SemanticCache for sync functions"
            )
        self.is_asyncgen = inspect.isasyncgenfunction(inspect.unwrap(fn))
        self.prompt_arg, self.messages_arg, self.model_arg = prompt_arg, messages_arg, model_arg
        self.request_from = request_from
        self.model = model
        self.name = name or f"{getattr(fn, '__module__', None) or '?'}.{label}"
        self.namespace = namespace
        self.params = dict(params or {})
        canonical_json(self.params)  # fixed scope fields must be JSON: fail at decoration time
        if isinstance(ignore, str):
            raise ConfigurationError("ignore must be a list of argument names, not a string")
        self.ignore = frozenset(ignore)
        self.ttl_seconds = ttl_seconds
        self.threshold = threshold
        if isinstance(tags, str):
            raise ConfigurationError("tags must be a list of strings, not a string")
        self.tags = tuple(tags)
        self.semantic = semantic
        self.should_cache = should_cache
        self.single_flight = single_flight
        self.wait_seconds = wait_seconds
        self._flights = _flights_of(self.cache)
        self._lock_spec = lock
        self.lock_timeout_seconds = lock_timeout_seconds
        if lock is True and self.cache.config.redis is None:
            raise ConfigurationError("lock=True needs Redis as L2 (CacheConfig(redis=RedisConfig(url=...)))")
        self._lock: Any = None if lock is True or lock is False else lock
        self._init_signature()

    # -- reading the request from a call ------------------------------------
    def _init_signature(self) -> None:
        try:
            self.signature: inspect.Signature | None = inspect.signature(self.fn)
        except (TypeError, ValueError):
            self.signature = None
        if self.request_from is not None:
            return
        if self.signature is None:
            raise ConfigurationError(f"cannot read the signature of {self.name}: pass request_from=")
        ps = self.signature.parameters
        names = list(ps)
        self._skip_first = names[0] if names and names[0] in ("self", "cls") else None
        has_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in ps.values())
        if self.prompt_arg not in ps and self.messages_arg not in ps and not has_var_kw:
            raise ConfigurationError(
                f"{self.name} has no {self.prompt_arg!r} or {self.messages_arg!r} argument: "
                "pass prompt_arg=, messages_arg= or request_from="
            )

    def arguments(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The call's arguments by name, defaults applied and ``**kwargs`` flattened."""
        if self.signature is None:
            return {"args": list(args), **kwargs}
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise InvalidInputError(f"the call does not match {self.name}'s signature: {exc}") from exc
        bound.apply_defaults()
        out: dict[str, Any] = {}
        for name, value in bound.arguments.items():
            kind = self.signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                out.update(value)
            elif name != getattr(self, "_skip_first", None):
                out[name] = list(value) if kind is inspect.Parameter.VAR_POSITIONAL else value
        return {k: v for k, v in out.items() if not _is_not_given(v)}

    def request(self, args: tuple[Any, ...], kwargs: Mapping[str, Any], opts: CallOptions | None = None) -> Request:
        """The cache request a call maps to (what it is keyed and matched on).

        Raises:
            InvalidInputError: the call has no usable prompt (empty, no user turn, ...).
            ConfigurationError: an argument that is part of the scope is not JSON.
        """
        return self._build(self.arguments(args, kwargs), opts)

    def _build(self, arguments: dict[str, Any], opts: CallOptions | None) -> Request:
        if self.request_from is not None:
            spec = dict(self.request_from(dict(arguments)))
            unknown = set(spec) - {"prompt", "messages", "model", "params", "namespace"}
            if unknown:
                raise ConfigurationError(f"request_from returned unknown keys {sorted(unknown)}")
            prompt, messages = spec.get("prompt"), spec.get("messages")
            model = spec.get("model", self.model)
            params = {**self.params, **dict(spec.get("params") or {})}
            namespace = spec.get("namespace")
        else:
            rest = {k: v for k, v in arguments.items() if k not in self.ignore}
            prompt = rest.pop(self.prompt_arg, None)
            messages = rest.pop(self.messages_arg, None)
            model = rest.pop(self.model_arg, None) or self.model
            params = {**rest, **self.params}
            namespace = None
        if model is None:
            params["__fn__"] = self.name  # two functions never answer each other's prompts
        for k, v in params.items():
            try:
                canonical_json(v)
            except InvalidInputError as exc:
                raise ConfigurationError(
                    f"argument {k!r} of {self.name} is not JSON-serialisable, so it cannot be part of the "
                    f"cache key: pass ignore=[{k!r}] if it never changes the answer"
                ) from exc
        if opts is not None and opts.namespace is not UNSET:
            namespace = opts.namespace
        elif namespace is None and self.namespace is not None:
            namespace = self.namespace(arguments) if callable(self.namespace) else self.namespace
        return build_request(prompt, messages=messages, model=model, params=params, namespace=namespace)

    def _prepare(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[CallOptions, Request | None, bool | None]:
        opts = current_options(self.cache)
        if opts.bypass:
            return opts, None, None
        try:
            arguments = self.arguments(args, kwargs)
            req = self._build(arguments, opts)
        except InvalidInputError as exc:
            # nothing to key on (no user turn, empty prompt): the call goes through uncached
            log.debug("%s: not cached: %s", self.name, exc)
            return opts, None, None
        stream = arguments.get("stream")
        if isinstance(stream, bool):
            return opts, req, stream
        # a function that takes ``stream`` (the OpenAI SDK's create) and was not given
        # it does not stream; for others the stored form decides
        has_param = self.signature is not None and "stream" in self.signature.parameters
        return opts, req, False if has_param else None

    def _lookup_kwargs(self, opts: CallOptions) -> dict[str, Any]:
        threshold = opts.threshold if opts.threshold is not UNSET else self.threshold
        semantic = opts.semantic if opts.semantic is not UNSET else self.semantic
        return {"threshold": threshold, "semantic": bool(semantic)}

    # -- encoding results ---------------------------------------------------
    def _cacheable(self, value: Any, *, stream: bool) -> bool:
        # a rule that fails on an odd value means "do not store it": the caller still
        # gets the value, never the rule's exception
        try:
            if self.should_cache is not None:
                return bool(self.should_cache(value))
            reason = oc.uncacheable_reason(value, stream=stream)
        except Exception as exc:  # noqa: BLE001
            log.warning("%s: the response is not cached: checking it failed (%r)", self.name, exc)
            return False
        if reason is not None:
            log.debug("%s: response not cached (%s)", self.name, reason)
        return reason is None

    def _encode(self, value: Any, *, stream: bool) -> tuple[Any, dict[str, Any]]:
        """``(json_value, metadata)`` for storing ``value`` (a list of items when ``stream``)."""
        if stream:
            stored, fmt = oc.items_to_storable(value)
        else:
            stored, fmt = oc.to_storable(value)
        meta: dict[str, Any] = {oc.FORMAT_KEY: fmt}
        if stream:
            meta[oc.STREAM_KEY] = True
        usage = oc.usage_of(value)
        if usage:
            meta["usage"] = usage
        model = oc.model_of(value)
        if model:
            meta["response_model"] = model
        return stored, meta

    def _share(self, value: Any, *, stream: bool) -> tuple[_Shared, Any, dict[str, Any] | None]:
        """What waiting calls get, plus the storable form (``None`` when not storable)."""
        try:
            stored, meta = self._encode(value, stream=stream)
            payload = dumps(stored)
        except Exception as exc:  # noqa: BLE001 - an odd value is returned, not stored
            log.warning("%s: the result cannot be cached (%s)", self.name, exc)
            return ("object", value, None), None, None
        return ("payload", payload, meta), stored, meta

    def _decode(self, value: Any, meta: Mapping[str, Any], want_stream: bool | None) -> Any:
        fmt = meta.get(oc.FORMAT_KEY)
        replay = AsyncReplayStream if self.is_async else ReplayStream
        if meta.get(oc.STREAM_KEY):
            if want_stream is False:
                if fmt != oc.FORMAT_CHAT_CHUNK:
                    return _OTHER_FORM  # only chat chunks can be assembled into one value
                return oc.from_storable(oc.chunks_to_completion(value), oc.FORMAT_CHAT_COMPLETION)
            return replay([oc.item_from_storable(v, fmt) for v in value])
        if want_stream is True:
            if fmt != oc.FORMAT_CHAT_COMPLETION:
                return _OTHER_FORM  # only a chat completion can be cut into chunks
            return replay([oc.item_from_storable(c, oc.FORMAT_CHAT_CHUNK) for c in oc.completion_to_chunks(value)])
        return oc.from_storable(value, fmt)

    def _from_shared(self, shared: _Shared, want_stream: bool | None) -> Any:
        kind, data, meta = shared
        if kind == "object":
            return data
        try:
            value = loads(data)
        except SerializationError:
            return None
        out = self._decode(value, meta, want_stream)
        if out is not _OTHER_FORM:
            self.cache.count_saved_call(meta)
        return out

    def _store_kwargs(self, opts: CallOptions, meta: dict[str, Any]) -> dict[str, Any]:
        return {
            "ttl_seconds": opts.ttl_seconds if opts.ttl_seconds is not UNSET else self.ttl_seconds,
            "tags": tuple(dict.fromkeys((*self.tags, *opts.tags))),
            "metadata": meta,
        }

    @staticmethod
    def _entry_shared(entry: Any, req: Request) -> _Shared | None:
        """What another process stored while we waited for its lock, or ``None``."""
        if entry is None or entry.scope != req.scope:
            return None
        meta = dict(entry.metadata)
        if entry.model and "response_model" not in meta:
            meta["response_model"] = entry.model
        return ("payload", entry.payload, meta)

    def _adopt(self, flight: Any, found: _Shared, want_stream: bool | None) -> Any:
        """Serve what another process stored, and hand it to our followers too."""
        if flight is not None:
            flight.resolve(found)
        return self._from_shared(found, want_stream)

    # -- the sync path ---------------------------------------------------------
    def _get_lock(self) -> Any:
        if self._lock is None and self._lock_spec is True:
            self._lock = _redis_lock(self.cache, self.lock_timeout_seconds, async_=self.is_async)
        return self._lock

    def call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run a call of the wrapped (sync) function through the cache."""
        opts, req, want_stream = self._prepare(args, kwargs)
        if req is None:
            return self.fn(*args, **kwargs)
        if opts.lookup:
            hit = self.cache.lookup(req, **self._lookup_kwargs(opts))
            if hit is not None:
                out = self._decode(hit.value, hit.entry.metadata, want_stream)
                # stored in the other form (stream or not) and not convertible: a miss
                # that is not stored, so the stored form stays
                return self.fn(*args, **kwargs) if out is _OTHER_FORM else out
        if not self.single_flight:
            return self._lead(None, req, opts, want_stream, args, kwargs)
        while True:
            flight, leader = self._flights.begin(req.key)
            if leader:
                flight.owner = threading.get_ident()
                return self._lead(flight, req, opts, want_stream, args, kwargs)
            if flight.owner == threading.get_ident():
                # this thread leads that call: it holds the leader's stream unread (or is
                # inside the call); waiting would wait on itself, so it calls on its own
                return self._lead(None, req, opts, want_stream, args, kwargs, use_lock=False)
            try:
                out = self._from_shared(flight.wait(self.wait_seconds), want_stream)
                return self.fn(*args, **kwargs) if out is _OTHER_FORM else out
            except FlightAbandoned:
                continue  # the leader's stream was dropped: start over, one of us leads
            except TimeoutError:
                log.warning("%s: gave up waiting for an identical call after %ss", self.name, self.wait_seconds)
                return self._lead(None, req, opts, want_stream, args, kwargs)

    def _lead(
        self,
        flight: Any,
        req: Request,
        opts: CallOptions,
        want_stream: bool | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        use_lock: bool = True,
    ) -> Any:
        try:
            return self._lead_once(flight, req, opts, want_stream, args, kwargs, use_lock)
        except BaseException as exc:
            # however the leader failed (inside the lock wait or the store included), the
            # key must not stay in flight: later calls for it would each wait ``wait_seconds``
            _fail(flight, exc)
            raise

    def _lead_once(
        self,
        flight: Any,
        req: Request,
        opts: CallOptions,
        want_stream: bool | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        use_lock: bool,
    ) -> Any:
        token = None
        # our own Redis lock may be held by our own unread stream: a call on its own skips it
        lock = self._get_lock() if self._lock_spec and use_lock else None
        if lock is not None:
            try:
                token, found = lock.acquire_or_wait(
                    req.key,
                    lambda: self._entry_shared(self.cache.get_entry(req.key), req),
                    wait_seconds=self.lock_timeout_seconds,
                )
            except SemcacheError as exc:
                log.warning("%s: Redis lock unavailable (%s); calling without it", self.name, exc)
                found = None
            if found is not None:  # another process made the call and stored it
                out = self._adopt(flight, found, want_stream)
                return self.fn(*args, **kwargs) if out is _OTHER_FORM else out
        release = functools.partial(_release, lock, req.key, token)
        try:
            result = self.fn(*args, **kwargs)
        except BaseException:
            release()
            raise

        # A stream is stored once it is exhausted, a plain result at once.
        def settle(value: Any, *, stream: bool) -> None:
            shared = None
            try:
                shared = self._finish(req, opts, value, stream=stream)
            finally:
                release()
                _settle(flight, shared)

        kind = is_stream(result)
        if kind is not None:
            def dropped(exc: BaseException | None) -> None:
                release()
                if flight is not None:
                    flight.abandon()

            proxy = RecordingStream if kind == "sync" else AsyncRecordingStream
            return proxy(result, on_complete=functools.partial(settle, stream=True), on_abandon=dropped)
        settle(result, stream=False)
        return result

    def _finish(self, req: Request, opts: CallOptions, value: Any, *, stream: bool) -> _Shared:
        shared, stored, meta = self._share(value, stream=stream)
        if opts.store and meta is not None and self._cacheable(value, stream=stream):
            try:
                self.cache.store(req, stored, **self._store_kwargs(opts, meta))
            except Exception as exc:  # noqa: BLE001 - a tier outage must never fail a working call
                log.warning("%s: could not store the response (%s)", self.name, exc)
        return shared

    # -- the async path ---------------------------------------------------------
    async def acall(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run a call of the wrapped (async) function through the cache."""
        opts, req, want_stream = self._prepare(args, kwargs)
        if req is None:
            return await self._invoke(args, kwargs)
        if opts.lookup:
            hit = await self.acache.lookup(req, **self._lookup_kwargs(opts))
            if hit is not None:
                out = self._decode(hit.value, hit.entry.metadata, want_stream)
                # see call: the other, unconvertible form is a miss that is not stored
                return await self._invoke(args, kwargs) if out is _OTHER_FORM else out
        if not self.single_flight:
            return await self._alead(None, req, opts, want_stream, args, kwargs)
        while True:
            flight, leader = self._flights.begin(req.key)
            if leader:
                flight.owner = asyncio.current_task()
                return await self._alead(flight, req, opts, want_stream, args, kwargs)
            if flight.owner is asyncio.current_task():
                # this task leads that call (see call): never wait on ourselves
                return await self._alead(None, req, opts, want_stream, args, kwargs, use_lock=False)
            try:
                out = self._from_shared(await flight.wait_async(self.wait_seconds), want_stream)
                return await self._invoke(args, kwargs) if out is _OTHER_FORM else out
            except FlightAbandoned:
                continue
            except TimeoutError:
                log.warning("%s: gave up waiting for an identical call after %ss", self.name, self.wait_seconds)
                return await self._alead(None, req, opts, want_stream, args, kwargs)

    async def _invoke(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        result = self.fn(*args, **kwargs)
        # an async generator function returns its stream without being awaited
        return await result if inspect.isawaitable(result) else result

    async def _alead(
        self,
        flight: Any,
        req: Request,
        opts: CallOptions,
        want_stream: bool | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        use_lock: bool = True,
    ) -> Any:
        try:
            return await self._alead_once(flight, req, opts, want_stream, args, kwargs, use_lock)
        except BaseException as exc:
            # cancelled while waiting for the lock or storing included: see _lead
            _fail(flight, exc)
            raise

    async def _alead_once(
        self,
        flight: Any,
        req: Request,
        opts: CallOptions,
        want_stream: bool | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        use_lock: bool,
    ) -> Any:
        token = None
        # our own Redis lock may be held by our own unread stream: a call on its own skips it
        lock = self._get_lock() if self._lock_spec and use_lock else None
        if lock is not None:
            try:
                token, found = await lock.acquire_or_wait(
                    req.key,
                    lambda: self._apoll(req),
                    wait_seconds=self.lock_timeout_seconds,
                )
            except SemcacheError as exc:
                log.warning("%s: Redis lock unavailable (%s); calling without it", self.name, exc)
                found = None
            if found is not None:  # another process made the call and stored it
                out = self._adopt(flight, found, want_stream)
                return await self._invoke(args, kwargs) if out is _OTHER_FORM else out

        async def release() -> None:
            await _arelease(lock, req.key, token)

        try:
            result = await self._invoke(args, kwargs)
        except BaseException:
            await release()
            raise

        # A stream is stored once it is exhausted, a plain result at once.
        async def settle(value: Any, *, stream: bool) -> None:
            shared = None
            try:
                shared = await self._afinish(req, opts, value, stream=stream)
            finally:
                try:
                    await release()
                finally:
                    _settle(flight, shared)

        kind = is_stream(result)
        if kind is not None:
            def sdone(items: list[Any]) -> None:
                # a sync iterator from an async function: finished outside any await
                shared = None
                try:
                    shared = self._finish(req, opts, items, stream=True)
                finally:
                    _release(_sync_lock(lock), req.key, token)
                    _settle(flight, shared)

            def dropped(exc: BaseException | None) -> None:
                _release(_sync_lock(lock), req.key, token)
                if flight is not None:
                    flight.abandon()

            if kind == "async":
                return AsyncRecordingStream(
                    result, on_complete=functools.partial(settle, stream=True), on_abandon=dropped
                )
            return RecordingStream(result, on_complete=sdone, on_abandon=dropped)
        await settle(result, stream=False)
        return result

    async def _apoll(self, req: Request) -> _Shared | None:
        return self._entry_shared(await self.acache.get_entry(req.key), req)

    async def _afinish(self, req: Request, opts: CallOptions, value: Any, *, stream: bool) -> _Shared:
        shared, stored, meta = self._share(value, stream=stream)
        if opts.store and meta is not None and self._cacheable(value, stream=stream):
            try:
                await self.acache.store(req, stored, **self._store_kwargs(opts, meta))
            except Exception as exc:  # noqa: BLE001 - a tier outage must never fail a working call
                log.warning("%s: could not store the response (%s)", self.name, exc)
        return shared


def _fail(flight: Any, exc: BaseException) -> None:
    """Settle a failed leader's call: followers get its exception, or start over."""
    if flight is None:
        return
    if isinstance(exc, Exception):
        flight.reject(exc)
    else:  # cancelled, KeyboardInterrupt, SystemExit: followers must not inherit them
        flight.abandon()


def _settle(flight: Any, shared: _Shared | None) -> None:
    # ``None``: finishing failed or was cancelled; the followers make their own call
    if flight is None:
        return
    if shared is None:
        flight.abandon()
    else:
        flight.resolve(shared)


def _flights_of(cache: Any) -> SingleFlight:
    # one SingleFlight per cache: every function wrapped by it shares the in-flight calls
    flights = cache.__dict__.get("_semcache_flights")
    if flights is None:
        flights = cache.__dict__.setdefault("_semcache_flights", SingleFlight())
    return flights  # type: ignore[no-any-return]


def _redis_lock(cache: Any, timeout: float, *, async_: bool) -> Any:
    tier = next((t for t in cache.tiers if getattr(t, "name", None) == "l2" and hasattr(t, "client")), None)
    if tier is None:
        raise ConfigurationError("lock=True needs Redis as L2; open the cache first")
    prefix = f"{getattr(tier, 'prefix', 'semcache:')}lock:"
    cls = AsyncRedisLock if async_ else RedisLock
    return cls(tier.client, prefix=prefix, timeout_seconds=timeout)


def _sync_lock(lock: Any) -> Any:
    return getattr(lock, "_sync", lock) if isinstance(lock, AsyncRedisLock) else lock


def _release(lock: Any, key: str, token: str | None) -> None:
    if lock is None or token is None:
        return
    try:
        lock.release(key, token)
    except SemcacheError as exc:  # it expires anyway
        log.warning("could not release the Redis lock for %s (%s)", key, exc)


async def _arelease(lock: Any, key: str, token: str | None) -> None:
    if lock is None or token is None:
        return
    try:
        await lock.release(key, token)
    except SemcacheError as exc:
        log.warning("could not release the Redis lock for %s (%s)", key, exc)


def make_cached(cache: Any, fn: Callable[..., Any] | None = None, **config: Any) -> Any:
    """Build the decorator for ``cache``: ``make_cached(cache, fn, ...)`` wraps now; without ``fn``, later.

    See :class:`CachedFunction` for the keywords.
    """
    if fn is None:
        return lambda f: make_cached(cache, f, **config)
    logic = CachedFunction(cache, fn, **config)
    if logic.is_asyncgen:

        @functools.wraps(fn)
        async def agen_wrapper(*args: Any, **kwargs: Any) -> Any:
            stream = await logic.acall(args, kwargs)
            try:
                async for item in stream:
                    yield item
            finally:
                closer = getattr(stream, "aclose", None)
                if closer is not None:
                    await closer()

        wrapper: Any = agen_wrapper
    elif logic.is_async:

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            return await logic.acall(args, kwargs)

        wrapper = async_wrapper
    else:

        @functools.wraps(fn)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            return logic.call(args, kwargs)

        wrapper = sync_wrapper
    wrapper.cache_logic = logic
    wrapper.cache_request = lambda *a, **k: logic.request(a, k)
    return wrapper
