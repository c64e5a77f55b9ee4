"""The exceptions semcache raises.

Every error derives from :class:`SemcacheError`::

    SemcacheError
    ├── ConfigurationError        bad settings, unknown URL scheme, sync/async mismatch
    ├── InvalidInputError         bad arguments to a call (also a ValueError)
    │   ├── SerializationError    a value that cannot be stored, or a stored blob that cannot be read
    │   ├── EmbeddingError        an embedder returned NaN/inf, a wrong shape or a wrong dimension
    │   └── UnknownEntryError     feedback names an entry id no tier holds (also a LookupError)
    ├── BackendError              a tier failed (translated from the driver's exception)
    │   ├── BackendConflict       a transaction lost to a concurrent one (retried, then replayed)
    │   └── BackendUnavailable    a tier is down or marked down after a failure
    │       └── BackendFailed     a tier's storage is damaged (a corrupt SQLite file)
    ├── VerifierError             a pair verifier failed or returned unusable scores
    ├── SchemaVersionError        the SQL schema is older than this package expects
    └── MissingDependencyError    an optional extra is not installed (also an ImportError)
"""

from __future__ import annotations

__all__ = [
    "BackendConflict",
    "BackendError",
    "BackendFailed",
    "BackendUnavailable",
    "ConfigurationError",
    "EmbeddingError",
    "InvalidInputError",
    "MissingDependencyError",
    "SchemaVersionError",
    "SemcacheError",
    "SerializationError",
    "UnknownEntryError",
    "VerifierError",
]


class SemcacheError(Exception):
    """Base class of every semcache error."""


class ConfigurationError(SemcacheError):
    """The cache, a tier or a decorator was configured in a way that cannot work."""


class InvalidInputError(SemcacheError, ValueError):
    """An argument to a call is invalid (negative TTL, empty prompt, ...)."""


class SerializationError(InvalidInputError):
    """A value cannot be serialised, or a stored value cannot be read back."""


class EmbeddingError(InvalidInputError):
    """An embedder produced an unusable vector (NaN, wrong shape or dimension)."""


class UnknownEntryError(InvalidInputError, LookupError):
    """A call names an entry id that no tier holds (live): the sidecar answers 404."""


class BackendError(SemcacheError):
    """A storage tier raised an error; the driver's exception is the ``__cause__``."""


class BackendConflict(BackendError):
    """A transaction lost to a concurrent one (a deadlock, a serialisation failure) even
    after retries: the tier is fine and the operation is kept and replayed."""


class BackendUnavailable(BackendError):
    """A storage tier is unreachable or is in its back-off window after a failure."""


class BackendFailed(BackendUnavailable):
    """A storage tier's data is damaged (a corrupt SQLite file): it stays failed, and
    nothing is acknowledged to it, until an operator repairs or replaces it."""


class VerifierError(SemcacheError):
    """A pair verifier raised, or returned scores that are not one finite probability
    in [0, 1] per pair; a lookup it was asked about is a miss, never an unverified hit."""


class SchemaVersionError(SemcacheError):
    """The SQL database is at an older (or unknown) schema revision."""


class MissingDependencyError(SemcacheError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(
            f"{package} is required for this feature: pip install 'semcache-llm[{extra}]'"
        )
        self.package = package
        self.extra = extra
