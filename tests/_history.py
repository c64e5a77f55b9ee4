"""Histories of cache calls, and a checker for semcache's consistency contract.

A *history* is every call made to the cache during a run: which process and
thread made it, the operation (``set``, ``get``, ``invalidate``, ``delete``,
``flush``), the entry id (the exact key), the value written or read, when it was
invoked and when it returned (``time.time()``, one clock for every process on the
machine), and any exception. Every ``set`` writes a value no other ``set`` writes
(``"p0:t1:42"``), so a value read names the write it came from.

The checker judges a history by real time alone (what returned before what was
invoked), per key:

* **stale** -- a read returned the value of write *w* although another write *m*
  of the key was invoked after *w* returned and returned before the read began.
* **resurrected** -- the same with *m* an ``invalidate``/``delete``/``flush``.
* **phantom** -- a read returned a value no ``set`` of that key wrote, or one
  whose ``set`` was invoked only after the read returned.
* **lost_write** -- a read missed although a write *w* had returned before it began
  and no removal could have come after *w*; excused (and counted apart) when
  a tier was down at some moment between *w*'s invocation and the read's return
  (a miss is allowed under faults; a stale or resurrected value never is).
* **exception** -- a call raised (other than an allowed, documented typed error).

"Before the read began" is strict within a process; a write or removal made in
another process binds a read only once ``replica_bound`` seconds have passed
since it returned (replicas hear of it over pub/sub, or their L1 copies expire).
A call that raised may or may not have taken effect: its value may be read at
any time after its invocation, its removal may explain a miss, and it binds
nothing.

The workload (:func:`run_workload`) runs threads in several ``spawn``-ed processes,
each with its own :class:`~semcache.SemanticCache` on the same tiers, doing
random ``set``/``get``/``invalidate``/``delete``/``flush`` calls over a small key
space, while the parent may inject faults (:class:`FaultInjector`). With
``WorkloadSpec.trace`` each call also records what it saw on its way (:attr:`Op.detail`:
the path a read took, each tier's answer, the index search's candidates, the versions
written) and each process what its change-log follower did to its L1; :func:`story`
prints all of it for the key of a violation.
"""

from __future__ import annotations

import bisect
import json
import multiprocessing as mp
import os
import random
import re
import threading
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_ALLOWED_ERRORS",
    "FaultInjector",
    "FaultWindow",
    "Op",
    "Report",
    "Violation",
    "WorkloadSpec",
    "check",
    "context",
    "format_op",
    "run_workload",
    "story",
]

INF = float("inf")
WRITE = "set"
READ = "get"
REMOVALS = ("invalidate", "delete", "flush")

#: Typed errors a call may raise without breaking the contract, by operation. An
#: invalidation that could not reach every tier may say so with BackendUnavailable
#: (the CLI reports it as "unreachable"); reads and writes never raise under
#: ``on_backend_error="miss"``.
DEFAULT_ALLOWED_ERRORS: Mapping[str, tuple[str, ...]] = {
    "invalidate": ("BackendUnavailable",),
    "delete": ("BackendUnavailable",),
    "flush": ("BackendUnavailable",),
}


@dataclass(frozen=True)
class Op:
    """One call. ``key`` is ``None`` for ``flush``; ``value`` is the value written
    (``set``) or read (``get``, ``None`` on a miss); ``ret`` is ``None`` and
    ``error`` the exception's class name when the call raised."""

    process: str
    thread: int
    op: str
    key: str | None
    value: str | None
    invoke: float
    ret: float | None
    error: str | None = None
    #: The tier a hit came from (diagnostics only).
    tier: str | None = None
    #: What the call saw on its way (diagnostics only, with ``WorkloadSpec.trace``): the
    #: path a read took, each tier's answer, the index search's, the versions written.
    #: Versions and times are written ``@<seconds>`` (shown relative to the run's start).
    detail: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.ret is not None

    @property
    def end(self) -> float:
        """When the call's effect is certainly over (never, for a call that raised)."""
        return self.ret if self.ok and self.ret is not None else INF

    def to_json(self) -> list[Any]:
        return [self.process, self.thread, self.op, self.key, self.value, self.invoke, self.ret, self.error, self.tier, self.detail]

    @classmethod
    def from_json(cls, row: Sequence[Any]) -> Op:
        return cls(*row)


