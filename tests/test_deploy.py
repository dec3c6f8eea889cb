"""The deployment files, checked offline with the tools users have.

- systemd: `systemd-analyze verify` prints nothing and `systemd-analyze security` scores the
  unit at most 2.0; its credentials are exactly the secret files the configuration reads.
- Kubernetes: `kubernetes-validate --strict` against 1.33 for every manifest (the Prometheus
  Operator CRDs have no schema there and are checked by shape), `kubectl kustomize` renders
  the folder, and the pods meet the restricted Pod Security Standard.
- The sidecar example's app script, run with sh and curl against the real daemon's task API.
- Container image: the Containerfile's structure (tests/test_container.py builds and runs it).

A missing tool skips its test with the reason; CI has every tool and turns skips into failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
import types
import typing
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]
from pydantic import BaseModel, SecretStr

from tests.daemon_process import reap, spawn
from watcher.clock import RealClock
from watcher.config import (
    ENV_PREFIX,
    KUBERNETES_SECRETS_DIR,
    Settings,
    load_settings,
    require_runnable,
)
from watcher.net.listener import parse_listen
from watcher.sim import SimTaskSpec, Simulator

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "cbr-watcher.service"
EXAMPLE_CONFIG = ROOT / "systemd" / "cbr-watcher.toml"
K8S = ROOT / "deploy" / "kubernetes"
K8S_HA = ROOT / "deploy" / "kubernetes-ha"
"""An overlay of K8S: the two-replica StatefulSet only (docs/high-availability.md)."""
CONTAINERFILE = ROOT / "deploy" / "Containerfile"
ALERTS = ROOT / "deploy" / "prometheus" / "cbr-watcher-alerts.yml"
K8S_VERSION = "1.33.0"
CRD_KINDS = {"PodMonitor", "PrometheusRule"}
"""Prometheus Operator kinds: kubernetes-validate has no schema for them."""
METRICS_PORT = "cbr-metrics"
IMAGE_UID = 65532
TMP = "/tmp"  # noqa: S108 (a mount point in the pod, not a temporary file here)
PSS_RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def secret_file_names() -> set[str]:
    """Every secret file the configuration reads (SPEC §4): one per secret key of a section,
    named like its environment variable in lower case, and the whole webhook list."""
    names: set[str] = set()
    for section, field in Settings.model_fields.items():
        annotation = field.annotation
        if typing.get_origin(annotation) is list:
            names.add(f"{ENV_PREFIX}{section}".lower())
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            for key, sub in annotation.model_fields.items():
                if sub.annotation is SecretStr:
                    names.add(f"{ENV_PREFIX}{section}__{key}".lower())
    return names


def test_secret_file_names_cover_spec_examples() -> None:
    """The derived names include the ones SPEC §4 and the deploy files spell out."""
    assert {
        "cbr_watcher_auth__token",
        "cbr_watcher_auth__password",
        "cbr_watcher_auth__secret_key",
        "cbr_watcher_server__api_token",
        "cbr_watcher_webhooks",
    } <= secret_file_names()


# ---- systemd ----------------------------------------------------------------------------------


def unit_entries(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment of a unit file, in order, duplicates kept."""
    entries: list[tuple[str, str, str]] = []
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def service_values(key: str) -> list[str]:
    """Every value of `key` in the unit's [Service] section."""
    entries = unit_entries(UNIT.read_text(encoding="utf-8"))
    return [value for section, name, value in entries if section == "Service" and name == key]


def systemd_analyze() -> str:
    """The systemd-analyze binary, or a skip."""
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    return path


@pytest.fixture
def testable_unit(tmp_path: Path) -> Path:
    """A copy of the unit whose ExecStart names the installed console script, which
    `systemd-analyze verify` insists exists."""
    script = Path(sys.executable).parent / "cbr-watcher"
    if not script.exists():
        pytest.skip(f"{script} is not installed (pip install -e .)")
    text = UNIT.read_text(encoding="utf-8")
    text, count = re.subn(
        r"^ExecStart=/opt/cbr-watcher/bin/cbr-watcher ", f"ExecStart={script} ", text, flags=re.M
    )
    assert count == 1, "the unit should start /opt/cbr-watcher/bin/cbr-watcher"
    copy = tmp_path / UNIT.name
    copy.write_text(text, encoding="utf-8")
    return copy


