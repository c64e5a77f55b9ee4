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
An async function that returns a *sync* iterator finishes it inside ``next()``: its
store (and lock release) then runs as a task on the event loop, never blocking it;
``await wrapped.cache_logic.drain()`` waits for such stores.

One call for many: concurrent calls with the same exact key (threads, or asyncio
tasks) make one underlying call; the others wait for it (at most ``wait_seconds``)
and get a copy of its result, or its exception. With ``lock=True`` (needs Redis as
L2) processes sharing Redis do the same through a lock that expires after
``lock_timeout_seconds``; a caller that gets the lock re-checks the cache first, and
uses what another process stored meanwhile. Waiters are counted in ``stats()["coalesced_calls"]``.
A call made by the thread (or task) that leads an identical call still in flight, e.g.
one holding the leader's stream unread, never waits on it: it calls on its own.

Audits (``Policy.audit_rate > 0``, :mod:`semcache.audit`): a sampled semantic hit is
returned at once, and the wrapped function is called again in the background with a
copy of the same arguments (lists and dicts copied, so a caller appending to its
``messages`` does not change the audit); its answer is compared with the cached one
and kept as a ``source="llm"`` label. A call that streams is re-run the same way and
its stream read to the end in the background (a sync one in the audit's thread), then
assembled; the fresh answer is never stored. ``cache.audits.join()`` (``await
cache.audits.ajoin()``) waits for the audits running.

A cache tier that fails never turns a working call into an error: lookups follow
``Policy.on_backend_error`` and a failed store is logged, never raised.

Layout: :mod:`.options` (per-call controls), :mod:`.base` (:class:`CachedFunction`:
settings, argument binding, request building, encoding; pure), :mod:`.sync` and
:mod:`.aio` (thin drivers, blocking and awaitable, through :mod:`semcache.readthrough`),
:mod:`.wrap` (:func:`make_cached`). Nothing here imports the core: the caches are
typed by :mod:`semcache.readthrough.protocols`.
"""

from __future__ import annotations

from .aio import AsyncCachedFunction
from .base import CachedFunction
from .options import CallOptions, current_options, options
from .sync import SyncCachedFunction
from .wrap import cached_function, make_cached

__all__ = [
    "AsyncCachedFunction",
    "CachedFunction",
    "CallOptions",
    "SyncCachedFunction",
    "cached_function",
    "current_options",
    "make_cached",
    "options",
]
