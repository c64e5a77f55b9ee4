"""Load benchmark of the sidecar: semantic lookups/s and latency with 32 concurrent clients.

    semcache bench sidecar_load [--clients 32] [--seconds 10] [--embedder default]

For each mode (micro-batching on, then off) a real ``semcache serve`` process is started
on a free loopback port, warmed with a corpus of questions, and then ``--clients``
concurrent HTTP clients (one keep-alive connection each) send ``POST /v1/lookup`` for
paraphrased questions for ``--seconds`` (at most ``--max-requests``). Every lookup text
is unique, so none is an exact hit: each one is embedded and searched semantically.
Reported per mode: lookups/s, p50/p90/p99 latency (ms), hit rate and the mean
embedding batch size read from the sidecar's ``/metrics``.

Both modes run in one invocation, on the same machine and corpus, one after the other.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

_SUBJECTS = [
    "France",
    "Japan",
    "Brazil",
    "Canada",
    "Kenya",
    "Norway",
    "India",
    "Mexico",
    "Egypt",
    "Chile",
    "Italy",
    "Spain",
    "Peru",
    "Vietnam",
    "Poland",
    "Ghana",
    "Turkey",
    "Greece",
    "Sweden",
    "Nepal",
]
_TOPICS = [
    ("What is the capital of {}?", "What's the capital city of {}?"),
    ("What currency is used in {}?", "Which currency do people use in {}?"),
    ("What language is spoken in {}?", "Which language do people speak in {}?"),
    ("How many people live in {}?", "What is the population of {}?"),
    ("What is the best time of year to visit {}?", "When should I travel to {}?"),
    ("What food is {} famous for?", "Which dishes is {} known for?"),
    ("Do I need a visa to visit {}?", "Is a visa required to travel to {}?"),
    ("What is the climate like in {}?", "How is the weather in {} usually?"),
    ("What are the top tourist attractions in {}?", "Which sights should I see in {}?"),
    ("What time zone is {} in?", "Which time zone does {} use?"),
    ("Is tap water safe to drink in {}?", "Can I drink the tap water in {}?"),
    (
        "What side of the road do they drive on in {}?",
        "Do people drive on the left or right in {}?",
    ),
]


def corpus() -> list[str]:
    """The questions stored before the load starts."""
    return [q.format(s) for s in _SUBJECTS for q, _ in _TOPICS]


_OPENERS = [
    "",
    "Hi! ",
    "Quick question: ",
    "Hello, ",
    "Hey, ",
    "Please tell me: ",
    "I wonder: ",
    "Travel question: ",
    "Help me out: ",
    "One thing: ",
    "Excuse me, ",
    "Curious: ",
    "Question - ",
    "So, ",
    "Ok, ",
    "Right, ",
]
_CLOSERS = [
    "",
    " Thanks!",
    " Thank you.",
    " Cheers.",
    " Thanks a lot.",
    " Many thanks.",
    " Please.",
    " Ta.",
    " Thanks in advance.",
    " Much appreciated.",
    " Any idea?",
    " Anyone?",
    " Thx.",
    " Help!",
    " :)",
    " ?",
]


def probe(i: int) -> str:
    """The i-th lookup: a paraphrase of a stored question, unique (never an exact hit) for i < 61,440."""
    n = len(_SUBJECTS) * len(_TOPICS)
    s = _SUBJECTS[i % len(_SUBJECTS)]
    _, para = _TOPICS[(i // len(_SUBJECTS)) % len(_TOPICS)]
    rest = i // n
    opener = _OPENERS[rest % len(_OPENERS)]
    closer = _CLOSERS[(rest // len(_OPENERS)) % len(_CLOSERS)]
    text = f"{opener}{para.format(s)}{closer}"
    return text.lower() if (rest // (len(_OPENERS) * len(_CLOSERS))) % 2 else text


@dataclass
class Result:
    """One mode's figures."""

    mode: str
    requests: int
    errors: int
    seconds: float
    latencies: np.ndarray
    hits: int
    mean_batch: float | None

    @property
    def rate(self) -> float:
        """Lookups per second."""
        return self.requests / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        """The q-th latency percentile, in ms."""
        return (
            float(np.percentile(self.latencies, q) * 1e3) if len(self.latencies) else float("nan")
        )

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly figures."""
        return {
            "mode": self.mode,
            "requests": self.requests,
            "errors": self.errors,
            "seconds": round(self.seconds, 2),
            "lookups_per_second": round(self.rate, 1),
            "p50_ms": round(self.pct(50), 2),
            "p90_ms": round(self.pct(90), 2),
            "p99_ms": round(self.pct(99), 2),
            "hit_rate": round(self.hits / self.requests, 3) if self.requests else None,
            "mean_batch": None if self.mean_batch is None else round(self.mean_batch, 1),
        }


class Sidecar:
    """A ``semcache serve`` child process on a free loopback port."""

    def __init__(
        self, workdir: Path, embedder: str, batching: bool, token: str, extra: list[str]
    ) -> None:
        env = dict(os.environ)
        env.update(
            HF_HUB_OFFLINE="1",
            SEMCACHE_ADMIN_TOKEN=token,
            SEMCACHE_SQL_URL=f"sqlite:///{workdir / ('on.db' if batching else 'off.db')}",
            SEMCACHE_EMBEDDER=embedder,
            SEMCACHE_LOG_LEVEL="warning",
        )
        env.pop("SEMCACHE_REDIS_URL", None)
        cmd = [sys.executable, "-m", "semcache", "serve", "--port", "0", *extra]
        if not batching:
            cmd.append("--no-batching")
        # open for the child's whole life; closed in stop()
        self.log = open(workdir / f"serve-{'on' if batching else 'off'}.log", "w+")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env
        )
        self.url = self._wait_for_url()

    def _wait_for_url(self, timeout: float = 180.0) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                if self.proc.poll() is not None:
                    self.log.seek(0)
                    raise SystemExit(
                        f"the sidecar exited ({self.proc.returncode}):\n{self.log.read()[-2000:]}"
                    )
                continue
            m = re.search(r"listening on (http://\S+)", line)
            if m:
                return m.group(1)
        raise SystemExit("the sidecar did not start in time")

    def stop(self) -> None:
        """Stop the child (SIGTERM, then SIGKILL)."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def _metric_sum(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def run_load(
    url: str, token: str, clients: int, seconds: float, max_requests: int, offset: int
) -> tuple[int, int, float, np.ndarray, int]:
    """Drive ``clients`` concurrent clients; return (requests, errors, seconds, latencies, hits)."""
    headers = {"authorization": f"Bearer {token}"}
    counter = iter(range(offset, offset + max_requests))
    latencies: list[float] = []
    state = {"errors": 0, "hits": 0}
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30.0) as c:
            while time.perf_counter() < deadline:
                i = next(counter, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                r = await c.post("/v1/lookup", json={"prompt": probe(i), "include_value": False})
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    state["errors"] += 1
                elif r.json().get("hit"):
                    state["hits"] += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - t0
    return len(latencies), state["errors"], elapsed, np.array(latencies), state["hits"]


def measure(mode: str, batching: bool, args: argparse.Namespace, workdir: Path) -> Result:
    """Start a sidecar in ``mode``, warm it, load it, stop it."""
    token = "bench-admin-token"
    extra = (
        ["--batch-window-ms", str(args.window_ms), "--batch-max", str(args.batch_max)]
        if batching
        else []
    )
    sc = Sidecar(workdir, args.embedder, batching, token, extra)
    try:
        with httpx.Client(
            base_url=sc.url, headers={"authorization": f"Bearer {token}"}, timeout=60.0
        ) as c:
            for q in corpus():
                c.post(
                    "/v1/entries", json={"prompt": q, "value": f"answer to: {q}"}
                ).raise_for_status()
            before = c.get("/metrics").text
        # warm-up: connections, thread pool, the model's first batches
        asyncio.run(
            run_load(sc.url, token, args.clients, min(2.0, args.seconds), 10 * args.clients, 40_000)
        )
        with httpx.Client(base_url=sc.url, timeout=60.0) as c:
            before = c.get("/metrics").text
        n, errors, elapsed, lat, hits = asyncio.run(
            run_load(sc.url, token, args.clients, args.seconds, args.max_requests, 0)
        )
        with httpx.Client(base_url=sc.url, timeout=60.0) as c:
            after = c.get("/metrics").text
        batches = _metric_sum(after, "semcache_embedding_batch_size_count") - _metric_sum(
            before, "semcache_embedding_batch_size_count"
        )
        texts = _metric_sum(after, "semcache_embedding_batch_size_sum") - _metric_sum(
            before, "semcache_embedding_batch_size_sum"
        )
        mean_batch = texts / batches if batches else None
        return Result(mode, n, errors, elapsed, lat, hits, mean_batch)
    finally:
        sc.stop()


def main() -> None:
    """Run both modes and print a table (and JSON with --json)."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--clients", type=int, default=32, help="concurrent clients")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per mode")
    ap.add_argument(
        "--max-requests", type=int, default=20_000, help="cap on requests per mode (at most 40,000)"
    )
    ap.add_argument(
        "--embedder", default="default", help="default (all-MiniLM-L6-v2), hashing, or a model name"
    )
    ap.add_argument("--window-ms", type=float, default=2.0, help="micro-batch window")
    ap.add_argument("--batch-max", type=int, default=32, help="largest micro-batch")
    ap.add_argument("--only", choices=["on", "off"], default=None, help="run one mode only")
    ap.add_argument("--json", action="store_true", help="print JSON")
    args = ap.parse_args()
    # probes 40,000.. are the warm-up's; the measured ones stay below, all distinct
    args.max_requests = max(1, min(args.max_requests, 40_000))

    modes = [("batching on", True), ("batching off", False)]
    if args.only:
        modes = [m for m in modes if m[1] == (args.only == "on")]
    with tempfile.TemporaryDirectory(prefix="semcache-bench-") as tmp:
        results = [measure(name, on, args, Path(tmp)) for name, on in modes]
    info = {
        "clients": args.clients,
        "seconds": args.seconds,
        "embedder": args.embedder,
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
        "python": platform.python_version(),
        "corpus": len(corpus()),
    }
    if args.json:
        print(json.dumps({"setup": info, "results": [r.as_dict() for r in results]}, indent=2))
        return
    print(
        f"sidecar load: {args.clients} clients, {args.seconds:.0f}s per mode, embedder {args.embedder}, "
        f"{info['cpus']} CPUs, corpus {info['corpus']} entries"
    )
    print(
        f"{'mode':<14}{'lookups/s':>10}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'hit rate':>10}{'batch':>7}{'requests':>10}{'errors':>8}"
    )
    for r in results:
        d = r.as_dict()
        batch = "-" if d["mean_batch"] is None else f"{d['mean_batch']:.1f}"
        print(
            f"{r.mode:<14}{r.rate:>10.0f}{r.pct(50):>9.1f}{r.pct(90):>9.1f}{r.pct(99):>9.1f}"
            f"{(d['hit_rate'] or 0):>10.1%}{batch:>7}{r.requests:>10}{r.errors:>8}"
        )


if __name__ == "__main__":
    main()
