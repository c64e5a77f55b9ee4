"""The consistency contract, checked on recorded histories.

Per key, judged by real-time order of invocation and return (see tests/_history.py):

1. after ``invalidate``/``delete``/``flush`` returns, no lookup that starts later
   returns a removed version -- in the same process at once, in another process
   once ``REPLICA_BOUND`` seconds have passed;
2. after ``set(v)`` returns, a later lookup returns v or a newer version, or a
   miss only while a tier was down;
3. never a value that no ``set`` wrote;

and no call fails the caller. The first tests check the checker on hand-made
histories (so it is known to fail); the others run random set/get/invalidate/
delete/flush calls from threads in two ``spawn``-ed processes, each with its own
cache on the same tiers, and check what they saw:

* L1 + L2 (a private Redis) + L3 (a private PostgreSQL), without faults, then
  while Redis is SIGKILLed and restarted on its port and PostgreSQL is restarted
  (``pg_ctl restart -m fast``) and its postmaster SIGKILLed and started again;
* the embedded default, L1 + one SQLite file shared by both processes, with an
  L1 of a few entries so that evictions and refills never stop.

    bash scripts/test.sh tests/consistency -q -x -s
"""

from __future__ import annotations

import time

from tests._history import (
    DEFAULT_ALLOWED_ERRORS,
    FaultInjector,
    FaultWindow,
    Op,
    RunResult,
    WorkloadSpec,
    check,
    context,
    run_workload,
    story,
)

#: How long another process may still serve a version after a write or removal returned.
REPLICA_BOUND = 2.0
#: A fault's window is stretched this long after the server is back: the cache may
#: keep skipping the tier for its back-off (``WorkloadSpec.backoff_max_seconds``).
FAULT_GRACE = 1.5


# -- the checker on hand-made histories -----------------------------------------------


def op(kind: str, key: str | None, value: str | None, invoke: float, ret: float | None, *,
       p: str = "p0", t: int = 0, error: str | None = None) -> Op:
    return Op(p, t, kind, key, value, invoke, None if error else ret, error)


def kinds(history: list[Op], **kwargs) -> list[str]:
    return [v.kind for v in check(history, **kwargs).violations]


def test_checker_accepts_a_legal_history():
    h = [
        op("set", "a", "v1", 0, 1),
        op("get", "a", "v1", 2, 3),
        op("set", "a", "v2", 4, 5, t=1),
        op("get", "a", "v1", 4.5, 6),          # concurrent with the write of v2: either
        op("get", "a", "v2", 6, 7),
        op("get", "a", "v1", 4.2, 4.3, p="p1"),  # another process, within the bound
        op("invalidate", "a", None, 8, 9),
        op("get", "a", None, 10, 11),
        op("get", "a", "v2", 9.5, 9.6, p="p1"),  # another process, within the bound
        op("set", "a", "v3", 12, 13),
        op("delete", "a", None, 12.5, 14, t=1),  # concurrent with the write of v3
        op("get", "a", "v3", 15, 16),          # the delete may have come first...
        op("get", "a", None, 16, 17, t=1),     # ...or last
        op("set", "b", "w1", 20, 21),
        op("flush", None, None, 21.5, 22),
        op("get", "b", None, 23, 24),
        op("set", "b", "w2", 25, None, error="BackendError"),  # raised: may or may not have landed
        op("get", "b", "w2", 26, 27),
        op("get", "b", None, 28, 29),
        op("invalidate", "b", None, 30, None, error="BackendUnavailable"),  # allowed typed error
        op("set", "b", "w3", 31, 32),
        op("get", "b", "w3", 33, 34),
    ]
    # a write that raised is judged for its effects here (elsewhere it is a violation itself)
    report = check(h, replica_bound=REPLICA_BOUND, allowed_errors={**DEFAULT_ALLOWED_ERRORS, "set": ("BackendError",)})
    assert report.violations == [], report.examples()
    assert (report.hits, report.misses) == (8, 4)


