"""The default verifier: trained by the project (``training/train_verifier.py``), shipped
in the package (``semcache/verify/data/``), run by onnxruntime with no download.

It reads the token states of both texts at layers 6 and 3 of all-MiniLM-L6-v2 from the
same ONNX graph the default embedder runs
(:meth:`~semcache.embedders.onnx.OnnxEmbedder.token_states`). When the cache embeds with
that model, the query's states come out of its embedding's own forward pass, and a
candidate's are kept after first use. ``head.onnx`` is a gradient-boosted classifier
over :func:`~semcache.verify.features.verifier_features` of the two texts' states.

A pair's score is ``head(features) * prior(cosine)``: the head says whether the two
texts put the same words in the same roles, the prior (``((cos - lo) / (1 - lo)) ** p``)
keeps the embedding's own judgement of how close the two meanings are; ``lo`` and ``p``
are in ``verifier.json`` (the training script picks ``p`` on held-out training data).
``calibration.json`` maps a target false-hit rate to a score threshold, measured on
labelled pairs the model never trained on.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import VerifierError
from .base import check_scores, validate_pairs
from .calibration import Calibration
from .features import feature_names, verifier_features

__all__ = ["DATA_DIR", "DefaultVerifier", "mean_cosine"]

#: Where the shipped model files are.
DATA_DIR = Path(__file__).resolve().parent / "data"


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two texts' mean-pooled token states (sentence-transformers pooling)."""
    va = a.mean(0)
    vb = b.mean(0)
    return float(va @ vb / max(float(np.linalg.norm(va) * np.linalg.norm(vb)), 1e-12))


class DefaultVerifier:
    """The shipped pair verifier (see the module docstring). Loads on first use.

    ``data_dir`` points at another trained model (the files ``training/train_verifier.py``
    writes); ``num_threads`` is onnxruntime's intra-op thread count.
    """

    def __init__(self, data_dir: str | Path | None = None, *, num_threads: int = 1) -> None:
        self.data_dir = Path(data_dir) if data_dir is not None else DATA_DIR
        meta_path = self.data_dir / "verifier.json"
        try:
            self.meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise VerifierError(f"cannot read the verifier description {meta_path}: {exc}") from exc
        layers = self.meta.get("layers", [6]) if isinstance(self.meta, dict) else None
        if not isinstance(layers, list) or tuple(self.meta.get("features", ())) != feature_names(layers):
            raise VerifierError(f"{meta_path} was trained on other features than this version computes")
        try:
            self.verifier_id: str = str(self.meta["verifier_id"])
            self.prior_low = float(self.meta["prior_low"])
            self.prior_power = float(self.meta["prior_power"])
        except (KeyError, TypeError, ValueError) as exc:
            raise VerifierError(f"{meta_path} lacks a usable {exc} field") from exc
        if not (0.0 <= self.prior_low < 1.0 and self.prior_power > 0):
            raise VerifierError(f"{meta_path}: prior_low must be in [0, 1) and prior_power positive")
        cal = self.data_dir / "calibration.json"
        self.calibration: Calibration | None = Calibration.from_json(cal) if cal.is_file() else None
        self.num_threads = num_threads
        self._encoder: Any = None  # an OnnxEmbedder of the default model
        self._numbers: frozenset[int] = frozenset()
        self._head: Any = None
        self._head_input = ""
        self._load_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DefaultVerifier({self.verifier_id!r})"

    @property
    def loaded(self) -> bool:
        return self._head is not None

    def use_embedder(self, embedder: Any) -> None:
        """Read token states from ``embedder`` when it runs the model this verifier was
        trained on (the default :class:`~semcache.embedders.onnx.OnnxEmbedder`): a query's
        states then come from its embedding's forward pass. Any other embedder is left
        alone and the verifier runs its own copy of the model."""
        from ..embedders.onnx import OnnxEmbedder

        if isinstance(embedder, OnnxEmbedder) and embedder.is_default:
            embedder.keep_states = True
            with self._load_lock:
                if self._encoder is None:
                    self._encoder = embedder

    def load(self) -> None:
        """Load the head and, without a shared embedder, the verifier's own encoder."""
        with self._load_lock:
            if self._head is not None:
                return
            import onnxruntime as ort

            try:
                from ..embedders.onnx import OnnxEmbedder

                encoder = self._encoder
                if encoder is not None and not encoder.has_states:
                    # a shared embedder on a graph of another shape (its own onnx_path)
                    encoder.keep_states = False
                    encoder = None
                if encoder is None:
                    encoder = OnnxEmbedder(None, num_threads=self.num_threads)
                if not encoder.has_states:
                    raise VerifierError(f"{encoder.onnx_path} returns no token states")
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = 1
                head = ort.InferenceSession(str(self.data_dir / "head.onnx"), opts, providers=["CPUExecutionProvider"])
            except VerifierError:
                raise
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types for a missing or corrupt file
                raise VerifierError(f"{self.verifier_id}: cannot load the model from {self.data_dir}: {type(exc).__name__}: {exc}") from exc
            self._encoder = encoder
            self._numbers = encoder.number_ids
            self._head_input = head.get_inputs()[0].name
            self._head = head

    def prior(self, cos: np.ndarray) -> np.ndarray:
        """The cosine prior of the score, in [0, 1]."""
        x = np.clip((np.asarray(cos, dtype=np.float64) - self.prior_low) / (1.0 - self.prior_low), 0.0, 1.0)
        out: np.ndarray = x**self.prior_power
        return out

    #: Room :meth:`min_similarity` leaves between its bound and the threshold: the prior's
    #: cosine (mean over every token, the special ones included) and the cache's agree
    #: to float precision, this is for rounding and other embedders' vectors.
    COSINE_MARGIN = 0.03

    def min_similarity(self, threshold: float) -> float:
        """The embedder cosine below which no pair can score ``threshold``: the score is
        at most the prior, so the cache does not ask about candidates under it."""
        t = min(max(float(threshold), 0.0), 1.0)
        need = self.prior_low + (1.0 - self.prior_low) * float(t ** (1.0 / self.prior_power))
        return max(-1.0, need - self.COSINE_MARGIN)

    def details(self, pairs: Sequence[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(scores, head probabilities, cosines)`` of the pairs."""
        checked = validate_pairs(pairs)
        if not checked:
            empty = np.zeros(0)
            return empty, empty, empty
        self.load()
        assert self._encoder is not None
        texts = [t for pair in checked for t in pair]
        enc = self._encoder.token_states(texts)
        feats = np.empty((len(checked), len(self.meta["features"])), dtype=np.float32)
        cos = np.empty(len(checked))
        nums = self._numbers
        for i in range(len(checked)):
            (ia, ha), (ib, hb) = enc[2 * i], enc[2 * i + 1]
            feats[i] = verifier_features(ia, ha, ib, hb, nums)
            cos[i] = mean_cosine(ha[0], hb[0])
        outs = self._head.run(None, {self._head_input: feats})
        proba = np.asarray(outs[-1], dtype=np.float64)
        head = proba[:, 1] if proba.ndim == 2 else proba
        scores = np.clip(np.clip(head, 0.0, 1.0) * self.prior(cos), 0.0, 1.0)
        return check_scores(scores, len(checked), self.verifier_id), head, cos

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """One probability in [0, 1] per pair that both texts ask the same thing."""
        return self.details(pairs)[0]
