"""A verifier over a sentence-transformers ``CrossEncoder`` (PyTorch), loaded on first use."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import MissingDependencyError, VerifierError
from .base import check_scores, sigmoid, validate_pairs

if TYPE_CHECKING:
    from .calibration import Calibration

__all__ = ["CrossEncoderVerifier"]


class CrossEncoderVerifier:
    """Scores pairs with a sentence-transformers cross-encoder (a name or a local path).

    Nothing is loaded until the first :meth:`score` (or :meth:`load`). A model with one
    output is read as the probability of "same question": sentence-transformers applies
    its sigmoid by default, and raw logits (a model configured without an activation)
    go through one here. A model with two outputs is read as (different, same): its
    logits go through a softmax and the second column is the score.

    ``verifier_id`` is ``"cross-encoder:" + model_name_or_path``. It has no calibration
    unless one is given: measure one with ``semcache calibrate --verifier NAME``.
    """

    def __init__(
        self,
        model_name_or_path: str,
        *,
        device: str = "cpu",
        batch_size: int = 32,
        calibration: Calibration | None = None,
        model: Any = None,
    ) -> None:
        """Configure the verifier; ``model`` may be a ready ``CrossEncoder`` (no loading then)."""
        self.model_name = model_name_or_path
        self.verifier_id = "cross-encoder:" + model_name_or_path
        self.device = device
        self.batch_size = batch_size
        self.calibration = calibration
        self._model: Any = model
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"CrossEncoderVerifier({self.model_name!r}, device={self.device!r})"

    @property
    def loaded(self) -> bool:
        """Whether the model has been loaded."""
        return self._model is not None

    def load(self) -> None:
        """Load the model now (otherwise the first :meth:`score` does).

        Raises:
            MissingDependencyError: sentence-transformers is not installed.
        """
        with self._lock:
            if self._model is not None:
                return
            try:
                from sentence_transformers import CrossEncoder
            except ImportError as exc:
                raise MissingDependencyError("sentence-transformers", "embed") from exc
            model = CrossEncoder(self.model_name, device=self.device)
            self._model = model

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """One probability in [0, 1] per pair.

        Raises:
            InvalidInputError: bad pairs (see :func:`~semcache.verify.base.validate_pairs`).
            VerifierError: the model's output has an unexpected shape.
        """
        checked = validate_pairs(pairs)
        if not checked:
            return np.zeros(0, dtype=np.float64)
        self.load()
        with self._lock:
            raw = self._model.predict(
                [list(p) for p in checked],
                batch_size=self.batch_size,
                show_progress_bar=False,
                convert_to_numpy=True,
            )
        return check_scores(self._probabilities(raw, len(checked)), len(checked), self.verifier_id)

    def _probabilities(self, raw: Any, n: int) -> np.ndarray:
        arr = np.asarray(raw, dtype=np.float64)
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim == 2 and arr.shape == (n, 2):
            rows_are_probabilities = bool(np.all(arr >= 0) and np.allclose(arr.sum(axis=1), 1.0, atol=1e-4))
            if not rows_are_probabilities:
                shifted = arr - arr.max(axis=1, keepdims=True)
                e = np.exp(shifted)
                arr = e / e.sum(axis=1, keepdims=True)
            return np.asarray(arr[:, 1])
        if arr.ndim != 1:
            raise VerifierError(
                f"{self.verifier_id}: a model with output shape {arr.shape[1:]} is not a pair classifier "
                "(want one score, or two classes: different, same)"
            )
        if _outputs_logits(self._model) or (arr.size and (float(arr.min()) < 0.0 or float(arr.max()) > 1.0)):
            arr = sigmoid(arr)  # logits: the model applies no activation of its own
        return arr


def _outputs_logits(model: Any) -> bool:
    """Whether a one-output cross-encoder returns raw logits (its activation is the identity)."""
    act = getattr(model, "activation_fn", None)  # sentence-transformers >= 4
    if act is None:
        act = getattr(model, "default_activation_function", None)  # 3.x
    return act is not None and type(act).__name__ == "Identity"