@dataclass(frozen=True)
class FaultWindow:
    """A tier was (possibly) down from ``start`` until ``end``."""

    kind: str
    start: float
    end: float


@dataclass
class Violation:
    kind: str
    key: str | None
    op: Op
    #: The write the value came from, and the write/removal that made it illegal.
    source: Op | None = None
    cause: Op | None = None

    def describe(self, t0: float = 0.0) -> str:
        lines = [f"{self.kind} on key {self.key}:"]
        if self.source is not None:
            lines.append("  wrote:   " + format_op(self.source, t0))
        if self.cause is not None:
            lines.append("  then:    " + format_op(self.cause, t0))
        lines.append(("  read:    " if self.op.op == READ else "  call:    ") + format_op(self.op, t0))
        return "\n".join(lines)


@dataclass
class Report:
    ops: int
    op_counts: Counter[str]
    violations: list[Violation]
    excused_misses: int = 0
    hits: int = 0
    misses: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    #: The call that took longest to return (latency is not part of the contract).
    slowest: Op | None = None

    @property
    def by_kind(self) -> Counter[str]:
        return Counter(v.kind for v in self.violations)

    def summary(self) -> str:
        kinds = ", ".join(f"{k}={n}" for k, n in sorted(self.by_kind.items())) or "none"
        ops = ", ".join(f"{k}={n}" for k, n in sorted(self.op_counts.items()))
        return (
            f"{self.ops} ops ({ops}); reads: {self.hits} hits, {self.misses} misses "
            f"({self.excused_misses} excused by a fault); violations: {len(self.violations)} ({kinds})"
            + ("" if self.slowest is None else f"; slowest call {self.slowest.end - self.slowest.invoke:.2f}s ({self.slowest.op})")
        )

    def examples(self, per_kind: int = 2, t0: float = 0.0) -> str:
        out: list[str] = []
        seen: Counter[str] = Counter()
        for v in self.violations:
            if seen[v.kind] < per_kind:
                seen[v.kind] += 1
                out.append(v.describe(t0))
        return "\n".join(out)


def _relative(text: str, t0: float) -> str:
    """``@<seconds>`` (a version or a time) as seconds since ``t0``."""
    return re.sub(r"@(\d+(?:\.\d+)?)", lambda m: f"@{float(m.group(1)) - t0:.6f}", text)


def format_op(op: Op, t0: float = 0.0) -> str:
    ret = "raised " + str(op.error) if op.error else f"{(op.ret or 0) - t0:9.4f}"
    arg = "" if op.key is None else f" {op.key[:8]}"
    if op.op == WRITE:
        arg += f" := {op.value}"
    elif op.op == READ:
        arg += " -> " + ("miss" if op.value is None else f"{op.value}") + (f" [{op.tier}]" if op.tier else "")
    detail = "" if not op.detail else "   {" + _relative(op.detail, t0) + "}"
    return f"{op.process}/t{op.thread} {op.op}{arg}  [{op.invoke - t0:9.4f} .. {ret}]{detail}"


# -- the checker -------------------------------------------------------------------


class _Latest:
    """Ops of one process sorted by return time, with a running maximum of their
    invocation times: "of the ops that returned before t, the last one invoked"."""

    def __init__(self, ops: Iterable[Op]) -> None:
        self.ops = sorted((o for o in ops if o.ok), key=lambda o: o.end)
        self.rets = [o.end for o in self.ops]
        self.best: list[Op] = []
        for o in self.ops:
            if not self.best or o.invoke > self.best[-1].invoke:
                self.best.append(o)
            else:
                self.best.append(self.best[-1])

    def last_invoked_before(self, t: float) -> Op | None:
        """Of the ops that returned strictly before ``t``, the one invoked last."""
        i = bisect.bisect_left(self.rets, t)
        return self.best[i - 1] if i else None


