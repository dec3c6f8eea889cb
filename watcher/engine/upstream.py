"""Whether the CBR API is failing, and whether its credentials are: the engine's memory of
upstream trouble, logged when a streak starts and when it ends."""

from __future__ import annotations

import structlog

from watcher.cbr.errors import AuthError, CbrError
from watcher.clock import Clock

log = structlog.get_logger("watcher.engine")


class UpstreamState:
    """Streaks of failed requests and of 401s (monotonic times), for health and exit codes."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.failing_since: float | None = None
        """Monotonic time the current streak of failed requests began, or None."""
        self._failures = 0
        self.auth_failing_since: float | None = None
        """Monotonic time of the first 401 of the current streak; None once a poll succeeds."""
        self.last_auth_error: CbrError | None = None
        """The latest 401 CBR answered (kept after recovery, for messages)."""
        self.auth_failed_after_reload = False
        """Whether, in the current streak, a 401 came back on the retry made right after
        reloading the credentials: they are rejected, not merely stale."""

    def failed(self, error: CbrError) -> None:
        """A request failed (anything but a 404 about the task itself)."""
        if self.failing_since is None:
            self.failing_since = self._clock.monotonic()
            self._failures = 0
            log.warning(
                "upstream.failing",
                kind=error.kind,
                code=error.code_label,
                error_code=error.error_code,
                error=error.message,
            )
        self._failures += 1

    def auth_failed(self, error: AuthError, *, after_reload: bool) -> None:
        """CBR answered 401; `after_reload`: on the retry right after reloading credentials."""
        self.last_auth_error = error
        if self.auth_failing_since is None:
            self.auth_failing_since = self._clock.monotonic()
        if after_reload:
            self.auth_failed_after_reload = True

    def ok(self) -> None:
        """A request succeeded: any streak is over."""
        self.auth_failing_since = None
        self.auth_failed_after_reload = False
        if self.failing_since is not None:
            log.info(
                "upstream.recovered",
                failing_seconds=round(self._clock.monotonic() - self.failing_since, 3),
                failed_requests=self._failures,
            )
            self.failing_since = None
