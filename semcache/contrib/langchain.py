"""A LangChain ``BaseCache`` backed by semcache (``pip install 'semcache-llm[langchain]'``).

::

    from langchain_core.globals import set_llm_cache
    from semcache.contrib.langchain import SemcacheLangChainCache

    set_llm_cache(SemcacheLangChainCache(cache))        # or ChatModel(cache=SemcacheLangChainCache(cache))

LangChain hands a cache ``(prompt, llm_string)``. For a chat model the prompt is
the serialised message list; it is read back into OpenAI-style messages, so the
key rules of :mod:`semcache.keys` apply (system prompt and earlier turns exact,
the last user turn matched semantically). ``llm_string`` (the model and its
params) is part of the scope and must match exactly. Generations are stored with
their fields (messages through LangChain's ``message_to_dict``) and come back equal. ``clear()`` removes this
adapter's namespace (default ``"langchain"``), not the rest of the cache.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Coroutine, Iterable, Sequence
from typing import Any, TypeVar

from ..config import UNSET
from ..errors import ConfigurationError, InvalidInputError, MissingDependencyError
from ..keys import Request, build_request

try:
    from langchain_core.caches import RETURN_VAL_TYPE, BaseCache
    from langchain_core.load import dumps, loads
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingDependencyError("langchain-core", "langchain") from exc

__all__ = ["SemcacheLangChainCache"]

T = TypeVar("T")

#: The entry metadata ``format`` of stored LangChain generations.
FORMAT = "langchain.generations"


def _messages(prompt: str) -> list[dict[str, Any]] | None:
    """The OpenAI-style messages a chat model's serialised prompt holds, or ``None`` for plain text."""
    if not prompt.startswith("["):
        return None
    try:
        raw = json.loads(prompt)
    except ValueError:
        return None
    if not isinstance(raw, list) or not raw:
        return None
    import langchain_core.messages as lc_messages

    # rebuild the message objects from LangChain's serialised form (what load.loads
    # does, without its beta warning on every lookup), then let LangChain convert them
    msgs = []
    for item in raw:
        ident = item.get("id") if isinstance(item, dict) and item.get("type") == "constructor" else None
        name = ident[-1] if isinstance(ident, list) and ident else None
        if name not in _MESSAGE_CLASSES or not isinstance(item.get("kwargs"), dict):
            return None
        try:
            msgs.append(getattr(lc_messages, name)(**item["kwargs"]))
        except Exception:  # noqa: BLE001 - not a message list after all: match the text as it is
            return None
    return list(lc_messages.convert_to_openai_messages(msgs))


_MESSAGE_CLASSES = frozenset(
    f"{kind}Message{chunk}"
    for kind in ("Human", "AI", "System", "Tool", "Function", "Chat")
    for chunk in ("", "Chunk")
)


def _generation_to_dict(g: Any) -> dict[str, Any]:
    from langchain_core.messages import message_to_dict
    from langchain_core.outputs import ChatGeneration, Generation

    kind = type(g).__name__
    if type(g) in (ChatGeneration,):
        return {"kind": kind, "message": message_to_dict(g.message), "generation_info": g.generation_info}
    if type(g) in (Generation,):
        return {"kind": kind, "text": g.text, "generation_info": g.generation_info}
    # anything else (chunks, subclasses): LangChain's own serialisation
    return {"kind": "lc", "lc": dumps(g)}


def _generation_from_dict(d: Any) -> Any:
    from langchain_core.messages import messages_from_dict
    from langchain_core.outputs import ChatGeneration, Generation

    if d.get("kind") == "ChatGeneration":
        return ChatGeneration(message=messages_from_dict([d["message"]])[0], generation_info=d.get("generation_info"))
    if d.get("kind") == "Generation":
        return Generation(text=d["text"], generation_info=d.get("generation_info"))
    return loads(d["lc"], allowed_objects="core")


def _usage(generations: Sequence[Any]) -> dict[str, int] | None:
    total = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    seen = False
    for g in generations:
        um = getattr(getattr(g, "message", None), "usage_metadata", None)
        if um:
            seen = True
            total["prompt_tokens"] += int(um.get("input_tokens", 0))
            total["completion_tokens"] += int(um.get("output_tokens", 0))
            total["total_tokens"] += int(um.get("total_tokens", 0))
    return total if seen else None


