"""Benchmark the embedders: single short prompt latency (p50/p99) and batch throughput.

The code is :mod:`semcache.bench.embed`, installed with the package: this script
runs it from a checkout, as ``semcache bench embed`` does anywhere (``--help``: its options).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from semcache.bench.embed import main  # noqa: E402

if __name__ == "__main__":
    main()
