"""Hit correctness on labeled paraphrase data, through the public cache API.

The code is :mod:`semcache.bench.correctness`, installed with the package: this script
runs it from a checkout, as ``semcache bench correctness`` does anywhere (``--help``: its options).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from semcache.bench.correctness import main  # noqa: E402

if __name__ == "__main__":
    main()