def test_checker_finds_a_stale_read():
    h = [
        op("set", "a", "v1", 0, 1),
        op("set", "a", "v2", 2, 3, t=1),
        op("get", "a", "v1", 4, 5),
    ]
    report = check(h)
    assert [v.kind for v in report.violations] == ["stale"]
    v = report.violations[0]
    assert (v.source.value, v.cause.value) == ("v1", "v2")
    assert "stale on key a" in v.describe()
    assert ">> p0/t0 get a -> v1" in context(h, v)


def test_checker_finds_a_resurrected_invalidation():
    h = [
        op("set", "a", "v1", 0, 1),
        op("invalidate", "a", None, 2, 3, t=1),
        op("get", "a", "v1", 4, 5),
    ]
    assert kinds(h) == ["resurrected"]
    # delete and flush remove too
    assert kinds([h[0], op("delete", "a", None, 2, 3), h[2]]) == ["resurrected"]
    assert kinds([h[0], op("flush", None, None, 2, 3), h[2]]) == ["resurrected"]


def test_checker_binds_other_processes_after_the_replica_bound():
    base = [op("set", "a", "v1", 0, 1), op("invalidate", "a", None, 2, 3)]
    assert kinds(base + [op("get", "a", "v1", 4.9, 5, p="p1")], replica_bound=2.0) == []
    assert kinds(base + [op("get", "a", "v1", 5.1, 5.2, p="p1")], replica_bound=2.0) == ["resurrected"]
    # a newer write in another process binds the same way
    h = [op("set", "a", "v1", 0, 1), op("set", "a", "v2", 2, 3, p="p1"), op("get", "a", "v1", 6, 7)]
    assert kinds(h, replica_bound=2.0) == ["stale"]


def test_checker_finds_values_nobody_wrote():
    assert kinds([op("get", "a", "never-written", 0, 1)]) == ["phantom"]
    # a value read before its write was invoked
    assert kinds([op("get", "a", "v1", 0, 1), op("set", "a", "v1", 2, 3)]) == ["phantom"]
    # a value written under another key
    assert kinds([op("set", "b", "v1", 0, 1), op("get", "a", "v1", 2, 3)]) == ["phantom"]


def test_checker_allows_a_miss_only_under_a_fault():
    h = [op("set", "a", "v1", 0, 1), op("get", "a", None, 2, 3)]
    assert kinds(h) == ["lost_write"]
    report = check(h, faults=[FaultWindow("redis_kill", 0.5, 0.7)])
    assert report.violations == [] and report.excused_misses == 1
    # the grace after a fault covers the back-off
    assert kinds(h, faults=[FaultWindow("pg_kill", -5, -1)], fault_grace=0.5) == ["lost_write"]
    assert kinds(h, faults=[FaultWindow("pg_kill", -5, -1)], fault_grace=1.5) == []
    # a fault never excuses a stale or resurrected value
    h2 = [op("set", "a", "v1", 0, 1), op("invalidate", "a", None, 2, 3), op("get", "a", "v1", 4, 5)]
    assert kinds(h2, faults=[FaultWindow("pg_kill", 0, 10)]) == ["resurrected"]


def test_checker_reports_exceptions():
    h = [
        op("get", "a", None, 0, None, error="OperationalError"),
        op("set", "a", "v", 1, None, error="BackendUnavailable"),   # reads and writes never raise
        op("flush", None, None, 2, None, error="BackendUnavailable"),  # allowed
    ]
    assert kinds(h) == ["exception", "exception"]


# -- the runs ---------------------------------------------------------------------------


