"""Exact-hit latency per tier (L1, L2, L3) and of a miss, against a plain dict and a
plain Redis GET measured in the same run.

    semcache bench tiers [--redis-url redis://127.0.0.1:6379/0] [-n 5000]

Without --redis-url (or SEMCACHE_BENCH_REDIS_URL) a throw-away redis-server is
started on a free loopback port when the binary exists; otherwise L2 is skipped.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from semcache.bench._common import row, time_calls  # noqa: E402

from semcache import CacheConfig, MemoryConfig, RedisConfig, SemanticCache, SQLConfig  # noqa: E402


def _start_redis() -> tuple[subprocess.Popen[bytes], str] | None:
    exe = shutil.which("redis-server")
    if exe is None:
        return None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    return proc, f"redis://127.0.0.1:{port}/0"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--redis-url", default=os.environ.get("SEMCACHE_BENCH_REDIS_URL"))
    ap.add_argument("-n", type=int, default=5000)
    args = ap.parse_args()

    started = None
    url = args.redis_url
    if url is None:
        started = _start_redis()
        url = started[1] if started else None
    tmp = tempfile.mkdtemp()
    cfg = CacheConfig(
        memory=MemoryConfig(),
        redis=RedisConfig(url=url, prefix="semcache-bench:", pubsub=False) if url else None,
        sql=SQLConfig(url=f"sqlite:///{tmp}/bench.db"),
        embedder=None,  # exact paths only: no embedding is ever computed on them
    )
    prompt = "What is the time complexity of binary search on a sorted array?"
    value = {"role": "assistant", "content": "O(log n): each step halves the search interval." * 3}
    try:
        with SemanticCache(cfg) as cache:
            entry = cache.set(prompt, value, model="gpt-4o-mini", ttl_seconds=3600)
            key = entry.key
            tiers = cache.tiers
            l1 = tiers[0]

            plain: dict[str, object] = {key: value}
            results: list[tuple[str, Any, Any]] = []  # (name, samples, baseline or None)
            base_dict = time_calls(lambda: plain.get(key), args.n)
            results.append(("baseline: dict.get", base_dict, None))
            results.append(("L1 exact hit", time_calls(lambda: cache.get(prompt, model="gpt-4o-mini"), args.n), base_dict))

            base_redis = None
            if url:
                import redis

                rc = redis.Redis.from_url(url)
                rc.set("semcache-bench:plain", b"x" * len(entry.payload))
                base_redis = time_calls(lambda: rc.get("semcache-bench:plain"), args.n)
                results.append(("baseline: redis GET", base_redis, None))

                def l2_hit() -> object:
                    l1.delete([key])
                    return cache.get(prompt, model="gpt-4o-mini")

                results.append(("L2 exact hit (+promote)", time_calls(l2_hit, args.n), base_redis))

            def l3_hit() -> object:
                for t in tiers[:-1]:
                    t.delete([key])
                return cache.get(prompt, model="gpt-4o-mini")

            results.append(("L3 exact hit (+promote)", time_calls(l3_hit, max(args.n // 5, 200)), base_redis))
            results.append(
                ("miss (all tiers)", time_calls(lambda: cache.get("never stored", model="gpt-4o-mini"), max(args.n // 5, 200)), base_redis)
            )
            if url:
                rc.delete("semcache-bench:plain")
            cache.flush()
    finally:
        if started:
            started[0].terminate()
            started[0].wait()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"{'path':<28}{'p50 µs':>10}{'p99 µs':>10}  vs baseline (p50)")
    for name, samples, base in results:
        print(row(name, samples, base))


if __name__ == "__main__":
    main()
