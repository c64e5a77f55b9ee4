"""Pair verifiers: a second opinion on a semantic candidate before it is served.

The embedding index finds the nearest cached prompts; a verifier reads the query and
each candidate's prompt together and scores the probability that they ask the same
thing (:mod:`~semcache.verify.base`). The cache serves the nearest candidate whose
score clears a threshold chosen from the verifier's calibration for
``Policy.max_false_hit_rate`` (:mod:`~semcache.verify.calibration`). Importing this
package loads no model.
"""

from __future__ import annotations

from .base import MAX_PAIR_CHARS, CallableVerifier, PairVerifier, check_scores, validate_pairs
from .calibration import (
    Calibration,
    CalibrationPoint,
    LabeledPair,
    clopper_pearson_upper,
    derive,
    label_rows,
    read_label_file,
)
from .cross_encoder import CrossEncoderVerifier
from .resolve import resolve_verifier

__all__ = [
    "MAX_PAIR_CHARS",
    "Calibration",
    "CalibrationPoint",
    "CallableVerifier",
    "CrossEncoderVerifier",
    "LabeledPair",
    "PairVerifier",
    "check_scores",
    "clopper_pearson_upper",
    "derive",
    "label_rows",
    "read_label_file",
    "resolve_verifier",
    "validate_pairs",
]
