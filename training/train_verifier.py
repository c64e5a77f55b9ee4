"""Train the default pair verifier and write it to ``semcache/verify/data/``.

    python training/train_verifier.py [--data ../shared/data/paws-wiki-train] [--out semcache/verify/data]

Runs once, on CPU, in a few minutes (not in CI). Seeded and deterministic:

1. Export all-MiniLM-L6-v2 (the packaged embedding model) to ONNX with every token's
   last hidden state as output, and quantise it to int8 (``encoder.onnx``). Its pooled
   vectors are checked against the float model's.
2. Split PAWS-Wiki training pairs into families (pairs that share a sentence) and keep
   ``--holdout`` of the families out of training, for calibration only.
3. Encode every sentence with the int8 encoder, compute
   :func:`semcache.verify.features.pair_features` for both orders of each pair, and fit
   scikit-learn's ``HistGradientBoostingClassifier`` (``head.onnx``, through skl2onnx; its
   outputs are checked against scikit-learn's).
4. Score the held-out pairs as the cache will (head x cosine prior) and write the
   calibration table (``calibration.json``) and a record of the run (``verifier.json``).

Optionally ``--synthetic N`` adds N generated pairs (``training/synthetic.py``) to the
training split. Needs the ``train`` extra (scikit-learn, skl2onnx) besides torch and
transformers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "training"))

from semcache.verify.calibration import derive  # noqa: E402
from semcache.verify.features import feature_names, verifier_features  # noqa: E402
from semcache.embedders.onnx import OnnxEmbedder  # noqa: E402
from semcache.verify.model import mean_cosine  # noqa: E402

VERIFIER_ID = "semcache-pair-verifier-1"


def log(msg: str) -> None:
    print(f"[train] {msg}", flush=True)


def families(pairs: list[dict]) -> list[str]:
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for p in pairs:
        parent[find(p["a"])] = find(p["b"])
    return [find(p["a"]) for p in pairs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "paws-wiki-train")
    ap.add_argument("--out", type=Path, default=ROOT / "semcache" / "verify" / "data")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--prior-low", type=float, default=0.7)
    ap.add_argument("--prior-power", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0], help="candidates; the best on held-out data is kept")
    ap.add_argument("--synthetic", type=int, default=3000, help="generated pairs to add to training (0: none)")
    ap.add_argument("--labels", type=Path, action="append", default=[], help="labelled pairs to train on as well (JSONL, as `semcache calibrate --save-labels` writes: feedback reports); repeatable")
    ap.add_argument("--onnx-dir", type=Path, default=None, help="where the embedder's graph is exported (default: the embedder's own cache)")
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--learning-rate", type=float, default=0.05)
    ap.add_argument("--leaves", type=int, default=15)
    ap.add_argument("--l2", type=float, default=0.0)
    args = ap.parse_args()
    t_start = time.time()
    random.seed(args.seed)
    np.random.seed(args.seed)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(os.cpu_count() or 1)

    args.out.mkdir(parents=True, exist_ok=True)
    pairs_path = args.data / "pairs.jsonl"
    raw = pairs_path.read_bytes()
    pairs = [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()]
    log(f"{len(pairs)} pairs from {pairs_path.name} (sha256 {hashlib.sha256(raw).hexdigest()[:16]})")

    # The token states come from the default embedder's own graph (exported once from the
    # packaged weights), as the cache reads them: float32, and the same for a text alone
    # or in a batch.
    t0 = time.time()
    enc = OnnxEmbedder(None, onnx_dir=args.onnx_dir)
    enc.load()
    if not enc.has_states:
        sys.exit(f"{enc.onnx_path} returns no token states")
    log(f"encoder: {enc.onnx_path.name} of {enc.model_id}, loaded in {time.time() - t0:.0f} s")
    stale = args.out / "encoder.onnx"
    if stale.exists():
        stale.unlink()  # written by earlier versions of this script

    # folds of whole families (pairs that share a sentence), so no sentence of a scored
    # pair was seen in training: out-of-fold scores calibrate the model trained on all
    fam = families(pairs)
    ids = sorted(set(fam))
    random.Random(args.seed).shuffle(ids)
    fold_of = {f: i % args.folds for i, f in enumerate(ids)}
    folds = np.array([fold_of[f] for f in fam])
    synthetic: list[dict] = []
    if args.synthetic:
        from synthetic import generate

        synthetic = [{"a": p.a, "b": p.b, "label": p.label} for p in generate(args.synthetic, args.seed)]
    from semcache.verify.calibration import read_label_file

    for path in args.labels:
        own = [{"a": p.prompt, "b": p.cached_prompt, "label": int(p.correct)} for p in read_label_file(path)]
        log(f"{len(own)} labelled pairs from {path.name}")
        synthetic += own
    log(f"{len(pairs)} pairs in {len(ids)} families, {args.folds} folds; +{len(synthetic)} generated or given pairs")

    t0 = time.time()
    texts = sorted({t for p in pairs + synthetic for t in (p["a"], p["b"])})
    states = dict(zip(texts, enc.token_states(texts)))
    log(f"encoded {len(texts)} texts in {time.time() - t0:.0f} s")
    nums = enc.number_ids

    def feats(rows: list[dict], both: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x, y, c = [], [], []
        for p in rows:
            for a, b in ((p["a"], p["b"]), (p["b"], p["a"])) if both else ((p["a"], p["b"]),):
                (ia, ha), (ib, hb) = states[a], states[b]
                x.append(verifier_features(ia, ha, ib, hb, nums))
                y.append(int(p["label"]))
                c.append(mean_cosine(ha[0], hb[0]))
        return np.array(x, np.float32), np.array(y), np.array(c)

    x_ab, y_pw, c_pw = feats(pairs, both=False)
    x_ba, _, _ = feats([{"a": p["b"], "b": p["a"], "label": p["label"]} for p in pairs], both=False)
    x_syn, y_syn, _ = feats(synthetic, both=True) if synthetic else (np.zeros((0, x_ab.shape[1]), np.float32), np.zeros(0, int), None)
    from sklearn.ensemble import HistGradientBoostingClassifier

    def fit(mask: np.ndarray) -> HistGradientBoostingClassifier:
        x = np.vstack([x_ab[mask], x_ba[mask], x_syn])
        y = np.concatenate([y_pw[mask], y_pw[mask], y_syn])
        model = HistGradientBoostingClassifier(
            max_iter=args.iterations, learning_rate=args.learning_rate, max_leaf_nodes=args.leaves,
            l2_regularization=args.l2, random_state=args.seed,
        )
        return model.fit(x, y)

    t0 = time.time()
    oof = np.empty(len(pairs))
    for k in range(args.folds):
        oof[folds == k] = fit(folds != k).predict_proba(x_ab[folds == k])[:, 1]
    head = fit(np.ones(len(pairs), dtype=bool))
    x_tr = x_ab
    log(f"{args.folds} fold heads and the final head fitted in {time.time() - t0:.1f} s")
    y_ho, c_ho = y_pw, c_pw

    from skl2onnx import to_onnx
    import skl2onnx.common._container as container

    # skl2onnx 1.20 passes numpy bools in one list attribute of the tree ensemble, which
    # onnx's attribute builder rejects; hand it ints instead.
    make_node = container.make_node

    def int_bools(op, inputs, outputs, name=None, **attrs):  # type: ignore[no-untyped-def]
        for k, v in attrs.items():
            if isinstance(v, (list, tuple)) and any(isinstance(x, (bool, np.bool_)) for x in v):
                attrs[k] = [int(x) for x in v]
        return make_node(op, inputs, outputs, name=name, **attrs)

    container.make_node = int_bools

    onx = to_onnx(head, x_tr[:1], options={id(head): {"zipmap": False}}, target_opset=17)
    head_path = args.out / "head.onnx"
    head_path.write_bytes(onx.SerializeToString())
    import onnxruntime as ort

    sess = ort.InferenceSession(str(head_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x_ab})[-1][:, 1]
    want = head.predict_proba(x_ab)[:, 1]
    diff = float(np.abs(got - want).max())
    if diff > 1e-4:
        sys.exit(f"head.onnx disagrees with scikit-learn by {diff}")
    log(f"head.onnx written ({head_path.stat().st_size / 1e3:.0f} kB), max |onnx - sklearn| = {diff:.2e}")

    # Pick how head and cosine combine on held-out data of both kinds: the PAWS families
    # (long sentences, same words in another order) and generated prompt pairs from
    # another seed (short questions, where the cosine matters most). The pick maximises
    # the lower of the two recalls at <= 1% false hits.
    from synthetic import generate

    seen = {t for p in pairs + synthetic for t in (p["a"], p["b"])}
    syn_ho = [{"a": p.a, "b": p.b, "label": p.label} for p in generate(2000, args.seed + 1) if p.a not in seen and p.b not in seen]
    extra = sorted({t for p in syn_ho for t in (p["a"], p["b"])} - states.keys())
    states.update(zip(extra, enc.token_states(extra)))
    x_sh, y_sh, c_sh = feats(syn_ho, both=False)
    h_sh = sess.run(None, {sess.get_inputs()[0].name: x_sh})[-1][:, 1]

    def combine(head_p: np.ndarray, cos: np.ndarray, pp: float) -> np.ndarray:
        # (a power on the head too would change no ranking that a power on the prior can't)
        prior = np.clip((cos - args.prior_low) / (1 - args.prior_low), 0, 1) ** pp
        return np.clip(np.clip(head_p, 0, 1) * prior, 0, 1)

    def r_at(s: np.ndarray, y: np.ndarray, rate: float) -> float:
        neg = np.sort(s[y == 0])[::-1]
        return float((s[y == 1] > neg[int(len(neg) * rate)]).mean())

    grid = []
    for pp in args.prior_power:
        a = r_at(combine(oof, c_ho, pp), y_ho, 0.01)
        b = r_at(combine(h_sh, c_sh, pp), y_sh, 0.01)
        grid.append((min(a, b), a, b, pp))
        log(f"head x prior ** {pp}: recall at <=1% false, PAWS held-out {a:.3f}, generated held-out {b:.3f}")
    _, _, _, prior_power = max(grid)
    log(f"kept head x prior ** {prior_power} ({len(syn_ho)} generated held-out pairs)")
    scores = combine(oof, c_ho, prior_power)
    cal = derive(scores, y_ho.astype(bool), verifier_id=VERIFIER_ID, source=f"paws-wiki-train, out-of-fold scores ({args.folds} folds of families, {len(pairs)} pairs)")
    cal.to_json(args.out / "calibration.json")

    def recall_at(s: np.ndarray, rate: float) -> float:
        neg = np.sort(s[y_ho == 0])[::-1]
        t = neg[int(len(neg) * rate)]
        return float((s[y_ho == 1] > t).mean())

    metrics = {
        f"out_of_fold_recall_at_{int(r * 100)}pct_false": {"verifier": round(recall_at(scores, r), 4), "cosine": round(recall_at(c_ho, r), 4)}
        for r in (0.05, 0.01)
    }
    for target in (0.05, 0.02, 0.01):
        p = cal.point_for(target)
        log(f"target {target:.0%}: threshold {p.threshold:.4f}, recall {p.recall:.3f}, false hits {p.false_hit_rate:.2%} (95% upper {p.false_hit_upper:.2%})")
    log(f"out-of-fold recall at <=5% / <=1% false: {metrics}")
    meta = {
        "verifier_id": VERIFIER_ID,
        "features": list(feature_names([6, 3])),
        "layers": [6, 3],
        "encoder": f"the default embedder's ONNX graph ({enc.model_id}), token states of layers 6 and 3",
        "prior_low": args.prior_low,
        "prior_power": prior_power,
        "max_tokens": 128,
        "base_model": "sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0)",
        "training_data": "PAWS-Wiki Labeled (Final), Google LLC (Zhang, Baldridge and He, NAACL 2019), families not in paws-wiki-dev",
        "run": {
            "seed": args.seed,
            "folds": args.folds,
            "synthetic": args.synthetic,
            "labels": [p.name for p in args.labels],
            "head": {"iterations": args.iterations, "learning_rate": args.learning_rate, "leaves": args.leaves, "l2": args.l2},
            "train_pairs": len(pairs),
            "data_sha256": hashlib.sha256(raw).hexdigest(),
            "metrics": metrics,
            "seconds": round(time.time() - t_start, 1),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "sklearn": __import__("sklearn").__version__,
        },
    }
    (args.out / "verifier.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    log(f"done in {time.time() - t_start:.0f} s")


if __name__ == "__main__":
    main()
