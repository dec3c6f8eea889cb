"""The simulator's JSON answers, and the control API's add-from-body POSTs."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TypeVar

from aiohttp import web

from watcher.sim import bodies

_Spec = TypeVar("_Spec")


def json_response(status: int, body: object, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response with CBR's exact content type."""
    data = json.dumps(body, ensure_ascii=False).encode()
    return raw_response(status, data, headers)


def raw_response(status: int, data: bytes, headers: dict[str, str] | None = None) -> web.Response:
    """A response whose body is sent byte for byte, labelled as CBR's JSON."""
    return web.Response(
        status=status,
        body=data,
        headers={"Content-Type": bodies.JSON_CONTENT_TYPE, **(headers or {})},
    )


async def add_from_body(
    request: web.Request,
    parse: Callable[[object, str], _Spec],
    add: Callable[[list[_Spec]], list[str]],
    kind: str,
    plural: str,
) -> web.StreamResponse:
    """A control POST: one object or a list, each parsed by `parse` (named `kind`, or
    `plural[i]` in a list, in errors), then `add`ed → 201 {"ids": [...]}, or a 400."""
    try:
        body = await request.json()
    except ValueError:
        return json_response(400, {"error": "body is not valid JSON"})
    items = body if isinstance(body, list) else [body]
    try:
        specs = [
            parse(item, f"{plural}[{position}]" if isinstance(body, list) else kind)
            for position, item in enumerate(items)
        ]
        ids = add(specs)
    except ValueError as error:
        return json_response(400, {"error": str(error)})
    return json_response(201, {"ids": ids})
