"""HTTP details shared by every outgoing client: User-Agent, TLS setting, Retry-After, dates.

`parse_retry_after` is total: whatever a server (or something in between) puts in the header,
the answer is None (absent or unreadable) or a number of seconds in [0, RETRY_AFTER_CAP].
It reads delta-seconds (ASCII digits, a fraction tolerated) and the three HTTP-date forms of
RFC 9110 §5.6.7 (IMF-fixdate, RFC 850, asctime); a `-0000` or missing zone means UTC.
"""

from __future__ import annotations

import re
import ssl
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_tz

import structlog

from watcher import __version__
from watcher.safetext import clean

log = structlog.get_logger("watcher.http")

USER_AGENT = f"cbr-watcher/{__version__}"
RETRY_AFTER_CAP = 3600.0
"""The longest wait a Retry-After can impose: beyond an hour it is a bug, not advice."""
_RAW_SHOWN = 64
_DELTA_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")
# More digits than this is certainly over the cap; int() of a huge string is slow or refused.
_MAX_DELTA_DIGITS = 12
_clamp_warned = False


def make_ssl_context(*, verify: bool, ca_file: str = "") -> ssl.SSLContext | bool:
    """The TLS setting for aiohttp: a context with an extra CA, the default, or no checks."""
    if not verify:
        return False
    if ca_file:
        return ssl.create_default_context(cafile=ca_file)
    return True


def parse_http_date(value: object) -> float | None:
    """Epoch seconds of an HTTP-date in any of its three forms; None when it is not one.

    A `-0000` or missing zone is UTC. Dates outside what `datetime` can hold are None.
    """
    if not isinstance(value, str) or not value or len(value) > 200:
        return None
    try:
        parts = parsedate_tz(value.strip())
        if parts is None:
            return None
        year, month, day, hour, minute, second = parts[:6]
        moment = datetime(year, month, day, hour, minute, min(second, 59), tzinfo=UTC)
        moment -= timedelta(seconds=parts[9] or 0)
        return moment.timestamp()
    except (ValueError, OverflowError, TypeError, IndexError):
        return None


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Retry-After in seconds (0 to RETRY_AFTER_CAP), None when absent or unreadable.

    `now` is the wall clock (epoch seconds) an HTTP-date is measured from; a date in the past
    means 0. A longer wait is clamped to the cap, with one `http.retry_after_clamped` warning
    per process.
    """
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text:
        return None
    if _DELTA_SECONDS.fullmatch(text):
        whole = text.partition(".")[0].lstrip("0")
        seconds = float(text) if len(whole) <= _MAX_DELTA_DIGITS else float("inf")
    else:
        when = parse_http_date(text)
        if when is None:
            return None
        seconds = max(0.0, when - now)
    if not seconds <= RETRY_AFTER_CAP:
        _warn_clamped(value)
        return RETRY_AFTER_CAP
    return seconds


def _warn_clamped(raw: str) -> None:
    global _clamp_warned
    if _clamp_warned:
        return
    _clamp_warned = True
    log.warning(
        "http.retry_after_clamped",
        retry_after=clean(raw[:_RAW_SHOWN]),
        cap_seconds=RETRY_AFTER_CAP,
        detail="a server asked to wait longer than the cap; waiting the cap instead "
        "(logged once per process)",
    )
