"""Turn ``Policy.verifier`` into a verifier (or ``None``: off).

Kept apart from :mod:`semcache.verify.base` so that the shipped model, which builds on
``base`` and ``calibration``, is imported from here only, lazily.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigurationError, MissingDependencyError
from .base import CallableVerifier, PairVerifier
from .cross_encoder import CrossEncoderVerifier

__all__ = ["resolve_verifier"]


def resolve_verifier(choice: Any) -> PairVerifier | None:
    """``"default"``: the shipped model; ``None`` or ``False``: off; a
    :class:`~semcache.verify.base.PairVerifier`: itself; a callable ``pairs -> scores``:
    a :class:`~semcache.verify.base.CallableVerifier`; any other string: a
    sentence-transformers cross-encoder name or path. Nothing is loaded yet.

    Raises:
        ConfigurationError: none of those, or the shipped model is not in this install.
    """
    if choice is None or choice is False:
        return None
    if isinstance(choice, str):
        name = choice.strip()
        if name == "default":
            try:
                from .model import DefaultVerifier
            except ImportError as exc:
                if isinstance(exc, MissingDependencyError):
                    raise
                raise ConfigurationError(
                    "the default verifier model is not available in this install "
                    f"({type(exc).__name__}: {exc}); set Policy(verifier=None) to match by "
                    "cosine similarity alone, or name a cross-encoder"
                ) from exc
            verifier: PairVerifier = DefaultVerifier()
            return verifier
        if not name:
            raise ConfigurationError("verifier must not be an empty string")
        return CrossEncoderVerifier(name)
    if isinstance(choice, PairVerifier):
        return choice
    if callable(choice):
        return CallableVerifier(choice)
    raise ConfigurationError(
        "verifier must be 'default', None/False, a cross-encoder name or path, a PairVerifier "
        f"or a callable pairs -> scores, not {type(choice).__name__}"
    )
