"""Scale: insert rate, semantic lookup latency, recall, index memory and cold start at
10k -> 100k -> 1M entries, for the in-process FAISS index and for pgvector.

    semcache bench scale [--sizes 10000,100000,1000000] [--backends faiss,pgvector]
        [--pgvector-bin DIR | --pgvector-url URL] [--probes 1000] [--json PATH]

**Synthetic vectors.** Embedding a million prompts with the real model would take hours
on two cores, so a deterministic, seeded toy embedder (a ``CallableEmbedder``, dim 384)
maps each prompt text to a precomputed unit vector: stored prompt ``i``
(``"question <i> about topic <c>"``) is its cluster centre ``c`` plus noise, renormalised
(``clusters`` of ~50 entries whose members are ~0.8 apart in cosine); a *near* probe
("question <i> about topic <c>, in other words", the same numbers so the default guards
pass) is stored vector ``i`` plus small noise, renormalised (cosine ~0.985 to ``i``,
~0.79 to its cluster mates): it must hit entry ``i``; an *unrelated* probe is a random unit
vector (cosine ~0 to everything): it must miss. Cosine alone decides (``verifier=None``;
the default threshold 0.94; the default guards on).

For each size and backend, through the public API only:

* **insert rate**: ``SemanticCache.set_many`` (batches of ``--batch``) filling the cache
  from empty, then single ``set`` calls on top (the embedded default: L1 + SQLite L3 in a
  temporary folder; pgvector: L1 + PostgreSQL L3 with ``index="pgvector"``);
* **lookup p50/p99 excluding embedding**: ``cache.lookup(request, embedding=vec)`` with
  the precomputed vector: the exact path by key (L1, L3), the index search and the read of
  the matched entry; near and unrelated probes, after a background HNSW build finished;
* **recall at the top-1 decision**: exact search (numpy brute force over every stored
  vector) decides hit (best cosine >= threshold: that entry) or miss for each probe; the
  share of exact hits the cache answered with the same entry (``recall``), and how many
  exact misses it answered (``false hits``);
* **index memory per entry** (FAISS): ``FaissIndex.memory_bytes()`` (FAISS's own array
  sizes: codes, graph, id maps, plus the Python key maps by ``sys.getsizeof``), and, as
  a check, the new replica's RSS growth (below; after ``malloc_trim``, with its HNSW
  build finished) divided by the entries: an upper bound (it also holds L1, the SQL
  engine and what the allocator keeps from the rebuild's transient flat index);
* **cold start of a new replica**: a new cache over the filled L3 in a new process, from
  constructing it to its first correct semantic hit (FAISS: includes the rebuild from
  L3, the HNSW build left running in the background; pgvector: no rebuild), the lookup
  latency right after, and (FAISS) how long until the HNSW graph was built.

Each size prints a table; the last block prints how each cost grew from one size to the
next. ``--pgvector-bin DIR`` starts (and stops) a PostgreSQL from the binaries in DIR with
the pgvector extension (``maintenance_work_mem`` 2GB, ``shared_buffers`` 2GB) in a
temporary folder; ``--pgvector-url`` uses a running one (a fresh database per size is
created next to it).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from semcache import CacheConfig, MemoryConfig, Policy, SemanticCache, SQLConfig
from semcache.embedders.callable import CallableEmbedder

DIM = 384
CLUSTER = 50
SPREAD = 0.5  # noise norm around a cluster centre: members ~1/(1+SPREAD^2) = 0.8 apart
NEAR = 0.17  # noise norm of a near probe around its entry: cosine ~1/sqrt(1+NEAR^2)
THRESHOLD = 0.94
#: A new replica's background HNSW build is waited for this long at most.
WAIT_LIMIT_S = 900.0


def _unit(m: np.ndarray) -> np.ndarray:
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    return m


class Toy:
    """The seeded toy embedder's vectors: stored entries, near and unrelated probes."""

    def __init__(self, n: int, probes: int, seed: int = 1234) -> None:
        rng = np.random.default_rng(seed)
        self.n = n
        nc = max(1, n // CLUSTER)
        centres = _unit(rng.standard_normal((nc, DIM), dtype=np.float32))
        self.cluster = rng.integers(0, nc, n)
        x = np.empty((n, DIM), np.float32)
        for lo in range(0, n, 100_000):  # in chunks: no second n x 384 temporary
            hi = min(n, lo + 100_000)
            noise = rng.standard_normal((hi - lo, DIM), dtype=np.float32) * np.float32(SPREAD / np.sqrt(DIM))
            x[lo:hi] = _unit(centres[self.cluster[lo:hi]] + noise)
        self.x = x
        self.targets = rng.choice(n, size=min(probes, n), replace=False)
        near = x[self.targets] + rng.standard_normal((len(self.targets), DIM), dtype=np.float32) * np.float32(NEAR / np.sqrt(DIM))
        self.near = _unit(near)
        self.unrelated = _unit(rng.standard_normal((probes, DIM), dtype=np.float32))
        self.by_text: dict[str, np.ndarray] = {}
        for t, v in zip(self.targets.tolist(), self.near):
            self.by_text[self.near_text(t)] = v
        for j, v in enumerate(self.unrelated):
            self.by_text[self.unrelated_text(j)] = v

    def prompt(self, i: int) -> str:
        return f"question {i} about topic {self.cluster[i]}"

    def near_text(self, i: int) -> str:
        return f"{self.prompt(i)}, in other words"

    @staticmethod
    def unrelated_text(j: int) -> str:
        return f"something unrelated, variant {j}"

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), DIM), np.float32)
        for r, t in enumerate(texts):
            v = self.by_text.get(t)
            out[r] = v if v is not None else self.x[int(t.split(" ", 2)[1])]
        return out

    def embedder(self) -> CallableEmbedder:
        return CallableEmbedder(self.embed, dim=DIM, model_id="toy-seeded-384")

    def exact_top1(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Brute force: the best stored index and cosine for each query row."""
        best = np.full(len(q), -1, np.int64)
        sims = np.full(len(q), -np.inf, np.float32)
        for lo in range(0, self.n, 50_000):
            s = self.x[lo : lo + 50_000] @ q.T
            j = np.argmax(s, axis=0)
            v = s[j, np.arange(len(q))]
            better = v > sims
            best[better], sims[better] = j[better] + lo, v[better]
        return best, sims


def nice(level: int) -> None:
    """Heavy phases (fills, builds) run at ``--nice``; the latency timings at 0 where the
    process may lower it again (root), so other work on the machine does not starve them."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, level)


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def trimmed_rss() -> int:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return rss()


def ms(a: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(a) * 1000, q)) if a else float("nan")


