"""Cache any function that calls an LLM: a plain function, a streaming one, an async one.

    .venv/bin/python examples/plain_function.py

The "LLM" here sleeps 0.5 s, so the script runs offline; the cache is the embedded
default (memory + SQLite in a temporary folder + all-MiniLM-L6-v2).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator, Iterator

from semcache import AsyncSemanticCache, CacheConfig, SemanticCache, SQLConfig

calls = 0


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config = CacheConfig(sql=SQLConfig(url=f"sqlite:///{tmp}/cache.db"))
        with SemanticCache(config) as cache:

            @cache.cached(ttl_seconds=3600)
            def ask(prompt: str, temperature: float = 0.0) -> str:
                global calls
                calls += 1
                time.sleep(0.5)  # the LLM call
                return f"(answer #{calls} to {prompt!r} at t={temperature})"

            def show(label: str, fn: object, *args: object, **kwargs: object) -> None:
                t0 = time.perf_counter()
                out = fn(*args, **kwargs)  # type: ignore[operator]
                if not isinstance(out, str):
                    out = "".join(out)  # a stream
                print(f"{(time.perf_counter() - t0) * 1000:7.1f} ms  {label:28} {out}")

            show("miss", ask, "How do I reset my password?")
            show("exact repeat", ask, "How do I reset my password?")
            show("paraphrase", ask, "How can I reset my password?")
            show("other temperature (scope)", ask, "How do I reset my password?", temperature=0.7)
            with cache.options(lookup=False):
                show("refresh (lookup=False)", ask, "How do I reset my password?")
            with cache.options(bypass=True):
                show("bypass", ask, "How do I reset my password?")

            @cache.cached
            def tell(prompt: str) -> Iterator[str]:
                global calls
                calls += 1
                for word in ["Once ", "upon ", "a ", "time."]:
                    time.sleep(0.1)  # tokens arriving
                    yield word

            show("stream, live", tell, "Tell me a story")
            show("stream, replayed", tell, "Tell me a story")

    async def run_async() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            config = CacheConfig(sql=SQLConfig(url=f"sqlite:///{tmp}/cache.db"))
            async with AsyncSemanticCache(config) as cache:

                @cache.cached
                async def aask(prompt: str) -> str:
                    global calls
                    calls += 1
                    await asyncio.sleep(0.5)
                    return f"(async answer to {prompt!r})"

                @cache.cached
                async def atell(prompt: str) -> AsyncIterator[str]:
                    for word in ["stream", "ed"]:
                        yield word

                t0 = time.perf_counter()
                answers = await asyncio.gather(*(aask("What is semcache?") for _ in range(20)))
                ms = (time.perf_counter() - t0) * 1000
                print(f"{ms:7.1f} ms  20 concurrent async calls     {len(set(answers))} distinct answer, one call")
                print(f"{'':10} async generator, twice       {[w async for w in atell('s')]} {[w async for w in atell('s')]}")
                print(f"{'':10} async stats: saved_calls={cache.stats()['saved_calls']}")

    asyncio.run(run_async())
    print(f"\nunderlying calls: {calls}")
    assert calls == 6, calls


if __name__ == "__main__":
    main()
