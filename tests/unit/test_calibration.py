"""Calibration tables: Clopper–Pearson bounds, deriving thresholds, JSON, label files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from semcache import ConfigurationError, InvalidInputError
from semcache.verify import Calibration, CalibrationPoint, LabeledPair, clopper_pearson_upper, derive, label_rows, read_label_file


# -- Clopper–Pearson ----------------------------------------------------------------------
def test_clopper_pearson_known_values():
    # no event in 300 trials: the "rule of three" neighbourhood, 1 - 0.05 ** (1/300)
    assert clopper_pearson_upper(0, 300) == pytest.approx(0.00994, abs=5e-6)
    assert clopper_pearson_upper(0, 300) == pytest.approx(1 - 0.05 ** (1 / 300), rel=1e-12)
    assert clopper_pearson_upper(1, 100) == pytest.approx(0.04656, abs=5e-5)
    assert clopper_pearson_upper(5, 5) == 1.0 and clopper_pearson_upper(0, 0) == 1.0
    assert clopper_pearson_upper(10, 1000, conf=0.99) > clopper_pearson_upper(10, 1000)


def test_clopper_pearson_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for n in (1, 2, 7, 50, 300, 1000, 20_000):
        for k in sorted({0, 1, 2, 3, n // 10, n // 2, n - 1}):
            if 0 <= k < n:
                want = float(stats.beta.ppf(0.95, k + 1, n - k))
                assert clopper_pearson_upper(k, n) == pytest.approx(want, rel=1e-9, abs=1e-12), (k, n)


@pytest.mark.parametrize("k,n,conf", [(-1, 5, 0.95), (6, 5, 0.95), (1.5, 5, 0.95), (True, 5, 0.95), (1, 5, 1.0), (1, 5, 0.0)])
def test_clopper_pearson_rejects_bad_arguments(k, n, conf):
    with pytest.raises(InvalidInputError):
        clopper_pearson_upper(k, n, conf)


# -- deriving -------------------------------------------------------------------------------
def test_derive_a_small_table_by_hand():
    cal = derive([0.9, 0.8, 0.7, 0.6, 0.5], [True, True, False, True, False], verifier_id="v", source="hand")
    assert cal.n_positive == 3 and cal.n_negative == 2 and cal.source == "hand"
    rows = [(p.threshold, p.false_hits, p.true_hits) for p in cal.points]
    # one point per false-hit count (its lowest threshold) plus the highest score
    assert rows == [(0.5, 2, 3), (0.6, 1, 3), (0.8, 0, 2), (0.9, 0, 1)]
    m = {"confident": False}  # by the measured rates
    assert cal.threshold_for(0.5, **m) == 0.6 and cal.point_for(0.5, **m).recall == 1.0
    assert cal.threshold_for(0.01, **m) == 0.8 and cal.point_for(0.01, **m).recall == pytest.approx(2 / 3)
    assert cal.threshold_for(1.0, **m) == 0.5
    assert cal.point_for(0.5, **m).false_hit_upper == pytest.approx(clopper_pearson_upper(1, 2))
    # by the 95% upper bound (the default): two incorrect pairs bound no rate under 0.5,
    # so the strictest threshold; a target of 1 is met by every threshold
    assert cal.threshold_for(0.5) == 0.9 and cal.threshold_for(1.0) == 0.5


def test_no_threshold_reaches_the_target_gives_the_highest():
    cal = derive([0.9, 0.8, 0.3], [False, True, True], verifier_id="v", source="t")
    assert cal.threshold_for(0.1) == 0.9  # even the top score is a false hit
    assert cal.point_for(0.1).false_hit_rate == 1.0


def test_ties_are_served_together():
    cal = derive([0.7, 0.7, 0.7, 0.2], [True, False, True, False], verifier_id="v", source="t")
    assert [(p.threshold, p.false_hits, p.true_hits) for p in cal.points] == [(0.2, 2, 2), (0.7, 1, 2)]


def test_the_table_is_monotone_and_the_choice_holds_on_the_data():
    rng = np.random.default_rng(7)
    n = 30_000
    labels = rng.random(n) < 0.3
    scores = np.where(labels, rng.beta(6, 2, n), rng.beta(2, 6, n))
    cal = derive(scores, labels, verifier_id="v", source="synthetic")
    pts = cal.points
    assert len(pts) < 1000  # thinned above 256 false hits
    assert all(a.threshold < b.threshold for a, b in zip(pts, pts[1:]))
    assert all(a.false_hit_rate >= b.false_hit_rate and a.recall >= b.recall for a, b in zip(pts, pts[1:]))
    assert all(p.false_hit_upper >= p.false_hit_rate for p in pts)
    neg = scores[~labels]
    for target in (0.05, 0.02, 0.01, 0.005, 0.001):
        t = cal.threshold_for(target, confident=False)
        measured = float((neg >= t).mean())
        assert measured <= target  # on the labels it was derived from, exactly
        assert measured == pytest.approx(cal.point_for(target, confident=False).false_hit_rate)
        # thinning never costs more than a couple of percent of the allowed false hits
        assert measured >= target * 0.97 - 1 / neg.size
        # by the bound: stricter, and the bound itself meets the target
        strict = cal.point_for(target)
        assert strict.threshold >= t and strict.false_hit_upper <= target
        assert float((neg >= strict.threshold).mean()) == pytest.approx(strict.false_hit_rate)


def test_a_held_out_half_stays_within_the_bound():
    rng = np.random.default_rng(11)
    n = 20_000
    labels = rng.random(n) < 0.4
    scores = np.where(labels, rng.beta(5, 2, n), rng.beta(2, 5, n))
    half = n // 2
    cal = derive(scores[:half], labels[:half], verifier_id="v", source="first half")
    held_s, held_l = scores[half:], labels[half:]
    for target in (0.05, 0.01):
        p = cal.point_for(target)
        measured = float((held_s[~held_l] >= p.threshold).mean())
        assert measured <= p.false_hit_upper


def test_the_bound_covers_the_true_rate_about_95_percent_of_the_time():
    """Over 100 synthetic label sets, the stated upper bound at the chosen threshold is
    under the true false-hit rate of the distribution only about 5% of the time."""
    stats = pytest.importorskip("scipy.stats")
    targets = (0.05, 0.02, 0.01)
    misses = dict.fromkeys(targets, 0)
    for seed in range(100):
        rng = np.random.default_rng(seed)
        labels = rng.random(1000) < 0.4
        scores = np.where(labels, rng.beta(5, 2, 1000), rng.beta(2, 5, 1000))
        cal = derive(scores, labels, verifier_id="v", source="t")
        for t in targets:
            p = cal.point_for(t)
            misses[t] += float(stats.beta.sf(p.threshold, 2, 5)) > p.false_hit_upper
    assert all(m <= 10 for m in misses.values()), misses  # about 5 expected; a bound that were the measured rate would miss about half


def test_namespaces_with_enough_labels_get_their_own_table():
    rng = np.random.default_rng(3)
    n = 600
    labels = rng.random(n) < 0.5
    scores = np.where(labels, rng.beta(5, 2, n), rng.beta(2, 5, n))
    ns = ["big"] * 300 + ["small"] * 100 + [None] * 200
    scores[:300] = np.where(labels[:300], 0.99, 0.98)  # "big": a different verifier regime
    scores[300:400] = 0.5
    cal = derive(scores, labels, verifier_id="v", source="t", namespaces=ns, min_labels_per_namespace=200)
    assert set(cal.namespaces) == {"big"}
    assert cal.namespaces["big"].n_positive + cal.namespaces["big"].n_negative == 300
    assert cal.n_positive + cal.n_negative == 600
    assert cal.threshold_for(0.01, "big") == 0.99
    assert cal.threshold_for(0.01, "small") == cal.threshold_for(0.01) == cal.threshold_for(0.01, None)
    one_class = derive([0.9] * 250, [True] * 250, verifier_id="v", source="t", namespaces=["x"] * 250)
    assert one_class.namespaces == {}  # no incorrect pair: nothing to measure a rate on


@pytest.mark.parametrize(
    "scores,labels,kw",
    [
        ([], [], {}),
        ([0.5, 0.6], [True], {}),
        ([0.5, float("nan")], [True, False], {}),
        ([0.5], ["yes"], {}),
        ([0.5], [2], {}),
        ([0.5], [True], {"namespaces": ["a", "b"]}),
        ([0.5], [True], {"min_labels_per_namespace": 0}),
    ],
)
def test_derive_rejects_bad_input(scores, labels, kw):
    with pytest.raises(InvalidInputError):
        derive(scores, labels, verifier_id="v", source="t", **kw)


def test_threshold_for_checks_the_target():
    cal = derive([0.9, 0.1], [True, False], verifier_id="v", source="t")
    for bad in (0, -0.1, 1.5, True, "0.01"):
        with pytest.raises(InvalidInputError):
            cal.threshold_for(bad)  # type: ignore[arg-type]


# -- JSON -------------------------------------------------------------------------------------
def _cal() -> Calibration:
    scores = [0.95, 0.9, 0.85, 0.4, 0.3, 0.99, 0.2, 0.1] * 30
    labels = [True, True, False, True, False, True, False, False] * 30
    ns = ["a"] * 200 + [None] * 40
    return derive(scores, labels, verifier_id="model-1", source="labels.jsonl", namespaces=ns)


def test_json_round_trip(tmp_path):
    cal = _cal()
    assert "a" in cal.namespaces
    path = tmp_path / "cal.json"
    text = cal.to_json(path)
    assert path.read_text() == text and json.loads(text)["format"] == "semcache-calibration/1"
    for source in (path, str(path), text, json.loads(text)):
        back = Calibration.from_json(source)
        assert back == cal
        assert back.threshold_for(0.01, "a") == cal.threshold_for(0.01, "a")
    assert isinstance(back.points[0], CalibrationPoint)


@pytest.mark.parametrize(
    "content",
    ["not json", "[]", '{"format": "other/2", "points": []}', '{"verifier_id": "v", "points": [], "n_positive": 0, "n_negative": 0}', '{"verifier_id": "v"}', '{"verifier_id": "v", "points": [{"threshold": 0.5}], "n_positive": 1, "n_negative": 1}'],
)
def test_a_bad_calibration_file_is_a_configuration_error(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ConfigurationError):
        Calibration.from_json(path)


def test_a_missing_calibration_file_is_a_configuration_error(tmp_path):
    with pytest.raises(ConfigurationError, match="cannot read"):
        Calibration.from_json(tmp_path / "nope.json")


# -- label files --------------------------------------------------------------------------------
def test_read_a_label_file(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text(
        '{"prompt": "reset my password", "cached_prompt": "how to reset a password", "correct": true}\n'
        "\n"
        '{"prompt": "a", "cached_prompt": "b", "correct": false, "namespace": "acme"}\n'
        '{"a": "c", "b": "d", "label": 1}\n'
        '{"a": "e", "b": "f", "label": 0, "extra": "ignored"}\n'
    )
    assert read_label_file(path) == [
        LabeledPair("reset my password", "how to reset a password", True, None),
        LabeledPair("a", "b", False, "acme"),
        LabeledPair("c", "d", True, None),
        LabeledPair("e", "f", False, None),
    ]


@pytest.mark.parametrize(
    "line,message",
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "JSON object"),
        ('{"prompt": "a", "correct": true}', "missing 'cached_prompt'"),
        ('{"prompt": "a", "cached_prompt": "b", "correct": "yes"}', "'correct' must be true or false"),
        ('{"a": "a", "b": "b", "label": 2}', "'label' must be true or false"),
        ('{"prompt": "", "cached_prompt": "b", "correct": true}', "'prompt' must be a non-empty string"),
        ('{"prompt": "a\\u0000", "cached_prompt": "b", "correct": true}', "NUL"),
        ('{"prompt": 5, "cached_prompt": "b", "correct": true}', "'prompt' must be a non-empty string"),
        ('{"prompt": "a", "cached_prompt": "b", "correct": true, "namespace": 3}', "'namespace'"),
        ('{"question": "a"}', "want the keys"),
    ],
)
def test_a_bad_label_line_names_the_line(tmp_path, line, message):
    path = tmp_path / "labels.jsonl"
    path.write_text('{"prompt": "a", "cached_prompt": "b", "correct": true}\n\n' + line + "\n")
    with pytest.raises(InvalidInputError, match=message) as info:
        read_label_file(path)
    assert f"{path} line 3" in str(info.value)


def test_an_empty_or_missing_label_file(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(InvalidInputError, match="no labelled pairs"):
        read_label_file(empty)
    with pytest.raises(InvalidInputError, match="cannot read"):
        read_label_file(tmp_path / "missing.jsonl")


def test_label_rows_from_stored_feedback_rows():
    rows = [
        {"prompt": "q", "cached_prompt": "c", "correct": False, "namespace": "acme", "entry_id": "e1", "similarity": 0.9, "verifier_score": None, "source": "user", "created_at": 1.0},
    ]
    assert label_rows(rows) == [LabeledPair("q", "c", False, "acme")]
    with pytest.raises(InvalidInputError, match="feedback row 2"):
        label_rows([rows[0], {"prompt": "q"}], source="feedback")


def test_a_namespace_with_too_few_labels_for_the_rate_uses_the_overall_table():
    rng = np.random.default_rng(5)
    n = 6000
    labels = rng.random(n) < 0.5
    scores = np.where(labels, rng.beta(6, 2, n), rng.beta(2, 6, n))
    ns = ["small" if i < 300 else None for i in range(n)]  # 300 labels: ~150 incorrect
    cal = derive(scores, labels, verifier_id="v", source="t", min_labels_per_namespace=200, namespaces=ns)
    assert "small" in cal.namespaces
    small = cal.namespaces["small"]
    # ~150 incorrect pairs bound no rate under 1% (0 of 150 gives about 2%): the overall table decides
    assert small.reaching(0.01) is None and cal.reaching(0.01) is not None
    assert cal.threshold_for(0.01, "small") == cal.threshold_for(0.01)
    # a rate its labels can show is its own
    own = small.reaching(0.10)
    assert own is not None and cal.point_for(0.10, "small") == own