def _visible(groups: Mapping[str, _Latest], reader: Op, bound: float) -> Op | None:
    """Of the ops (in any process) that bind ``reader``, the one invoked last."""
    best: Op | None = None
    for proc, latest in groups.items():
        cutoff = reader.invoke if proc == reader.process else reader.invoke - bound
        o = latest.last_invoked_before(cutoff)
        if o is not None and (best is None or o.invoke > best.invoke):
            best = o
    return best


def check(
    history: Iterable[Op],
    *,
    replica_bound: float = 2.0,
    faults: Sequence[FaultWindow] = (),
    fault_grace: float = 0.0,
    allowed_errors: Mapping[str, tuple[str, ...]] = DEFAULT_ALLOWED_ERRORS,
) -> Report:
    """Check a history against the contract; see the module docstring.

    ``faults`` are the windows in which a tier was down; each is stretched by
    ``fault_grace`` seconds after it ends (the cache's back-off may skip a tier
    that long after it came back). Only misses are ever excused by a fault.
    """
    ops = list(history)
    violations: list[Violation] = []
    errors: Counter[str] = Counter()
    for o in ops:
        if o.error is not None:
            errors[f"{o.op}:{o.error}"] += 1
            if o.error not in allowed_errors.get(o.op, ()):
                violations.append(Violation("exception", o.key, o))

    windows = sorted((f.start, f.end + fault_grace) for f in faults)

    def faulty(a: float, b: float) -> bool:
        return any(s <= b and a <= e for s, e in windows)

    flushes = [o for o in ops if o.op == "flush"]
    by_key: dict[str, list[Op]] = defaultdict(list)
    for o in ops:
        if o.key is not None and o.op in (WRITE, READ, "invalidate", "delete"):
            by_key[o.key].append(o)

    hits = misses = excused = 0
    for key, key_ops in by_key.items():
        writes = [o for o in key_ops if o.op == WRITE]
        removals = [o for o in key_ops if o.op in REMOVALS] + flushes
        mutations = writes + removals
        by_value = {w.value: w for w in writes}

        def group(items: list[Op]) -> dict[str, _Latest]:
            procs: dict[str, list[Op]] = defaultdict(list)
            for it in items:
                procs[it.process].append(it)
            return {p: _Latest(v) for p, v in procs.items()}

        mut_groups = group(mutations)
        write_groups = group(writes)
        # removals by invocation, with the running maximum of their end: "did any
        # removal invoked before t end after s"
        rem_sorted = sorted(removals, key=lambda o: o.invoke)
        rem_inv = [o.invoke for o in rem_sorted]
        rem_max_end: list[float] = []
        for o in rem_sorted:
            rem_max_end.append(max(o.end, rem_max_end[-1]) if rem_max_end else o.end)

        for r in key_ops:
            if r.op != READ or not r.ok:
                continue
            assert r.ret is not None
            if r.value is not None:
                hits += 1
                w = by_value.get(r.value)
                if w is None or w.invoke > r.ret:
                    violations.append(Violation("phantom", key, r, w))
                    continue
                m = _visible(mut_groups, r, replica_bound)
                if m is not None and m is not w and m.invoke > w.end:
                    violations.append(Violation("stale" if m.op == WRITE else "resurrected", key, r, w, m))
                continue
            misses += 1
            w = _visible(write_groups, r, replica_bound)
            if w is None:
                continue
            i = bisect.bisect_left(rem_inv, r.ret)
            if i and rem_max_end[i - 1] > w.invoke:
                continue  # a removal may have come after w and before the read
            if faulty(w.invoke, r.ret):
                excused += 1
                continue
            violations.append(Violation("lost_write", key, r, w))

    violations.sort(key=lambda v: v.op.invoke)
    return Report(
        ops=len(ops),
        op_counts=Counter(o.op for o in ops),
        violations=violations,
        excused_misses=excused,
        hits=hits,
        misses=misses,
        errors=errors,
        slowest=max((o for o in ops if o.ok), key=lambda o: o.end - o.invoke, default=None),
    )


