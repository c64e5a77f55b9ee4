"""Calibration: which verifier score threshold keeps false hits under a target rate.

A calibration is measured on labelled pairs (a query prompt, a cached prompt, and
whether serving the cached answer was correct). For every candidate threshold ``t`` it
records

* the **false-hit rate**: the share of the pairs labelled incorrect that score
  ``>= t`` (and so would be served), with its one-sided 95% Clopper–Pearson upper bound;
* the **recall**: the share of the pairs labelled correct that score ``>= t``.

The false-hit rate is relative to the must-miss pairs, as in the README's benchmarks,
so it does not depend on how many correct pairs the label set holds, and it only falls
as the threshold rises. :meth:`Calibration.threshold_for` picks the lowest threshold
whose measured rate meets a target; ``Policy(max_false_hit_rate=...)`` asks it for the
cache's threshold, per namespace where the labels allowed a table of its own.

Clopper–Pearson bounds are computed here with the standard library only (the
regularised incomplete beta function by its continued fraction, inverted by a
safeguarded Newton iteration): scipy is not needed at run time.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..errors import ConfigurationError, InvalidInputError
from ..validate import text_problem
from .base import MAX_PAIR_CHARS

__all__ = [
    "FORMAT",
    "Calibration",
    "CalibrationPoint",
    "LabeledPair",
    "clopper_pearson_upper",
    "derive",
    "label_rows",
    "read_label_file",
]

#: The ``format`` field of a calibration JSON document.
FORMAT = "semcache-calibration/1"

#: Points kept for every false-hit count up to this; above it, on a 2% geometric grid.
_DENSE_FALSE_HITS = 256
_GRID_STEP = 1.02


# -- Clopper–Pearson ---------------------------------------------------------------------
def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 100_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(a * math.log(x) + b * math.log1p(-x) - _log_beta(a, b))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def _beta_ppf(q: float, a: float, b: float) -> float:
    """The ``q`` quantile of Beta(a, b): Newton steps kept inside a shrinking bracket."""
    lo, hi = 0.0, 1.0
    x = a / (a + b)
    lb = _log_beta(a, b)
    for _ in range(200):
        f = _betainc(a, b, x) - q
        if abs(f) < 1e-13:
            break
        if f < 0:
            lo = x
        else:
            hi = x
        if hi - lo < 1e-15:
            break
        pdf = math.exp((a - 1.0) * math.log(x) + (b - 1.0) * math.log1p(-x) - lb) if 0.0 < x < 1.0 else 0.0
        nxt = x - f / pdf if pdf > 0 else math.nan
        x = nxt if lo < nxt < hi else 0.5 * (lo + hi)
    return x


def clopper_pearson_upper(k: int, n: int, conf: float = 0.95) -> float:
    """The one-sided Clopper–Pearson upper confidence bound of a rate seen ``k`` times in ``n``.

    The rate ``p`` at which seeing at most ``k`` events in ``n`` trials has probability
    ``1 - conf``: the ``conf`` quantile of Beta(k + 1, n - k). ``k = 0`` has the closed
    form ``1 - (1 - conf) ** (1 / n)`` (0.00994 for n = 300); ``k = n`` (or ``n = 0``) gives 1.

    Raises:
        InvalidInputError: not ``0 <= k <= n`` integers, or ``conf`` outside (0, 1).
    """
    if isinstance(k, bool) or isinstance(n, bool) or not isinstance(k, (int, np.integer)) or not isinstance(n, (int, np.integer)):
        raise InvalidInputError(f"k and n must be integers, got {k!r} and {n!r}")
    if not 0 <= k <= n:
        raise InvalidInputError(f"need 0 <= k <= n, got k={k}, n={n}")
    if not (isinstance(conf, float) and 0.0 < conf < 1.0):
        raise InvalidInputError(f"conf must be in (0, 1), got {conf!r}")
    if k == n:
        return 1.0
    if k == 0:
        return float(1.0 - (1.0 - conf) ** (1.0 / int(n)))
    return _beta_ppf(float(conf), k + 1.0, float(n - k))


# -- the table -----------------------------------------------------------------------------
class CalibrationPoint(NamedTuple):
    """One threshold of a calibration table and what serving at it measured."""

    #: Serve a candidate whose score is at least this.
    threshold: float
    #: ``false_hits / n_negative`` (0 when there are no negatives).
    false_hit_rate: float
    #: The one-sided Clopper–Pearson upper bound of the false-hit rate.
    false_hit_upper: float
    #: ``true_hits / n_positive`` (0 when there are no positives).
    recall: float
    #: Pairs labelled incorrect that score at least ``threshold``.
    false_hits: int
    #: Pairs labelled correct that score at least ``threshold``.
    true_hits: int


@dataclass(frozen=True)
class Calibration:
    """A verifier's measured false-hit rate and recall by score threshold.

    ``points`` are sorted by threshold, lowest first. ``namespaces`` holds tables of
    their own for namespaces with enough labels (see :func:`derive`); a namespace
    without one uses this table. ``source`` says where the labels came from.
    """

    verifier_id: str
    points: tuple[CalibrationPoint, ...]
    n_positive: int
    n_negative: int
    source: str = ""
    namespaces: Mapping[str, Calibration] = field(default_factory=dict)
    confidence: float = 0.95

    def __post_init__(self) -> None:
        if not isinstance(self.verifier_id, str) or not self.verifier_id:
            raise ConfigurationError("a calibration needs the verifier_id it was measured for")
        pts = tuple(CalibrationPoint(*p) for p in self.points)
        if not pts:
            raise ConfigurationError("a calibration needs at least one point")
        for p in pts:
            if not (math.isfinite(p.threshold) and 0.0 <= p.false_hit_rate <= 1.0 and 0.0 <= p.recall <= 1.0):
                raise ConfigurationError(f"bad calibration point {tuple(p)!r}")
        object.__setattr__(self, "points", tuple(sorted(pts, key=lambda p: p.threshold)))
        object.__setattr__(self, "namespaces", dict(self.namespaces))

    def table(self, namespace: str | None = None) -> Calibration:
        """The namespace's own table when it has one, else this one."""
        if namespace is not None:
            own = self.namespaces.get(namespace)
            if own is not None:
                return own
        return self

    def threshold_for(self, max_false_hit_rate: float, namespace: str | None = None, *, confident: bool = True) -> float:
        """The lowest score threshold that meets the target false-hit rate.

        With ``confident`` (the default, what the cache uses) a threshold meets it when
        the one-sided upper bound of its measured rate (at ``confidence``, 95%) is at most
        the target, so the rate is reached with that confidence on the labelled pairs;
        with ``confident=False`` the measured rate itself is compared. On held-out PAWS
        pairs the verifier's rate ran about twice its measured rate, and the bound keeps
        the default target there.

        ``namespace``'s own table is used when it has one and it reaches the target;
        when its labels are too few to show so low a rate, the overall table is used.
        When no table reaches the target, the highest threshold is returned (the
        strictest the labels can tell apart), which :meth:`point_for` shows.

        Raises:
            InvalidInputError: the target is not in (0, 1].
        """
        return self.point_for(max_false_hit_rate, namespace, confident=confident).threshold

    def point_for(self, max_false_hit_rate: float, namespace: str | None = None, *, confident: bool = True) -> CalibrationPoint:
        """The point :meth:`threshold_for` picks (with its recall and bound)."""
        if isinstance(max_false_hit_rate, bool) or not isinstance(max_false_hit_rate, (int, float)) or not 0.0 < max_false_hit_rate <= 1.0:
            raise InvalidInputError(f"max_false_hit_rate must be in (0, 1], got {max_false_hit_rate!r}")
        own = self.table(namespace)
        got = own.reaching(max_false_hit_rate, confident)
        if got is None and own is not self:
            # the namespace has too few labels to show this rate: its table cannot pick
            # a threshold for it, the overall one can
            got = self.reaching(max_false_hit_rate, confident)
        return got if got is not None else own.points[-1]

    def reaching(self, max_false_hit_rate: float, confident: bool = True) -> CalibrationPoint | None:
        """This table's lowest point that meets the target, or ``None``."""
        for p in self.points:  # lowest threshold first; the rate (and its bound) only falls as it rises
            if (p.false_hit_upper if confident else p.false_hit_rate) <= max_false_hit_rate:
                return p
        return None

    # -- JSON -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form (see :data:`FORMAT`)."""
        out: dict[str, Any] = {
            "format": FORMAT,
            "verifier_id": self.verifier_id,
            "source": self.source,
            "confidence": self.confidence,
            "n_positive": self.n_positive,
            "n_negative": self.n_negative,
            "points": [p._asdict() for p in self.points],
        }
        if self.namespaces:
            out["namespaces"] = {
                ns: {k: v for k, v in c.to_dict().items() if k not in ("format", "namespaces")}
                for ns, c in sorted(self.namespaces.items())
            }
        return out

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """The calibration as JSON text, also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=1) + "\n"
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    @classmethod
    def from_json(cls, source: str | os.PathLike[str] | Mapping[str, Any]) -> Calibration:
        """Read a calibration from a JSON file (a path), JSON text, or a parsed dict.

        Raises:
            ConfigurationError: the file cannot be read, or is not a calibration.
        """
        where = "calibration"
        data: Any
        if isinstance(source, Mapping):
            data = source
        elif isinstance(source, str) and source.lstrip().startswith("{"):
            data = _parse(source, where)
        elif isinstance(source, (str, os.PathLike)):
            where = str(source)
            try:
                text = Path(source).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigurationError(f"cannot read the calibration {where}: {exc}") from exc
            data = _parse(text, where)
        else:
            raise ConfigurationError(f"a calibration is a path, JSON text or a dict, not {type(source).__name__}")
        return cls._from_dict(data, where)

    @classmethod
    def _from_dict(cls, data: Any, where: str, verifier_id: str | None = None) -> Calibration:
        if not isinstance(data, Mapping):
            raise ConfigurationError(f"{where}: a calibration must be a JSON object")
        fmt = data.get("format", FORMAT)
        if fmt != FORMAT:
            raise ConfigurationError(f"{where}: unknown calibration format {fmt!r} (want {FORMAT!r})")
        try:
            vid = str(data.get("verifier_id", verifier_id))
            points = tuple(
                CalibrationPoint(
                    threshold=float(p["threshold"]),
                    false_hit_rate=float(p["false_hit_rate"]),
                    false_hit_upper=float(p["false_hit_upper"]),
                    recall=float(p["recall"]),
                    false_hits=int(p["false_hits"]),
                    true_hits=int(p["true_hits"]),
                )
                for p in data["points"]
            )
            namespaces = {
                str(ns): cls._from_dict(sub, f"{where} (namespace {ns!r})", vid)
                for ns, sub in dict(data.get("namespaces") or {}).items()
            }
            return cls(
                verifier_id=vid,
                points=points,
                n_positive=int(data["n_positive"]),
                n_negative=int(data["n_negative"]),
                source=str(data.get("source", "")),
                namespaces=namespaces,
                confidence=float(data.get("confidence", 0.95)),
            )
        except ConfigurationError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigurationError(f"{where}: not a calibration ({type(exc).__name__}: {exc})") from exc


def _parse(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ConfigurationError(f"{where} is not valid JSON: {exc}") from exc


# -- deriving a table ----------------------------------------------------------------------
def _table(scores: np.ndarray, labels: np.ndarray, conf: float) -> tuple[tuple[CalibrationPoint, ...], int, int]:
    n_pos = int(labels.sum())
    n_neg = int(labels.size - n_pos)
    order = np.argsort(-scores, kind="stable")
    s, lab = scores[order], labels[order]
    true_hits = np.cumsum(lab)
    false_hits = np.cumsum(~lab)
    # the last position of every run of equal scores: serving at that score serves the run
    ends = np.flatnonzero(np.append(s[1:] != s[:-1], True))
    keep: list[int] = [int(ends[0])]  # the highest threshold, whatever it measured
    grid = float(_DENSE_FALSE_HITS)
    for j, e in enumerate(ends):
        fh = int(false_hits[e])
        nxt = int(false_hits[ends[j + 1]]) if j + 1 < len(ends) else None
        if nxt == fh:
            continue  # a lower threshold has as many false hits and more true ones
        if fh > _DENSE_FALSE_HITS and nxt is not None and nxt < grid:
            continue  # thinned: keeps a point at least every 2% of false hits
        if fh >= grid:
            grid = max(grid * _GRID_STEP, fh + 1.0)
        if int(e) != keep[-1]:
            keep.append(int(e))
    bounds: dict[int, float] = {}
    points = []
    for at in keep:
        fh = int(false_hits[at])
        th = int(true_hits[at])
        if fh not in bounds:
            bounds[fh] = clopper_pearson_upper(fh, n_neg, conf)
        points.append(
            CalibrationPoint(
                threshold=float(s[at]),
                false_hit_rate=fh / n_neg if n_neg else 0.0,
                false_hit_upper=bounds[fh],
                recall=th / n_pos if n_pos else 0.0,
                false_hits=fh,
                true_hits=th,
            )
        )
    return tuple(points), n_pos, n_neg


def derive(
    scores: Sequence[float] | np.ndarray,
    labels: Sequence[bool] | np.ndarray,
    *,
    verifier_id: str,
    source: str,
    min_labels_per_namespace: int = 200,
    namespaces: Sequence[str | None] | None = None,
    confidence: float = 0.95,
) -> Calibration:
    """A calibration from the scores of labelled pairs (``True``: serving was correct).

    Every distinct score is a candidate threshold; the table keeps, for each count of
    false hits, the lowest threshold with that count (the one with the most recall),
    every count up to 256 and then one at least every 2% (so a target can be met a
    little more strictly than the labels allow, never less), plus the highest score.
    With ``namespaces`` (one per pair, ``None`` for none), a namespace with at least
    ``min_labels_per_namespace`` pairs, both correct and incorrect ones among them,
    gets a table of its own; every pair counts in the overall table.

    Raises:
        InvalidInputError: no pairs, lengths that differ, a score that is not a finite
            number, a label that is not a bool (or 0/1).
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise InvalidInputError("need at least one scored pair to calibrate")
    if not np.all(np.isfinite(s)):
        raise InvalidInputError("scores must be finite numbers")
    lab_list = list(labels)
    if len(lab_list) != s.size:
        raise InvalidInputError(f"{s.size} scores but {len(lab_list)} labels")
    for i, v in enumerate(lab_list):
        if not (isinstance(v, (bool, np.bool_)) or (isinstance(v, (int, np.integer)) and v in (0, 1))):
            raise InvalidInputError(f"label {i} must be a bool, got {v!r}")
    lab = np.asarray(lab_list, dtype=bool)
    if isinstance(min_labels_per_namespace, bool) or not isinstance(min_labels_per_namespace, int) or min_labels_per_namespace < 1:
        raise InvalidInputError("min_labels_per_namespace must be a positive integer")
    points, n_pos, n_neg = _table(s, lab, confidence)
    own: dict[str, Calibration] = {}
    if namespaces is not None:
        ns = list(namespaces)
        if len(ns) != s.size:
            raise InvalidInputError(f"{s.size} scores but {len(ns)} namespaces")
        for name in sorted({n for n in ns if n is not None}):
            mask = np.fromiter((n == name for n in ns), dtype=bool, count=len(ns))
            sub = lab[mask]
            if sub.size >= min_labels_per_namespace and 0 < int(sub.sum()) < sub.size:
                p, np_, nn = _table(s[mask], sub, confidence)
                own[name] = Calibration(verifier_id, p, np_, nn, source, {}, confidence)
    return Calibration(verifier_id, points, n_pos, n_neg, source, own, confidence)


