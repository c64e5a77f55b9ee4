"""The public API's own overhead, against plain baselines measured in the same run.

    semcache bench api [-N 10000] [-n 5000] [--threads 8] [--profile get|lookup|store]

One cache on the embedded default (L1 memory + SQLite in a temporary folder + the
in-process FAISS index), with L1 sized for every entry stored here (2N) so that the
exact probe is never evicted, and one change of embedder: a deterministic toy,
``HashingEmbedder(dim=384)`` (the dimension of all-MiniLM-L6-v2), so no model is
loaded and nothing here measures embedding. The N stored entries get **random unit
vectors** (seeded), passed to ``cache.store(..., embedding=v)``; the real model is
not used because embedding N prompts with it costs minutes of CPU and the figures
below exclude embedding anyway. All N entries share one scope, so every semantic
search runs over all N vectors (a flat inner-product index below
``IndexConfig.hnsw_min_entries``).

Measured (p50/p99 in µs; targets from the design notes):

* ``cache.get(prompt)``, an exact repeat answered from L1 — against ``dict.get`` on a
  dict of N entries. Target ≤ 20 µs p50.
* ``cache.lookup(request, embedding=v, exact=False)``, a semantic hit (a stored
  vector plus noise, cosine ≈ 0.98) and a semantic miss (a fresh random vector) —
  against a numpy brute-force scan (``matrix @ v``, ``argmax``) over the same N
  vectors, on one BLAS thread as FAISS is given one. Target ≤ 1 ms p50.
* ``cache.store(request, value, embedding=v)`` of one new entry on SQLite, request
  and vector prepared beforehand — against a bare ``sqlite3`` INSERT + COMMIT of a
  row of the same size in a WAL database with the same pragmas. Target ≤ 1 ms p50.
  Then the throughput of ``--threads`` concurrent writers against one.

``--profile PATH`` runs that path under cProfile and prints the top functions.
"""

from __future__ import annotations

import os

# the numpy baseline scans on one thread, like the cache's FAISS (IndexConfig.faiss_threads);
# numpy may be loaded already (semcache imports it), so `semcache bench api` sets these too
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import cProfile  # noqa: E402
import pstats  # noqa: E402
import shutil  # noqa: E402
import sqlite3  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402

from semcache.bench._common import pct, time_calls  # noqa: E402

from semcache import CacheConfig, MemoryConfig, SemanticCache, SQLConfig  # noqa: E402
from semcache.embedders import HashingEmbedder  # noqa: E402

DIM = 384
MODEL = "gpt-4o-mini"
PROFILE_CALLS = {"get": 20_000, "lookup": 2000, "store": 1500}
VALUE = {"role": "assistant", "content": "O(log n): each step halves the search interval. " * 4}


def unit_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    m = rng.standard_normal((n, DIM)).astype(np.float32)
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    return m


def near(rng: np.random.Generator, v: np.ndarray, noise: float = 0.2) -> np.ndarray:
    g = rng.standard_normal(DIM).astype(np.float32)
    g /= np.linalg.norm(g)
    q = v + noise * g
    out: np.ndarray = (q / np.linalg.norm(q)).astype(np.float32)
    return out


def prompt_of(i: int) -> str:
    return f"Question {i}: what is the time complexity of operation {i % 97} on structure {i // 97}?"


def profile(label: str, fn: Callable[[], object], n: int, top: int = 18) -> None:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n):
        fn()
    prof.disable()
    print(f"\n-- cProfile: {label} ({n} calls), top {top} by own time --")
    st = pstats.Stats(prof)
    st.sort_stats("tottime").print_stats(top)