# -- the workload --------------------------------------------------------------------


@dataclass
class WorkloadSpec:
    """What every worker process builds and does (picklable: it crosses ``spawn``)."""

    sql_url: str
    redis_url: str | None = None
    redis_prefix: str = "semcache-history:"
    #: ``redis_url`` names a Redis Cluster's nodes (comma-separated).
    redis_cluster: bool = False
    #: Semantic matching on (a toy embedder: each prompt its own random direction), and
    #: half of the reads made by the semantic path alone (index search, then the entry
    #: read by key), so that the index's view is checked like any other read.
    semantic: bool = False
    #: ``IndexConfig.backend`` when ``semantic``.
    index: str = "auto"
    #: With ``semantic``: the share of reads made by the semantic path alone.
    semantic_share: float = 0.5
    #: Record what each call saw (:attr:`Op.detail`) and, per process, the change-log
    #: rows applied to its L1 (:attr:`RunResult.applied`): diagnostics, a little slower.
    trace: bool = True
    l1_max_entries: int = 10_000
    l1_max_ttl_seconds: float | None = None
    processes: int = 2
    threads: int = 2
    keys: int = 20
    #: Stop after this many seconds, or this many ops per thread, whichever first.
    duration: float = 20.0
    ops_per_thread: int = 1_000_000
    seed: int = 1
    #: Relative weights of the operations.
    mix: Mapping[str, float] = field(
        default_factory=lambda: {"get": 55, "set": 30, "invalidate": 9, "delete": 5, "flush": 1}
    )
    backoff_initial_seconds: float = 0.1
    backoff_max_seconds: float = 0.5
    redis_socket_timeout_seconds: float = 0.5
    model: str = "history-model"

    def prompts(self) -> list[str]:
        return [f"consistency question number {i}: what is {i} squared?" for i in range(self.keys)]


class DistinctEmbedder:
    """A toy embedder for plumbing: each text its own seeded random unit vector (32
    dimensions), so only the same prompt reaches a similarity of 0.95."""

    dim = 32
    model_id = "distinct-32"
    max_tokens = 512

    def embed(self, texts: Any) -> Any:
        import zlib

        import numpy as np

        out = np.stack([np.random.default_rng(zlib.crc32(t.encode())).normal(size=self.dim) for t in texts])
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)

    def count_tokens(self, text: str) -> int:
        return len(text.split())


def _ver(v: Any) -> str:
    """A version (nanoseconds) or a time as ``@<seconds>``, exactly."""
    if isinstance(v, int):
        return f"@{v // 10**9}.{v % 10**9:09d}"
    return f"@{float(v):.6f}"


def _desc(got: Any) -> str:
    if got is None:
        return "none"
    if isinstance(got, int):
        return "tomb" + _ver(got)
    try:
        value = got.value
    except Exception:  # noqa: BLE001 - diagnostics never fail a call
        value = "?"
    return f"{value}{_ver(got.version)}"


