"""semcache: a multi-level semantic cache for LLM calls.

L1 in-process memory → L2 Redis → L3 SQL, with TTLs and promotion between tiers,
in front of a scoped embedding index that answers paraphrased prompts.
"""

from __future__ import annotations

from ._version import __version__
from .async_cache import AsyncSemanticCache
from .cache import SemanticCache
from .config import UNSET, CacheConfig, IndexConfig, MemoryConfig, Policy, RedisConfig, SQLConfig
from .errors import (
    BackendError,
    BackendUnavailable,
    ConfigurationError,
    EmbeddingError,
    InvalidInputError,
    MissingDependencyError,
    SchemaVersionError,
    SemcacheError,
    SerializationError,
    UnknownEntryError,
    VerifierError,
)
from .keys import Request, build_request
from .types import Entry, Hit, Selector

__all__ = [
    "UNSET",
    "AsyncSemanticCache",
    "BackendError",
    "BackendUnavailable",
    "CacheConfig",
    "ConfigurationError",
    "EmbeddingError",
    "Entry",
    "Hit",
    "IndexConfig",
    "InvalidInputError",
    "MemoryConfig",
    "MissingDependencyError",
    "Policy",
    "RedisConfig",
    "Request",
    "SQLConfig",
    "SchemaVersionError",
    "Selector",
    "SemanticCache",
    "SemcacheError",
    "SerializationError",
    "UnknownEntryError",
    "VerifierError",
    "__version__",
    "build_request",
]
