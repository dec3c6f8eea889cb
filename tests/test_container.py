"""The container image (SPEC §12), built from deploy/Containerfile and run with podman.

The image is built once per session on a local Debian base (`bash .ci/container base` makes it
with debootstrap and keeps it in podman's store), then run the way docs/container.md tells
users to: read-only, as UID 65532, no capabilities, the state in a named volume. A simulator
runs in a second container from the same image and a webhook receiver in this process.
The sidecar example is played with `podman kube play`, changed only where podman cannot play
it (see `playable_sidecar`).

The quirks of the CI machines live here and in .ci/container, not in the user's instructions:
runc as the OCI runtime (crun refuses their cgroup layout), ulimits at or below the hard
limits (podman's defaults exceed them), host networking for builds and runs, and the host's CA
bundle as the pip_cert build secret (package downloads pass a TLS-intercepting proxy).
The sidecar's pod gets podman's own network, as a pod should.
Without podman (or without debootstrap and no cached base) the tests skip with the reason;
CI runs .ci/container first and turns skips into failures.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import time
import tomllib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml  # type: ignore[import-untyped]

from tests.daemon_process import DaemonProcess, die_with_parent, spawn, spawned
from tests.support import TestReceiver

ROOT = Path(__file__).resolve().parent.parent
CONTAINERFILE = ROOT / "deploy" / "Containerfile"
K8S = ROOT / "deploy" / "kubernetes"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
STATE_DIR = "/var/lib/cbr-watcher"
CONFIG_PATH = "/etc/cbr-watcher/cbr-watcher.toml"
SECRETS_DIR = "/run/secrets/cbr-watcher"
IMAGE_UID = 65532
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BUILD_TIMEOUT = 1800.0
"""Seconds for a cold build (a debootstrap, pip downloading every pinned dependency)."""
STOP_WITHIN = 10.0
"""SIGTERM to exit, in seconds (podman stop's SIGKILL comes after this)."""
DEADLINE = 60.0
"""Real seconds any awaited condition may take on a loaded CI machine."""

USER_RUN_FLAGS = (
    "--read-only",
    "--read-only-tmpfs=false",  # not even a /tmp: the state volume is all it may write
    "--cap-drop=all",
    "--security-opt=no-new-privileges",
)
"""How docs/container.md runs the image (plus a volume and the config)."""
HARNESS_RUN_FLAGS = ("--network=host",)
"""This machine's quirk: containers share the host's network (and find 127.0.0.1 ports)."""
TERMINAL_EVENTS = {"task.succeeded", "task.failed", "task.timed_out", "task.skipped"}


# ---- podman, the base and the image ------------------------------------------------------------


@dataclass(frozen=True)
class Podman:
    """The podman binary and the environment that carries the harness's containers.conf."""

    binary: str
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """`podman ARGS` to completion, from synchronous code (fixtures); output captured."""
        return subprocess.run(
            [self.binary, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            preexec_fn=die_with_parent,
        )

    def run_once(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`podman run --rm ARGS` under a name of its own, removed however the run ends."""
        name = unique("cbr-watcher-once")
        try:
            return self.run("run", "--rm", "--name", name, *args)
        finally:
            self.run("rm", "--force", "--ignore", "--time", "0", name)

    async def arun(self, *args: str, within: float = DEADLINE) -> tuple[int, str, str]:
        """`podman ARGS` to completion without blocking the event loop: (code, out, err)."""
        async with spawned(self.binary, *args, env=self.env, stdin=subprocess.DEVNULL) as proc:
            out, err = await asyncio.wait_for(proc.communicate(), within)
        assert proc.returncode is not None
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def _limit(kind: int, cap: int) -> int:
    hard = resource.getrlimit(kind)[1]
    return cap if hard == resource.RLIM_INFINITY else min(hard, cap)


@pytest.fixture(scope="session")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Podman:
    """podman with this machine's quirks in a containers.conf of its own: runc, and ulimits
    within the hard limits (also for `kube play`, which has no --ulimit)."""
    binary = shutil.which("podman")
    if binary is None:
        pytest.skip("podman is not installed (bash .ci/container installs it)")
    runtime = os.environ.get("CBR_WATCHER_PODMAN_RUNTIME", "runc")
    if shutil.which(runtime) is None:
        pytest.skip(
            f"the OCI runtime {runtime} is not installed (bash .ci/container installs runc)"
        )
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    nofile = _limit(resource.RLIMIT_NOFILE, 65536)
    nproc = _limit(resource.RLIMIT_NPROC, 4096)
    conf.write_text(
        "[containers]\n"
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
        "[engine]\n"
        f'runtime = "{runtime}"\n',
        encoding="utf-8",
    )
    return Podman(binary, {**os.environ, "CONTAINERS_CONF": str(conf)})


@pytest.fixture(scope="session")
def base_image(podman: Podman) -> str:
    """The local Python base (cached in podman's store under a tag naming its recipe)."""
    done = subprocess.run(
        ["bash", str(ROOT / ".ci" / "container"), "base"],
        env=podman.env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
        preexec_fn=die_with_parent,
    )
    if done.returncode == 3:
        pytest.skip(done.stderr.strip())
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def image(podman: Podman, base_image: str) -> Iterator[str]:
    """deploy/Containerfile built on the local base, under a tag of this session's own."""
    tag = f"localhost/cbr-watcher-test:{uuid.uuid4().hex[:12]}"
    args = ["build", "--network=host", "--file", str(CONTAINERFILE), "--tag", tag]
    args += ["--build-arg", f"PYTHON_IMAGE={base_image}"]
    cert = Path(os.environ.get("CBR_WATCHER_PIP_CERT", HOST_CA_BUNDLE))
    if cert.is_file():
        args += ["--secret", f"id=pip_cert,src={cert}"]
    built = podman.run(*args, str(ROOT), timeout=BUILD_TIMEOUT)
    try:
        assert built.returncode == 0, (built.stdout + built.stderr)[-6000:]
        yield tag
    finally:
        # The tag and its runtime layers go; the build stage's layers stay as the next cache.
        podman.run("rmi", "--ignore", tag)


# ---- containers as processes -------------------------------------------------------------------


def unique(prefix: str) -> str:
    """A container, volume or pod name no concurrent session uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class Container(DaemonProcess):
    """`podman run --rm` in the foreground: its JSON log lines are collected as they come (as
    for a daemon process), and leaving the block removes the container whatever happened."""

    def __init__(self, podman: Podman, name: str, *run_args: str) -> None:
        super().__init__(podman.env)
        self.podman = podman
        self.name = name
        self.run_args = run_args

    async def start(self) -> None:
        """Start the container, attached."""
        self.proc = await spawn(
            self.podman.binary,
            "run",
            "--rm",
            "--name",
            self.name,
            *self.run_args,
            env=self.env,
            stdin=subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self._readers = [
            asyncio.create_task(self._read_lines(self.proc.stdout)),
            asyncio.create_task(self._read_stderr(self.proc.stderr)),
        ]

    async def close(self) -> None:
        """End the client and remove the container, in every outcome."""
        try:
            await super().close()
        finally:
            await self.podman.arun("rm", "--force", "--ignore", "--time", "0", self.name)

    async def exec(self, *argv: str) -> tuple[int, str, str]:
        """`podman exec` in the running container."""
        return await self.podman.arun("exec", self.name, *argv)

    async def podman_stop(self) -> tuple[int, float]:
        """`podman stop` (the image's STOPSIGNAL, SIGKILL after STOP_WITHIN seconds): the exit
        code and the seconds from the stop request to the exit."""
        assert self.proc is not None
        started = time.monotonic()
        code, _, err = await self.podman.arun("stop", "--time", f"{STOP_WITHIN:g}", self.name)
        assert code == 0, err
        exit_code = await asyncio.wait_for(self.proc.wait(), DEADLINE)
        elapsed = time.monotonic() - started
        await self._finish_reading()
        return exit_code, elapsed


async def wait_until(
    condition: Callable[[], Awaitable[bool]], what: str, *, within: float = DEADLINE
) -> None:
    """Await `condition` every 50 ms until it holds; fail after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        if await condition():
            return
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {within:g} s waiting for {what}")
        await asyncio.sleep(0.05)


async def get(url: str) -> tuple[int, str]:
    """GET `url`: (status, body); (0, error) when nothing answers."""
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response,
        ):
            return response.status, await response.text()
    except (aiohttp.ClientError, TimeoutError) as error:
        return 0, repr(error)


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---- the image as built ------------------------------------------------------------------------


def test_image_runs_its_version_read_only_as_65532_with_its_labels(
    podman: Podman, image: str
) -> None:
    """`--version` answers with pyproject's version; the OCI labels, user, entrypoint, command,
    state volume, port and stop signal are what SPEC §12 and the docs say."""
    ran = podman.run_once(*USER_RUN_FLAGS, *HARNESS_RUN_FLAGS, image, "--version")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == f"cbr-watcher {VERSION}"
    inspected = podman.run("image", "inspect", image)
    assert inspected.returncode == 0, inspected.stderr
    (info,) = json.loads(inspected.stdout)
    config = info["Config"]
    assert config["Labels"]["org.opencontainers.image.version"] == VERSION
    assert config["Labels"]["org.opencontainers.image.title"] == "cbr-watcher"
    assert config["User"] == f"{IMAGE_UID}:{IMAGE_UID}"
    assert config["Entrypoint"] == ["cbr-watcher"]
    assert config["Cmd"] == ["run"]
    assert STATE_DIR in config["Volumes"]
    assert "9471/tcp" in config["ExposedPorts"]
    assert config["StopSignal"] in {"SIGTERM", "15"}
    assert f"STATE_DIRECTORY={STATE_DIR}" in config["Env"]


def test_check_config_with_a_bad_key_exits_78_in_the_container(
    podman: Podman, image: str, tmp_path: Path
) -> None:
    """A configuration error is exit 78 and one line naming the key, inside the image too."""
    config = tmp_path / "cbr-watcher.toml"
    config.write_text('[watch]\npoll_interval_min = "5s"\nbogus = 1\n', encoding="utf-8")
    ran = podman.run_once(
        *USER_RUN_FLAGS, *HARNESS_RUN_FLAGS,
        "--volume", f"{config}:{CONFIG_PATH}:ro",
        image, "check-config", "--config", CONFIG_PATH,
    )  # fmt: skip
    assert ran.returncode == 78, ran.stdout + ran.stderr
    assert "watch.bogus" in ran.stderr
    assert len(ran.stderr.strip().splitlines()) == 1, ran.stderr


# ---- the daemon in the image, against a simulator in another ------------------------------------

SIM_TOKEN = "container-test-token"
SCENARIO = f"""
seed = 3
tokens = ["{SIM_TOKEN}"]

[[tasks]]
id = "backup-ok-0001"
operation_type = "backup"
outcome = "success"
waiting = "1s"
running = "2s"

[[tasks]]
id = "backup-failed-0002"
operation_type = "backup"
outcome = "failed"
waiting = "1s"
running = "3s"
error_code = "BackupService.5009"
error_message = "the disk is busy"

[[tasks]]
id = "restore-ok-0003"
operation_type = "restore"
outcome = "success"
waiting = "2s"
running = "2s"
"""
SCENARIO_IDS = {"backup-ok-0001", "backup-failed-0002", "restore-ok-0003"}


@dataclass
class SimInContainer:
    """`cbr-watcher simulate` in a container of the image under test."""

    container: Container
    endpoint: str
    project_id: str


@pytest.fixture
async def sim(podman: Podman, image: str, tmp_path: Path) -> AsyncIterator[SimInContainer]:
    """The simulator serving SCENARIO on a free port, read-only like the daemon."""
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(SCENARIO, encoding="utf-8")
    container = Container(
        podman,
        unique("cbr-sim"),
        *USER_RUN_FLAGS,
        *HARNESS_RUN_FLAGS,
        "--volume", f"{scenario}:/etc/cbr-sim/scenario.toml:ro",
        image, "simulate", "--listen", "127.0.0.1:0", "--scenario", "/etc/cbr-sim/scenario.toml",
    )  # fmt: skip
    async with container:

        def banner() -> str | None:
            for line in container.lines:
                text = str(line.get("unparsed", ""))
                if text.startswith("CBR simulator listening"):
                    return text
            return None

        await container.wait_for(lambda: banner() is not None, "the simulator's banner")
        text = banner()
        assert text is not None
        endpoint = re.search(r"endpoint=(\S+)", text)
        project = re.search(r"project_id=(\S+)", text)
        assert endpoint is not None
        assert project is not None
        yield SimInContainer(container, endpoint.group(1), project.group(1))


def daemon_config(sim: SimInContainer, hook_url: str) -> str:
    """The daemon's TOML: the simulator, fast polling, discovery of everything, one webhook
    receiver; the token comes from the secrets directory, the state from the image default."""
    return f"""
[cbr]
endpoint = "{sim.endpoint}"
project_id = "{sim.project_id}"

[watch]
poll_interval_min = "0.1s"
poll_interval_max = "0.4s"
discover_interval = "0.3s"

[[watch.discover]]
labels = {{ found_by = "container-test" }}

[[webhooks]]
name = "host"
url = "{hook_url}"

[server]
listen = "127.0.0.1:0"
api_listen = ""

[log]
format = "json"
"""


def hooks_by_task(receiver: TestReceiver) -> dict[str, set[str]]:
    """Delivered event types per task ID."""
    found: dict[str, set[str]] = {}
    for hook in receiver.delivered:
        body = json.loads(hook.body)
        found.setdefault(body["data"]["task_id"], set()).add(body["type"])
    return found


def ended(receiver: TestReceiver, task_ids: set[str]) -> bool:
    """Whether every task in `task_ids` had its terminal webhook delivered."""
    hooks = hooks_by_task(receiver)
    return all(hooks.get(task_id, set()) & TERMINAL_EVENTS for task_id in task_ids)


@pytest.fixture
async def state_volume(podman: Podman) -> AsyncIterator[str]:
    """A named volume for the state directory, removed afterwards."""
    name = unique("cbr-watcher-state")
    code, _, err = await podman.arun("volume", "create", name)
    assert code == 0, err
    try:
        yield name
    finally:
        await podman.arun("volume", "rm", "--force", name)


async def test_run_read_only_discovers_delivers_and_resumes_on_its_volume(
    podman: Podman, image: str, sim: SimInContainer, state_volume: str, tmp_path: Path
) -> None:
    """`run` as PID 1 and UID 65532 on a read-only root: it discovers the simulator's tasks,
    delivers their webhooks to the host, serves /readyz and /metrics to the host, and stops on
    SIGTERM with exit 0 within 10 s. A second container on the same state volume resumes:
    nothing acknowledged is sent again, and a task created after the restart is delivered."""
    config = tmp_path / "cbr-watcher.toml"
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "cbr_watcher_auth__token").write_text(SIM_TOKEN, encoding="utf-8")
    receiver = TestReceiver()
    async with receiver:
        config.write_text(daemon_config(sim, receiver.url), encoding="utf-8")
        run_args = (
            *USER_RUN_FLAGS,
            *HARNESS_RUN_FLAGS,
            "--volume", f"{state_volume}:{STATE_DIR}",
            "--volume", f"{config}:{CONFIG_PATH}:ro",
            "--volume", f"{secrets}:{SECRETS_DIR}:ro",
            image, "run", "--config", CONFIG_PATH,
        )  # fmt: skip

        first = Container(podman, unique("cbr-watcher"), *run_args)
        async with first:
            url = await first.ready()
            # The daemon itself is PID 1, as 65532 without capabilities, on a read-only root.
            code, status, err = await first.exec("cat", "/proc/1/status")
            assert code == 0, err
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            assert fields["Name"].strip() == "cbr-watcher"
            assert fields["Uid"].split() == [str(IMAGE_UID)] * 4
            assert fields["Gid"].split() == [str(IMAGE_UID)] * 4
            assert int(fields["CapEff"], 16) == 0
            code, _, err = await first.exec("touch", "/opt/cbr-watcher/written")
            assert code != 0
            assert "Read-only file system" in err

            await first.wait_for(
                lambda: ended(receiver, SCENARIO_IDS), "the scenario's terminal webhooks"
            )
            status_code, _ = await get(f"{url}/readyz")
            assert status_code == 200
            status_code, metrics = await get(f"{url}/metrics")
            assert status_code == 200
            assert "cbr_watcher_" in metrics
            watched = [line for line in first.lines if line.get("event") == "task.watching"]
            assert {line["task_id"] for line in watched} == SCENARIO_IDS
            assert {line["source"] for line in watched} == {"discover"}

            exit_code, elapsed = await first.podman_stop()
            assert exit_code == 0, first.stderr
            assert elapsed < STOP_WITHIN
            assert first.logged("daemon.stopped")
        delivered_first = [hook.headers["webhook-id"] for hook in receiver.delivered]
        assert len(delivered_first) == len(set(delivered_first))

        second = Container(podman, unique("cbr-watcher"), *run_args)
        async with second:
            await second.ready()
            async with aiohttp.ClientSession() as http:
                spec = {"id": "backup-after-restart-0004", "waiting": "0.5s", "running": "1s"}
                async with http.post(f"{sim.endpoint}/_sim/tasks", json=spec) as response:
                    assert response.status == 201, await response.text()
            await second.wait_for(
                lambda: ended(receiver, {"backup-after-restart-0004"}),
                "the webhook of the task created after the restart",
            )
            exit_code, elapsed = await second.podman_stop()
            assert exit_code == 0, second.stderr
            assert elapsed < STOP_WITHIN

    ids = [hook.headers["webhook-id"] for hook in receiver.delivered]
    assert len(ids) == len(set(ids)), "a webhook was delivered twice"
    after_restart = [json.loads(hook.body) for hook in receiver.delivered[len(delivered_first) :]]
    assert "backup-after-restart-0004" in {body["data"]["task_id"] for body in after_restart}
    assert not any(
        line.get("event") == "task.watching" and line.get("task_id") in SCENARIO_IDS
        for line in second.lines
    ), "the restart watched tasks the first run had finished"


# ---- the sidecar example, played ---------------------------------------------------------------


@pytest.fixture(scope="session")
def app_image(podman: Podman, base_image: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A stand-in for the example's curlimages/curl (not pulled here): the base with sh and
    curl from Debian. Cached by podman's layer cache; left in the store for the next session."""
    if shutil.which("catatonit") is None and not Path("/usr/libexec/podman/catatonit").exists():
        pytest.skip("podman pods need catatonit (bash .ci/container installs it)")
    context = tmp_path_factory.mktemp("app-image")
    (context / "Containerfile").write_text(
        f"FROM {base_image}\n"
        "RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends curl"
        " >/dev/null && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin\n",
        encoding="utf-8",
    )
    tag = base_image.replace("cbr-watcher-ci-base", "cbr-watcher-ci-curl")
    built = podman.run("build", "--network=host", "--tag", tag, str(context), timeout=BUILD_TIMEOUT)
    assert built.returncode == 0, (built.stdout + built.stderr)[-4000:]
    return tag


@dataclass
class PlayableSidecar:
    """The sidecar example as podman 4.3 can play it, and what the test needs to know."""

    manifest: dict[str, Any]
    config_map: dict[str, Any]
    pod_name: str
    metrics_port: int
    watcher: dict[str, Any]
    """The watcher container as the example declares it (probes included)."""
    task_ids: list[str]
    """What the app container registers (its TASK_IDS)."""


def _secret_files(secret: dict[str, Any]) -> dict[str, bytes]:
    data = {key: base64.b64decode(value) for key, value in secret.get("data", {}).items()}
    data.update({key: value.encode() for key, value in secret.get("stringData", {}).items()})
    return data


def playable_sidecar(
    watcher_image: str, app_image: str, secret_values: dict[str, str], secrets_root: Path
) -> PlayableSidecar:
    """deploy/kubernetes/sidecar-example.yaml (with the ConfigMap and Secret it names) changed
    only where podman cannot play it, each change for a stated reason:

    - images: the image under test; the app's curl image is not pulled here (same sh + curl);
    - names get a unique suffix (podman names the ConfigMap's volume after it);
    - the native sidecar becomes the first regular container: podman refuses init containers
      with probes and never runs an init container alongside the app (podman#20372), so the
      startupProbe ordering is not exercised; the app's curl --retry covers its early start;
    - probes are dropped: podman would run them inside the container with curl (the image
      has none), and only under systemd; the test GETs the probe paths from the host instead;
    - the Secret's volumes become host directories with the files the kubelet would project
      (keys, items, modes): podman 4.3's secret volumes ignore stringData and items and do not
      decode data, and panic without an explicit `optional`;
    - the metrics port gets a hostPort on 127.0.0.1 (podman 4.3 publishes a containerPort on
      the host's same port otherwise, which can collide);
    - the ConfigMap's [cbr] section points at a simulator added to the pod, on the pod's
      localhost like the task API, serving the demo scenario (its project ID is the example's);
      the Secret's token is the simulator's.
    """
    suffix = uuid.uuid4().hex[:8]
    deployment = yaml.safe_load((K8S / "sidecar-example.yaml").read_text(encoding="utf-8"))
    config_map = yaml.safe_load((K8S / "configmap.yaml").read_text(encoding="utf-8"))
    secret = yaml.safe_load((K8S / "secret.yaml").read_text(encoding="utf-8"))
    assert (deployment["kind"], config_map["kind"], secret["kind"]) == (
        "Deployment",
        "ConfigMap",
        "Secret",
    )
    pod = deployment["spec"]["template"]["spec"]
    (watcher,) = pod.pop("initContainers")
    original_watcher = json.loads(json.dumps(watcher))
    assert watcher.pop("restartPolicy") == "Always"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        watcher.pop(probe, None)
    watcher["image"] = watcher_image
    (metrics,) = watcher["ports"]
    metrics_port = free_port()
    metrics.update(hostPort=metrics_port, hostIP="127.0.0.1")
    (app,) = pod["containers"]
    app["image"] = app_image
    (task_ids,) = [env["value"].split() for env in app["env"] if env["name"] == "TASK_IDS"]
    simulator = {
        "name": "cbr-simulator",
        "image": watcher_image,
        "args": ["simulate", "--listen", "127.0.0.1:9473"],
        "securityContext": watcher["securityContext"],
    }
    pod["containers"] = [simulator, watcher, app]

    files = _secret_files(secret)
    files.update({key: value.encode() for key, value in secret_values.items()})
    config_name = f"{config_map['metadata']['name']}-{suffix}"
    for volume in pod["volumes"]:
        if "configMap" in volume:
            assert volume["configMap"]["name"] == config_map["metadata"]["name"]
            volume["configMap"]["name"] = config_name
        source = volume.get("secret")
        if source is None:
            continue
        assert source["secretName"] == secret["metadata"]["name"]
        directory = secrets_root / volume["name"]
        directory.mkdir(parents=True)
        items = source.get("items") or [{"key": key, "path": key} for key in files]
        for item in items:
            path = directory / item["path"]
            path.write_bytes(files[item["key"]])
            # What the kubelet makes: root-owned, group fsGroup, the defaultMode. (Rootless,
            # the files cannot be given to that group: readable by all instead.)
            if os.geteuid() == 0:
                os.chown(path, 0, pod["securityContext"]["fsGroup"])
                path.chmod(source.get("defaultMode", 0o644))
            else:
                path.chmod(0o444)
        directory.chmod(0o755)
        volume.pop("secret")
        volume["hostPath"] = {"path": str(directory), "type": "Directory"}

    config_map["metadata"]["name"] = config_name
    toml = config_map["data"]["cbr-watcher.toml"]
    toml, count = re.subn(
        r"^region = .*$", 'endpoint = "http://127.0.0.1:9473"', toml, count=1, flags=re.M
    )
    assert count == 1, "the example configuration has no region line to replace"
    config_map["data"]["cbr-watcher.toml"] = toml
    deployment["metadata"]["name"] = f"{deployment['metadata']['name']}-{suffix}"
    return PlayableSidecar(
        manifest=deployment,
        config_map=config_map,
        pod_name=f"{deployment['metadata']['name']}-pod-0",
        metrics_port=metrics_port,
        watcher=original_watcher,
        task_ids=task_ids,
    )


async def container_mounts(podman: Podman, pod_name: str) -> list[str]:
    """The names of the volumes the pod's containers use."""
    code, out, _ = await podman.arun(
        "ps", "--all", "--filter", f"pod={pod_name}", "--format", "{{.Names}}"
    )
    names = out.split() if code == 0 else []
    volumes: list[str] = []
    for name in names:
        code, out, _ = await podman.arun(
            "inspect", name, "--format", "{{range .Mounts}}{{.Name}} {{end}}"
        )
        if code == 0:
            volumes += out.split()
    return volumes


async def test_sidecar_example_plays_with_podman(
    podman: Podman, image: str, app_image: str, tmp_path: Path
) -> None:
    """`podman kube play` of the sidecar example (see `playable_sidecar` for what podman needs
    changed): the watcher starts with the example's args, env, config and secret mounts as
    65532 on a read-only root and writes its state to the emptyDir; its probe paths answer
    on the named port; the app's script registers its task through the task API with the
    token file and its labels; stopping the pod ends both containers with exit 0."""
    api_token = uuid.uuid4().hex
    play = playable_sidecar(
        image,
        app_image,
        {"cbr_watcher_auth__token": "sim-token", "cbr_watcher_server__api_token": api_token},
        tmp_path / "secrets",
    )
    manifest = tmp_path / "sidecar.yaml"
    manifest.write_text(yaml.safe_dump_all([play.config_map, play.manifest]), encoding="utf-8")
    pod = play.pod_name
    watcher, app = f"{pod}-cbr-watcher", f"{pod}-app"
    volumes = [play.config_map["metadata"]["name"]]
    try:
        code, out, err = await podman.arun("kube", "play", str(manifest), within=120)
        volumes += await container_mounts(podman, pod)
        assert code == 0, out + err
        base = f"http://127.0.0.1:{play.metrics_port}"
        probes = [play.watcher[name]["httpGet"] for name in ("startupProbe", "livenessProbe")]
        (port_name,) = {probe["port"] for probe in probes}
        assert port_name == play.watcher["ports"][0]["name"]

        async def answers(path: str) -> bool:
            return (await get(f"{base}{path}"))[0] == 200

        await wait_until(lambda: answers(probes[0]["path"]), "the startup probe's path")
        for probe in probes:
            assert await answers(probe["path"]), probe
        status_code, metrics = await get(f"{base}/metrics")
        assert status_code == 200
        assert "cbr_watcher_" in metrics

        code, status, err = await podman.arun("exec", watcher, "cat", "/proc/1/status")
        assert code == 0, err
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        assert fields["Uid"].split() == [str(IMAGE_UID)] * 4
        assert int(fields["CapEff"], 16) == 0
        code, _, err = await podman.arun("exec", watcher, "touch", "/written")
        assert code != 0
        assert "Read-only file system" in err
        code, listing, err = await podman.arun("exec", watcher, "ls", STATE_DIR)
        assert code == 0, err
        assert "cbr-watcher.db" in listing.split()

        (task_id,) = play.task_ids
        lookup = (
            'curl --fail --silent --show-error --header "Authorization: Bearer '
            '$(cat /run/secrets/cbr-watcher-api/api-token)" '
            f"http://127.0.0.1:9472/v1/tasks/{task_id}"
        )
        registered: dict[str, Any] = {}

        async def app_registered() -> bool:
            code, out, _ = await podman.arun("exec", app, "sh", "-c", lookup)
            if code == 0:
                registered.update(json.loads(out))
            return code == 0

        await wait_until(app_registered, "the app's registration of its task")
        assert registered["labels"] == {"app": "backup-app", "pod": pod}
        assert registered["source"] == "api"
        assert registered["watching"] is True

        grace = play.manifest["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        code, _, err = await podman.arun("pod", "stop", "--time", str(grace), pod, within=120)
        assert code == 0, err
        for name in (watcher, app):
            code, out, err = await podman.arun("inspect", name, "--format", "{{.State.ExitCode}}")
            assert code == 0, err
            assert out.strip() == "0", f"{name} exited {out.strip()}"
    finally:
        await podman.arun("pod", "rm", "--force", "--ignore", pod, within=120)
        for volume in volumes:
            await podman.arun("volume", "rm", "--force", volume)