class _Tracer:
    """Notes what each call of one process saw on its way (tier answers, the index
    search, the versions written), and what the change-log follower did to L1."""

    def __init__(self, cache: Any) -> None:
        self.local = threading.local()
        #: [time, what, key, version, result] of the L1 changes made by other threads
        #: than the calls' (the change-log follower).
        self.applied: list[list[Any]] = []
        #: Errors the index search swallowed (it answers them with no candidates).
        self.errors: list[str] = []
        core = cache._core
        for slot in core.chain.slots:
            self._wrap_tier(slot.name, slot.backend)
        if core.index is not None:
            self._wrap_search(core.index)

    def begin(self) -> None:
        self.local.buf = []

    def end(self) -> str | None:
        buf = getattr(self.local, "buf", None)
        self.local.buf = None
        return "; ".join(buf) if buf else None

    def note(self, text: str) -> bool:
        buf = getattr(self.local, "buf", None)
        if buf is None:
            return False
        buf.append(text)
        return True

    def _background(self, what: str, key: Any, version: Any, result: Any) -> None:
        self.applied.append([time.time(), what, key, version, result, threading.current_thread().name])

    def _wrap_tier(self, name: str, b: Any) -> None:
        tr = self
        if hasattr(b, "get"):
            get = b.get

            def traced_get(key: str, now: float) -> Any:
                got = get(key, now)
                tr.note(f"{name}.get={_desc(got)}")
                return got

            b.get = traced_get
        if hasattr(b, "read"):
            read = b.read

            def traced_read(key: str, now: float) -> Any:
                got = read(key, now)
                tr.note(f"{name}.read={_desc(got)}")
                return got

            b.read = traced_read
        set_ = b.set

        def traced_set(entry: Any, now: float, **kw: Any) -> Any:
            kept = set_(entry, now, **kw)
            tr.note(f"{name}.set{_ver(entry.version)}{'' if kw.get('token') is None else '(promote)'}={'kept' if kept else 'refused'}")
            return kept

        b.set = traced_set
        if name != "l1" and hasattr(b, "set_many"):
            set_many = b.set_many

            def traced_set_many(entries: Any, now: float) -> Any:
                written = set_many(entries, now)
                outcome = "done" if written is None else "written" if written else "refused"
                tr.note(f"{name}.set_many{''.join(_ver(e.version) for e in entries)}={outcome}")
                return written

            b.set_many = traced_set_many
        delete = b.delete

        def traced_delete(keys: Any, version: Any = None) -> Any:
            n = delete(keys, version)
            if not tr.note(f"{name}.delete{'' if version is None else _ver(version)}={n}") and name == "l1":
                for k in keys:
                    tr._background("delete", k, version, n)
            return n

        b.delete = traced_delete
        invalidate = b.invalidate

        def traced_invalidate(selector: Any, now: float, version: Any = None) -> Any:
            gone = invalidate(selector, now, version)
            what = "flush" if selector.all else "invalidate"
            if not tr.note(f"{name}.{what}{'' if version is None else _ver(version)}={len(gone)}") and name == "l1":
                tr._background(what, None if selector.all else list(selector.keys), version, len(gone))
            return gone

        b.invalidate = traced_invalidate
        if name == "l1":
            clear = b.clear

            def traced_clear() -> None:
                clear()
                tr._background("clear", None, None, None)

            b.clear = traced_clear

    def _wrap_search(self, index: Any) -> None:
        tr = self
        store = getattr(index, "store", None)
        if store is not None and hasattr(store, "vector_search"):
            # the index answers an error with no candidates: note the error itself
            vector_search = store.vector_search

            def traced_vector_search(*args: Any, **kwargs: Any) -> Any:
                try:
                    return vector_search(*args, **kwargs)
                except Exception as exc:
                    tr.note(f"vector_search raised {type(exc).__name__}: {str(exc)[:160]}")
                    tr.errors.append(f"{type(exc).__name__}: {exc}"[:500])
                    raise

            store.vector_search = traced_vector_search
        search = index.search

        def traced_search(scope: str, vector: Any, k: int) -> Any:
            found = search(scope, vector, k)
            near = ",".join(f"{key[:8]}:{sim:.3f}" for key, sim in found if sim > 0.5)
            tr.note(f"search(k={k})=[{near}]/{len(found)}")
            return found

        index.search = traced_search


