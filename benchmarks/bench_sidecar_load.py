"""Load benchmark of the sidecar: semantic lookups/s and latency with 32 concurrent clients.

The code is :mod:`semcache.bench.sidecar_load`, installed with the package: this script
runs it from a checkout, as ``semcache bench sidecar_load`` does anywhere (``--help``: its options).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from semcache.bench.sidecar_load import main  # noqa: E402

if __name__ == "__main__":
    main()