def _report(title: str, result: RunResult, injector: FaultInjector | None = None):
    report = check(result.history, replica_bound=REPLICA_BOUND, faults=result.faults, fault_grace=FAULT_GRACE)
    print(f"\n[{title}] {report.summary()}")
    span = max(o.end for o in result.history if o.ok) - min(o.invoke for o in result.history)
    print(f"[{title}] {span:.1f}s of calls ({result.elapsed:.1f}s with shutdown), {len(result.history) / span:.0f} ops/s")
    if injector is not None:
        print(f"[{title}] faults injected: {sum(injector.counts.values())} ({dict(injector.counts)})")
    if report.errors:
        print(f"[{title}] errors: {dict(report.errors)}")
    print(f"[{title}] per process: {result.stats}")
    return report


def _explain(report, result: RunResult, per_kind: int = 2) -> str:
    lines = [report.summary()]
    shown: dict[str, int] = {}
    for v in report.violations:
        if shown.get(v.kind, 0) >= per_kind:
            continue
        shown[v.kind] = shown.get(v.kind, 0) + 1
        lines.append(v.describe(result.t0))
        if any(o.detail for o in result.history):
            lines.append("  the key's story (every call with what it saw, and the reader's L1 changes by its change-log follower):")
            lines.append(story(result, v))
        else:
            lines.append("  history of the key around it:")
            lines.append(context(result.history, v, t0=result.t0))
    if result.samples:
        lines.append("first exception:\n" + result.samples[0])
    return "\n".join(lines)


def _spec(**kwargs) -> WorkloadSpec:
    defaults = dict(processes=2, threads=2, keys=20, seed=int(time.time()) % 10_000)
    defaults.update(kwargs)
    return WorkloadSpec(**defaults)


def test_replicas_on_redis_and_postgres(own_redis, own_postgres, tmp_path, key_prefix):
    spec = _spec(sql_url=own_postgres.url, redis_url=own_redis.url, redis_prefix=key_prefix,
                 duration=8.0, ops_per_thread=6_000)
    result = run_workload(spec, tmp_path)
    report = _report("L1+L2+L3 (PostgreSQL), no faults", result)
    assert report.ops >= 1_000
    assert report.violations == [], _explain(report, result)


def redis_and_postgres_faults(redis, postgres) -> FaultInjector:
    """Redis killed and restarted, PostgreSQL restarted and killed, in turn."""

    def redis_kill():
        redis.kill()
        time.sleep(0.3)  # pacing: the outage lasts a moment
        redis.start()

    def postgres_kill():
        postgres.kill()
        postgres.start()

    return FaultInjector(
        {"redis_kill": redis_kill, "postgres_restart": postgres.restart, "postgres_kill": postgres_kill},
        pause=1.5,
        first_after=1.0,
    )


def test_replicas_on_redis_and_postgres_under_faults(own_redis, own_postgres, tmp_path, key_prefix):
    injector = redis_and_postgres_faults(own_redis, own_postgres)
    spec = _spec(sql_url=own_postgres.url, redis_url=own_redis.url, redis_prefix=key_prefix,
                 duration=12.0, ops_per_thread=15_000)
    result = run_workload(spec, tmp_path, injector=injector)
    report = _report("L1+L2+L3 (PostgreSQL), faults", result, injector)
    assert set(injector.counts) == {"redis_kill", "postgres_restart", "postgres_kill"}, injector.counts
    assert report.ops >= 1_000
    assert report.violations == [], _explain(report, result)


def test_embedded_sqlite_shared_by_two_processes(shared_sqlite_url, tmp_path):
    # without Redis no replica hears of another's invalidations: an L1 copy is bounded
    # by its max TTL (1 s, within the replica bound), and L1 holds 3 of the 20 keys so
    # that entries are evicted and refilled from SQLite all the time
    spec = _spec(sql_url=shared_sqlite_url, l1_max_entries=3, l1_max_ttl_seconds=1.0,
                 duration=8.0, ops_per_thread=6_000)
    result = run_workload(spec, tmp_path)
    report = _report("L1 (3 entries) + SQLite, two processes", result)
    assert sum(s["evictions"] for s in result.stats) > 100
    assert report.ops >= 1_000
    assert report.violations == [], _explain(report, result)

