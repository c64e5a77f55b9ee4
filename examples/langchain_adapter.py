"""semcache as LangChain's LLM cache: every chat model call goes through it.

    .venv/bin/python examples/langchain_adapter.py

Needs ``pip install 'semcache-llm[langchain]'``. The chat model here is a slow local
stand-in (0.5 s per answer), so the script runs offline; any LangChain chat model
(``ChatOpenAI``, ...) uses the cache the same way.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

from langchain_core.globals import set_llm_cache
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from semcache import CacheConfig, SemanticCache, SQLConfig
from semcache.contrib.langchain import SemcacheLangChainCache


class SlowEchoModel(BaseChatModel):
    """A chat model that takes half a second and counts its calls."""

    calls: int = 0
    temperature: float = 0.0

    @property
    def _llm_type(self) -> str:
        return "slow-echo"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"temperature": self.temperature}

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any) -> ChatResult:
        self.calls += 1
        time.sleep(0.5)
        question = messages[-1].content
        usage = {"input_tokens": 12, "output_tokens": 8, "total_tokens": 20}
        message = AIMessage(f"(answer #{self.calls} to {question!r})", usage_metadata=usage)
        return ChatResult(generations=[ChatGeneration(message=message)])


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        with SemanticCache(CacheConfig(sql=SQLConfig(url=f"sqlite:///{tmp}/cache.db"))) as cache:
            set_llm_cache(SemcacheLangChainCache(cache, ttl_seconds=3600))
            try:
                model = SlowEchoModel()
                system = SystemMessage("You answer questions about astronomy.")
                for question in (
                    "What is the distance from the Earth to the Moon?",  # miss
                    "What is the distance from the Earth to the Moon?",  # exact repeat
                    "What's the distance from the Earth to the Moon?",  # paraphrase
                ):
                    t0 = time.perf_counter()
                    reply = model.invoke([system, HumanMessage(question)])
                    print(f"{(time.perf_counter() - t0) * 1000:7.1f} ms  {question!r} -> {reply.content}")
                # a different model configuration is a different scope
                warm = SlowEchoModel(temperature=0.9)
                t0 = time.perf_counter()
                reply = warm.invoke([system, HumanMessage("What is the distance from the Earth to the Moon?")])
                print(f"{(time.perf_counter() - t0) * 1000:7.1f} ms  (temperature=0.9) -> {reply.content}")
                stats = cache.stats()
                print(f"\nmodel calls: {model.calls + warm.calls}; saved calls: {stats['saved_calls']}, tokens: {stats['saved_tokens']}")
                assert model.calls == 1 and warm.calls == 1
            finally:
                set_llm_cache(None)


if __name__ == "__main__":
    main()
