"""Benchmark the embedders: single short prompt latency (p50/p99) and batch throughput.

Run: ``HF_HUB_OFFLINE=1 semcache bench embed [--n 200] [--batches 5]``

All configurations are measured in one process, in interleaved rounds, so background load
on the machine affects them alike. torch's thread count is process-global, so the torch
configurations switch it between rounds with ``torch.set_num_threads``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable

import numpy as np

from semcache.embedders import OnnxEmbedder, SentenceTransformerEmbedder

_SUBJECTS = [
    "the capital of France",
    "a good pasta recipe",
    "Python's GIL",
    "quantum computing",
    "the weather tomorrow",
    "how to reset a router",
    "tax deadlines",
    "semantic caching",
]
_FORMS = ["What is {}?", "Tell me about {}.", "Explain {} briefly", "{}: any tips?"]


def _prompt(i: int) -> str:
    """Return a distinct short prompt (~6-10 tokens)."""
    return _FORMS[i % len(_FORMS)].format(_SUBJECTS[(i // len(_FORMS)) % len(_SUBJECTS)]) + f" #{i}"


def _pct(samples: list[float], q: float) -> float:
    return float(np.percentile(np.array(samples) * 1e3, q))


def main() -> None:
    """Run the benchmark and print a table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=200, help="single-prompt calls per configuration")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds")
    ap.add_argument("--batches", type=int, default=5, help="timed batches of 64 per configuration")
    ap.add_argument("--onnx-dir", default=None, help="ONNX cache dir (default: a temp dir)")
    args = ap.parse_args()

    import torch

    default_threads = torch.get_num_threads()
    onnx_dir = args.onnx_dir or tempfile.mkdtemp(prefix="semcache-bench-")

    torch_emb = SentenceTransformerEmbedder()
    t0 = time.perf_counter()
    torch_emb.load()
    torch_load = time.perf_counter() - t0
    onnx1 = OnnxEmbedder(onnx_dir=onnx_dir, num_threads=1)
    t0 = time.perf_counter()
    onnx1.load()  # includes the one-off export into the (temp) cache dir
    onnx_load = time.perf_counter() - t0
    onnx2 = OnnxEmbedder(onnx_dir=onnx_dir, num_threads=2)
    t0 = time.perf_counter()
    onnx2.load()
    onnx_load_cached = time.perf_counter() - t0

    configs: dict[str, tuple[int | None, Callable[[list[str]], object]]] = {
        f"torch  threads={default_threads} (default)": (default_threads, torch_emb.embed),
        "torch  threads=1": (1, torch_emb.embed),
        "onnx   threads=1 (default)": (None, onnx1.embed),
        "onnx   threads=2": (None, onnx2.embed),
    }

    # Warm-up (first calls allocate, JIT-select kernels, ...).
    for name, (threads, fn) in configs.items():
        if threads is not None:
            torch.set_num_threads(threads)
        for i in range(10):
            fn([_prompt(i)])

    single: dict[str, list[float]] = {name: [] for name in configs}
    per_round = max(1, args.n // args.rounds)
    counter = 0
    for _ in range(args.rounds):
        for name, (threads, fn) in configs.items():
            if threads is not None:
                torch.set_num_threads(threads)
            for _ in range(per_round):
                text = [_prompt(counter)]
                counter += 1
                t0 = time.perf_counter()
                fn(text)
                single[name].append(time.perf_counter() - t0)

    batch = [_prompt(i) + " " + _SUBJECTS[i % len(_SUBJECTS)] * (1 + i % 3) for i in range(64)]
    throughput: dict[str, float] = {}
    for name, (threads, fn) in configs.items():
        if threads is not None:
            torch.set_num_threads(threads)
        fn(batch)
        t0 = time.perf_counter()
        for _ in range(args.batches):
            fn(batch)
        throughput[name] = 64 * args.batches / (time.perf_counter() - t0)
    torch.set_num_threads(default_threads)

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(
        f"# {platform.machine()} {os.cpu_count()} CPUs, load avg {load[0]:.2f}; "
        f"torch {torch.__version__}; {per_round * args.rounds} single calls per config"
    )
    print(
        f"# load: torch {torch_load:.2f}s, onnx first {onnx_load:.2f}s (export+session), "
        f"onnx cached {onnx_load_cached:.2f}s"
    )
    print(
        f"{'configuration':34} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'batch64 texts/s':>16}"
    )
    for name in configs:
        s = single[name]
        print(
            f"{name:34} {_pct(s, 50):8.2f} {_pct(s, 99):8.2f} "
            f"{statistics.fmean(s) * 1e3:8.2f} {throughput[name]:16.1f}"
        )
    names = list(configs)
    t_def, t_one, o_one, o_two = (single[n] for n in names)
    print(
        f"ratio torch(default)/onnx(default) p50: {_pct(t_def, 50) / _pct(o_one, 50):.1f}x, "
        f"p99: {_pct(t_def, 99) / _pct(o_one, 99):.1f}x"
    )
    print(
        f"ratio torch(1 thread)/onnx(default) p50: {_pct(t_one, 50) / _pct(o_one, 50):.1f}x, "
        f"p99: {_pct(t_one, 99) / _pct(o_one, 99):.1f}x"
    )
    print(
        f"ratio best torch/best onnx p50: "
        f"{min(_pct(t_def, 50), _pct(t_one, 50)) / min(_pct(o_one, 50), _pct(o_two, 50)):.1f}x; "
        f"batch throughput onnx(default)/torch(default): "
        f"{throughput[names[2]] / throughput[names[0]]:.1f}x"
    )


if __name__ == "__main__":
    main()
