"""Credentials for CBR requests.

An `Authenticator` adds whatever a request needs (a header, a signature) and can be told to
reload after a 401. Three kinds exist, one per `auth.method`:

- `TokenAuthenticator` (here): `auth.token`, or `auth.token_file` re-read whenever it changes,
  so a rotated Kubernetes Secret or systemd credential is picked up without a restart;
- `AkSkAuthenticator` (`watcher.cbr.aksk`): `SDK-HMAC-SHA256` signatures, with the secret key
  and security token optionally read from files the same way;
- `PasswordAuthenticator` (`watcher.cbr.iam`): a project-scoped IAM token, refreshed ahead of
  its expiry.

Optional extras the client uses when an authenticator has them (looked up with `getattr`, so
an authenticator needs only `apply` and `reload`): `observe_response(status, headers)` after
every request (`status` None when no answer came), and `redact(text)` for error messages.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from yarl import URL

from watcher.filevalue import FileValue
from watcher.redaction import redact_text
from watcher.safetext import has_surrogates

_CONTROL = re.compile("[\x00-\x1f\x7f]")


class CredentialsUnavailableError(Exception):
    """The configured credentials cannot be used right now (missing or empty file, IAM failing,
    signing paused after rejections). The message names the key and never holds a secret."""


class Authenticator(Protocol):
    """Adds credentials to an outgoing CBR request."""

    async def apply(self, method: str, url: URL, headers: dict[str, str], body: bytes) -> None:
        """Add the credential headers to `headers` in place."""
        ...

    async def reload(self) -> None:
        """Forget cached credentials: the cloud rejected them."""
        ...


class ResponseObserver(Protocol):
    """The optional hook: an authenticator that wants to see how its requests were answered."""

    def observe_response(self, status: int | None, headers: Mapping[str, str]) -> None:
        """`status` is the HTTP status, or None when the request got no answer at all."""
        ...


class SecretSource:
    """One secret from a fixed value or from a file re-read when its mtime, size or inode change.

    `key` is the configuration key (e.g. "auth.secret_key"), used in error messages.
    `version` goes up whenever the value read differs from the previous one.
    `header`: the value is sent in (or signs) request headers, so text no header can carry
    is refused (`check_header_value`).
    """

    def __init__(
        self, key: str, value: str = "", path: Path | None = None, *, header: bool = False
    ) -> None:
        self.key = key
        self._header = header
        self._static = value
        self._file = FileValue(path, key=f"{key}_file") if path is not None else None
        self._last: str | None = None
        self.version = 0

    @property
    def configured(self) -> bool:
        """Whether a value or a file was given."""
        return bool(self._static) or self._file is not None

    def current(self) -> str:
        """The value now; CredentialsUnavailableError when the file is unreadable or empty, or
        (for a `header` value) holds text no request header can carry."""
        value = self._read() if self._file is not None else self._static
        if self._header:
            check_header_value(value, self._file.key if self._file is not None else self.key)
        if value != self._last:
            self._last = value
            self.version += 1
        return value

    def _read(self) -> str:
        assert self._file is not None
        try:
            return self._file.read()
        except (OSError, ValueError) as error:
            raise CredentialsUnavailableError(str(error)) from None

    def forget(self) -> None:
        """Read the file again on the next `current()`, changed or not."""
        if self._file is not None:
            self._file.forget()

    def redact(self, text: str) -> str:
        """`text` with the last value read replaced by REDACTED."""
        secret = self._last or self._static
        return redact_text(text, [secret])


def check_header_value(value: str, source: str) -> None:
    """CredentialsUnavailableError naming `source` (never the value) when `value` holds a
    control character (below 0x20, or 0x7f) or a lone surrogate: no HTTP request could carry
    it, so every call would otherwise fail inside the HTTP library."""
    if _CONTROL.search(value):
        raise CredentialsUnavailableError(f"{source} holds a control character")
    if has_surrogates(value):
        raise CredentialsUnavailableError(f"{source} holds a character that is not valid text")


class TokenAuthenticator:
    """`X-Auth-Token` from a fixed value or from a file that is re-read when it changes."""

    def __init__(self, *, token: str = "", token_file: Path | None = None) -> None:
        if not token and token_file is None:
            raise ValueError("a token or a token file is required")
        self._token = SecretSource("auth.token", token, token_file, header=True)

    def current_token(self) -> str:
        """The token to send now; re-reads the file when its mtime, size or inode changed."""
        return self._token.current()

    async def apply(self, method: str, url: URL, headers: dict[str, str], body: bytes) -> None:
        """Set `X-Auth-Token`."""
        headers["X-Auth-Token"] = self.current_token()

    async def reload(self) -> None:
        """Drop the cached file content so the next request reads the file again."""
        self._token.forget()

    def redact(self, text: str) -> str:
        """`text` without the token."""
        return self._token.redact(text)
