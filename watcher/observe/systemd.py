"""systemd integration: the sd_notify protocol in plain Python, and the daemon's notifier.

The protocol is one `AF_UNIX` datagram of newline-separated `KEY=VALUE` lines sent to
`$NOTIFY_SOCKET`, a file-system path or `@name` for the Linux abstract namespace. systemd calls
it stable and suggests reimplementing it rather than linking libsystemd. Outside systemd the
variable is unset and everything here is a no-op.

Under `Type=notify` + `WatchdogSec=` the daemon sends `READY=1` once configuration, state and
listeners are ready, a short `STATUS=` line when the summary changes, `WATCHDOG=1` every
`WATCHDOG_USEC / 2` but only while the scheduler loop is turning, and `STOPPING=1` on SIGTERM.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import structlog

from watcher.clock import Clock
from watcher.engine.engine import Engine

log = structlog.get_logger("watcher.systemd")

WATCHDOG_STALE_AFTER = 10.0
"""No `WATCHDOG=1` once the scheduler loop last turned longer ago than this (seconds).

The loop turns at least once a second, so 10 s means it is stuck; systemd then restarts the
service when `WatchdogSec=` runs out."""

STATUS_MIN_INTERVAL = 1.0
"""A changed `STATUS=` is sent at most this often (seconds)."""

TICK_MAX = 1.0
"""The notifier looks at the engine at least this often (seconds)."""


def notify(state: str, *, environ: Mapping[str, str] | None = None) -> bool:
    """Send `state` (e.g. ``"READY=1\\nSTATUS=watching 3 tasks"``) to `$NOTIFY_SOCKET`.

    Returns False when the variable is unset, names an address family other than a path or an
    abstract socket (`vsock:` is not supported), or the send failed. Never blocks: a full
    socket queue is a failed send, not a stalled event loop.
    """
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return False
    if address[0] == "@":
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.sendto(state.encode(), address)
    except OSError:
        return False
    return True


def watchdog_interval(
    environ: Mapping[str, str] | None = None, *, pid: int | None = None
) -> float | None:
    """Seconds between `WATCHDOG=1` pings (half of `$WATCHDOG_USEC`), or None when systemd
    expects none: the variable is unset or invalid, or `$WATCHDOG_PID` names another process."""
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    watchdog_pid = env.get("WATCHDOG_PID", "")
    if watchdog_pid:
        try:
            if int(watchdog_pid) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 2_000_000


class SystemdNotifier:
    """Tells systemd how the daemon is doing: READY, STATUS, WATCHDOG and STOPPING.

    The environment is read once, at construction. `run` is the background loop; `tick` is
    one step of it, exposed so a test can drive it on a fake clock.
    """

    def __init__(
        self,
        engine: Engine,
        clock: Clock,
        *,
        environ: Mapping[str, str] | None = None,
        pid: int | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        self._environ = {"NOTIFY_SOCKET": env.get("NOTIFY_SOCKET", "")}
        self._engine = engine
        self._clock = clock
        self.enabled = bool(self._environ.get("NOTIFY_SOCKET"))
        self.watchdog_interval = watchdog_interval(env, pid=pid) if self.enabled else None
        self._status: str | None = None
        self._status_sent_at = float("-inf")
        self._failing_label: tuple[float, str] | None = None
        self._stopping = False
        self._withholding = False
        self._send_failed = False

    @property
    def interval(self) -> float:
        """Seconds between two ticks: the watchdog interval, but at most `TICK_MAX`."""
        if self.watchdog_interval is None:
            return TICK_MAX
        return min(TICK_MAX, self.watchdog_interval)

    def status_text(self) -> str:
        """The one-line summary `systemctl status` shows, e.g.
        ``watching 3 tasks, 5 finished; upstream failing since 12:03:04Z``."""
        engine = self._engine
        watching = engine.active_count()
        finished = sum(1 for task in engine.tasks.values() if task.ended)
        noun = "task" if watching == 1 else "tasks"
        text = f"watching {watching} {noun}, {finished} finished"
        since = engine.upstream_failing_since
        if since is None:
            return f"{text}; upstream OK"
        return f"{text}; upstream failing since {self._failing_since_label(since)}"

    def _failing_since_label(self, since: float) -> str:
        # Computed once per failing episode, so the text (and STATUS=) does not flicker.
        if self._failing_label is None or self._failing_label[0] != since:
            wall = self._clock.wall() - (self._clock.monotonic() - since)
            self._failing_label = (since, time.strftime("%H:%M:%SZ", time.gmtime(wall)))
        return self._failing_label[1]

    def ready(self) -> None:
        """`READY=1` with the first status line; call once everything is ready to run."""
        if not self.enabled:
            return
        status = self.status_text()
        self._send(f"READY=1\nSTATUS={status}")
        self._status, self._status_sent_at = status, self._clock.monotonic()
        log.info("systemd.ready", watchdog_interval=self.watchdog_interval)

    def tick(self) -> None:
        """One step: `WATCHDOG=1` if the scheduler loop is turning, `STATUS=` if it changed."""
        if not self.enabled:
            return
        now = self._clock.monotonic()
        lines: list[str] = []
        if self.watchdog_interval is not None:
            stalled_for = now - self._engine.last_turn
            if stalled_for < WATCHDOG_STALE_AFTER:
                lines.append("WATCHDOG=1")
                self._withholding = False
            elif not self._withholding:
                self._withholding = True
                log.error("systemd.watchdog_withheld", loop_stalled_seconds=round(stalled_for, 1))
        if not self._stopping and now - self._status_sent_at >= STATUS_MIN_INTERVAL:
            status = self.status_text()
            if status != self._status:
                lines.append(f"STATUS={status}")
                self._status, self._status_sent_at = status, now
        if lines:
            self._send("\n".join(lines))

    async def run(self) -> None:
        """Tick every `interval` seconds of the clock until cancelled; returns at once when not
        started by systemd."""
        if not self.enabled:
            return
        while True:
            await self._clock.sleep(self.interval)
            self.tick()

    def stopping(self) -> None:
        """`STOPPING=1` (once): the daemon has begun its graceful stop."""
        if not self.enabled or self._stopping:
            return
        self._stopping = True
        self._send("STOPPING=1\nSTATUS=stopping")

    def _send(self, state: str) -> None:
        if not notify(state, environ=self._environ) and not self._send_failed:
            self._send_failed = True
            log.warning("systemd.notify_failed", notify_socket=self._environ["NOTIFY_SOCKET"])