def _build_cache(spec: WorkloadSpec) -> Any:
    from semcache import CacheConfig, MemoryConfig, Policy, RedisConfig, SemanticCache, SQLConfig

    config = CacheConfig(
        memory=MemoryConfig(max_entries=spec.l1_max_entries, max_ttl_seconds=spec.l1_max_ttl_seconds),
        redis=None
        if spec.redis_url is None
        else RedisConfig(
            url=spec.redis_url,
            prefix=spec.redis_prefix,
            cluster=spec.redis_cluster,
            socket_timeout_seconds=spec.redis_socket_timeout_seconds,
        ),
        sql=SQLConfig(url=spec.sql_url),
        embedder=DistinctEmbedder() if spec.semantic else None,
        index=spec.index,
        policy=Policy(
            semantic=spec.semantic,
            similarity_threshold=0.95,
            verifier=None,
            sweep_interval_seconds=None,
            backoff_initial_seconds=spec.backoff_initial_seconds,
            backoff_max_seconds=spec.backoff_max_seconds,
        ),
    )
    return SemanticCache(config)


def _worker(spec: WorkloadSpec, index: int, out_path: str, ready: Any, go: Any, stop: Any) -> None:
    """One process: open a cache, wait for ``go``, run the threads, write the history."""
    import logging

    # tier outages are the point of the run: keep their warnings out of the output
    logging.getLogger("semcache").setLevel(logging.ERROR)
    name = f"p{index}"
    try:
        cache = _build_cache(spec).open()
        prompts = spec.prompts()
        keys = [cache.request(p, model=spec.model).key for p in prompts]
        tracer = _Tracer(cache) if spec.trace else None
    except BaseException:
        Path(out_path).write_text(json.dumps({"fatal": traceback.format_exc()}))
        ready.set()
        raise
    ops_names = list(spec.mix)
    weights = [spec.mix[o] for o in ops_names]
    records: list[list[list[Any]]] = [[] for _ in range(spec.threads)]
    samples: list[str] = []

    def run(t: int) -> None:
        rng = random.Random(spec.seed * 1_000_003 + index * 1009 + t)
        rec = records[t].append
        counter = 0
        deadline = time.time() + spec.duration
        for _ in range(spec.ops_per_thread):
            if stop.is_set() or time.time() > deadline:
                return
            op = rng.choices(ops_names, weights)[0]
            k = rng.randrange(len(prompts))
            key = keys[k]
            value: str | None = None
            tier: str | None = None
            error: str | None = None
            detail: str | None = None
            if op == WRITE:
                counter += 1
                value = f"{name}:t{t}:{counter}"
            semantic_read = op == READ and spec.semantic and rng.random() < spec.semantic_share
            if tracer is not None:
                tracer.begin()
            invoke = time.time()
            try:
                if op == WRITE:
                    written = cache.set(prompts[k], value, model=spec.model)
                    if tracer is not None:
                        tracer.note(f"version{_ver(written.version)}")
                elif semantic_read:
                    hit = cache.lookup(cache.request(prompts[k], model=spec.model), exact=False)
                    if hit is not None:
                        if hit.entry.key != key:
                            raise AssertionError(f"a semantic read of {key} found {hit.entry.key}")
                        value, tier = hit.value, f"{hit.tier} (semantic)"
                elif op == READ:
                    hit = cache.get(prompts[k], model=spec.model)
                    if hit is not None:
                        value, tier = hit.value, hit.tier
                elif op == "invalidate":
                    cache.invalidate(key=key)
                elif op == "delete":
                    cache.delete(key)
                else:
                    cache.flush()
                    key = None
            except Exception as exc:  # noqa: BLE001 - every exception is part of the history
                error = type(exc).__name__
                if len(samples) < 5:
                    samples.append(traceback.format_exc())
            ret = None if error else time.time()
            if tracer is not None:
                detail = tracer.end()
                if op == READ:
                    detail = ("semantic: " if semantic_read else "get: ") + (detail or "")
            rec([name, t, op, key, value, invoke, ret, error, tier, detail])

    threads = [threading.Thread(target=run, args=(t,), name=f"history-{name}-t{t}") for t in range(spec.threads)]
    ready.set()
    go.wait()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    stats = cache.stats()
    stats["calls_done_at"] = time.time()
    if tracer is not None:
        stats["search_errors"] = tracer.errors[:5] + ([f"... {len(tracer.errors)} in all"] if len(tracer.errors) > 5 else [])
    try:
        cache.close()
    except Exception:  # noqa: BLE001
        samples.append(traceback.format_exc())
    stats["closed_at"] = time.time()
    Path(out_path).write_text(
        json.dumps(
            {
                "ops": [row for rs in records for row in rs],
                "samples": samples,
                "applied": [] if tracer is None else tracer.applied,
                "stats": {
                    k: stats[k]
                    for k in ("hits", "misses", "sets", "invalidated", "evictions", "tier_errors", "search_errors", "calls_done_at", "closed_at")
                    if k in stats
                },
            }
        )
    )


