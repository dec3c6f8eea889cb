"""Who may call the simulated API: the gateway's three ways in, behind one `check`.

- fixed `X-Auth-Token` values (`tokens`, replaceable for rotation tests);
- tokens the simulated IAM issued (`watcher.sim.iam`) to configured users, accepted until they
  expire on the simulator's clock (then "token expires, expires_at: …");
- `SDK-HMAC-SHA256` signatures by configured access keys (`watcher.sim.signature`), with
  `X-Security-Token` required for temporary keys, and the documented lock: more than five
  failures in a row lock the key for five minutes ("AK access failed to reach the
  limit,forbidden").
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from watcher.clock import Clock
from watcher.config.durations import parse_duration
from watcher.sim.signature import SignedCall, parse_authorization, verify

DEFAULT_TOKEN_LIFETIME = 24 * 3600.0
AK_LOCK_AFTER = 5
"""Locked once the failures in a row are *more than* this many (the documented wording)."""
AK_LOCK_SECONDS = 300.0
AK_LOCKED = "AK access failed to reach the limit,forbidden"
UPDATE_KEYS = frozenset({"tokens", "users", "access_keys", "token_lifetime", "iam_unavailable"})


@dataclass(frozen=True)
class User:
    """An IAM user the simulated IAM issues tokens to."""

    domain: str
    name: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class AccessKey:
    """An access key; `security_token` set makes it temporary (the header is then required)."""

    access_key: str
    secret_key: str = field(repr=False)
    security_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class IssuedToken:
    """A token from the simulated IAM."""

    user: User
    project_id: str
    issued_wall: float
    expires_wall: float


def iam_time(epoch: float) -> str:
    """IAM's timestamp spelling, e.g. `2020-01-04T09:05:22.701000Z`."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class TokenAuth:
    """A replaceable set of fixed accepted `X-Auth-Token` values."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._tokens = frozenset(tokens)

    def replace(self, tokens: Iterable[str]) -> None:
        """Accept exactly `tokens` from now on (token rotation)."""
        self._tokens = frozenset(tokens)

    @property
    def count(self) -> int:
        """How many tokens are accepted."""
        return len(self._tokens)

    def accepts(self, token: str) -> bool:
        """Whether `token` is one of them."""
        return token in self._tokens


class SimAuth:
    """Every credential the simulated gateway and IAM accept, and the check itself."""

    def __init__(
        self,
        clock: Clock,
        *,
        tokens: Iterable[str] = (),
        users: Iterable[User] = (),
        access_keys: Iterable[AccessKey] = (),
        token_lifetime: float = DEFAULT_TOKEN_LIFETIME,
    ) -> None:
        self.clock = clock
        self.tokens = TokenAuth(tokens)
        self.users: dict[tuple[str, str], User] = {}
        self.access_keys: dict[str, AccessKey] = {}
        self.set_users(users)
        self.set_access_keys(access_keys)
        self.token_lifetime = token_lifetime
        self.iam_unavailable = False
        """When True the simulated IAM answers 503 (an outage, for refresh tests)."""
        self.issued: dict[str, IssuedToken] = {}
        self.signature_failures: Counter[str] = Counter()
        """Signature failures per access key, in total."""
        self.ak_locks = 0
        """How many times an access key got locked."""
        self._streak: Counter[str] = Counter()
        self._locked_until: dict[str, float] = {}

    def set_users(self, users: Iterable[User]) -> None:
        """Replace the IAM users."""
        self.users = {(user.domain, user.name): user for user in users}

    def set_access_keys(self, keys: Iterable[AccessKey]) -> None:
        """Replace the access keys (an AK/SK rotation); locks are kept per access key."""
        self.access_keys = {key.access_key: key for key in keys}

    def update(self, body: object) -> dict[str, object]:
        """Apply a `PUT /_sim/auth` body: any of `tokens`, `users`, `access_keys`,
        `token_lifetime`, `iam_unavailable`. All or nothing; ValueError naming the bad key."""
        if not isinstance(body, Mapping) or not body or not set(body) <= UPDATE_KEYS:
            known = ", ".join(sorted(UPDATE_KEYS))
            raise ValueError(f'expected {{"tokens": ["<token>", ...]}} or other keys among {known}')
        tokens = body.get("tokens", [])
        if not isinstance(tokens, list) or not all(isinstance(t, str) and t for t in tokens):
            raise ValueError('tokens: expected {"tokens": ["<token>", ...]}')
        users = users_from(body["users"]) if "users" in body else None
        keys = access_keys_from(body["access_keys"]) if "access_keys" in body else None
        lifetime = token_lifetime_from(body["token_lifetime"]) if "token_lifetime" in body else None
        outage = body.get("iam_unavailable", False)
        if not isinstance(outage, bool):
            raise ValueError("iam_unavailable: expected true or false")
        answer: dict[str, object] = {}
        if "tokens" in body:
            self.tokens.replace(tokens)
            answer["tokens"] = len(tokens)
        if users is not None:
            self.set_users(users)
            answer["users"] = len(users)
        if keys is not None:
            self.set_access_keys(keys)
            answer["access_keys"] = len(keys)
        if lifetime is not None:
            self.token_lifetime = answer["token_lifetime"] = lifetime
        if "iam_unavailable" in body:
            self.iam_unavailable = answer["iam_unavailable"] = outage
        return answer

    # -- IAM -------------------------------------------------------------------------------

    def issue(self, domain: str, name: str, password: str, project_id: str) -> str | None:
        """A new token for a user whose password matches, else None."""
        user = self.users.get((domain, name))
        if user is None or not secrets.compare_digest(user.password, password):
            return None
        now = self.clock.wall()
        token = "MIIsim" + secrets.token_urlsafe(48)
        self.issued[token] = IssuedToken(user, project_id, now, now + self.token_lifetime)
        return token

    # -- the gateway ------------------------------------------------------------------------

    def check(self, call: SignedCall) -> str | None:
        """None when the request may pass, else the `APIGW.0301` reason for the 401."""
        if call.headers.get("Authorization", "").startswith("SDK-HMAC-SHA256"):
            return self._check_signature(call)
        token = call.headers.get("X-Auth-Token")
        if not token:
            return "x-auth-token not found"
        if self.tokens.accepts(token):
            return None
        issued = self.issued.get(token)
        if issued is None:
            return "decrypt token fail"
        if self.clock.wall() >= issued.expires_wall:
            return f"token expires, expires_at: {iam_time(issued.expires_wall)}"
        return None

    def _check_signature(self, call: SignedCall) -> str | None:
        now = self.clock.wall()
        secrets_by_key = {ak: key.secret_key for ak, key in self.access_keys.items()}
        verdict = verify(call, secrets_by_key, now)
        ak = verdict.access_key
        if ak is not None and self._locked_until.get(ak, 0.0) > self.clock.monotonic():
            return AK_LOCKED
        reason = verdict.reason
        if reason is None and ak is not None:
            reason = self._temporary_key_reason(self.access_keys[ak], call)
        if ak is None:
            return reason
        if reason is None:
            self._streak[ak] = 0
            return None
        self.signature_failures[ak] += 1
        self._streak[ak] += 1
        if self._streak[ak] > AK_LOCK_AFTER:
            self._streak[ak] = 0
            self._locked_until[ak] = self.clock.monotonic() + AK_LOCK_SECONDS
            self.ak_locks += 1
        return reason

    @staticmethod
    def _temporary_key_reason(key: AccessKey, call: SignedCall) -> str | None:
        """A temporary key needs its security token, signed (inference: the exact wording)."""
        if key.security_token is None:
            return None
        sent = call.headers.get("X-Security-Token")
        parsed = parse_authorization(call.headers.get("Authorization", ""))
        if sent != key.security_token or parsed is None or "x-security-token" not in parsed[1]:
            return "verify aksk signature fail, invalid or unsigned x-security-token"
        return None


# -- configuration from scenario files and the control API ----------------------------------


def users_from(value: object, where: str = "users") -> list[User]:
    """Users from `[{"domain": …, "user": …, "password": …}, …]`; ValueError naming the key."""
    return [
        User(item["domain"], item["user"], item["password"])
        for item in _tables(value, where, ("domain", "user", "password"), ())
    ]


def access_keys_from(value: object, where: str = "access_keys") -> list[AccessKey]:
    """Keys from `[{"access_key": …, "secret_key": …, "security_token": …?}, …]`."""
    return [
        AccessKey(item["access_key"], item["secret_key"], item.get("security_token") or None)
        for item in _tables(value, where, ("access_key", "secret_key"), ("security_token",))
    ]


def token_lifetime_from(value: object, where: str = "token_lifetime") -> float:
    """A positive duration ("10m", 600, …)."""
    try:
        seconds = parse_duration(value)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    if seconds <= 0:
        raise ValueError(f"{where}: expected a duration greater than zero")
    return seconds


def _tables(
    value: object, where: str, required: tuple[str, ...], optional: tuple[str, ...]
) -> list[Mapping[str, Any]]:
    if not isinstance(value, list):
        raise ValueError(f"{where}: expected a list of tables")
    for index, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise ValueError(f"{where}[{index}]: expected a table")
        for key in item:
            if key not in required + optional:
                known = ", ".join(required + optional)
                raise ValueError(f"{where}[{index}].{key}: unknown key (known: {known})")
        for key in required:
            if not isinstance(item.get(key), str) or not item[key]:
                raise ValueError(f"{where}[{index}].{key}: expected a non-empty string")
        for key in optional:
            if key in item and not isinstance(item[key], str):
                raise ValueError(f"{where}[{index}].{key}: expected a string")
    return list(value)
