"""deploy/grafana/semcache-dashboard.json: valid dashboard JSON whose every query names
a metric the sidecar really exports, and which covers what operators watch: hit rate by
tier and kind, latency, false-hit reports, tier errors and savings."""

from __future__ import annotations

import json
import re
from pathlib import Path

from semcache import CacheConfig, MemoryConfig, Policy, SemanticCache, SQLConfig
from semcache.contrib.prometheus import CacheMetrics
from semcache.embedders import HashingEmbedder

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "semcache-dashboard.json"
_SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def _exported(tmp_path) -> set[str]:
    cfg = CacheConfig(memory=MemoryConfig(), sql=SQLConfig(url=f"sqlite:///{tmp_path}/m.db"),
                      embedder=HashingEmbedder(64), policy=Policy(similarity_threshold=0.8, verifier=None),
                      prices={"m": (1.0, 2.0)})
    with SemanticCache(cfg) as cache:
        cache.set("what is the capital of france", "Paris", model="m")
        hit = cache.get("what is the capital of france please", model="m")
        assert hit is not None and hit.kind == "semantic"
        cache.feedback(hit, correct=True, prompt="what is the capital of france please", model="m")  # the reported false-hit rate exists once a semantic hit has feedback
        cache.set("how many days are in 3 weeks", "21", model="m")
        assert cache.get("how many days are in 4 weeks", model="m") is None  # a guard's rejection is counted
        metrics = CacheMetrics(cache)
        metrics.observe_lookup("/v1/lookup", "exact", 0.001)
        metrics.observe_batch(2)
        metrics.http_requests.labels("/v1/lookup", "POST", "200").inc()
        metrics.upstream_requests.labels("200").inc()
        text = metrics.render().decode()
    return {m.group(1) for m in re.finditer(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", text, re.M)}


def _base(name: str) -> str:
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def test_every_query_names_an_exported_metric(tmp_path):
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert exprs and all(t["refId"] for p in dash["panels"] for t in p["targets"])
    exported = _exported(tmp_path)
    exported_bases = {_base(n) for n in exported}
    for expr in exprs:
        assert expr.count("(") == expr.count(")"), expr
        for name in re.findall(r"\bsemcache_[a-z0-9_]+", expr):
            assert name in exported or (name.endswith("_bucket") and _base(name) in exported_bases), (name, expr)
        if "rate(" in expr:
            # rates only of counters and histogram buckets, never of a gauge
            for name in re.findall(r"rate\((semcache_[a-z0-9_]+)", expr):
                assert name.endswith(("_total", "_bucket")), (name, expr)


def test_the_panels_cover_what_operators_watch():
    dash = json.loads(DASHBOARD.read_text())
    titles = " | ".join(p["title"].lower() for p in dash["panels"])
    for wanted in ("hit rate by tier and kind", "latency", "false-hit", "tier errors", "savings"):
        assert wanted in titles, wanted
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert {v["name"] for v in dash["templating"]["list"]} >= {"datasource", "namespace", "pod"}
