"""Who may call the simulated API. One small class, so IAM password tokens or AK/SK signatures
can be added later as further authenticators behind the same `check`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from aiohttp import web


class Authenticator(Protocol):
    """Decides whether a request carries acceptable credentials."""

    def check(self, request: web.Request) -> str | None:
        """None when the request may pass, else the gateway's reason for the 401."""
        ...


class TokenAuth:
    """`X-Auth-Token` must be one of a replaceable set of accepted tokens."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._tokens = frozenset(tokens)

    def replace(self, tokens: Iterable[str]) -> None:
        """Accept exactly `tokens` from now on (token rotation)."""
        self._tokens = frozenset(tokens)

    @property
    def count(self) -> int:
        """How many tokens are accepted."""
        return len(self._tokens)

    def check(self, request: web.Request) -> str | None:
        """None for an accepted token; the APIGW.0301 reason otherwise."""
        token = request.headers.get("X-Auth-Token")
        if not token:
            return "x-auth-token not found"
        if token not in self._tokens:
            return "decrypt token fail"
        return None