# -- labelled pairs ------------------------------------------------------------------------
class LabeledPair(NamedTuple):
    """One labelled pair: was serving ``cached_prompt``'s answer to ``prompt`` correct?"""

    prompt: str
    cached_prompt: str
    correct: bool
    namespace: str | None = None


def _label_text(value: Any, name: str, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInputError(f"{where}: {name!r} must be a non-empty string")
    if len(value) > MAX_PAIR_CHARS:
        raise InvalidInputError(f"{where}: {name!r} is longer than {MAX_PAIR_CHARS} characters")
    problem = text_problem(value)
    if problem is not None:
        raise InvalidInputError(f"{where}: {name!r} {problem}")
    return value


def _label_row(row: Any, where: str) -> LabeledPair:
    if not isinstance(row, Mapping):
        raise InvalidInputError(f"{where}: a row must be a JSON object")
    if "prompt" in row or "cached_prompt" in row or "correct" in row:
        names = ("prompt", "cached_prompt", "correct")
    elif "a" in row or "b" in row or "label" in row:
        names = ("a", "b", "label")
    else:
        raise InvalidInputError(f"{where}: want the keys prompt, cached_prompt, correct (or a, b, label)")
    for n in names:
        if n not in row:
            raise InvalidInputError(f"{where}: missing {n!r}")
    a = _label_text(row[names[0]], names[0], where)
    b = _label_text(row[names[1]], names[1], where)
    label = row[names[2]]
    if not (isinstance(label, bool) or (isinstance(label, int) and label in (0, 1))):
        raise InvalidInputError(f"{where}: {names[2]!r} must be true or false (or 1 or 0), got {label!r}")
    ns = row.get("namespace")
    if ns is not None and (not isinstance(ns, str) or not ns or text_problem(ns) is not None):
        raise InvalidInputError(f"{where}: 'namespace' must be a non-empty string or null")
    return LabeledPair(a, b, bool(label), ns)


def label_rows(rows: Iterable[Any], source: str = "labels") -> list[LabeledPair]:
    """Labelled pairs from row dicts (the label-file shape), each checked.

    Raises:
        InvalidInputError: a bad row; the message names it (``source row N``).
    """
    return [_label_row(row, f"{source} row {i}") for i, row in enumerate(rows, 1)]


def read_label_file(path: str | os.PathLike[str]) -> list[LabeledPair]:
    """Read labelled pairs from a JSONL file: one object per line,
    ``{"prompt", "cached_prompt", "correct", "namespace"?}`` or ``{"a", "b", "label"}``.
    Blank lines are skipped.

    Raises:
        InvalidInputError: the file cannot be read, holds no pairs, or a line is not
            such an object; the message names the file and the line.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"cannot read the label file {p}: {exc}") from exc
    out: list[LabeledPair] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{p} line {lineno}"
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise InvalidInputError(f"{where}: not JSON ({exc})") from exc
        out.append(_label_row(row, where))
    if not out:
        raise InvalidInputError(f"{p} holds no labelled pairs")
    return out
