"""AsyncSemanticCache offers every public method of SemanticCache, with the same parameters."""

from __future__ import annotations

import inspect

from semcache import AsyncSemanticCache, SemanticCache

#: Sync-only by nature: context management and the blocking close (``aclose`` is the twin).
_NOT_TWINNED = {"close"}


def _public(cls: type) -> dict[str, object]:
    return {n: getattr(cls, n) for n in dir(cls) if not n.startswith("_") and n not in _NOT_TWINNED}


def test_every_public_method_has_an_async_twin_with_the_same_parameters():
    sync, aio = _public(SemanticCache), _public(AsyncSemanticCache)
    missing = sorted(set(sync) - set(aio))
    assert not missing, f"AsyncSemanticCache lacks {missing}"
    for name, member in sync.items():
        if isinstance(member, property):
            assert isinstance(aio[name], property), name
            continue
        if not callable(member):
            continue
        want = [(p.name, p.kind, p.default) for p in inspect.signature(member).parameters.values()]
        got = [(p.name, p.kind, p.default) for p in inspect.signature(aio[name]).parameters.values()]  # type: ignore[arg-type]
        assert got == want, f"{name}: {got} != {want}"


def test_blocking_methods_are_awaitable_and_pure_ones_are_not():
    pure = {"request", "threshold_for", "embeddable", "count_saved_call", "stats", "namespace_stats", "namespace_rows", "track_namespaces", "lookup_memory", "cached", "wrap", "options"}
    for name, member in _public(AsyncSemanticCache).items():
        if isinstance(member, property) or not callable(member):
            continue
        assert inspect.iscoroutinefunction(member) == (name not in pure), name
