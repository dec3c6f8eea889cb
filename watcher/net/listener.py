"""One aiohttp app on one `HOST:PORT`: the start-up every HTTP listener of the watcher shares.

The metrics server (`watcher.observe.server`), the task API
(`watcher.sources.task_api.handlers`), the simulator
(`watcher.sim.serving`) and the demo's webhook receiver (`watcher.delivery.receiver`) all serve
through `HttpListener`. It writes no log line and no access log: each caller logs its own
"listening" event, with whatever it needs to say about itself.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Final

from aiohttp import web

DEFAULT_SHUTDOWN_TIMEOUT = 60.0
"""aiohttp's own default: seconds open requests get when the listener closes."""

RunnerFactory = Callable[..., web.AppRunner]
"""Builds the runner from the app and AppRunner's keyword arguments (e.g. a subclass)."""


def http_url(host: str, port: int) -> str:
    """http://host:port, with an IPv6 host in brackets."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


LISTEN_RULE: Final = "expected HOST:PORT such as 0.0.0.0:9471 or [::1]:9471"
_LISTEN: Final = re.compile(r"(?:\[(?P<ipv6>[^\]]+)\]|(?P<host>[^\s:\[\]]*)):(?P<port>\d{1,5})")


def parse_listen(value: str, *, default_host: str = "") -> tuple[str, int]:
    """(host, port) from "HOST:PORT", "[IPv6]:PORT" (host without brackets) or ":PORT".

    The one default-host rule: an empty HOST means `default_host`, which is "" — every
    interface, as asyncio and aiohttp read it — unless the caller passes, say, "127.0.0.1".
    Raises ValueError (LISTEN_RULE) otherwise.
    """
    match = _LISTEN.fullmatch(value)
    if match is not None and int(match["port"]) <= 65535:
        if match["ipv6"] is None:
            return match["host"] or default_host, int(match["port"])
        try:
            return str(ipaddress.IPv6Address(match["ipv6"])), int(match["port"])
        except ValueError:
            pass
    raise ValueError(LISTEN_RULE)


def format_listen(host: str, port: int) -> str:
    """The `HOST:PORT` text for (host, port), the inverse of `parse_listen`."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _address_url(address: object) -> str:
    """http://host:port for a bound socket address (IPv4 or IPv6 tuple)."""
    assert isinstance(address, tuple)
    return http_url(str(address[0]), int(address[1]))


class HttpListener:
    """One aiohttp app on one `HOST:PORT` (see `parse_listen`).

    An empty HOST means `default_host` ("" is every interface); port 0 picks a free port,
    and `url`/`urls`/`port` tell what was bound once `start()` returned.
    """

    def __init__(
        self,
        app: web.Application,
        listen: str,
        *,
        name: str,
        default_host: str = "",
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
        handler_cancellation: bool = False,
        runner_factory: RunnerFactory = web.AppRunner,
    ) -> None:
        self.app = app
        self.listen = listen
        self.name = name
        self.default_host = default_host
        self.shutdown_timeout = shutdown_timeout
        self.handler_cancellation = handler_cancellation
        self._runner_factory = runner_factory
        self._runner: web.AppRunner | None = None
        self.urls: list[str] = []
        self._port: int | None = None

    @property
    def url(self) -> str:
        """The first bound address, e.g. http://127.0.0.1:9471."""
        if not self.urls:
            raise RuntimeError(f"{self.name} listener not started")
        return self.urls[0]

    @property
    def port(self) -> int:
        """The bound port (the one picked, when `listen` asked for port 0)."""
        if self._port is None:
            raise RuntimeError(f"{self.name} listener not started")
        return self._port

    async def start(self) -> None:
        """Bind and serve.

        ValueError for a bad `listen`; OSError (e.g. address in use) leaves nothing running.
        """
        host, port = parse_listen(self.listen, default_host=self.default_host)
        runner = self._runner_factory(
            self.app,
            access_log=None,
            shutdown_timeout=self.shutdown_timeout,
            handle_signals=False,
            handler_cancellation=self.handler_cancellation,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, host or None, port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.urls = [_address_url(address) for address in runner.addresses]
        self._port = int(runner.addresses[0][1])

    async def close(self) -> None:
        """Stop serving (open requests get `shutdown_timeout` seconds); safe to call twice."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