@dataclass
class RunResult:
    history: list[Op]
    faults: list[FaultWindow]
    elapsed: float
    t0: float
    samples: list[str]
    stats: list[dict[str, Any]]
    #: Per process, what its change-log follower did to its L1 (with ``WorkloadSpec.trace``):
    #: ``[time, what, key(s), version, result, thread]``.
    applied: dict[str, list[list[Any]]] = field(default_factory=dict)


def run_workload(
    spec: WorkloadSpec,
    workdir: str | os.PathLike[str],
    *,
    injector: FaultInjector | None = None,
    start_timeout: float = 120.0,
) -> RunResult:
    """Spawn ``spec.processes`` workers, start them together, run ``injector`` (if
    any) meanwhile in this process, and gather every history."""
    ctx = mp.get_context("spawn")
    ready = [ctx.Event() for _ in range(spec.processes)]
    go, stop = ctx.Event(), ctx.Event()
    paths = [os.path.join(os.fspath(workdir), f"history-p{i}.json") for i in range(spec.processes)]
    procs = [
        ctx.Process(target=_worker, args=(spec, i, paths[i], ready[i], go, stop), name=f"history-p{i}", daemon=True)
        for i in range(spec.processes)
    ]
    for p in procs:
        p.start()
    try:
        deadline = time.monotonic() + start_timeout
        for p, ev in zip(procs, ready):
            while not ev.wait(0.2):
                if not p.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"worker {p.name} did not start (exit code {p.exitcode})")
        for path in paths:
            if os.path.exists(path):
                raise RuntimeError("worker failed to open its cache:\n" + json.loads(Path(path).read_text())["fatal"])
        t0 = time.time()
        go.set()
        faults: list[FaultWindow] = []
        if injector is not None:
            # faults stop when the calls do (an op budget may end the run early)
            done = threading.Event()

            def watch() -> None:
                # wait on the processes' sentinels, never join them here: two threads
                # joining one child race in waitpid, and the loser sees no exit code
                from multiprocessing.connection import wait

                pending = [p.sentinel for p in procs]
                while pending:
                    ready = wait(pending)
                    pending = [s for s in pending if s not in ready]
                done.set()

            threading.Thread(target=watch, name="history-watch", daemon=True).start()
            faults = injector.run(until=t0 + spec.duration, stop=done)
        for p in procs:
            p.join(spec.duration + 120)
        elapsed = time.time() - t0
    finally:
        stop.set()
        for p in procs:
            if p.is_alive():
                p.join(10)
            if p.is_alive():
                p.kill()
                p.join(5)
    history: list[Op] = []
    samples: list[str] = []
    stats: list[dict[str, Any]] = []
    applied: dict[str, list[list[Any]]] = {}
    for i, (p, path) in enumerate(zip(procs, paths)):
        if p.exitcode != 0 or not os.path.exists(path):
            raise RuntimeError(f"worker {p.name} exited with {p.exitcode} without a history")
        data = json.loads(Path(path).read_text())
        history.extend(Op.from_json(row) for row in data["ops"])
        samples.extend(data["samples"])
        stats.append(data["stats"])
        applied[f"p{i}"] = data.get("applied", [])
    return RunResult(history, faults, elapsed, t0, samples, stats, applied)


