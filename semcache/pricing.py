"""Prices per model, to turn the tokens a cache hit saved into money. Pure, no I/O.

semcache ships no prices (they change); set your own::

    CacheConfig(prices={"gpt-4o-mini": (0.15, 0.60)})   # USD per million input, output tokens

A model name matches its own entry, else the longest entry it starts with, so
``"gpt-4o-mini"`` also prices the dated snapshot ``"gpt-4o-mini-2024-07-18"``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigurationError

__all__ = ["ModelPrice", "PriceTable"]


@dataclass(frozen=True, kw_only=True)
class ModelPrice:
    """USD per million tokens, for the prompt (input) and the completion (output)."""

    input_per_million: float
    output_per_million: float

    def __post_init__(self) -> None:
        for name in ("input_per_million", "output_per_million"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or math.isinf(v) or v < 0:
                raise ConfigurationError(f"ModelPrice.{name} must be a non-negative number, got {v!r}")

    def cost_usd(self, usage: Mapping[str, Any]) -> float:
        """The price of the tokens in an OpenAI-style ``usage`` dict."""
        prompt = usage.get("prompt_tokens") or 0
        completion = usage.get("completion_tokens") or 0
        return (prompt * self.input_per_million + completion * self.output_per_million) / 1e6


def _as_price(model: str, value: Any) -> ModelPrice:
    if isinstance(value, ModelPrice):
        return value
    if isinstance(value, Mapping):
        try:
            return ModelPrice(input_per_million=value["input"], output_per_million=value["output"])
        except KeyError as exc:
            raise ConfigurationError(f"the price of {model!r} needs 'input' and 'output' (USD per 1M tokens)") from exc
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return ModelPrice(input_per_million=value[0], output_per_million=value[1])
    raise ConfigurationError(
        f"the price of {model!r} must be a ModelPrice, (input, output) or {{'input':..,'output':..}} in USD per 1M tokens"
    )


class PriceTable:
    """Prices by model name (exact, else longest prefix).

    Args:
        prices: model -> :class:`ModelPrice`, ``(input, output)`` or
            ``{"input": .., "output": ..}``, in USD per million tokens.

    Raises:
        ConfigurationError: a price that is negative, NaN or malformed.
    """

    def __init__(self, prices: Mapping[str, Any] | None = None) -> None:
        if prices is not None and not isinstance(prices, Mapping):
            raise ConfigurationError("prices must be a mapping of model name to price")
        self._prices = {str(m): _as_price(str(m), p) for m, p in (prices or {}).items()}

    def __len__(self) -> int:
        return len(self._prices)

    def __repr__(self) -> str:
        return f"PriceTable({self._prices!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PriceTable) and other._prices == self._prices

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._prices.items())))

    def price_for(self, model: str | None) -> ModelPrice | None:
        """The price of ``model``: its own entry, else the longest entry it starts with."""
        if not model:
            return None
        if model in self._prices:
            return self._prices[model]
        best = max((m for m in self._prices if model.startswith(m)), key=len, default=None)
        return None if best is None else self._prices[best]

    def cost_usd(self, model: str | None, usage: Mapping[str, Any] | None) -> float | None:
        """The price of ``usage`` on ``model``, or ``None`` when either is unknown."""
        price = self.price_for(model)
        if price is None or not isinstance(usage, Mapping):
            return None
        return price.cost_usd(usage)
