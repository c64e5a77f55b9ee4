"""The pair-verifier protocol, its input and output checks, and a verifier over a callable.

A verifier reads two prompts together (the query and a cached entry's prompt) and
returns the probability that they ask the same thing. The semantic read path asks it
about the few nearest candidates the embedding index found, and serves a candidate
only when its score clears a threshold calibrated for a target false-hit rate (see
:mod:`semcache.verify.calibration`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from ..errors import InvalidInputError, VerifierError
from ..validate import text_problem

if TYPE_CHECKING:
    from .calibration import Calibration

__all__ = ["MAX_PAIR_CHARS", "CallableVerifier", "PairVerifier", "check_scores", "validate_pairs"]

#: The longest text of a pair, in characters. Verifier models read a few hundred
#: tokens; the read path cuts longer prompts to this before asking.
MAX_PAIR_CHARS = 20_000


@runtime_checkable
class PairVerifier(Protocol):
    """Scores (query prompt, cached prompt) pairs: the probability they ask the same thing.

    ``score`` takes a sequence of ``(str, str)`` pairs and returns one float in [0, 1]
    per pair, in order. A verifier may carry ``calibration``
    (:class:`~semcache.verify.calibration.Calibration` or ``None``): the measured
    false-hit rate of its scores, from which the cache picks its threshold.
    """

    verifier_id: str

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """One probability in [0, 1] per pair."""
        ...


def validate_pairs(pairs: Any, *, max_chars: int = MAX_PAIR_CHARS) -> list[tuple[str, str]]:
    """Return ``pairs`` as a list of ``(str, str)`` tuples once every text is usable.

    Raises:
        InvalidInputError: ``pairs`` is not a sequence (a bare string is not), an item
            is not a pair of strings, or a text is empty, longer than ``max_chars``
            characters, or holds a NUL character or a lone surrogate. The message names
            the pair.
    """
    if isinstance(pairs, (str, bytes, bytearray)) or not isinstance(pairs, Sequence):
        raise InvalidInputError(f"pairs must be a sequence of (str, str) pairs, not {type(pairs).__name__}")
    out: list[tuple[str, str]] = []
    for i, item in enumerate(pairs):
        if isinstance(item, (str, bytes, bytearray)) or not isinstance(item, Sequence) or len(item) != 2:
            raise InvalidInputError(f"pair {i} must be a (str, str) pair, got {type(item).__name__}")
        a, b = item[0], item[1]
        for side, text in (("first", a), ("second", b)):
            if not isinstance(text, str):
                raise InvalidInputError(f"pair {i}: the {side} text must be a string, not {type(text).__name__}")
            if not text:
                raise InvalidInputError(f"pair {i}: the {side} text is empty")
            if len(text) > max_chars:
                raise InvalidInputError(
                    f"pair {i}: the {side} text is {len(text)} characters long (at most {max_chars})"
                )
            problem = text_problem(text)
            if problem is not None:
                raise InvalidInputError(f"pair {i}: the {side} text {problem}")
        out.append((a, b))
    return out


def check_scores(scores: Any, n: int, verifier_id: str = "verifier") -> np.ndarray:
    """Return a verifier's output as a float64 array of shape ``(n,)``.

    Raises:
        VerifierError: not array-like numbers, another shape, NaN or infinity, or a
            value outside [0, 1].
    """
    try:
        arr = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise VerifierError(f"{verifier_id} returned scores that are not numbers: {exc}") from exc
    if arr.shape != (n,):
        raise VerifierError(f"{verifier_id} returned scores of shape {arr.shape} for {n} pairs (want ({n},))")
    if not np.all(np.isfinite(arr)):
        raise VerifierError(f"{verifier_id} returned a NaN or infinite score")
    if n and (float(arr.min()) < 0.0 or float(arr.max()) > 1.0):
        raise VerifierError(
            f"{verifier_id} returned a score outside [0, 1] (min {float(arr.min()):.4g}, max {float(arr.max()):.4g})"
        )
    return arr


def sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function, without overflow warnings for large logits."""
    out: np.ndarray = 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))
    return out


class CallableVerifier:
    """A verifier over a plain function ``fn(pairs) -> Sequence[float]`` of probabilities.

    Pairs are checked before ``fn`` sees them and its scores after
    (:func:`validate_pairs`, :func:`check_scores`).
    """

    def __init__(
        self,
        fn: Callable[[list[tuple[str, str]]], Any],
        *,
        verifier_id: str | None = None,
        calibration: Calibration | None = None,
    ) -> None:
        if not callable(fn):
            raise InvalidInputError("CallableVerifier needs a callable fn(pairs) -> scores")
        self.fn = fn
        self.verifier_id = verifier_id or (
            f"callable:{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
        )
        self.calibration = calibration

    def __repr__(self) -> str:
        return f"CallableVerifier({self.verifier_id!r})"

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Scores from ``fn``, checked: one probability in [0, 1] per pair.

        Raises:
            InvalidInputError: bad pairs (see :func:`validate_pairs`).
            VerifierError: ``fn`` returned unusable scores.
        """
        checked = validate_pairs(pairs)
        if not checked:
            return np.zeros(0, dtype=np.float64)
        return check_scores(self.fn(checked), len(checked), self.verifier_id)


def is_probability(x: Any) -> bool:
    """Whether ``x`` is a real number in [0, 1] (not a bool)."""
    return (
        not isinstance(x, bool)
        and isinstance(x, (int, float))
        and math.isfinite(x)
        and 0.0 <= x <= 1.0
    )
