"""The pure logic of a decorated function, shared by the sync and async drivers.

:class:`CachedFunction` holds the decorator's settings and everything that needs no
I/O: validating them, binding a call's arguments, building the cache request,
reading the per-call controls, and encoding a result for storing and sharing (and
decoding it again). :class:`~semcache.decorator.sync.SyncCachedFunction` and
:class:`~semcache.decorator.aio.AsyncCachedFunction` add the calls, one blocking and
one awaitable, through :mod:`semcache.readthrough`.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Generic, TypeVar

from .. import openai_compat as oc
from ..config import UNSET
from ..errors import ConfigurationError, InvalidInputError, SerializationError
from ..keys import Request, build_request, canonical_json
from ..readthrough import AsyncCache, SyncCache, cacheable, flights_of
from ..serde import dumps, loads
from ..singleflight import AsyncRedisLock, RedisLock, SingleFlight
from ..streaming import AsyncReplayStream, ReplayStream
from .options import CallOptions, options_for, options_owner

__all__ = ["OTHER_FORM", "CachedFunction", "Shared", "snapshot"]

log = logging.getLogger("semcache")

C = TypeVar("C", SyncCache, AsyncCache)

#: What a leader shares with waiting calls: ``("payload", serde bytes, metadata)``,
#: or ``("object", value, None)`` for a value that cannot be stored.
Shared = tuple[str, Any, Any]
#: What decoding gives for a value stored as a stream when the call wants none, or the
#: reverse, in a form that cannot be converted (anything but OpenAI chat completions).
OTHER_FORM: Any = object()


def fn_kind(fn: Callable[..., Any]) -> str:
    """``"async"`` for coroutine and async-generator functions (seen through wrappers), else ``"sync"``."""
    call_method = type(fn).__dict__.get("__call__") if not inspect.isroutine(fn) else None
    for candidate in (fn, inspect.unwrap(fn), call_method):
        if candidate is None:
            continue
        target = inspect.unwrap(candidate)
        if inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target):
            return "async"
    return "sync"


def snapshot(value: Any) -> Any:
    """``value`` with its lists, tuples and dicts copied (all the way down), other
    objects shared: the arguments of a call an audit makes again later, safe from a
    caller that appends the answer to its ``messages`` meanwhile."""
    kind = type(value)  # exact types only: a subclass (a named tuple, say) is shared
    if kind is list:
        return [snapshot(v) for v in value]
    if kind is tuple:
        return tuple(snapshot(v) for v in value)
    if kind is dict:
        return {k: snapshot(v) for k, v in value.items()}
    return value


def _is_not_given(v: Any) -> bool:
    # the OpenAI SDK's defaults for arguments the caller did not pass
    t = type(v)
    return t.__name__ in ("NotGiven", "Omit") and t.__module__.split(".")[0] == "openai"


class CachedFunction(Generic[C]):
    """The settings and pure logic behind one decorated function (no I/O here).

    Args:
        cache: a :class:`~semcache.SemanticCache` (sync driver) or an
            :class:`~semcache.AsyncSemanticCache` (async driver).
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
            uses the cache's L2 Redis; or pass a :class:`~semcache.singleflight.RedisLock`
            or :class:`~semcache.singleflight.AsyncRedisLock`).
        lock_timeout_seconds: the lock's expiry (how long a crashed holder blocks others).

    Raises:
        ConfigurationError: sync/async mismatch, no way to read the prompt, or a
            lock without Redis.
    """

    #: Whether this driver is the async one (set by the subclasses).
    is_async: ClassVar[bool] = False

    def __init__(
        self,
        cache: C,
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
        if not callable(fn):
            raise ConfigurationError(f"cached() needs a function, got {type(fn).__name__}")
        self.cache: C = cache
        self.fn = fn
        kind = fn_kind(fn)
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
        self.flights: SingleFlight = flights_of(cache)
        self.lock_spec = lock
        self.lock_timeout_seconds = lock_timeout_seconds
        if lock is True and cache.config.redis is None:
            raise ConfigurationError("lock=True needs Redis as L2 (CacheConfig(redis=RedisConfig(url=...)))")
        self._options_owner = options_owner(cache)
        self._skip_first: str | None = None
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
            elif name != self._skip_first:
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

    def prepare(
        self, args: tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> tuple[CallOptions, Request | None, bool | None]:
        """The controls in force, the request (``None``: call uncached) and whether the call wants a stream."""
        opts = options_for(self._options_owner)
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

    def lookup_kwargs(self, opts: CallOptions) -> dict[str, Any]:
        """``threshold`` and ``semantic`` for the lookup."""
        threshold = opts.threshold if opts.threshold is not UNSET else self.threshold
        semantic = opts.semantic if opts.semantic is not UNSET else self.semantic
        return {"threshold": threshold, "semantic": bool(semantic)}

    def store_kwargs(self, opts: CallOptions, meta: dict[str, Any]) -> dict[str, Any]:
        """``ttl_seconds``, ``tags`` and ``metadata`` for the store."""
        return {
            "ttl_seconds": opts.ttl_seconds if opts.ttl_seconds is not UNSET else self.ttl_seconds,
            "tags": tuple(dict.fromkeys((*self.tags, *opts.tags))),
            "metadata": meta,
        }

    # -- encoding results ---------------------------------------------------
    def cacheable(self, value: Any, *, stream: bool) -> bool:
        """Whether a result may be stored (``should_cache``, or the default rule)."""
        return cacheable(value, stream=stream, rule=self.should_cache, name=self.name)

    def encode(self, value: Any, *, stream: bool) -> tuple[Any, dict[str, Any]]:
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

    def share(self, value: Any, *, stream: bool) -> tuple[Shared, Any, dict[str, Any] | None]:
        """What waiting calls get, plus the storable form and its metadata (``None`` when not storable)."""
        try:
            stored, meta = self.encode(value, stream=stream)
            payload = dumps(stored)
        except Exception as exc:  # noqa: BLE001 - an odd value is returned, not stored
            log.warning("%s: the result cannot be cached (%s)", self.name, exc)
            return ("object", value, None), None, None
        return ("payload", payload, meta), stored, meta

    def to_store(self, opts: CallOptions, value: Any, *, stream: bool) -> tuple[Shared, Any, dict[str, Any] | None]:
        """:meth:`share`, with the metadata set to ``None`` when the result must not be stored."""
        shared, stored, meta = self.share(value, stream=stream)
        if not opts.store or meta is None or not self.cacheable(value, stream=stream):
            return shared, stored, None
        return shared, stored, meta

    def decode(self, value: Any, meta: Mapping[str, Any], want_stream: bool | None) -> Any:
        """A stored value as the call wants it (a replayed stream or a value), or :data:`OTHER_FORM`."""
        fmt = meta.get(oc.FORMAT_KEY)
        replay = AsyncReplayStream if self.is_async else ReplayStream
        if meta.get(oc.STREAM_KEY):
            if want_stream is False:
                if fmt != oc.FORMAT_CHAT_CHUNK:
                    return OTHER_FORM  # only chat chunks can be assembled into one value
                return oc.from_storable(oc.chunks_to_completion(value), oc.FORMAT_CHAT_COMPLETION)
            return replay([oc.item_from_storable(v, fmt) for v in value])
        if want_stream is True:
            if fmt != oc.FORMAT_CHAT_COMPLETION:
                return OTHER_FORM  # only a chat completion can be cut into chunks
            return replay([oc.item_from_storable(c, oc.FORMAT_CHAT_CHUNK) for c in oc.completion_to_chunks(value)])
        return oc.from_storable(value, fmt)

    def from_shared(self, shared: Shared, want_stream: bool | None) -> Any:
        """A waiting call's copy of the leader's result (counted as a saved call), or :data:`OTHER_FORM`."""
        kind, data, meta = shared
        if kind == "object":
            return data
        try:
            value = loads(data)
        except SerializationError:
            return None
        out = self.decode(value, meta, want_stream)
        if out is not OTHER_FORM:
            self.cache.count_saved_call(meta)
        return out

    # -- audits (Policy.audit_rate, see semcache.audit) ----------------------
    def auditor(self, hit: Any) -> Any | None:
        """The cache's auditor when this hit is sampled for an audit, else ``None``
        (a cache without audits, an exact hit, not sampled)."""
        audits = getattr(self.cache, "audits", None)
        if audits is None:
            return None
        try:
            return audits if audits.wants(hit) else None
        except Exception:  # noqa: BLE001 - an audit must never touch the caller's answer
            return None

    @staticmethod
    def cached_text(hit: Any) -> str:
        """The text of a hit's stored answer, as an audit compares it."""
        return oc.answer_text(hit.value, stream=bool(hit.entry.metadata.get(oc.STREAM_KEY)))

    def fresh_text(self, value: Any, *, stream: bool) -> str:
        """The text of the LLM's fresh answer (the items, for a stream), as an audit compares it.

        Raises:
            ValueError: the answer is one that would not be stored (empty, filtered,
                an error; or refused by ``should_cache``): nothing to compare.
        """
        if not self.cacheable(value, stream=stream):
            raise ValueError("the LLM's answer is not one that would be cached (empty, filtered or an error)")
        try:
            stored, _ = self.encode(value, stream=stream)
        except Exception:  # noqa: BLE001 - an odd value is compared as it is
            stored = value
        return oc.answer_text(stored, stream=stream)

    @staticmethod
    def entry_shared(entry: Any, req: Request) -> Shared | None:
        """What another process stored while we waited for its lock, or ``None``."""
        if entry is None or entry.scope != req.scope:
            return None
        meta = dict(entry.metadata)
        if entry.model and "response_model" not in meta:
            meta["response_model"] = entry.model
        return ("payload", entry.payload, meta)
