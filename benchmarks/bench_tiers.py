"""Exact-hit latency per tier (L1, L2, L3) and of a miss, against a dict and a Redis GET.

The code is :mod:`semcache.bench.tiers`, installed with the package: this script
runs it from a checkout, as ``semcache bench tiers`` does anywhere (``--help``: its options).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from semcache.bench.tiers import main  # noqa: E402

if __name__ == "__main__":
    main()