# -- PostgreSQL with pgvector ----------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def postgres(bin_dir: str) -> Iterator[str]:
    """A throwaway PostgreSQL from ``bin_dir`` (as the ``postgres`` user when run as root)."""
    root = tempfile.mkdtemp(prefix="bench-pg-")
    data, port = os.path.join(root, "data"), _free_port()
    as_pg: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        as_pg = ["runuser", "-u", "postgres", "--"]

    def run(*a: str) -> None:
        subprocess.run([*as_pg, *a], check=True, stdout=subprocess.DEVNULL)

    run(os.path.join(bin_dir, "initdb"), "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8")
    opts = (f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c shared_buffers=2GB -c maintenance_work_mem=2GB "
            "-c max_parallel_maintenance_workers=1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_wal_size=8GB -c checkpoint_timeout=30min")
    run(os.path.join(bin_dir, "pg_ctl"), "-D", data, "-o", opts, "-l", os.path.join(root, "log"), "-w", "start")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_pg, os.path.join(bin_dir, "pg_ctl"), "-D", data, "-m", "fast", "-w", "stop"], check=False, stdout=subprocess.DEVNULL)
        shutil.rmtree(root, ignore_errors=True)


def fresh_database(url: str, name: str) -> str:
    import psycopg

    plain = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
        conn.execute("SELECT 1")
    with psycopg.connect(plain.rsplit("/", 1)[0] + "/" + name, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    return url.rsplit("/", 1)[0] + "/" + name


# -- one size, one backend --------------------------------------------------------------
def config(toy: Toy, backend: str, url: str) -> CacheConfig:
    kw: dict[str, Any] = {"index": "pgvector"} if backend == "pgvector" else {}
    return CacheConfig(memory=MemoryConfig(), sql=SQLConfig(url=url), embedder=toy.embedder(),
                       policy=Policy(verifier=None, similarity_threshold=THRESHOLD, sweep_interval_seconds=None,
                                     log_poll_seconds=None), **kw)


def probe_all(cache: SemanticCache, toy: Toy, texts: list[str], vecs: np.ndarray) -> tuple[list[float], list[str | None]]:
    times, got = [], []
    perf = time.perf_counter
    for t, v in zip(texts, vecs):
        req = cache.request(t)
        t0 = perf()
        hit = cache.lookup(req, embedding=v)
        times.append(perf() - t0)
        got.append(None if hit is None else hit.prompt)
    return times, got


PG_HNSW = ("CREATE INDEX IF NOT EXISTS ix_semcache_vectors_hnsw_384 ON semcache_vectors USING hnsw "
           "((embedding::vector(384)) vector_ip_ops) WITH (m = 16, ef_construction = 64) WHERE dim = 384")


def pg_sql(url: str, *statements: str) -> None:
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        for st in statements:
            conn.execute(st)


def run_one(toy: Toy, backend: str, url: str, args: argparse.Namespace) -> dict[str, Any]:
    n = toy.n
    res: dict[str, Any] = {"backend": backend, "entries": n}
    bulk = backend == "pgvector" and args.pgvector_bulk_above is not None and n > args.pgvector_bulk_above
    singles = 0 if bulk else args.singles
    res["pgvector_bulk"] = bulk
    nice(args.nice)
    reuse = backend == "pgvector" and args.pgvector_reuse
    if reuse:  # a database this script filled before (same seed): timings and cold start only
        res["pgvector_reused"] = True
        bulk, singles = False, 0
    # fill through set_many
    cache = SemanticCache(config(toy, backend, url)).open()
    try:
        if bulk:
            # pgvector's HNSW index is dropped for the fill and built once after it (below)
            pg_sql(url, "DROP INDEX IF EXISTS ix_semcache_vectors_hnsw_384")
        batch = args.batch
        t0 = time.perf_counter()
        step = max(batch, (n // 10) // batch * batch)
        for lo in range(0, 0 if reuse else n - singles, batch):
            hi = min(n - singles, lo + batch)
            cache.set_many(({"prompt": toy.prompt(i), "value": f"answer {i}"} for i in range(lo, hi)), batch_size=batch)
            if args.progress and hi % step == 0:
                print(f"  [{backend} {n:,}] {hi:,} stored, {hi / (time.perf_counter() - t0):,.0f}/s", flush=True)
        if not reuse:
            res["insert_per_s"] = (n - singles) / (time.perf_counter() - t0)
        if singles:
            t0 = time.perf_counter()
            for i in range(n - singles, n):
                cache.set(toy.prompt(i), f"answer {i}")
            res["set_per_s"] = singles / (time.perf_counter() - t0)
        index = cache.index
        t0 = time.perf_counter()
        if hasattr(index, "wait"):
            index.wait()  # the HNSW build (and its catch-up) still running after the fill
        res["index_ready_after_fill_s"] = time.perf_counter() - t0
        if backend == "pgvector":
            cache.close()
            if bulk:
                # the same index the schema defines (m 16, ef_construction 64), built in
                # one statement: a cache opening would try too, but within its statement
                # timeout (SQLConfig.timeout_seconds), which a 1M build far exceeds
                t0 = time.perf_counter()
                pg_sql(url, "SET statement_timeout = 0", "SET maintenance_work_mem = '2GB'", PG_HNSW)
                res["pgvector_hnsw_build_s"] = time.perf_counter() - t0
            pg_sql(url, "ANALYZE")  # what autovacuum does after a bulk insert, now rather than later
            cache = SemanticCache(config(toy, backend, url)).open()
            index = cache.index
        nice(0)
        near_t = [toy.near_text(int(i)) for i in toy.targets]
        unr_t = [toy.unrelated_text(j) for j in range(len(toy.unrelated))]
        # warm-up, then interleave near and unrelated probes
        probe_all(cache, toy, near_t[:50], toy.near[:50])
        tn, gn = probe_all(cache, toy, near_t, toy.near)
        tu, gu = probe_all(cache, toy, unr_t, toy.unrelated)
        res["p50_near_ms"], res["p99_near_ms"] = ms(tn, 50), ms(tn, 99)
        res["p50_miss_ms"], res["p99_miss_ms"] = ms(tu, 50), ms(tu, 99)
        res["p99_all_ms"] = ms(tn + tu, 99)
        # recall at the top-1 decision against brute force
        eb, es = toy.exact_top1(toy.near)
        ub, us = toy.exact_top1(toy.unrelated)
        want = [toy.prompt(int(b)) if s >= THRESHOLD else None for b, s in zip(eb, es)]
        want_u = [toy.prompt(int(b)) if s >= THRESHOLD else None for b, s in zip(ub, us)]
        exact_hits = [(w, g) for w, g in zip(want + want_u, gn + gu) if w is not None]
        res["exact_hits"] = len(exact_hits)
        res["recall_top1"] = sum(w == g for w, g in exact_hits) / max(1, len(exact_hits))
        res["false_hits"] = sum(g is not None for w, g in zip(want + want_u, gn + gu) if w is None)
        res["probe_is_nearest"] = float(np.mean(eb == toy.targets))  # the toy data's own sanity
        if hasattr(index, "memory_bytes"):
            mb = index.memory_bytes()
            res["index_bytes_per_entry"] = mb["total"] / max(1, mb["entries"])
            res["index_vector_bytes_per_entry"] = mb["vectors"] / max(1, mb["entries"])
            res["index_python_bytes_per_entry"] = mb["python"] / max(1, mb["entries"])
        nice(args.nice)
        res["index_stats"] = {k: v for k, v in index.stats().items() if isinstance(v, (int, float, str))}
    finally:
        cache.close()
    # cold start: a new replica (a new process) over the filled L3
    res.update(cold_start(toy, backend, url))
    return res


def cold_start(toy: Toy, backend: str, url: str) -> dict[str, Any]:
    """Run the new replica in a child process (a clean RSS): its probes go in a file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "probes.npz")
        texts = [toy.near_text(int(i)) for i in toy.targets[:101]]
        np.savez(path, vecs=toy.near[:101], texts=np.asarray(texts), prompt=toy.prompt(int(toy.targets[0])))
        # the child imports this very package, wherever it was found
        here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))
        out = subprocess.run([sys.executable, "-m", "semcache.bench.scale", "--cold-start", backend, url, path, str(toy.n)],
                             check=True, stdout=subprocess.PIPE, text=True, env=env).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def cold_start_child(backend: str, url: str, path: str, n: int) -> None:
    data = np.load(path)
    vecs, texts, prompt = data["vecs"], [str(t) for t in data["texts"]], str(data["prompt"])
    by_text = dict(zip(texts, vecs))
    embedder = CallableEmbedder(lambda ts: np.stack([by_text[t] for t in ts]), dim=DIM, model_id="toy-seeded-384")
    kw: dict[str, Any] = {"index": "pgvector"} if backend == "pgvector" else {}
    cfg = CacheConfig(memory=MemoryConfig(), sql=SQLConfig(url=url), embedder=embedder,
                      policy=Policy(verifier=None, similarity_threshold=THRESHOLD, sweep_interval_seconds=None, log_poll_seconds=None), **kw)
    res: dict[str, Any] = {}
    if backend == "faiss":
        import faiss  # noqa: F401  (the library's own footprint is not the index's)
    before = trimmed_rss()
    t0 = time.perf_counter()
    cache = SemanticCache(cfg).open()
    try:
        req = cache.request(texts[0])
        while time.perf_counter() - t0 < 600:
            hit = cache.lookup(req, embedding=vecs[0])
            if hit is not None and hit.prompt == prompt:
                res["cold_start_first_hit_s"] = time.perf_counter() - t0
                break
            time.sleep(0.05)
        # lookups right after (FAISS: the flat index serves while the HNSW graph builds)
        times = []
        for t, v in zip(texts[1:], vecs[1:]):
            r = cache.request(t)
            t1 = time.perf_counter()
            cache.lookup(r, embedding=v)
            times.append(time.perf_counter() - t1)
        res["p50_during_build_ms"], res["p99_during_build_ms"] = ms(times, 50), ms(times, 99)
        print(f"  cold start: {json.dumps(res)}", file=sys.stderr, flush=True)
        index = cache.index
        if hasattr(index, "wait"):
            index.wait(WAIT_LIMIT_S)
            if index.stats()["hnsw_scopes"] or n < index.config.hnsw_min_entries:
                res["cold_start_index_ready_s"] = time.perf_counter() - t0
                res["index_rss_bytes_per_entry"] = (trimmed_rss() - before) / n
            else:  # still building: say so rather than wait on
                res["cold_start_index_building_after_s"] = time.perf_counter() - t0
            res["cold_index_bytes_per_entry"] = index.memory_bytes()["total"] / max(1, len(index))
    finally:
        cache.close()
    print(json.dumps(res))


# -- report -----------------------------------------------------------------------------
ROWS = [
    ("insert rate, set_many (/s)", "insert_per_s", "{:,.0f}"),
    ("insert rate, set (/s)", "set_per_s", "{:,.0f}"),
    ("lookup p50, near (ms)", "p50_near_ms", "{:.2f}"),
    ("lookup p99, near (ms)", "p99_near_ms", "{:.2f}"),
    ("lookup p50, unrelated (ms)", "p50_miss_ms", "{:.2f}"),
    ("lookup p99, unrelated (ms)", "p99_miss_ms", "{:.2f}"),
    ("lookup p99, all (ms)", "p99_all_ms", "{:.2f}"),
    ("recall @ top-1 decision", "recall_top1", "{:.4f}"),
    ("false hits (exact misses hit)", "false_hits", "{:d}"),
    ("index bytes/entry (accounted)", "index_bytes_per_entry", "{:,.0f}"),
    ("  vectors+graph+ids", "index_vector_bytes_per_entry", "{:,.0f}"),
    ("  python key maps", "index_python_bytes_per_entry", "{:,.0f}"),
    ("index bytes/entry (RSS growth)", "index_rss_bytes_per_entry", "{:,.0f}"),
    ("  (accounted, rebuilt replica)", "cold_index_bytes_per_entry", "{:,.0f}"),
    ("index ready after fill (s)", "index_ready_after_fill_s", "{:.1f}"),
    ("pgvector HNSW build, bulk (s)", "pgvector_hnsw_build_s", "{:.1f}"),
    ("cold start to first hit (s)", "cold_start_first_hit_s", "{:.2f}"),
    ("lookup p99 during build (ms)", "p99_during_build_ms", "{:.2f}"),
    ("cold start to HNSW ready (s)", "cold_start_index_ready_s", "{:.1f}"),
]
GROWTH = ["insert_per_s", "p99_all_ms", "index_bytes_per_entry", "cold_start_first_hit_s", "cold_start_index_ready_s"]


def fmt(v: Any, f: str) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "-"
    return f.format(v)


def print_size(n: int, results: list[dict[str, Any]]) -> None:
    print(f"\nN = {n:,} entries")
    print(f"{'':<32}" + "".join(f"{r['backend']:>14}" for r in results))
    for name, key, f in ROWS:
        if any(key in r for r in results):
            print(f"{name:<32}" + "".join(f"{fmt(r.get(key), f):>14}" for r in results))


def print_growth(all_results: list[dict[str, Any]]) -> None:
    by: dict[str, list[dict[str, Any]]] = {}
    for r in all_results:
        by.setdefault(r["backend"], []).append(r)
    print("\nGrowth (ratio to the previous size)")
    for backend, rs in by.items():
        for a, b in itertools.pairwise(rs):
            parts = []
            for key in GROWTH:
                if a.get(key) and b.get(key):
                    parts.append(f"{key} x{b[key] / a[key]:.2f}")
            print(f"  {backend} {a['entries']:,} -> {b['entries']:,} ({b['entries'] / a['entries']:.0f}x entries): " + ", ".join(parts))


def main() -> None:
    if sys.argv[1:2] == ["--cold-start"]:
        backend, url, path, count = sys.argv[2:6]
        cold_start_child(backend, url, path, int(count))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated entry counts")
    ap.add_argument("--backends", default="faiss", help="faiss,pgvector")
    ap.add_argument("--pgvector-bin", help="PostgreSQL binaries (with pgvector) to start a server from")
    ap.add_argument("--pgvector-url", help="a running PostgreSQL with pgvector (postgresql+psycopg://...)")
    ap.add_argument("--pgvector-max", type=int, default=None, help="skip pgvector above this size")
    ap.add_argument("--pgvector-bulk-above", type=int, default=None,
                    help="above this size, fill pgvector with its HNSW index dropped and build it once after")
    ap.add_argument("--pgvector-reuse", action="store_true",
                    help="time the databases bench_<size> an earlier run filled (no fill)")
    ap.add_argument("--nice", type=int, default=10, help="niceness of the fills and builds")
    ap.add_argument("--probes", type=int, default=1000, help="near probes and unrelated probes, each")
    ap.add_argument("--batch", type=int, default=1000, help="set_many batch size")
    ap.add_argument("--singles", type=int, default=1000, help="entries stored by single set() calls")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    backends = args.backends.split(",")
    print(f"machine: {os.cpu_count()} cores; toy embedder dim {DIM}, clusters of {CLUSTER}, threshold {THRESHOLD}")
    results: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        pg_url = args.pgvector_url
        if "pgvector" in backends and pg_url is None:
            if not args.pgvector_bin:
                raise SystemExit("--backends pgvector needs --pgvector-bin or --pgvector-url")
            pg_url = stack.enter_context(postgres(args.pgvector_bin))
        for n in sizes:
            toy = Toy(n, args.probes)
            per_size = []
            for backend in backends:
                if backend == "pgvector" and args.pgvector_max and n > args.pgvector_max:
                    continue
                t0 = time.perf_counter()
                if backend == "faiss":
                    with tempfile.TemporaryDirectory() as tmp:
                        r = run_one(toy, backend, f"sqlite:///{tmp}/l3.db", args)
                else:
                    assert pg_url is not None
                    db = pg_url.rsplit("/", 1)[0] + f"/bench_{n}" if args.pgvector_reuse else fresh_database(pg_url, f"bench_{n}")
                    r = run_one(toy, backend, db, args)
                r["wall_s"] = time.perf_counter() - t0
                per_size.append(r)
                results.append(r)
                if args.json:
                    with open(args.json, "w") as f:
                        json.dump(results, f, indent=1, default=str)
                print(f"  [{backend} {n:,}] done in {r['wall_s']:.0f}s", flush=True)
            print_size(n, per_size)
            del toy
            gc.collect()
    print_growth(results)


if __name__ == "__main__":
    main()
