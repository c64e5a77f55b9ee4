"""The consistency contract (tests/consistency/test_history.py) with L2 on a Redis
Cluster: a private one (3 masters, a replica each, ``cluster-node-timeout`` 2 s) and a
private PostgreSQL as L3; two ``spawn``-ed processes, each with its own cache.

* without faults: the entries spread over every master, events on sharded pub/sub;
* while masters are SIGKILLed one after another: a replica is promoted (the
  cluster refuses the dead master's slots until then), the killed node is started
  again and rejoins as a replica. Writes the dead master acknowledged but had not yet
  passed to its replica are lost with it (Redis replicates asynchronously); the L2
  repair from L3's change log puts such lost deletes back.

    bash scripts/test.sh tests/consistency/test_history_cluster.py -q -x -s
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests._history import FaultInjector, run_workload
from tests._servers import RedisClusterServer, RedisServerUnavailable
from tests.consistency.test_history import _explain, _report, _spec

pytestmark = pytest.mark.redis_cluster


@pytest.fixture
def own_cluster() -> Iterator[RedisClusterServer]:
    try:
        server = RedisClusterServer(node_timeout_ms=2000)
    except RedisServerUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    with server:
        yield server


def test_replicas_on_a_redis_cluster_and_postgres(own_cluster, own_postgres, tmp_path, key_prefix):
    spec = _spec(sql_url=own_postgres.url, redis_url=own_cluster.url, redis_cluster=True, redis_prefix=key_prefix,
                 duration=8.0, ops_per_thread=6_000)
    result = run_workload(spec, tmp_path)
    report = _report("L1+L2 (Redis Cluster)+L3 (PostgreSQL), no faults", result)
    assert report.ops >= 1_000
    assert report.violations == [], _explain(report, result)


def test_replicas_on_a_redis_cluster_under_master_failovers(own_cluster, own_postgres, tmp_path, key_prefix):
    took: list[float] = []

    def master_kill():
        port = own_cluster.kill_master(own_cluster.master_ports()[len(took) % 3])
        took.append(own_cluster.wait_failover(port))
        own_cluster.restart(port)  # back as a replica of the promoted one

    injector = FaultInjector({"master_kill": master_kill}, pause=1.5, first_after=1.5)
    spec = _spec(sql_url=own_postgres.url, redis_url=own_cluster.url, redis_cluster=True, redis_prefix=key_prefix,
                 duration=24.0, ops_per_thread=30_000)
    result = run_workload(spec, tmp_path, injector=injector)
    report = _report("L1+L2 (Redis Cluster)+L3 (PostgreSQL), master failovers", result, injector)
    print(f"[master failovers] seconds until a replica took over: {[round(t, 2) for t in took]}")
    assert injector.counts["master_kill"] >= 2, injector.counts
    assert report.ops >= 1_000
    assert report.violations == [], _explain(report, result)
