"""pgvector: the scope as a hard filter inside the HNSW search, measured.

    semcache bench pgvector_scopes --pgvector-bin DIR [--entries 50000]
        [--scopes 1,10,100,1000] [--probes 500]

``N`` entries (the seeded synthetic vectors of ``semcache bench scale``) are spread evenly over
``S`` scopes (a namespace each), for each ``S``. A near probe of entry ``i`` is searched in
``i``'s scope; exact search (numpy over that scope's vectors) says which entry is nearest
there. Three ways to search, each timed (the index search alone, excluding embedding):

* **semcache** — what :class:`~semcache.index.pgvector.PgVectorIndex` runs: the scope,
  embedder and dimension in the WHERE clause with ``hnsw.iterative_scan = strict_order``
  (the planner may also choose the ``(embedder_id, scope)`` btree and an exact sort);
* **hnsw, iterative** — the HNSW scan forced (no sort, no bitmap scan allowed), with the
  iterative scan: the filter inside the graph walk, whatever the scope's size;
* **hnsw, post-filter** — the HNSW scan forced with ``hnsw.iterative_scan = off``: it
  returns its ``ef_search`` nearest of *all* scopes and the filter runs after it, the
  post-filter this backend must never do;
* **exact** — no index scan: the scope's rows and an exact sort, the reference.

Each near probe is searched in its own entry's scope, and (``S > 1``) in the next scope,
where the probe's neighbours in other scopes are all nearer than anything of that scope:
the case a post-filter gets wrong. It prints, per ``S`` and case: recall@1 against exact
search in the scope, how many probes found nothing, p50/p99, and the plan.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from typing import Any

import numpy as np

from semcache import CacheConfig, IndexConfig, MemoryConfig, Policy, SemanticCache, SQLConfig  # noqa: E402
from semcache.bench.scale import Toy, fresh_database, postgres  # noqa: E402
from semcache.tiers.sql_vectors import EXACT_BELOW, vector_text  # noqa: E402
from semcache.tiers.sql_vectors import search_sql as product_search_sql  # noqa: E402


#: The planner settings of each way to search.
MODES: dict[str, dict[str, str]] = {
    # what PgVectorIndex runs: exact below 1,000 rows in the scope, else HNSW (iterative)
    "semcache": {"hnsw.iterative_scan": "strict_order", "max_parallel_workers_per_gather": "0"},
    # HNSW forced (no sort allowed), still iterative: the filter inside the scan
    "hnsw, iterative": {"hnsw.iterative_scan": "strict_order", "enable_sort": "off", "enable_bitmapscan": "off"},
    # HNSW forced, not iterative: the ef_search nearest of every scope, then the filter
    "hnsw, post-filter": {"hnsw.iterative_scan": "off", "enable_sort": "off", "enable_bitmapscan": "off"},
    # no HNSW: the scope's rows and an exact sort
    "exact": {"enable_indexscan": "off"},
}


def search_sql(dim: int, mode: str) -> str:
    """semcache's own statement for its mode (exact below 1,000 rows, else HNSW), the plain
    nearest-in-scope query for the others (whose settings force a plan)."""
    if mode == "semcache":
        sql = product_search_sql(dim)
    else:
        dist = f"(embedding::vector({dim}) <#> CAST(:q AS vector({dim})))"
        sql = (f"SELECT key FROM semcache_vectors WHERE dim = {dim} AND embedder_id = :m AND scope = :s "
               f"ORDER BY {dist} LIMIT :k")
    return re.sub(r"(?<!:):(\w+)", r"%(\1)s", sql)  # psycopg's placeholders


def run(url: str, n: int, scopes: int, probes: int) -> dict[str, Any]:
    import psycopg

    toy = Toy(n, probes)
    db = fresh_database(url, f"scopes_{scopes}")
    cfg = CacheConfig(memory=MemoryConfig(), sql=SQLConfig(url=db), embedder=toy.embedder(), index=IndexConfig(backend="pgvector"),
                      policy=Policy(verifier=None, similarity_threshold=0.5, sweep_interval_seconds=None))
    t0 = time.perf_counter()
    with SemanticCache(cfg) as cache:
        for lo in range(0, n, 2000):
            cache.set_many([{"prompt": toy.prompt(i), "value": i, "namespace": f"ns{i % scopes}"}
                            for i in range(lo, min(n, lo + 2000))])
        fill = time.perf_counter() - t0
        scope_of = {s: cache.request("x", namespace=f"ns{s}").scope for s in range(scopes)}
        # each near probe in its own entry's scope, and (S > 1) in the next scope, where
        # its neighbours of other scopes are nearer than anything of that scope
        shifts = (0, 1) if scopes > 1 else (0,)
        cases: dict[int, list[tuple[int, np.ndarray, str]]] = {}
        for shift in shifts:
            cases[shift] = []
            for t, q in zip(toy.targets.tolist(), toy.near):
                s = (t + shift) % scopes
                members = np.arange(s, n, scopes)  # exact search in that scope
                truth = int(members[int(np.argmax(toy.x[members] @ q))])
                cases[shift].append((s, q, cache.request(toy.prompt(truth), namespace=f"ns{s}").key))
    plain = db.replace("postgresql+psycopg://", "postgresql://")
    out: dict[Any, Any] = {"entries": n, "scopes": scopes, "fill_s": fill}
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute("ANALYZE semcache_vectors")
        for (mode, settings), shift in ((m, sh) for m in MODES.items() for sh in shifts):
            times: list[float] = []
            right = empty = 0
            plan = ""
            for s, q, want in cases[shift]:
                params = {"q": vector_text(q), "m": "toy-seeded-384", "s": scope_of[s], "k": 4, "exact": EXACT_BELOW}
                with conn.transaction():
                    conn.execute("SET LOCAL hnsw.ef_search = 96")
                    for name, value in settings.items():
                        conn.execute(f"SET LOCAL {name} = {value}")
                    if not plan:
                        plan = " / ".join(r[0].strip() for r in conn.execute("EXPLAIN " + search_sql(384, mode), params)
                                          if "Scan" in r[0])
                    t1 = time.perf_counter()
                    # never prepared: a cached plan would outlive the settings of its mode
                    rows = conn.execute(search_sql(384, mode), params, prepare=False).fetchall()
                    times.append(time.perf_counter() - t1)
                if not rows:
                    empty += 1
                elif rows[0][0] == want:
                    right += 1
            arr = np.asarray(times) * 1000
            out[(mode, "own scope" if shift == 0 else "other scope")] = {"recall": right / len(toy.targets), "empty": empty, "p50_ms": float(np.percentile(arr, 50)),
                         "p99_ms": float(np.percentile(arr, 99)), "plan": plan}
    return out


def main() -> None:  # noqa: C901
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pgvector-bin", help="PostgreSQL binaries with pgvector to start a server from")
    ap.add_argument("--pgvector-url", help="a running PostgreSQL with pgvector")
    ap.add_argument("--entries", type=int, default=50_000)
    ap.add_argument("--scopes", default="1,10,100,1000")
    ap.add_argument("--probes", type=int, default=500)
    args = ap.parse_args()
    if not (args.pgvector_bin or args.pgvector_url):
        ap.error("give --pgvector-bin or --pgvector-url")

    def go(url: str) -> None:
        print(f"{'scopes':>7} {'per scope':>9}  {'probe in':<11} {'search':<18} {'recall@1':>8} {'empty':>6} "
              f"{'p50 ms':>7} {'p99 ms':>7}  plan")
        for s in [int(x) for x in args.scopes.split(",")]:
            r = run(url, args.entries, s, args.probes)
            for key, m in r.items():
                if not isinstance(key, tuple):
                    continue
                mode, where = key
                plan = m["plan"].split("  (")[0].replace("->  ", "")
                print(f"{s:>7} {args.entries // s:>9}  {where:<11} {mode:<18} {m['recall']:>8.3f} {m['empty']:>6} "
                      f"{m['p50_ms']:>7.2f} {m['p99_ms']:>7.2f}  {plan}")
            sys.stdout.flush()

    if args.pgvector_url:
        go(args.pgvector_url)
    else:
        with postgres(args.pgvector_bin) as url:
            go(url)


if __name__ == "__main__":
    main()