def test_unit_verifies_without_a_word(testable_unit: Path) -> None:
    """`systemd-analyze verify` accepts the unit and prints nothing at all."""
    tool = systemd_analyze()
    result = subprocess.run(
        [tool, "verify", "--recursive-errors=no", "--man=no", str(testable_unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_unit_security_exposure_is_at_most_2(testable_unit: Path) -> None:
    """`systemd-analyze security --offline=true --threshold=20` passes (score ≤ 2.0)."""
    tool = systemd_analyze()
    result = subprocess.run(
        [tool, "security", "--offline=true", "--threshold=20", "--no-pager", str(testable_unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    score = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert score is not None, result.stdout
    assert float(score.group(1)) <= 2.0


def test_unit_is_a_notify_service_with_watchdog_and_hardening() -> None:
    """The settings the daemon's behaviour relies on, and the ones it must not have."""
    expected = {
        "Type": "notify",
        "WatchdogSec": "30s",
        "Restart": "on-failure",
        "RestartPreventExitStatus": "78",
        "DynamicUser": "yes",
        "StateDirectory": "cbr-watcher",
        "EnvironmentFile": "-/etc/cbr-watcher/env",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "MemoryDenyWriteExecute": "yes",
        "CapabilityBoundingSet": "",
    }
    for key, value in expected.items():
        assert service_values(key) == [value], key
    assert service_values("ProcSubset") == []  # it would hide /proc/stat: no process_* metrics
    assert service_values("NotifyAccess") in ([], ["main"])
    (exec_start,) = service_values("ExecStart")
    assert exec_start.split()[:2] == ["/opt/cbr-watcher/bin/cbr-watcher", "run"]


def test_unit_loads_exactly_the_secret_files_the_configuration_reads() -> None:
    """One `LoadCredential=NAME` per secret file name (found in /etc/credstore, skipped when
    missing), so $CREDENTIALS_DIRECTORY holds what the settings look for."""
    loaded = service_values("LoadCredential")
    assert all(":" not in value for value in loaded), "a path makes the file mandatory"
    assert sorted(loaded) == sorted(secret_file_names())


def test_example_config_runs_with_a_credential(tmp_path: Path) -> None:
    """systemd/cbr-watcher.toml plus a token credential is a runnable configuration, and the
    state lands in $STATE_DIRECTORY."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "cbr_watcher_auth__token").write_text("a-token\n")
    environ = {"CREDENTIALS_DIRECTORY": str(credentials), "STATE_DIRECTORY": "/var/lib/cbr-watcher"}
    settings = load_settings(config_file=EXAMPLE_CONFIG, environ=environ)
    require_runnable(settings)
    assert settings.auth.token.get_secret_value() == "a-token"
    assert settings.state.effective_path(environ) == "/var/lib/cbr-watcher/cbr-watcher.db"


# ---- Kubernetes -------------------------------------------------------------------------------


def load_documents(path: Path) -> list[dict[str, Any]]:
    """The non-empty YAML documents of a file."""
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def manifest_files() -> list[Path]:
    """Every manifest in deploy/kubernetes (not the kustomization itself)."""
    return sorted(path for path in K8S.glob("*.yaml") if path.name != "kustomization.yaml")


def all_manifests() -> list[dict[str, Any]]:
    """Every resource of every manifest file."""
    return [doc for path in manifest_files() for doc in load_documents(path)]


def by_kind(kind: str) -> list[dict[str, Any]]:
    """The resources of one kind."""
    return [doc for doc in all_manifests() if doc["kind"] == kind]


def workloads() -> list[dict[str, Any]]:
    """Every Deployment and StatefulSet."""
    return by_kind("Deployment") + by_kind("StatefulSet")


def deployment(name: str) -> dict[str, Any]:
    """One Deployment by name."""
    (found,) = [doc for doc in by_kind("Deployment") if doc["metadata"]["name"] == name]
    return found


def pod_containers(pod: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """("initContainers" | "containers", container) for every container of a pod spec."""
    for group in ("initContainers", "containers"):
        for container in pod.get(group, []):
            yield group, container


def watcher_containers() -> list[tuple[dict[str, Any], str, dict[str, Any]]]:
    """(pod spec, group, container) for every cbr-watcher container in the manifests."""
    found = []
    for doc in workloads():
        pod = doc["spec"]["template"]["spec"]
        for group, container in pod_containers(pod):
            if "/cbr-watcher:" in container["image"]:
                found.append((pod, group, container))
    return found


def validate(doc: dict[str, Any]) -> str | None:
    """Validate one resource strictly against Kubernetes 1.33; the kind if it has no schema."""
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return str(doc["kind"])
    except kubernetes_validate.ValidationError as error:
        path = ".".join(str(item) for item in error.path)
        pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {path}: {error.message}")
    return None


@pytest.mark.parametrize("path", manifest_files(), ids=lambda path: path.name)
def test_manifest_validates_strictly_against_kubernetes_1_33(path: Path) -> None:
    """`kubernetes-validate --strict -k 1.33.0`: every resource passes, and the only ones
    without a schema are the Prometheus Operator's."""
    documents = load_documents(path)
    assert documents
    skipped = {kind for doc in documents if (kind := validate(doc)) is not None}
    assert skipped <= CRD_KINDS


def test_kustomize_renders_every_manifest() -> None:
    """`kubectl kustomize deploy/kubernetes` renders every file of the folder, and what it
    renders validates too."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    kustomization = load_documents(K8S / "kustomization.yaml")[0]
    assert sorted(kustomization["resources"]) == sorted(p.name for p in manifest_files())
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    rendered = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    names = sorted((doc["kind"], doc["metadata"]["name"]) for doc in rendered)
    assert names == sorted((doc["kind"], doc["metadata"]["name"]) for doc in all_manifests())
    assert {kind for doc in rendered if (kind := validate(doc)) is not None} == CRD_KINDS


def effective(pod: dict[str, Any], container: dict[str, Any], key: str) -> Any:
    """A securityContext value as the kubelet applies it: the container's, else the pod's."""
    own = container.get("securityContext", {})
    return own[key] if key in own else pod.get("securityContext", {}).get(key)


def test_pods_meet_the_restricted_pod_security_standard() -> None:
    """Numeric non-root UID, runAsNonRoot, read-only root file system, no privilege
    escalation, every capability dropped, RuntimeDefault seccomp, allowed volume types, no
    service account token."""
    found = workloads()
    assert {doc["metadata"]["name"] for doc in found} == {
        "cbr-watcher",
        "backup-app",
        "cbr-watcher-ha",
    }
    for doc in found:
        pod = doc["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod.get("hostNetwork", False) is False
        for volume in pod["volumes"]:
            assert set(volume) - {"name"} <= PSS_RESTRICTED_VOLUMES, volume
        for _, container in pod_containers(pod):
            where = f"{doc['metadata']['name']}/{container['name']}"
            assert effective(pod, container, "runAsNonRoot") is True, where
            uid = effective(pod, container, "runAsUser")
            assert isinstance(uid, int), where
            assert uid != 0, where
            assert effective(pod, container, "seccompProfile") == {"type": "RuntimeDefault"}, where
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            assert context.get("privileged", False) is False, where


def test_watcher_containers_probe_health_and_never_gate_the_app_on_the_cloud() -> None:
    """Startup and liveness on /healthz, readiness on /readyz for the standalone watcher
    only: a native sidecar's readiness would be the app Pod's, so it has none."""
    found = watcher_containers()
    assert {group for _, group, _ in found} == {"containers", "initContainers"}
    for _, group, container in found:
        for probe in ("startupProbe", "livenessProbe"):
            assert container[probe]["httpGet"] == {"path": "/healthz", "port": METRICS_PORT}
        if group == "initContainers":
            assert "readinessProbe" not in container
        else:
            assert container["readinessProbe"]["httpGet"] == {
                "path": "/readyz",
                "port": METRICS_PORT,
            }
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        assert ports == {METRICS_PORT: parse_listen(Settings().server.listen)[1]}


def test_watcher_containers_read_secrets_as_files_and_write_only_state_and_tmp() -> None:
    """The Secret is mounted whole (so it updates) at /run/secrets/cbr-watcher, no secret is
    an environment variable, and the only writable mounts are the state directory and /tmp."""
    for pod, _, container in watcher_containers():
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
        secret_mount = mounts[str(KUBERNETES_SECRETS_DIR)]
        assert secret_mount["readOnly"] is True
        assert "subPath" not in secret_mount
        secret_volume = volumes[secret_mount["name"]]["secret"]
        assert secret_volume["secretName"] == "cbr-watcher-credentials"
        assert "items" not in secret_volume
        for variable in container.get("env", []):
            assert "secretKeyRef" not in variable.get("valueFrom", {}), variable
        env = {variable["name"]: variable.get("value") for variable in container.get("env", [])}
        state_dir = env["STATE_DIRECTORY"]
        writable = {path for path, mount in mounts.items() if not mount.get("readOnly", False)}
        assert writable == {state_dir, TMP}
        assert container["args"][0] == "run"


def test_sidecar_example_is_a_native_sidecar_that_registers_tasks() -> None:
    """The watcher is an init container with restartPolicy Always; the app container
    registers task IDs with PUT /v1/tasks/{id} on localhost with the bearer token, and gets
    only that token, not the cloud credentials."""
    pod = deployment("backup-app")["spec"]["template"]["spec"]
    (sidecar,) = pod["initContainers"]
    assert sidecar["restartPolicy"] == "Always"
    (app,) = pod["containers"]
    script = " ".join(app["args"])
    assert "127.0.0.1:9472/v1/tasks" in script
    assert "--request PUT" in script
    assert "Authorization: Bearer" in script
    assert r"\"labels\"" in script
    assert "trap" in script  # exits on SIGTERM, leaving the grace period to the sidecar
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    for mount in app["volumeMounts"]:
        items = volumes[mount["name"]]["secret"]["items"]
        assert [item["key"] for item in items] == ["cbr_watcher_server__api_token"]
    assert pod["terminationGracePeriodSeconds"] >= 15


def test_secret_and_configmap_make_a_runnable_configuration(tmp_path: Path) -> None:
    """The Secret's keys are secret file names; with them as files, the ConfigMap's TOML is a
    runnable configuration, the task API stays on localhost and the task file parses."""
    (secret,) = by_kind("Secret")
    assert set(secret["stringData"]) <= secret_file_names()
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    for key, value in secret["stringData"].items():
        (secrets_dir / key).write_text(value)
    (config_map,) = by_kind("ConfigMap")
    for key, value in config_map["data"].items():
        (tmp_path / key).write_text(value)
    environ = {
        "CBR_WATCHER_WATCH__TASK_FILE": str(tmp_path / "tasks.txt"),
        "STATE_DIRECTORY": "/var/lib/cbr-watcher",
    }
    settings = load_settings(
        config_file=tmp_path / "cbr-watcher.toml", environ=environ, secrets_dirs=[secrets_dir]
    )
    require_runnable(settings)
    assert settings.auth.token.get_secret_value() == secret["stringData"]["cbr_watcher_auth__token"]
    assert parse_listen(settings.server.api_listen)[0] == "127.0.0.1"
    assert settings.server.api_token.get_secret_value()


def test_podmonitor_selects_every_watcher_pod_on_its_named_port() -> None:
    """The PodMonitor's selector matches every pod template and scrapes the named port."""
    (monitor,) = by_kind("PodMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert [endpoint["port"] for endpoint in monitor["spec"]["podMetricsEndpoints"]] == [
        METRICS_PORT
    ]
    for doc in workloads():
        labels = doc["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), doc["metadata"]["name"]


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a matchLabels selector selects these labels."""
    wanted: dict[str, str] = selector["matchLabels"]
    return wanted.items() <= labels.items()


def test_ha_statefulset_runs_two_replicas_each_with_its_own_state() -> None:
    """ha-statefulset.yaml: two replicas started together and replaced one at a time, each
    with its own ReadWriteOnce volume at the state directory, spread over nodes, kept one at
    a time by a PodDisruptionBudget, governed by a headless Service; no other workload's
    selector picks up its pods."""
    (statefulset,) = by_kind("StatefulSet")
    spec = statefulset["spec"]
    assert spec["replicas"] == 2
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["updateStrategy"]["type"] == "RollingUpdate"
    pod_labels = spec["template"]["metadata"]["labels"]
    assert matches(spec["selector"], pod_labels)
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    (container,) = spec["template"]["spec"]["containers"]
    env = {variable["name"]: variable.get("value") for variable in container["env"]}
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == env["STATE_DIRECTORY"]
    assert claim["metadata"]["name"] not in {v["name"] for v in spec["template"]["spec"]["volumes"]}
    spread = spec["template"]["spec"]["topologySpreadConstraints"]
    by_host = next(c for c in spread if c["topologyKey"] == "kubernetes.io/hostname")
    assert by_host["whenUnsatisfiable"] == "DoNotSchedule"
    assert matches(by_host["labelSelector"], pod_labels)
    (budget,) = by_kind("PodDisruptionBudget")
    assert budget["spec"]["minAvailable"] == 1
    assert matches(budget["spec"]["selector"], pod_labels)
    (service,) = by_kind("Service")
    assert service["metadata"]["name"] == spec["serviceName"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= pod_labels.items()
    for other in by_kind("Deployment"):
        assert not matches(other["spec"]["selector"], pod_labels), other["metadata"]["name"]


def test_kustomize_renders_the_ha_overlay() -> None:
    """`kubectl kustomize deploy/kubernetes-ha` renders the two replicas with the shared
    configuration, scrape config and rules, and neither the one-replica Deployment (nor its
    volume) nor the sidecar example; what it renders validates."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S_HA)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    rendered = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert sorted((doc["kind"], doc["metadata"]["name"]) for doc in rendered) == sorted(
        [
            ("ConfigMap", "cbr-watcher-config"),
            ("Secret", "cbr-watcher-credentials"),
            ("StatefulSet", "cbr-watcher-ha"),
            ("Service", "cbr-watcher-ha"),
            ("PodDisruptionBudget", "cbr-watcher-ha"),
            ("PodMonitor", "cbr-watcher"),
            ("PrometheusRule", "cbr-watcher"),
        ]
    )
    assert {kind for doc in rendered if (kind := validate(doc)) is not None} == CRD_KINDS
    (statefulset,) = [doc for doc in rendered if doc["kind"] == "StatefulSet"]
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example.com/cbr-watcher:0.1.0"


@pytest.fixture
async def live_sim() -> AsyncIterator[tuple[Simulator, str]]:
    """A simulator on real time, for a daemon in another process."""
    sim = Simulator(RealClock(), tokens=["sidecar-token"], seed=5)
    async with sim.running() as base_url:
        yield sim, base_url


async def test_sidecar_app_script_registers_tasks_with_the_real_daemon(
    live_sim: tuple[Simulator, str], tmp_path: Path
) -> None:
    """The example app container's shell script, run with sh and curl against a real daemon:
    its PUT registers the task with its labels, and it exits 0 on SIGTERM."""
    sh, curl = shutil.which("sh"), shutil.which("curl")
    if sh is None or curl is None:
        pytest.skip("sh and curl are needed to run the sidecar example's script")
    sim, base_url = live_sim
    task_id = sim.add_task(SimTaskSpec(id="app-task", waiting=0.1, running=3600))
    api_token = "api-token-for-the-test"
    env = {key: value for key, value in os.environ.items() if not key.startswith("CBR_WATCHER_")}
    for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "CREDENTIALS_DIRECTORY", "STATE_DIRECTORY"):
        env.pop(key, None)
    env.update(
        {
            "CBR_WATCHER_CBR__ENDPOINT": base_url,
            "CBR_WATCHER_CBR__PROJECT_ID": sim.project_id,
            "CBR_WATCHER_AUTH__TOKEN": "sidecar-token",
            "CBR_WATCHER_SERVER__LISTEN": "127.0.0.1:0",
            "CBR_WATCHER_SERVER__API_LISTEN": "127.0.0.1:0",
            "CBR_WATCHER_SERVER__API_TOKEN": api_token,
            "CBR_WATCHER_STATE__PATH": str(tmp_path / "state.db"),
            "CBR_WATCHER_LOG__FORMAT": "json",
        }
    )
    daemon = await spawn(sys.executable, "-m", "watcher", "run", env=env)
    app: asyncio.subprocess.Process | None = None
    try:
        assert daemon.stdout is not None
        while True:
            line = await asyncio.wait_for(daemon.stdout.readline(), 30)
            assert line, "the daemon exited early"
            record = json.loads(line)
            if record["event"] == "task_api.listening":
                api_url = record["url"]
                break
        token_file = tmp_path / "api-token"
        token_file.write_text(api_token)
        (container,) = deployment("backup-app")["spec"]["template"]["spec"]["containers"]
        script = container["args"][0]
        assert "http://127.0.0.1:9472" in script
        assert "/run/secrets/cbr-watcher-api/api-token" in script
        script = script.replace("http://127.0.0.1:9472", api_url)
        script = script.replace("/run/secrets/cbr-watcher-api/api-token", str(token_file))
        app = await spawn(
            sh,
            "-c",
            script,
            env={"PATH": os.environ["PATH"], "TASK_IDS": task_id, "POD_NAME": "backup-app-0"},
        )
        headers = {"Authorization": f"Bearer {api_token}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            for _ in range(300):
                async with session.get(f"{api_url}/v1/tasks/{task_id}") as response:
                    if response.status == 200:
                        body = await response.json()
                        break
                await asyncio.sleep(0.1)
            else:
                pytest.fail("the app's script never registered its task")
        assert body["labels"] == {"app": "backup-app", "pod": "backup-app-0"}
        assert body["watching"] is True
        app.send_signal(signal.SIGTERM)
        _, app_err = await asyncio.wait_for(app.communicate(), 30)
        assert app.returncode == 0, app_err.decode()
    finally:
        try:
            if app is not None:
                await reap(app, signum=signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                daemon.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(daemon.communicate(), 30)
        finally:
            await reap(daemon)
    assert daemon.returncode == 0, err.decode()


# ---- the PrometheusRule and its generator -----------------------------------------------------


def sync_module() -> types.ModuleType:
    """deploy/kubernetes/sync_prometheusrule.py, imported from its path."""
    path = K8S / "sync_prometheusrule.py"
    spec = importlib.util.spec_from_file_location("sync_prometheusrule", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prometheusrule_has_rules() -> None:
    """The PrometheusRule is well formed: named groups of alerting or recording rules."""
    (rule,) = by_kind("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    groups = rule["spec"]["groups"]
    assert groups
    for group in groups:
        assert group["name"]
        assert group["rules"]
        for entry in group["rules"]:
            assert ("alert" in entry) != ("record" in entry)
            assert entry["expr"]


def test_sync_script_nests_the_rules_file_under_spec() -> None:
    """The generator keeps the rules (and comments) and rejects other top-level keys."""
    render = sync_module().render
    rules = (
        "# the alerts\n"
        "groups:\n"
        "  - name: g\n"
        "    rules:\n"
        "      - alert: A\n"
        "        expr: |\n"
        "          up == 0\n"
        "\n"
        "          # still part of the expression block\n"
    )
    manifest = yaml.safe_load(render(rules))
    assert manifest["kind"] == "PrometheusRule"
    assert manifest["spec"] == yaml.safe_load(rules)
    with pytest.raises(ValueError, match="groups"):
        render("groups: []\nextra: 1\n")


def test_prometheusrule_matches_deploy_prometheus_rules() -> None:
    """prometheusrule.yaml is what sync_prometheusrule.py makes of the rules file."""
    if not ALERTS.exists():
        pytest.skip(f"{ALERTS.relative_to(ROOT)} does not exist yet (nothing to compare with)")
    rules_text = ALERTS.read_text(encoding="utf-8")
    manifest_text = (K8S / "prometheusrule.yaml").read_text(encoding="utf-8")
    assert yaml.safe_load(manifest_text)["spec"] == yaml.safe_load(rules_text), (
        "out of date: run python deploy/kubernetes/sync_prometheusrule.py"
    )
    assert manifest_text == sync_module().render(rules_text)


# ---- the container image ----------------------------------------------------------------------


def containerfile_stages() -> list[list[tuple[str, str]]]:
    """The Containerfile as stages of (INSTRUCTION, arguments), continuations joined."""
    logical: list[str] = []
    pending = ""
    for raw in CONTAINERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: list[list[tuple[str, str]]] = [[]]
    for line in logical:
        instruction, _, arguments = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), arguments.strip()))
    return stages


def test_containerfile_is_multi_stage_non_root_and_exec_form() -> None:
    """Builder + runtime stages, the venv copied across, bytecode compiled, a numeric
    non-root USER, exec-form ENTRYPOINT/CMD, port 9471, SIGTERM, no remote ADD."""
    preamble, *stages = containerfile_stages()
    assert all(instruction == "ARG" for instruction, _ in preamble)
    assert len(stages) >= 2
    froms = [
        arguments.split()
        for stage in stages
        for instruction, arguments in stage
        if instruction == "FROM"
    ]
    assert [parts[-1] for parts in froms[:-1]] == ["build"]
    runtime = stages[-1]
    everything = [entry for stage in stages for entry in stage]
    for instruction, arguments in everything:
        assert instruction != "ADD" or "://" not in arguments, arguments
    instructions = [instruction for instruction, _ in runtime]

    def last(name: str) -> str:
        values = [arguments for instruction, arguments in runtime if instruction == name]
        assert values, f"no {name} in the runtime stage"
        return values[-1]

    assert any(
        instruction == "COPY" and arguments.startswith("--from=build ")
        for instruction, arguments in runtime
    )
    assert "compileall" in " ".join(arguments for inst, arguments in runtime if inst == "RUN")
    user = last("USER")
    assert re.fullmatch(r"\d+(:\d+)?", user), user
    assert int(user.split(":")[0]) == IMAGE_UID
    assert instructions.index("USER") > max(
        i for i, instruction in enumerate(instructions) if instruction == "RUN"
    )
    assert json.loads(last("ENTRYPOINT")) == ["cbr-watcher"]
    assert json.loads(last("CMD")) == ["run"]
    assert last("EXPOSE").split() == ["9471"]
    assert last("STOPSIGNAL") == "SIGTERM"
    env = " ".join(arguments for instruction, arguments in runtime if instruction == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "STATE_DIRECTORY=/var/lib/cbr-watcher" in env


def test_containerfile_base_secret_pins_and_labels() -> None:
    """SPEC §12: `ARG PYTHON_IMAGE` defaults to an official slim Python image and is every
    stage's base; every pip step mounts the optional pip_cert secret and installs with
    constraints.txt; only what the wheel needs is copied in; the OCI version label is
    pyproject's version; the state directory is a volume."""
    preamble, *stages = containerfile_stages()
    args = dict(arguments.partition("=")[::2] for instruction, arguments in preamble)
    assert re.fullmatch(r"docker\.io/library/python:3\.1[1-9]-slim(-\w+)?", args["PYTHON_IMAGE"])
    for stage in stages:
        assert stage[0][1].split()[0] == "${PYTHON_IMAGE}"
    everything = [entry for stage in stages for entry in stage]
    pip_steps = [args for inst, args in everything if inst == "RUN" and "pip " in args]
    assert pip_steps
    for step in pip_steps:
        assert step.startswith("--mount=type=secret,id=pip_cert"), step
        assert "PIP_CERT=/run/secrets/pip_cert" in step, step
        for install in re.findall(r"pip install [^&]*", step):
            assert "--constraint constraints.txt" in install, install
    copied = {
        source
        for inst, arguments in everything
        if inst == "COPY" and not arguments.startswith("--from=")
        for source in arguments.split()[:-1]
    }
    assert copied == {"pyproject.toml", "README.md", "constraints.txt", "watcher"}
    runtime = stages[-1]
    version_arg = [a for inst, a in runtime if inst == "ARG" and a.startswith("VERSION=")]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert version_arg == [f"VERSION={project['version']}"], "keep ARG VERSION = pyproject's"
    labels = " ".join(arguments for inst, arguments in runtime if inst == "LABEL")
    assert 'org.opencontainers.image.version="${VERSION}"' in labels
    volumes = [json.loads(arguments) for inst, arguments in runtime if inst == "VOLUME"]
    assert volumes == [["/var/lib/cbr-watcher"]]
