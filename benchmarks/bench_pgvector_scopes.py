"""pgvector: the scope as a hard filter inside the HNSW search, measured.

The code is :mod:`semcache.bench.pgvector_scopes`, installed with the package: this script
runs it from a checkout, as ``semcache bench pgvector_scopes`` does anywhere (``--help``: its options).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from semcache.bench.pgvector_scopes import main  # noqa: E402

if __name__ == "__main__":
    main()
