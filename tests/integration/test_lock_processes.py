"""One call for many across real OS processes: three processes sharing Redis (and one
SQLite file) ask the same uncached question at the same moment; the Redis lock lets one
of them call the slow function, and the others get its stored answer."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

WORKER = textwrap.dedent(
    """
    import sys, time
    import redis
    from semcache import CacheConfig, MemoryConfig, Policy, RedisConfig, SemanticCache, SQLConfig
    from semcache.embedders import HashingEmbedder

    redis_url, sql_url, prefix, start_at = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    counter = redis.Redis.from_url(redis_url)
    config = CacheConfig(
        memory=MemoryConfig(),
        redis=RedisConfig(url=redis_url, prefix=prefix),
        sql=SQLConfig(url=sql_url),
        embedder=HashingEmbedder(dim=64),
        policy=Policy(verifier=None),
    )
    with SemanticCache(config) as cache:
        @cache.cached(lock=True, lock_timeout_seconds=20)
        def slow_llm(prompt: str) -> str:
            counter.incr(prefix + "calls")
            time.sleep(1.5)
            return "the answer to " + prompt

        time.sleep(max(0.0, start_at - time.time()))
        print(slow_llm("What is the airspeed velocity of an unladen swallow?"))
    """
)


@pytest.mark.redis
def test_three_processes_make_one_call(redis_url, tmp_path, key_prefix):
    import redis

    from semcache.db.migrate import upgrade
    from semcache.tiers.redis import _glob_escape

    sql_url = f"sqlite:///{tmp_path}/shared.db"
    upgrade(sql_url)  # created once, before the processes race to open it
    start_at = time.time() + 6.0  # after every process has imported and opened its cache
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, redis_url, sql_url, key_prefix, str(start_at)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    client = redis.Redis.from_url(redis_url)
    try:
        for p, (out, err) in zip(procs, outs):
            assert p.returncode == 0, err
            assert out.strip() == "the answer to What is the airspeed velocity of an unladen swallow?"
        assert int(client.get(key_prefix + "calls") or 0) == 1
    finally:
        keys = list(client.scan_iter(match=_glob_escape(key_prefix) + "*"))
        if keys:
            client.delete(*keys)
