"""Credentials for CBR requests.

An `Authenticator` adds whatever a request needs (a header, a signature) and can be told to
reload after a 401. The token authenticator takes `auth.token` or re-reads `auth.token_file`
whenever the file changes, so a rotated Kubernetes Secret or systemd credential is picked up
without a restart.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from yarl import URL


class CredentialsUnavailableError(Exception):
    """The configured credentials cannot be read right now (missing or empty token file)."""


class Authenticator(Protocol):
    """Adds credentials to an outgoing CBR request."""

    async def apply(self, method: str, url: URL, headers: dict[str, str], body: bytes) -> None:
        """Add the credential headers to `headers` in place."""
        ...

    async def reload(self) -> None:
        """Forget cached credentials: the cloud rejected them."""
        ...


class TokenAuthenticator:
    """`X-Auth-Token` from a fixed value or from a file that is re-read when it changes."""

    def __init__(self, *, token: str = "", token_file: Path | None = None) -> None:
        if not token and token_file is None:
            raise ValueError("a token or a token file is required")
        self._static = token
        self._file = token_file
        self._cached: str | None = None
        self._stamp: tuple[int, int, int] | None = None

    def _file_stamp(self, path: Path) -> tuple[int, int, int]:
        stat = path.stat()
        return stat.st_mtime_ns, stat.st_size, stat.st_ino

    def current_token(self) -> str:
        """The token to send now; re-reads the file when its mtime, size or inode changed."""
        if self._file is None:
            return self._static
        try:
            stamp = self._file_stamp(self._file)
            if stamp != self._stamp or self._cached is None:
                value = self._file.read_text(encoding="utf-8").strip()
                self._cached, self._stamp = value, stamp
        except OSError as error:
            raise CredentialsUnavailableError(
                f"cannot read auth.token_file {str(self._file)!r}: {os.strerror(error.errno or 0)}"
            ) from error
        if not self._cached:
            raise CredentialsUnavailableError(f"auth.token_file {str(self._file)!r} is empty")
        return self._cached

    async def apply(self, method: str, url: URL, headers: dict[str, str], body: bytes) -> None:
        """Set `X-Auth-Token`."""
        headers["X-Auth-Token"] = self.current_token()

    async def reload(self) -> None:
        """Drop the cached file content so the next request reads the file again."""
        self._cached = None
        self._stamp = None
