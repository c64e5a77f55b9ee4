"""Wrap the OpenAI client: repeats and paraphrases stop costing a call.

    .venv/bin/python examples/openai_client.py

The client talks to a small local stand-in for the API (examples/_standin.py) that
takes 0.8 s per answer, so this runs offline. Point ``base_url``/``api_key`` at the
real API and nothing else changes.
"""

from __future__ import annotations

import tempfile
import threading
import time

import openai
from _standin import StandIn

from semcache import CacheConfig, SemanticCache, SQLConfig


def main() -> None:
    with StandIn(delay_seconds=0.8) as upstream, tempfile.TemporaryDirectory() as tmp:
        client = openai.OpenAI(base_url=upstream.base_url, api_key="not-needed-offline")
        config = CacheConfig(
            sql=SQLConfig(url=f"sqlite:///{tmp}/cache.db"),
            prices={"gpt-4o-mini": (0.15, 0.60)},  # USD per 1M input, output tokens
        )
        with SemanticCache(config) as cache:
            create = cache.wrap(client.chat.completions.create)

            def ask(question: str, **kwargs: object) -> object:
                system = {"role": "system", "content": "You are a concise geography tutor."}
                return create(model="gpt-4o-mini", messages=[system, {"role": "user", "content": question}], **kwargs)

            for question in (
                "What is the tallest mountain in the world?",  # miss: calls the API
                "What is the tallest mountain in the world?",  # exact repeat: from the cache
                "What's the tallest mountain in the world?",  # paraphrase: from the cache
            ):
                t0 = time.perf_counter()
                reply = ask(question)
                ms = (time.perf_counter() - t0) * 1000
                print(f"{ms:7.1f} ms  {type(reply).__name__:14}  {question!r} -> {reply.choices[0].message.content!r}")

            # streaming: the live stream is recorded, then replayed as ChatCompletionChunk objects
            for label in ("live  ", "replay"):
                t0 = time.perf_counter()
                chunks = list(ask("Name the longest river in Europe.", stream=True))
                ms = (time.perf_counter() - t0) * 1000
                text = "".join(c.choices[0].delta.content or "" for c in chunks)
                print(f"{ms:7.1f} ms  stream {label}  {len(chunks)} {type(chunks[0]).__name__}s: {text!r}")

            # ten identical requests at once: one API call, the others wait for it
            threads = [threading.Thread(target=ask, args=("How high is Mont Blanc?",)) for _ in range(10)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            print(f"{(time.perf_counter() - t0) * 1000:7.1f} ms  10 concurrent identical requests")

            # per-call controls: skip the cache for this block
            with cache.options(bypass=True):
                ask("What is the tallest mountain in the world?")

            stats = cache.stats()
            print(
                f"\nAPI calls made: {upstream.calls} (of 16 requests); calls saved: {stats['saved_calls']}, "
                f"tokens saved: {stats['saved_tokens']}, money saved: ${stats['saved_cost_usd']:.6f}"
            )
        assert upstream.calls == 4, upstream.calls


if __name__ == "__main__":
    main()
