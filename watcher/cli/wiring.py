"""Building the parts `run` and `wait` share from configuration: authenticator, client,
schedule policy, engine and the webhook outbox."""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path

from watcher.cbr.aksk import AkSkAuthenticator
from watcher.cbr.auth import Authenticator, TokenAuthenticator
from watcher.cbr.client import CbrClient, RequestObserver, make_ssl_context
from watcher.cbr.iam import PasswordAuthenticator, TokenListener
from watcher.clock import Clock, RealClock
from watcher.config import Settings, WebhookSettings
from watcher.delivery.outbox import Outbox, Route
from watcher.engine import schedule
from watcher.engine.engine import (
    Engine,
    TaskForgetter,
    TaskRecorder,
    discard_forgets,
    discard_records,
)
from watcher.engine.events import EventSink, discard_events


def build_authenticator(
    settings: Settings, clock: Clock | None = None, *, on_token: TokenListener | None = None
) -> Authenticator:
    """The authenticator `auth.method` asks for. `on_token` (password method only) is called
    with each new token's expiry, for the token-expiry gauge."""
    auth, cbr = settings.auth, settings.cbr
    clock = clock or RealClock()

    def path(value: str) -> Path | None:
        return Path(value) if value else None

    if auth.method == "token":
        return TokenAuthenticator(
            token=auth.token.get_secret_value(), token_file=path(auth.token_file)
        )
    if auth.method == "aksk":
        return AkSkAuthenticator(
            access_key=auth.access_key.get_secret_value(),
            secret_key=auth.secret_key.get_secret_value(),
            secret_key_file=path(auth.secret_key_file),
            security_token=auth.security_token.get_secret_value(),
            security_token_file=path(auth.security_token_file),
            project_id=cbr.project_id,
            clock=clock,
        )
    return PasswordAuthenticator(
        iam_endpoint=settings.effective_iam_endpoint,
        domain_name=auth.domain_name,
        user_name=auth.user_name,
        password=auth.password.get_secret_value(),
        password_file=path(auth.password_file),
        project_id=cbr.project_id,
        clock=clock,
        request_timeout=cbr.request_timeout,
        ssl_setting=make_ssl_context(verify=cbr.verify_tls, ca_file=cbr.ca_file),
        on_token=on_token,
    )


def build_policy(settings: Settings) -> schedule.Policy:
    """The schedule policy from `[watch]`."""
    watch = settings.watch
    return schedule.Policy(
        interval_min=watch.poll_interval_min,
        interval_max=watch.poll_interval_max,
        deadline=watch.deadline,
        not_found_grace=watch.not_found_grace,
        progress_interval=watch.progress_interval,
        list_interval=watch.list_interval,
    )


def build_engine(
    settings: Settings,
    client: CbrClient,
    clock: Clock,
    *,
    on_event: EventSink = discard_events,
    record: TaskRecorder = discard_records,
    forget: TaskForgetter = discard_forgets,
    rng: random.Random | None = None,
) -> Engine:
    """An engine configured from `[watch]` and `[metrics]` (tasks are added by the caller)."""
    watch = settings.watch
    engine = Engine(
        client=client,
        clock=clock,
        policy=build_policy(settings),
        max_concurrency=watch.max_concurrency,
        max_requests_per_second=watch.max_requests_per_second,
        on_event=on_event,
        record=record,
        forget=forget,
        exit_when_done=watch.exit_when_done,
        retention=settings.metrics.retention,
        rng=rng,
    )
    return engine


def build_client(
    settings: Settings,
    clock: Clock,
    *,
    observe: RequestObserver | None = None,
    on_token: TokenListener | None = None,
) -> CbrClient:
    """A CBR client for the configured endpoint, project, TLS and credentials; `observe` sees
    every request (the metrics), `on_token` every new IAM token's expiry."""
    cbr = settings.cbr
    return CbrClient(
        endpoint=cbr.effective_endpoint,
        project_id=cbr.project_id,
        auth=build_authenticator(settings, clock, on_token=on_token),
        clock=clock,
        request_timeout=cbr.request_timeout,
        verify_tls=cbr.verify_tls,
        ca_file=cbr.ca_file,
        max_connections=settings.watch.max_concurrency,
        observe=observe,
    )


def build_outbox(receivers: Iterable[WebhookSettings], *, project_id: str) -> Outbox:
    """The outbox of the configured `[[webhooks]]`; `project_id` fills bodies whose CBR answer
    names none."""
    return Outbox(
        (Route(receiver.name, tuple(receiver.events)) for receiver in receivers),
        project_id=project_id,
    )
