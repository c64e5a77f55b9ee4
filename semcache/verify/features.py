"""Pair features for the default verifier, from the token states of both texts.

A cosine over mean-pooled embeddings cannot tell "from Paris to Rome" from "from Rome
to Paris": both texts hold the same words. Their token states can. For the content
word-pieces that occur once in each text, the features measure how differently each
word reads in the two contexts (cosine of its two contextual states) and whether the
shared words keep their relative order (Kendall's tau over their positions); soft
alignment scores say how well every word of one text is covered by the other. The
verifier's head is a gradient-boosted classifier over these numbers
(``training/train_verifier.py``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

__all__ = ["CONTENT_MIN_ID", "FEATURE_NAMES", "STATE_FEATURES", "feature_names", "pair_features", "verifier_features"]

#: In the BERT uncased vocabulary, ids up to here are special tokens, punctuation and
#: single characters: not content words.
CONTENT_MIN_ID = 1999

FEATURE_NAMES = (
    "aligned_log_count",
    "aligned_min",
    "aligned_p10",
    "aligned_mean",
    "aligned_bottom3",
    "order_tau",
    "order_discordant",
    "cover_a_min",
    "cover_a_p10",
    "cover_a_mean",
    "cover_b_min",
    "cover_b_p10",
    "cover_b_mean",
    "uncovered_a",
    "uncovered_b",
    "content_jaccard",
    "numbers_differ",
    "length_ratio",
    "length_log_min",
    "bigram_jaccard",
    "trigram_jaccard",
    "common_subsequence",
)


def _ngrams(ids: list[int], n: int) -> set[tuple[int, ...]]:
    return {tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)}


def _jaccard(a: set[tuple[int, ...]], b: set[tuple[int, ...]]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def _lcs(a: list[int], b: list[int]) -> int:
    """Length of the longest common subsequence (word order kept, gaps allowed)."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def _p10(values: np.ndarray) -> float:
    """The 10th percentile, interpolated linearly as ``np.percentile`` does (without its
    overhead, which dominated the features' cost on short texts)."""
    v = np.sort(values)
    pos = 0.1 * (len(v) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return float(v[lo] + (v[hi] - v[lo]) * (pos - lo))


def _unit(h: np.ndarray) -> np.ndarray:
    h = np.asarray(h, dtype=np.float32)
    norms = np.linalg.norm(h, axis=1, keepdims=True)
    out: np.ndarray = h / np.maximum(norms, 1e-9)
    return out


def pair_features(
    ids_a: np.ndarray,
    states_a: np.ndarray,
    ids_b: np.ndarray,
    states_b: np.ndarray,
    number_ids: Collection[int] = (),
    *,
    state_only: bool = False,
) -> np.ndarray:
    """The feature vector (``FEATURE_NAMES`` order) of one ordered pair.

    ``state_only`` leaves the features that depend on the ids alone (n-grams, the common
    subsequence, numbers) at 0, for a further layer of the same pair.

    ``ids_*`` are the token ids of each text with ``[CLS]``/``[SEP]`` at both ends,
    ``states_*`` the encoder's last hidden states for them (one row per id).
    ``number_ids`` are the vocabulary ids that spell a number.
    """
    ta = np.asarray(ids_a)[1:-1]
    tb = np.asarray(ids_b)[1:-1]
    if len(ta) == 0 or len(tb) == 0:
        return np.zeros(len(FEATURE_NAMES), np.float32)
    sim = _unit(states_a[1:-1]) @ _unit(states_b[1:-1]).T
    # content word-pieces that occur exactly once in each text
    ua, ca = np.unique(ta, return_counts=True)
    ub, cb = np.unique(tb, return_counts=True)
    once_b = {int(t): 0 for t in ub[cb == 1]}
    for j, t in enumerate(tb.tolist()):
        if t in once_b:
            once_b[t] = j
    once_a = set(ua[ca == 1].tolist())
    pos_a: list[int] = []
    pos_b: list[int] = []
    for i, t in enumerate(ta.tolist()):
        if t > CONTENT_MIN_ID and t in once_a and t in once_b:
            pos_a.append(i)
            pos_b.append(once_b[t])
    n = len(pos_a)
    same = sim[pos_a, pos_b] if n else np.ones(1, np.float32)
    if n > 2:
        pa = np.asarray(pos_a)
        pb = np.asarray(pos_b)
        d = np.sign(pa[:, None] - pa[None, :]) * np.sign(pb[:, None] - pb[None, :])
        pairs = n * (n - 1) / 2
        disc = float((d < 0).sum() / 2 / pairs)
        tau = float((d > 0).sum() / 2 / pairs) - disc
    else:
        tau, disc = 1.0, 0.0
    ordered = np.sort(same)
    content_a = ta > CONTENT_MIN_ID
    content_b = tb > CONTENT_MIN_ID
    cover_a = sim.max(1)[content_a] if content_a.any() else np.ones(1, np.float32)
    cover_b = sim.max(0)[content_b] if content_b.any() else np.ones(1, np.float32)
    set_a = set(ta[content_a].tolist())
    set_b = set(tb[content_b].tolist())
    jaccard = len(set_a & set_b) / max(1, len(set_a | set_b))
    nums = number_ids
    digits_a = {t for t in ta.tolist() if t in nums}
    digits_b = {t for t in tb.tolist() if t in nums}
    la, lb = len(ta), len(tb)
    la_ids, lb_ids = ta.tolist(), tb.tolist()
    if state_only:
        bigrams = trigrams = common = 0.0
    else:
        bigrams = _jaccard(_ngrams(la_ids, 2), _ngrams(lb_ids, 2))
        trigrams = _jaccard(_ngrams(la_ids, 3), _ngrams(lb_ids, 3))
        common = _lcs(la_ids, lb_ids) / max(la, lb)
    return np.array(
        [
            np.log1p(n),
            ordered[0],
            _p10(same),
            same.mean(),
            ordered[:3].mean(),
            tau,
            disc,
            cover_a.min(),
            _p10(cover_a),
            cover_a.mean(),
            cover_b.min(),
            _p10(cover_b),
            cover_b.mean(),
            (cover_a < 0.5).mean(),
            (cover_b < 0.5).mean(),
            jaccard,
            float(digits_a != digits_b),
            min(la, lb) / max(la, lb),
            np.log(min(la, lb)),
            bigrams,
            trigrams,
            common,
        ],
        dtype=np.float32,
    )


#: The features that depend on the states (not only on the token ids): computed again for
#: each further layer the encoder returns.
_ID_ONLY = frozenset(
    {"aligned_log_count", "order_tau", "order_discordant", "content_jaccard", "numbers_differ", "length_ratio", "length_log_min", "bigram_jaccard", "trigram_jaccard", "common_subsequence"}
)
STATE_FEATURES = tuple(n for n in FEATURE_NAMES if n not in _ID_ONLY)
_STATE_INDEX = [FEATURE_NAMES.index(n) for n in STATE_FEATURES]


def feature_names(layers: Sequence[int]) -> tuple[str, ...]:
    """The names of :func:`verifier_features` for an encoder returning ``layers`` (the
    last layer first)."""
    return FEATURE_NAMES + tuple(f"layer{k}_{n}" for k in layers[1:] for n in STATE_FEATURES)


def verifier_features(
    ids_a: np.ndarray,
    states_a: np.ndarray,
    ids_b: np.ndarray,
    states_b: np.ndarray,
    number_ids: Collection[int] = (),
) -> np.ndarray:
    """:func:`pair_features` of the last layer, then the state features of every further
    layer; ``states_*`` are ``(layers, tokens, dim)``, the last layer first."""
    parts = [pair_features(ids_a, states_a[0], ids_b, states_b[0], number_ids)]
    for k in range(1, len(states_a)):
        parts.append(pair_features(ids_a, states_a[k], ids_b, states_b[k], number_ids, state_only=True)[_STATE_INDEX])
    return np.concatenate(parts)
