"""Scale: inserts, lookups, recall, index memory and cold start at 10k, 100k and 1M entries.

The code is :mod:`semcache.bench.scale`, installed with the package: this script
runs it from a checkout, as ``semcache bench scale`` does anywhere (``--help``: its options).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from semcache.bench.scale import main  # noqa: E402

if __name__ == "__main__":
    main()
