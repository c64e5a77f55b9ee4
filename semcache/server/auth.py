"""Bearer-token auth: a token names a tenant, every operation is confined to it.

A tenant token's lookups, stores, listings and invalidations all carry the tenant as
the namespace (a scope field that must match exactly, and an AND term of every
invalidation), so a token can never read or remove another tenant's entries. The admin
token acts on every namespace and may run global operations (stats, flush everything,
index rebuilds).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["AuthError", "Principal", "TokenAuth"]

#: A second header for the semcache token, so ``Authorization`` can carry the caller's
#: own upstream API key through the proxy.
TOKEN_HEADER = "x-semcache-token"


class AuthError(Exception):
    """The request is not authenticated (401) or not allowed (403)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a tenant (confined to ``tenant``) or the admin (``tenant is None``)."""

    tenant: str | None
    #: Whether ``Authorization`` carried the semcache token (then it must not go upstream).
    token_in_authorization: bool = False

    @property
    def admin(self) -> bool:
        """Whether this caller may act on every namespace."""
        return self.tenant is None

    def namespace(self, requested: str | None) -> str | None:
        """The namespace an operation runs in: the tenant's own, or what the admin asked for.

        Raises:
            AuthError: a tenant named another tenant's namespace (403).
        """
        if self.tenant is None:
            return requested
        if requested is not None and requested != self.tenant:
            raise AuthError(403, "this token may only use its own namespace")
        return self.tenant

    def require_admin(self) -> None:
        """Raise unless the caller is the admin.

        Raises:
            AuthError: a tenant token (403).
        """
        if self.tenant is not None:
            raise AuthError(403, "this operation needs the admin token")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def _bearer(authorization: str | None) -> str | None:
    """The credential of ``Authorization: Bearer <value>``, or ``None``."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


class TokenAuth:
    """Resolves the bearer token of a request to a :class:`Principal`.

    Args:
        tokens: tenant token -> tenant name.
        admin_token: the token for global operations (optional).
        enabled: ``False`` makes every caller the admin (explicit opt-out only).
    """

    def __init__(
        self, tokens: Mapping[str, str], admin_token: str | None, *, enabled: bool = True
    ) -> None:
        self.enabled = enabled
        # digests, so a lookup's timing says nothing about how much of a token matched
        self._tenants = {_digest(t): tenant for t, tenant in tokens.items()}
        self._admin = _digest(admin_token) if admin_token else None

    def is_token(self, value: str) -> bool:
        """Whether ``value`` is one of the configured semcache tokens (tenant or admin)."""
        d = _digest(value)
        if self._admin is not None and hmac.compare_digest(d, self._admin):
            return True
        return d in self._tenants

    def resolve(self, authorization: str | None, token_header: str | None) -> Principal:
        """Return the caller for these header values.

        Raises:
            AuthError: no token, or an unknown token (401).
        """
        bearer = _bearer(authorization)
        # any semcache token in Authorization (even beside X-Semcache-Token, even with auth
        # off) marks it as ours, so the proxy never hands it to the upstream
        in_authorization = bearer is not None and self.is_token(bearer)
        if not self.enabled:
            return Principal(None, token_in_authorization=in_authorization)
        token = (token_header or "").strip() or None
        if token is None and bearer is not None:
            token = bearer
            in_authorization = True
        if token is None:
            raise AuthError(401, "missing bearer token (Authorization: Bearer <token>)")
        d = _digest(token)
        if self._admin is not None and hmac.compare_digest(d, self._admin):
            return Principal(None, in_authorization)
        tenant = self._tenants.get(d)
        if tenant is None:
            raise AuthError(401, "invalid token")
        return Principal(tenant, in_authorization)
