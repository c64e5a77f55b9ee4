"""The default verifier: trained by the project (``training/train_verifier.py``), shipped
in the package, run by onnxruntime with no download.

Two ONNX graphs live in ``semcache/verify/data/``:

* ``encoder.onnx``: all-MiniLM-L6-v2 (the packaged embedding model), int8-quantised,
  returning every token's state, not only the pooled vector;
* ``head.onnx``: a gradient-boosted classifier over :func:`~semcache.verify.features.pair_features`
  of the two texts' token states.

A pair's score is ``head(features) ** h * prior(cosine)``: the head says whether the two
texts put the same words in the same roles, the prior (``((cos - lo) / (1 - lo)) ** p``)
keeps the embedding's own judgement of how close the two meanings are; ``h``, ``lo`` and
``p`` are in ``verifier.json`` (the training script picks ``h`` and ``p`` on held-out
training data). ``calibration.json`` maps a target false-hit rate to a score
threshold, measured on labelled pairs the model never trained on.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from cachetools import LRUCache

from ..errors import MissingDependencyError, VerifierError
from .base import check_scores, validate_pairs
from .calibration import Calibration
from .features import feature_names, verifier_features

__all__ = ["DATA_DIR", "DefaultVerifier", "TokenEncoder"]

#: Where the shipped model files are.
DATA_DIR = Path(__file__).resolve().parent / "data"


def _tokenizer_file() -> Path:
    from ..embedders._models import resolve_model_dir

    path = Path(resolve_model_dir(None)) / "tokenizer.json"
    if not path.is_file():
        raise VerifierError(f"the default verifier needs the MiniLM tokenizer, not found at {path}")
    return path


class TokenEncoder:
    """Token ids and last hidden states of texts, from an ONNX encoder graph.

    Thread-safe; keeps the states of recently seen texts (cached prompts come back
    often), so a hot entry is encoded once: at most ``cache_bytes`` of them (a 20-token
    prompt's two layers take about 60 kB).
    """


    def __init__(self, onnx_path: str | Path, *, max_tokens: int = 128, num_threads: int = 1, cache_bytes: int = 64 << 20) -> None:
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as exc:  # pragma: no cover - both are core dependencies
            raise MissingDependencyError(getattr(exc, "name", None) or "onnxruntime", "embed") from exc
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = num_threads
        opts.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self._session.get_inputs()}
        tok = Tokenizer.from_file(str(_tokenizer_file()))
        tok.enable_truncation(max_length=max_tokens)
        tok.no_padding()
        self._tokenizer = tok
        vocab = tok.get_vocab()
        #: vocabulary ids whose piece holds a digit
        self.number_ids = frozenset(i for piece, i in vocab.items() if any(ch.isdigit() for ch in piece))
        self._cache: LRUCache[str, tuple[np.ndarray, np.ndarray]] = LRUCache(
            maxsize=cache_bytes, getsizeof=lambda v: int(v[0].nbytes + v[1].nbytes)
        )
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(ids, states)`` per text: ids with [CLS]/[SEP], states ``(outputs, len(ids),
        dim)``, one row per output of the graph (the last layer first)."""
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        with self._lock:
            for t in texts:
                got = self._cache.get(t)
                if got is not None:
                    out[t] = got
        # One text per run: the int8 graph quantises activations with a scale taken over
        # the whole input, so a text batched with longer ones (padding) would come out
        # slightly different. Alone, a text's states depend on nothing else.
        todo = sorted({t for t in texts if t not in out})
        for t in todo:
            e = self._tokenizer.encode(t)
            ids = np.asarray([e.ids], dtype=np.int64)
            feeds: dict[str, np.ndarray] = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
            if "token_type_ids" in self._inputs:
                feeds["token_type_ids"] = np.zeros_like(ids)
            outputs = self._session.run(None, feeds)
            out[t] = (ids[0].copy(), np.stack([np.asarray(o[0], dtype=np.float32) for o in outputs]))
        with self._lock:
            for t in todo:
                if out[t][0].nbytes + out[t][1].nbytes <= self._cache.maxsize:
                    self._cache[t] = out[t]
        return [out[t] for t in texts]


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
            self.head_power = float(self.meta.get("head_power", 1.0))
        except (KeyError, TypeError, ValueError) as exc:
            raise VerifierError(f"{meta_path} lacks a usable {exc} field") from exc
        if not (0.0 <= self.prior_low < 1.0 and self.prior_power > 0):
            raise VerifierError(f"{meta_path}: prior_low must be in [0, 1) and prior_power positive")
        cal = self.data_dir / "calibration.json"
        self.calibration: Calibration | None = Calibration.from_json(cal) if cal.is_file() else None
        self.num_threads = num_threads
        self._encoder: TokenEncoder | None = None
        self._head: Any = None
        self._head_input = ""
        self._load_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DefaultVerifier({self.verifier_id!r})"

    @property
    def loaded(self) -> bool:
        return self._head is not None

    def load(self) -> None:
        """Open both ONNX sessions (done by the first ``score``)."""
        with self._load_lock:
            if self._head is not None:
                return
            import onnxruntime as ort

            try:
                encoder = TokenEncoder(
                    self.data_dir / "encoder.onnx", max_tokens=int(self.meta.get("max_tokens", 128)), num_threads=self.num_threads
                )
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = 1
                head = ort.InferenceSession(str(self.data_dir / "head.onnx"), opts, providers=["CPUExecutionProvider"])
            except VerifierError:
                raise
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types for a missing or corrupt file
                raise VerifierError(f"{self.verifier_id}: cannot load the model from {self.data_dir}: {type(exc).__name__}: {exc}") from exc
            self._encoder = encoder
            self._head_input = head.get_inputs()[0].name
            self._head = head

    def prior(self, cos: np.ndarray) -> np.ndarray:
        """The cosine prior of the score, in [0, 1]."""
        x = np.clip((np.asarray(cos, dtype=np.float64) - self.prior_low) / (1.0 - self.prior_low), 0.0, 1.0)
        out: np.ndarray = x**self.prior_power
        return out

    #: How far the int8 encoder's cosine may sit above the embedder's (measured within
    #: 0.03 on 300 texts); :meth:`min_similarity` leaves this much room.
    COSINE_MARGIN = 0.05

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
        enc = self._encoder.encode(texts)
        feats = np.empty((len(checked), len(self.meta["features"])), dtype=np.float32)
        cos = np.empty(len(checked))
        nums = self._encoder.number_ids
        for i in range(len(checked)):
            (ia, ha), (ib, hb) = enc[2 * i], enc[2 * i + 1]
            feats[i] = verifier_features(ia, ha, ib, hb, nums)
            cos[i] = mean_cosine(ha[0], hb[0])
        outs = self._head.run(None, {self._head_input: feats})
        proba = np.asarray(outs[-1], dtype=np.float64)
        head = proba[:, 1] if proba.ndim == 2 else proba
        scores = np.clip(np.clip(head, 0.0, 1.0) ** self.head_power * self.prior(cos), 0.0, 1.0)
        return check_scores(scores, len(checked), self.verifier_id), head, cos

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """One probability in [0, 1] per pair that both texts ask the same thing."""
        return self.details(pairs)[0]