def bare_sqlite_baseline(path: str, n: int, payload_len: int, emb_len: int) -> np.ndarray:
    """INSERT + COMMIT of one row like an entry's, with the SQL tier's pragmas."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(
        "CREATE TABLE t (key TEXT PRIMARY KEY, scope TEXT, prompt TEXT, payload BLOB, created REAL,"
        " tags TEXT, meta TEXT, embedding BLOB)"
    )
    conn.execute("CREATE INDEX t_scope ON t (scope)")
    conn.execute("CREATE INDEX t_created ON t (created)")
    payload = b"x" * payload_len
    emb = b"\x01" * emb_len
    counter = iter(range(10**9))

    def one() -> None:
        i = next(counter)
        conn.execute("BEGIN")
        conn.execute(
            "INSERT OR REPLACE INTO t VALUES (?,?,?,?,?,?,?,?)",
            (f"{i:032x}", "s" * 32, prompt_of(i), payload, time.time(), "[]", "{}", emb),
        )
        conn.execute("COMMIT")

    out = time_calls(one, n, warmup=100)
    conn.close()
    return out


def report(
    results: list[tuple[str, np.ndarray, np.ndarray | None]],
    n_hits: int,
    one_rate: float,
    many_rate: float,
    args: argparse.Namespace,
) -> None:
    print(f"\n{'path':<32}{'p50 µs':>10}{'p99 µs':>10}  vs baseline (p50)")
    for name, samples, base in results:
        ratio = "" if base is None else f"{pct(samples, 50) / pct(base, 50):8.1f}x"
        print(f"{name:<32}{pct(samples, 50):>10.1f}{pct(samples, 99):>10.1f}  {ratio}")
    print(f"\nsemantic probes that hit their own entry: {n_hits}/200")
    print(f"writers: 1 thread {one_rate:,.0f} stores/s; {args.threads} threads {many_rate:,.0f} stores/s"
          f" ({many_rate / one_rate:.2f}x)")
    g = {name: pct(s, 50) for name, s, _ in results}
    print("\ntargets (p50):")
    print(f"  exact get      {g['cache.get exact (L1)']:8.1f} µs  (≤ 20 µs)")
    print(f"  semantic hit   {g['lookup semantic hit']:8.1f} µs  (≤ 1000 µs)")
    print(f"  store          {g[f'store (at {args.N})']:8.1f} µs  (≤ 1000 µs)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-N", type=int, default=10_000, help="entries stored (and dict size)")
    ap.add_argument("-n", type=int, default=5000, help="timed calls per path")
    ap.add_argument("--threads", type=int, default=8, help="concurrent writers")
    ap.add_argument("--profile", choices=["get", "lookup", "store"], action="append", default=[])
    args = ap.parse_args()
    rng = np.random.default_rng(7)
    tmp = tempfile.mkdtemp()
    cfg = CacheConfig(
        memory=MemoryConfig(max_entries=max(10_000, 2 * args.N)),
        sql=SQLConfig(url=f"sqlite:///{tmp}/bench.db"),
        embedder=HashingEmbedder(dim=DIM),
    )
    results: list[tuple[str, np.ndarray, np.ndarray | None]] = []
    try:
        with SemanticCache(cfg) as cache:
            # -- fill: N single-entry stores (their timings are the store figures) --
            vecs = unit_rows(rng, args.N)
            reqs = [cache.request(prompt_of(i), model=MODEL) for i in range(args.N)]
            t0 = time.perf_counter()
            store_s = np.empty(args.N)
            perf = time.perf_counter
            for i, (r, v) in enumerate(zip(reqs, vecs)):
                s = perf()
                cache.store(r, VALUE, embedding=v)
                store_s[i] = perf() - s
            fill_s = time.perf_counter() - t0
            print(f"stored {args.N} entries one by one in {fill_s:.1f}s ({args.N / fill_s:,.0f}/s)")

            # -- exact repeat through cache.get ----------------------------------
            plain = {r.key: VALUE for r in reqs}
            probe = reqs[args.N // 2]
            base_dict = time_calls(lambda: plain.get(probe.key), args.n)
            prompt = prompt_of(args.N // 2)
            hit = cache.get(prompt, model=MODEL)
            assert hit is not None and hit.kind == "exact" and hit.tier == "l1", hit
            results.append((f"baseline: dict.get ({len(plain)})", base_dict, None))
            results.append(("cache.get exact (L1)", time_calls(lambda: cache.get(prompt, model=MODEL), args.n), base_dict))
            results.append(("  build_request only", time_calls(lambda: cache.request(prompt, model=MODEL), args.n), base_dict))
            results.append(("  lookup(req) exact", time_calls(lambda: cache.lookup(probe), args.n), base_dict))

            # -- semantic lookup with a precomputed vector ------------------------
            m = len(vecs)
            targets = rng.integers(0, m, size=1000)
            queries = np.stack([near(rng, vecs[j]) for j in targets])
            misses = unit_rows(rng, 1000)
            qi = iter(range(10**9))

            def scan() -> object:
                q = queries[next(qi) % 1000]
                return int(np.argmax(vecs @ q))

            base_scan = time_calls(scan, args.n)
            results.append((f"baseline: numpy scan ({m})", base_scan, None))

            def sem_hit() -> object:
                i = next(qi) % 1000
                return cache.lookup(reqs[targets[i]], embedding=queries[i], exact=False)

            def sem_miss() -> object:
                i = next(qi) % 1000
                return cache.lookup(reqs[targets[i]], embedding=misses[i], exact=False)

            got = [cache.lookup(reqs[targets[i]], embedding=queries[i], exact=False) for i in range(200)]
            n_hits = sum(
                1 for i, h in enumerate(got) if h is not None and h.kind == "semantic" and h.entry_id == reqs[targets[i]].key
            )
            results.append(("lookup semantic hit", time_calls(sem_hit, args.n), base_scan))
            results.append(("lookup semantic miss", time_calls(sem_miss, args.n), base_scan))

            # -- single-entry store ----------------------------------------------
            base_sql = bare_sqlite_baseline(f"{tmp}/bare.db", min(args.n, 2000), len(VALUE["content"]) + 40, DIM * 4)
            results.append(("baseline: sqlite3 INSERT", base_sql, None))
            results.append((f"store (fill, 0..{args.N})", store_s, base_sql))
            n_extra = min(args.n, 2000) + 100 + (PROFILE_CALLS["store"] if "store" in args.profile else 0)
            extra = [cache.request(f"extra {i}: " + prompt_of(i), model=MODEL) for i in range(n_extra)]
            extra_v = unit_rows(rng, len(extra))
            ei = iter(range(10**9))

            def store_one() -> object:
                i = next(ei)
                return cache.store(extra[i], VALUE, embedding=extra_v[i])

            results.append((f"store (at {args.N})", time_calls(store_one, min(args.n, 2000), warmup=100), base_sql))

            # -- concurrent writers ------------------------------------------------
            per_thread = 300
            conc_v = unit_rows(rng, per_thread)
            run_no = iter(range(10**9))

            def writers(k: int) -> float:
                """k threads, each storing per_thread new entries; returns stores/s."""
                run = next(run_no)
                work_reqs = [
                    [cache.request(f"r{run} w{t} {i}: " + prompt_of(i), model=MODEL) for i in range(per_thread)]
                    for t in range(k)
                ]
                barrier = threading.Barrier(k + 1)

                def work(t: int) -> None:
                    barrier.wait()
                    for i, r in enumerate(work_reqs[t]):
                        cache.store(r, VALUE, embedding=conc_v[i])

                ts = [threading.Thread(target=work, args=(t,)) for t in range(k)]
                for t in ts:
                    t.start()
                barrier.wait()
                s = time.perf_counter()
                for t in ts:
                    t.join()
                return k * per_thread / (time.perf_counter() - s)

            one_rate = writers(1)
            many_rate = writers(max(args.threads, 1))

            report(results, n_hits, one_rate, many_rate, args)
            for label in args.profile:
                fn = {
                    "get": lambda: cache.get(prompt, model=MODEL),
                    "lookup": sem_hit,
                    "store": store_one,
                }[label]
                profile(label, fn, PROFILE_CALLS[label])
            cache.flush()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
