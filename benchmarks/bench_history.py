"""The consistency contract at scale: random set/get/invalidate/delete/flush calls from
threads in two processes, each with its own cache on the same tiers, while the tiers'
servers are crashed and restarted; every call is recorded and the history checked
(tests/_history.py: stale, resurrected, phantom, lost_write, exception).

    python benchmarks/bench_history.py [--ops 50000] [--setup pg|sqlite|both] [--no-faults]
                                       [--processes 2] [--threads 2] [--keys 20] [--examples 2]

``pg``: L1 + L2 on a private redis-server + L3 on a private PostgreSQL cluster (started
here on free loopback ports, in temp dirs, removed afterwards), with faults: Redis
SIGKILLed and restarted on its port, ``pg_ctl restart -m fast``, and the postmaster
SIGKILLed and started again. ``sqlite``: the embedded default, L1 (a few entries, so
that evictions never stop) + one SQLite file shared by the processes, no Redis.

Prints the ops by kind, the faults injected, the violations by kind with examples, and
exits 1 when there is any violation.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests._history import FaultInjector, RunResult, WorkloadSpec, check, context, run_workload  # noqa: E402

REPLICA_BOUND = 2.0
FAULT_GRACE = 1.5


def _print(title: str, result: RunResult, injector: FaultInjector | None, examples: int) -> int:
    t0 = time.perf_counter()
    report = check(result.history, replica_bound=REPLICA_BOUND, faults=result.faults, fault_grace=FAULT_GRACE)
    checked = time.perf_counter() - t0
    ok = [o for o in result.history if o.ok]
    span = max(o.end for o in ok) - min(o.invoke for o in result.history) if ok else 0.0
    print(f"== {title}")
    print(f"ops:        {report.ops} in {span:.1f}s ({report.ops / max(span, 1e-9):.0f}/s); "
          + ", ".join(f"{k} {n}" for k, n in sorted(report.op_counts.items())))
    print(f"reads:      {report.hits} hits, {report.misses} misses ({report.excused_misses} excused by a fault)")
    if injector is not None:
        print(f"faults:     {sum(injector.counts.values())} injected ("
              + ", ".join(f"{k} {n}" for k, n in sorted(injector.counts.items())) + ")")
        print("  windows:  " + ", ".join(
            f"{f.kind} {f.start - result.t0:.1f}-{f.end - result.t0:.1f}s" for f in result.faults))
    else:
        print("faults:     none")
    if report.errors:
        print("errors:     " + ", ".join(f"{k} {n}" for k, n in sorted(report.errors.items())))
    if report.slowest is not None:
        print(f"slowest:    {report.slowest.end - report.slowest.invoke:.2f}s ({report.slowest.op})")
    kinds = report.by_kind
    print(f"violations: {len(report.violations)}"
          + ("" if not kinds else " (" + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) + ")"))
    tiers = Counter((v.kind, v.op.tier) for v in report.violations if v.op.tier)
    if tiers:
        print("  served by: " + ", ".join(f"{k} from {t} {n}" for (k, t), n in sorted(tiers.items())))
    shown: Counter[str] = Counter()
    for v in report.violations:
        if shown[v.kind] >= examples:
            continue
        shown[v.kind] += 1
        print(v.describe(result.t0))
        print(context(result.history, v, t0=result.t0, max_rows=12))
    if result.samples:
        print("first exception:\n" + result.samples[0])
    print(f"checked in {checked:.2f}s\n")
    return len(report.violations)


def _run_pg(args: argparse.Namespace, workdir: str) -> int:
    from semcache.db.migrate import upgrade
    from tests._servers import PostgresServer, RedisServer

    with RedisServer() as redis, PostgresServer() as pg:
        upgrade(pg.url)
        injector = None
        if not args.no_faults:

            def redis_kill() -> None:
                redis.kill()
                time.sleep(0.3)  # pacing: the outage lasts a moment
                redis.start()

            def postgres_kill() -> None:
                pg.kill()
                pg.start()

            injector = FaultInjector(
                {"redis_kill": redis_kill, "postgres_restart": pg.restart, "postgres_kill": postgres_kill},
                pause=args.pause,
            )
        spec = WorkloadSpec(
            sql_url=pg.url, redis_url=redis.url, processes=args.processes, threads=args.threads, keys=args.keys,
            duration=args.max_seconds, ops_per_thread=-(-args.ops // (args.processes * args.threads)), seed=args.seed,
        )
        result = run_workload(spec, workdir, injector=injector)
        return _print("L1 + L2 (Redis) + L3 (PostgreSQL)", result, injector, args.examples)


def _run_sqlite(args: argparse.Namespace, workdir: str) -> int:
    from semcache.db.migrate import upgrade

    url = f"sqlite:///{workdir}/shared.db"
    upgrade(url)
    spec = WorkloadSpec(
        sql_url=url, l1_max_entries=3, l1_max_ttl_seconds=1.0, processes=args.processes, threads=args.threads,
        keys=args.keys, duration=args.max_seconds, ops_per_thread=-(-args.ops // (args.processes * args.threads)),
        seed=args.seed,
    )
    result = run_workload(spec, workdir)
    return _print("L1 (3 entries, 1 s max TTL) + SQLite shared by the processes", result, None, args.examples)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ops", type=int, default=50_000, help="calls per setup (all processes and threads)")
    ap.add_argument("--setup", choices=("pg", "sqlite", "both"), default="both")
    ap.add_argument("--no-faults", action="store_true", help="no server crashes (pg setup)")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="threads per process")
    ap.add_argument("--keys", type=int, default=20)
    ap.add_argument("--pause", type=float, default=2.0, help="mean seconds between faults")
    ap.add_argument("--max-seconds", type=float, default=300.0, help="stop a setup's calls after this long")
    ap.add_argument("--seed", type=int, default=int(time.time()) % 10_000)
    ap.add_argument("--examples", type=int, default=2, help="example histories per kind of violation")
    args = ap.parse_args()
    print(f"seed {args.seed}, {args.processes} processes x {args.threads} threads, {args.keys} keys\n")
    bad = 0
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="semcache-history-") as d:
        if args.setup in ("pg", "both"):
            os.makedirs(os.path.join(d, "pg"))
            bad += _run_pg(args, os.path.join(d, "pg"))
        if args.setup in ("sqlite", "both"):
            os.makedirs(os.path.join(d, "sqlite"))
            bad += _run_sqlite(args, os.path.join(d, "sqlite"))
    print(f"total {time.perf_counter() - t0:.0f}s, {bad} violations")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