class SemcacheLangChainCache(BaseCache):
    """LangChain's ``BaseCache`` on a :class:`~semcache.SemanticCache` or :class:`~semcache.AsyncSemanticCache`.

    With an :class:`~semcache.AsyncSemanticCache`, ``alookup``/``aupdate``/``aclear`` use
    its awaitable methods; the sync ``lookup``/``update``/``clear`` run them to completion
    in a fresh event loop, so they must not be called from inside a running one.

    Args:
        cache: the semcache cache (an async one serves ``alookup``/``aupdate`` natively).
        namespace: the namespace its entries live in (``clear()`` removes exactly these).
        semantic: ``False`` for exact matching only.
        threshold: the similarity threshold for lookups (default: the cache's).
        ttl_seconds: the TTL of stored generations (default: the cache's).
        tags: tags put on every stored entry.
    """

    def __init__(
        self,
        cache: Any,
        *,
        namespace: str = "langchain",
        semantic: bool = True,
        threshold: Any = UNSET,
        ttl_seconds: Any = UNSET,
        tags: Iterable[str] = (),
    ) -> None:
        if not namespace or not isinstance(namespace, str):
            raise InvalidInputError("namespace must be a non-empty string")
        # an AsyncSemanticCache (its lookup is awaitable), told apart by its API
        is_async = inspect.iscoroutinefunction(getattr(cache, "lookup", None))
        self.acache: Any = cache if is_async else None
        self.cache: Any = None if is_async else cache
        self.namespace = namespace
        self.semantic = semantic
        self.threshold = threshold
        self.ttl_seconds = ttl_seconds
        self.tags = tuple(tags)

    def _request(self, prompt: str, llm_string: str) -> Request:
        messages = _messages(prompt)
        params = {"llm_string": llm_string}
        if messages is not None:
            try:
                return build_request(messages=messages, params=params, namespace=self.namespace)
            except InvalidInputError:
                pass  # e.g. no user turn: fall back to the serialised prompt as text
        return build_request(prompt, params=params, namespace=self.namespace)

    @staticmethod
    def _decode(value: Any) -> list[Any] | None:
        if not isinstance(value, dict) or not isinstance(value.get("generations"), list):
            return None
        return [_generation_from_dict(g) for g in value["generations"]]

    def _encode(self, return_val: RETURN_VAL_TYPE) -> tuple[dict[str, Any], dict[str, Any]]:
        meta: dict[str, Any] = {"format": FORMAT}
        usage = _usage(return_val)
        if usage:
            meta["usage"] = usage
        return {"generations": [_generation_to_dict(g) for g in return_val]}, meta

    @staticmethod
    def _blocking(coro: Coroutine[Any, Any, T]) -> T:
        """Run an async cache call from sync code (a thread with no running event loop)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coro)
        coro.close()
        raise ConfigurationError(
            "the sync LangChain cache API was called inside a running event loop on an "
            "AsyncSemanticCache: use the async API (ainvoke), or a SemanticCache"
        )

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        """Look up generations for ``prompt`` under ``llm_string`` (exact, then semantic)."""
        if self.acache is not None:
            return self._blocking(self.alookup(prompt, llm_string))
        hit = self.cache.lookup(self._request(prompt, llm_string), threshold=self.threshold, semantic=self.semantic)
        return None if hit is None else self._decode(hit.value)

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        """Store ``return_val`` for ``prompt`` under ``llm_string``."""
        if self.acache is not None:
            return self._blocking(self.aupdate(prompt, llm_string, return_val))
        value, meta = self._encode(return_val)
        self.cache.store(
            self._request(prompt, llm_string), value, ttl_seconds=self.ttl_seconds, tags=self.tags, metadata=meta
        )

    def clear(self, **kwargs: Any) -> None:
        """Remove every entry this adapter stored (its namespace)."""
        if self.acache is not None:
            return self._blocking(self.aclear(**kwargs))
        self.cache.invalidate(namespace=self.namespace)

    async def alookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        """Async :meth:`lookup` (off the event loop)."""
        if self.acache is None:
            return await super().alookup(prompt, llm_string)
        hit = await self.acache.lookup(
            self._request(prompt, llm_string), threshold=self.threshold, semantic=self.semantic
        )
        return None if hit is None else self._decode(hit.value)

    async def aupdate(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        """Async :meth:`update` (off the event loop)."""
        if self.acache is None:
            return await super().aupdate(prompt, llm_string, return_val)
        value, meta = self._encode(return_val)
        await self.acache.store(
            self._request(prompt, llm_string), value, ttl_seconds=self.ttl_seconds, tags=self.tags, metadata=meta
        )
        return None

    async def aclear(self, **kwargs: Any) -> None:
        """Async :meth:`clear`."""
        if self.acache is None:
            return await super().aclear(**kwargs)
        await self.acache.invalidate(namespace=self.namespace)
        return None
