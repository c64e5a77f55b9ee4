"""Small helpers shared by the benchmark scripts (timing and percentiles)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def time_calls(fn: Callable[[], object], n: int, warmup: int = 200) -> np.ndarray:
    """Call ``fn`` ``n`` times (after a warm-up) and return each call's seconds."""
    for _ in range(warmup):
        fn()
    out = np.empty(n)
    perf = time.perf_counter
    for i in range(n):
        t0 = perf()
        fn()
        out[i] = perf() - t0
    return out


def pct(samples: np.ndarray, q: float) -> float:
    """The q-th percentile in microseconds."""
    return float(np.percentile(samples, q) * 1e6)


def row(name: str, samples: np.ndarray, base: np.ndarray | None = None) -> str:
    """One table row: p50, p99 (µs) and the p50 ratio against a baseline."""
    ratio = "" if base is None else f"{pct(samples, 50) / pct(base, 50):8.1f}x"
    return f"{name:<28}{pct(samples, 50):>10.1f}{pct(samples, 99):>10.1f}  {ratio}"
