"""Semantic lookup latency at N stored entries, against the bare embedding time.

The code is :mod:`semcache.bench.semantic_speed`, installed with the package: this script
runs it from a checkout, as ``semcache bench semantic_speed`` does anywhere (``--help``: its options).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from semcache.bench.semantic_speed import main  # noqa: E402

if __name__ == "__main__":
    main()
