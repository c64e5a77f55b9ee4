"""The public API's own overhead, against plain baselines measured in the same run.

The code is :mod:`semcache.bench.api`, installed with the package: this script
runs it from a checkout, as ``semcache bench api`` does anywhere (``--help``: its options).
"""

from __future__ import annotations

import os
import sys

# numpy's BLAS on one thread, like the cache's FAISS: set before semcache loads numpy
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from semcache.bench.api import main  # noqa: E402

if __name__ == "__main__":
    main()
