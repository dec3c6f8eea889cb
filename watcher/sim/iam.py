"""The simulated IAM token endpoint: `POST /v3/auth/tokens` with the password method.

Documented by IAM's API reference: the request body shape, the token in `X-Subject-Token`, the
`token.{expires_at, issued_at, methods, project, roles, user, catalog}` body, `nocatalog`.
Inference (not documented, chosen to look like Keystone, which IAM derives from): 201 as the
success status (the doc copy we have says 201; clients should accept any 2xx), the error body
`{"error": {"code": N, "title": …, "message": …}}`, the message "The username or password is
wrong." for a bad user or password, 400 for a malformed body or a project scope other than the
simulator's project ID, and 503 with a gateway-style body while `iam_unavailable` is set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any, Protocol

from aiohttp import web

from watcher.clock import Clock
from watcher.sim.auth import SimAuth, iam_time
from watcher.sim.bodies import JSON_CONTENT_TYPE

TOKENS_PATH = "/v3/auth/tokens"
BAD_LOGIN_MESSAGE = "The username or password is wrong."


@dataclass(slots=True)
class IamRequest:
    """One token request: when, for whom (as named in the body), and the answer's status."""

    wall: float
    domain: str | None
    user: str | None
    status: int


def _error(status: int, title: str, message: str) -> web.Response:
    body = {"error": {"code": status, "title": title, "message": message}}
    return web.json_response(body, status=status, content_type="application/json")


def _credentials(body: Any) -> tuple[str, str, str, str] | str:
    """(domain, user, password, project id) from the request body, or what is wrong with it."""
    try:
        auth = body["auth"]
        identity = auth["identity"]
        if "password" not in identity["methods"]:
            return "Only the password method is supported by this simulator."
        user = identity["password"]["user"]
        domain, name, password = user["domain"]["name"], user["name"], user["password"]
        project_id = auth["scope"]["project"]["id"]
    except (KeyError, TypeError):
        return "The request body is not a valid password-method token request."
    values = (domain, name, password, project_id)
    if not all(isinstance(value, str) for value in values):
        return "The request body is not a valid password-method token request."
    return values


class IamBackend(Protocol):
    """What the token endpoint needs from the simulator (`watcher.sim.core.SimCore`)."""

    @property
    def clock(self) -> Clock:
        """The simulator's clock: token times and the `Date` header."""
        ...

    @property
    def auth(self) -> SimAuth:
        """Users, issued tokens, token lifetime and the outage switch."""
        ...

    @property
    def project_id(self) -> str:
        """The one project a token can be scoped to."""
        ...

    def new_request_id(self) -> str:
        """A fresh `X-Request-Id` value."""
        ...


class IamApi:
    """The token endpoint over a simulator's `auth` (users, lifetime, outage switch)."""

    def __init__(self, sim: IamBackend) -> None:
        self.sim = sim
        self.requests: list[IamRequest] = []

    async def create_token(self, request: web.Request) -> web.StreamResponse:
        """POST /v3/auth/tokens → 201 + X-Subject-Token, or a Keystone-style error."""
        response, domain, user = await self._answer(request)
        self.requests.append(IamRequest(self.sim.clock.wall(), domain, user, response.status))
        response.headers["Date"] = http_date(self.sim.clock.wall())
        response.headers["X-Request-Id"] = self.sim.new_request_id()
        return response

    async def _answer(self, request: web.Request) -> tuple[web.Response, str | None, str | None]:
        auth = self.sim.auth
        if auth.iam_unavailable:
            body = {"error_code": "APIGW.0202", "error_msg": "Backend unavailable."}
            return web.json_response(body, status=503), None, None
        try:
            body = json.loads(await request.read())
        except ValueError:
            return _error(400, "Bad Request", "The request body is not JSON."), None, None
        parsed = _credentials(body)
        if isinstance(parsed, str):
            return _error(400, "Bad Request", parsed), None, None
        domain, name, password, project_id = parsed
        token = auth.issue(domain, name, password, project_id)
        if token is None:
            return _error(401, "Unauthorized", BAD_LOGIN_MESSAGE), domain, name
        if project_id != self.sim.project_id:
            auth.issued.pop(token)
            message = f"The project ID {project_id!r} is invalid."
            return _error(400, "Bad Request", message), domain, name
        issued = auth.issued[token]
        answer = self._issued(token, issued.issued_wall, issued.expires_wall, domain, name)
        return answer, domain, name

    def _issued(
        self, token: str, issued: float, expires: float, domain: str, name: str
    ) -> web.Response:
        domain_ref = {"id": f"dom-{domain}", "name": domain}
        body = {
            "token": {
                "expires_at": iam_time(expires),
                "issued_at": iam_time(issued),
                "methods": ["password"],
                "project": {"id": self.sim.project_id, "name": "sim-region", "domain": domain_ref},
                "user": {
                    "id": f"usr-{name}",
                    "name": name,
                    "domain": domain_ref,
                    "password_expires_at": "",
                },
                "roles": [{"id": "0", "name": "op_service"}],
                "catalog": [],
            }
        }
        data = json.dumps(body).encode()
        return web.Response(
            status=201,
            body=data,
            headers={"Content-Type": JSON_CONTENT_TYPE, "X-Subject-Token": token},
        )


def http_date(epoch: float) -> str:
    """An HTTP `Date` value for a Unix time (the simulator's clock, not the system's)."""
    return formatdate(epoch, usegmt=True)
