"""Every way a CBR call can fail, reduced to the five kinds the engine acts on."""

from __future__ import annotations


class CbrError(Exception):
    """A failed CBR call. `kind` is what the engine branches on; the rest is for logs."""

    kind = "error"

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        error_code: str | None = None,
        request_id: str | None = None,
        label: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        self.error_code = error_code
        self.request_id = request_id
        self._label = label

    @property
    def code_label(self) -> str:
        """A short, bounded label for metrics: "timeout", "malformed", the HTTP status, …"""
        if self._label:
            return self._label
        return str(self.http_status) if self.http_status is not None else self.kind


class AuthError(CbrError):
    """401: the token is missing, wrong or expired, or a signature was rejected."""

    kind = "auth"


class NotFoundError(CbrError):
    """404 BackupService.6500: CBR does not know this operation log (yet, or at all)."""

    kind = "not_found"


class ThrottledError(CbrError):
    """429 APIGW.0308: over the API rate limit. `retry_after` is the header, when present."""

    kind = "throttled"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        http_status: int | None = 429,
        error_code: str | None = None,
        request_id: str | None = None,
        label: str | None = None,
    ) -> None:
        super().__init__(
            message,
            http_status=http_status,
            error_code=error_code,
            request_id=request_id,
            label=label,
        )
        self.retry_after = retry_after


class TransientError(CbrError):
    """Worth retrying: 5xx, timeouts, connection resets, a body that is not the documented JSON."""

    kind = "transient"


class FatalError(CbrError):
    """Retrying the same request will not help without a human: 403, 400 and other 4xx."""

    kind = "fatal"


class InternalError(CbrError):
    """Something unexpected while making or reading a call (a bug, or input nobody foresaw).

    Never fatal to a watch: the engine counts it, logs it once per streak and retries it with
    the error backoff.
    """

    kind = "internal"

    def __init__(self, message: str, *, label: str = "internal") -> None:
        super().__init__(message, label=label)

    @classmethod
    def wrap(cls, error: BaseException) -> InternalError:
        """An InternalError describing `error` by its type (no traceback, bounded length)."""
        text = str(error)[:200]
        return cls(f"{type(error).__name__}: {text}" if text else type(error).__name__)
