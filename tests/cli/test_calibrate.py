"""``semcache calibrate`` on label files and stored feedback, with a fake verifier."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pytest

from semcache import CacheConfig, MemoryConfig, Policy, SemanticCache, SQLConfig
from semcache.cli.main import cli
from semcache.embedders import HashingEmbedder
from semcache.verify import Calibration


def run(runner, *args):
    return runner.invoke(cli, list(args), catch_exceptions=False)


class TableVerifier:
    """Scores each labelled pair from a table built with the label file."""

    verifier_id = "table-verifier"
    calibration = None

    def __init__(self, table: dict[tuple[str, str], float]) -> None:
        self.table = table
        self.calls = 0

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        self.calls += 1
        return np.array([self.table.get((a, b), 0.0) for a, b in pairs])


def synthetic(n: int, seed: int) -> tuple[list[dict], dict[tuple[str, str], float]]:
    """Labelled pairs whose verifier scores are Beta(5, 2) when correct, Beta(2, 5) when not;
    every fifth pair is in namespace acme."""
    rng = np.random.default_rng(seed)
    rows, table = [], {}
    for i in range(n):
        correct = bool(rng.random() < 0.4)
        a, b = f"question {seed}-{i}", f"cached question {seed}-{i}"
        table[(a, b)] = float(rng.beta(5, 2) if correct else rng.beta(2, 5))
        row = {"prompt": a, "cached_prompt": b, "correct": correct}
        if i % 5 == 0:
            row["namespace"] = "acme"
        rows.append(row)
    return rows, table


def write(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def fake_verifier(monkeypatch):
    """``--verifier table`` resolves to the verifier set here."""
    from semcache.verify import resolve

    holder: dict[str, TableVerifier] = {}
    real = resolve.resolve_verifier

    def fake(choice):
        return holder["v"] if choice == "table" else real(choice)

    monkeypatch.setattr(resolve, "resolve_verifier", fake)
    return holder


def test_the_stated_rate_holds_on_a_held_out_half(runner, tmp_path, fake_verifier):
    stats = pytest.importorskip("scipy.stats")
    rows, table = synthetic(4000, seed=1)
    fit, held = rows[:2000], rows[2000:]
    fake_verifier["v"] = TableVerifier(table)
    labels = write(tmp_path / "fit.jsonl", fit)
    out = tmp_path / "cal.json"
    r = run(runner, "calibrate", "--labels", labels, "--verifier", "table", "--namespace-min", "300", "--out", str(out), "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["verifier_id"] == "table-verifier" and report["out"] == str(out)
    assert report["n_positive"] + report["n_negative"] == 2000
    assert [t["max_false_hit_rate"] for t in report["targets"]] == [0.05, 0.02, 0.01, 0.005]
    assert set(report["namespaces"]) == {"acme"}  # 400 labels; the rest have no namespace
    assert fake_verifier["v"].calls == 8  # 256 pairs a call

    cal = Calibration.from_json(out)
    held_neg = np.asarray([table[(x["prompt"], x["cached_prompt"])] for x in held if not x["correct"]])
    held_pos = np.asarray([table[(x["prompt"], x["cached_prompt"])] for x in held if x["correct"]])
    for t in report["targets"]:
        # by default a threshold meets a target when its 95% upper bound does
        assert t["reached"] and t["false_hit_rate"] <= t["false_hit_upper"] <= t["max_false_hit_rate"]
        assert cal.threshold_for(t["max_false_hit_rate"]) == t["threshold"]
        # the held-out half, which the table never saw, agrees with the bound: its own
        # 95% lower bound on the rate at that threshold is under the bound the table
        # states (how often the bound covers the true rate: test_calibration.py)
        k = int((held_neg >= t["threshold"]).sum())
        held_lower = float(stats.beta.ppf(0.05, k, held_neg.size - k + 1)) if k else 0.0
        assert held_lower <= t["false_hit_upper"], (t, k, held_neg.size)
        assert k / held_neg.size <= 2 * t["max_false_hit_rate"]
        assert abs(float((held_pos >= t["threshold"]).mean()) - t["recall"]) < 0.08

    # the cache takes its threshold from the file
    cfg = CacheConfig(
        memory=MemoryConfig(),
        sql=None,
        embedder=HashingEmbedder(64),
        policy=Policy(verifier=fake_verifier["v"], verifier_calibration=str(out), max_false_hit_rate=0.02),
    )
    with SemanticCache(cfg) as cache:
        assert cache.explain("anything")["verifier_threshold"] == cal.threshold_for(0.02)


def test_the_human_report(runner, tmp_path, fake_verifier):
    rows, table = synthetic(1500, seed=2)
    fake_verifier["v"] = TableVerifier(table)
    labels = write(tmp_path / "l.jsonl", rows)
    out = tmp_path / "cal.json"
    r = run(runner, "calibrate", "--labels", labels, "--verifier", "table", "--target", "0.02", "--out", str(out))
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].startswith("table-verifier on ") and "1500 pairs" in lines[0]
    assert lines[1].split() == ["TARGET", "THRESHOLD", "RECALL", "FALSE", "HITS", "UPPER", "95%"]
    assert lines[3].startswith("2.00% *")  # the chosen target is marked
    assert "namespace acme:" in r.stdout and f"wrote {out}" in r.stdout
    assert "max_false_hit_rate=0.02" in r.stdout and out.is_file()


def test_cosine_calibration_with_the_embedder(runner, tmp_path):
    rows = []
    for i in range(60):
        rows.append({"a": f"how do I reset my password {i}", "b": f"how do i reset my password {i}?", "label": 1})
        rows.append({"a": f"order a pizza number {i}", "b": "the history of rome", "label": 0})
    labels = write(tmp_path / "l.jsonl", rows)
    # 60 incorrect pairs cannot bound a rate under 0.5%: compare the measured rates
    r = run(runner, "calibrate", "--labels", labels, "--verifier", "none", "--embedder", "hashing", "--bound", "measured", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["verifier_id"].startswith("cosine:hashing")
    strict = report["targets"][-1]  # 0.5%: the pairs share no word, so nothing is lost
    assert strict["recall"] == 1.0 and strict["false_hit_rate"] == 0.0


def test_from_feedback(runner, tmp_path, fake_verifier):
    url = f"sqlite:///{tmp_path}/fb.db"
    cfg = CacheConfig(memory=MemoryConfig(), sql=SQLConfig(url=url), embedder=HashingEmbedder(64), policy=Policy(verifier=None, similarity_threshold=0.5))
    asked = {}
    with SemanticCache(cfg) as cache:
        for i, ok in enumerate([True, False, True, False, True, True]):
            stored, prompt = f"what is the capital of country {i}", f"what is the capital of country {i} please"
            cache.set(stored, f"city {i}")
            hit = cache.get(prompt)
            assert hit is not None and hit.kind == "semantic"
            cache.feedback(hit, ok, prompt=prompt)
            asked[(prompt, stored)] = 0.9 if ok else 0.1
    fake_verifier["v"] = TableVerifier(asked)
    r = run(runner, "--sql-url", url, "calibrate", "--from-feedback", "--verifier", "table", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["n_positive"] == 4 and report["n_negative"] == 2
    assert report["source"] == "feedback labels (6 pairs)"
    assert report["targets"][-1]["threshold"] == 0.9 and report["targets"][-1]["recall"] == 1.0
    # only what people reported: all six are "user" labels; no audit made any
    r = run(runner, "--sql-url", url, "calibrate", "--from-feedback", "--source", "user", "--verifier", "table", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["source"] == "feedback labels from 'user' (6 pairs)"
    r = run(runner, "--sql-url", url, "calibrate", "--from-feedback", "--source", "llm", "--verifier", "table")
    assert r.exit_code == 1 and "no feedback labels from source 'llm'" in r.stderr
    assert run(runner, "calibrate", "--labels", "x.jsonl", "--source", "user").exit_code == 2


def test_from_feedback_with_no_labels(runner, tmp_path):
    url = f"sqlite:///{tmp_path}/empty.db"
    with SemanticCache(CacheConfig(sql=SQLConfig(url=url), embedder=None)):
        pass
    r = run(runner, "--sql-url", url, "calibrate", "--from-feedback")
    assert r.exit_code == 1 and "no feedback labels" in r.stderr


@pytest.mark.parametrize(
    "content,message",
    [
        ('{"prompt": "a", "cached_prompt": "b", "correct": true}\n{"prompt": "a", "correct": true}\n', "line 2: missing 'cached_prompt'"),
        ('{"prompt": "a", "cached_prompt": "b", "correct": true}\nnot json\n', "line 2: not JSON"),
        ("", "holds no labelled pairs"),
        ('{"prompt": "a", "cached_prompt": "b", "correct": true}\n', "both correct and incorrect"),
    ],
)
def test_a_bad_label_file_is_one_line_and_exit_1(runner, tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    r = run(runner, "calibrate", "--labels", str(path), "--verifier", "none", "--embedder", "hashing")
    assert r.exit_code == 1, r.output
    assert message in r.stderr and r.stderr.startswith("Error: ") and len(r.stderr.strip().splitlines()) == 1


def test_usage_errors(runner, tmp_path):
    assert run(runner, "calibrate").exit_code == 2  # neither source
    path = write(tmp_path / "l.jsonl", [{"a": "x", "b": "y", "label": 1}])
    assert run(runner, "calibrate", "--labels", path, "--from-feedback").exit_code == 2
    assert run(runner, "calibrate", "--labels", path, "--target", "0.7").exit_code == 2
    missing = run(runner, "calibrate", "--labels", str(tmp_path / "missing.jsonl"))
    assert missing.exit_code == 1 and "cannot read the label file" in missing.stderr