# -- faults --------------------------------------------------------------------------


class FaultInjector:
    """Runs faults one after another, paced by ``pause`` seconds, until ``until``.

    ``faults`` maps a name to a callable that causes the fault and returns once the
    server is back. Each fault's window is from just before it was caused to just
    after the server answered again.
    """

    def __init__(
        self,
        faults: Mapping[str, Callable[[], None]],
        *,
        pause: float = 2.0,
        first_after: float = 1.0,
        seed: int = 7,
    ) -> None:
        self.faults = dict(faults)
        self.pause = pause
        self.first_after = first_after
        self.rng = random.Random(seed)
        self.counts: Counter[str] = Counter()

    def run(self, *, until: float, stop: Any = None) -> list[FaultWindow]:
        """Inject faults until ``until`` or until ``stop`` (an Event) is set."""
        windows: list[FaultWindow] = []
        names = list(self.faults)
        waiter = stop if stop is not None else threading.Event()
        waiter.wait(self.first_after)  # pacing only: the workers are already running
        i = 0
        while time.time() < until - 1.0 and not waiter.is_set():
            name = names[i % len(names)]
            i += 1
            start = time.time()
            try:
                self.faults[name]()
            finally:
                windows.append(FaultWindow(name, start, time.time()))
            self.counts[name] += 1
            waiter.wait(self.pause * (0.5 + self.rng.random()))
        return windows


def context(
    history: Iterable[Op], v: Violation, *, before: float = 0.02, t0: float = 0.0, max_rows: int = 30
) -> str:
    """The calls on the violation's key (and flushes) from shortly before the call
    that made it one until the read returned, in invocation order, with the write
    the value came from; marked ``>>``: the source, the cause and the read."""
    anchor = v.cause or v.source or v.op
    start = anchor.invoke - before
    end = v.op.ret or v.op.invoke
    marked = [o for o in (v.source, v.cause, v.op) if o is not None]
    rows = [
        o for o in history
        if (o.key == v.key or o.op == "flush") and o.invoke <= end and o.end >= start and o not in marked
    ]
    rows.sort(key=lambda o: o.invoke)
    rows = rows[-max_rows:]
    rows = sorted(rows + marked, key=lambda o: o.invoke)
    return "\n".join(("  >> " if o in marked else "     ") + format_op(o, t0) for o in rows)


def story(result: Any, v: Violation, *, before: float = 1.5, max_rows: int = 80) -> str:
    """Everything known about the violation's key from ``before`` seconds before the
    write it concerns until the read returned: every call on the key (and flushes) with
    what it saw, and what the reading process's change-log follower did to its L1."""
    t0 = result.t0
    anchor = v.source or v.cause or v.op
    start = anchor.invoke - before
    end = v.op.ret or v.op.invoke
    marked = [o for o in (v.source, v.cause, v.op) if o is not None]
    rows: list[tuple[float, str]] = []
    for o in result.history:
        if (o.key == v.key or o.op == "flush") and o.invoke <= end and o.end >= start:
            rows.append((o.invoke, ("  >> " if o in marked else "     ") + format_op(o, t0)))
    for t, what, keys, version, n, thread in result.applied.get(v.op.process, ()):
        if start <= t <= end and (keys is None or keys == v.key or (isinstance(keys, list) and v.key in keys)):
            ver = "" if version is None else _relative(_ver(version), t0)
            rows.append((t, f"     {v.op.process} {thread}: l1.{what}{ver} -> {n}  [{t - t0:9.4f}]"))
    rows.sort(key=lambda r: r[0])
    return "\n".join(r for _, r in rows[-max_rows:])


def dump(history: Iterable[Op], path: str | os.PathLike[str]) -> None:
    """Write a history as JSON lines (to keep a failing run for study)."""
    with open(path, "w") as f:
        for o in history:
            f.write(json.dumps(asdict(o)) + "\n")
