"""Would a locked-down cluster admit nasagent's pods? Checked offline, against the Pod Security
Standards' "restricted" profile as written, for every pod the repository makes: each rendered
overlay's workloads (``kubectl kustomize manifests/overlays/X``), the trial Job template they
carry, and the trial Job that ``nasagent search --launcher kubernetes --dry-run`` prints, with no
template, with the repository's templates and with an admin's partial one. The dry-run Job must
also carry CPU and memory requests and limits (a namespace's ResourceQuota rejects pods without).

No API server runs here, so the profile is implemented by ``restricted_violations`` below; the
last tests prove that it catches each violation it claims to. Pod admission itself (the
PodSecurity admission plugin, quotas, LimitRanges) is what only a live cluster confirms
(docs/cluster.md).
"""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from nasagent.cli import main

REPO = Path(__file__).resolve().parent.parent
MANIFESTS = REPO / "manifests"
KUBECTL = Path(sys.executable).parent / "kubectl"
OVERLAYS = sorted(p.name for p in (MANIFESTS / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
TEMPLATES = ("manifests/base/trial-job.yaml", "manifests/components/gpu/trial-job.yaml")
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod")

# --- the profile ----------------------------------------------------------------------------------

# Baseline, "Capabilities": what may be added (the container runtime's default set).
BASELINE_CAPABILITIES = {
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
}
# Baseline, "Sysctls": the safe set.
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
    "net.ipv4.tcp_slow_start_after_idle",
    "net.ipv4.tcp_notsent_lowat",
}
# Restricted, "Volume Types": the only inline volume sources allowed.
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "image",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t"}
PROBES = ("livenessProbe", "readinessProbe", "startupProbe")


def restricted_violations(pod: dict[str, Any], annotations: dict[str, str] | None = None) -> list[str]:
    """The controls of the Pod Security Standards' "restricted" profile (which includes "baseline")
    that a pod spec breaks, as "control: field" lines; empty if the pod is admitted.

    The field list is the profile's, https://kubernetes.io/docs/concepts/security/pod-security-standards/
    (as implemented by https://github.com/kubernetes/pod-security-admission/tree/master/policy),
    checked over ``containers``, ``initContainers`` and ``ephemeralContainers``:

    Baseline
      HostProcess: spec.securityContext.windowsOptions.hostProcess and the containers' must be unset or false.
      Host Namespaces: spec.hostNetwork, spec.hostPID, spec.hostIPC unset or false.
      Privileged Containers: securityContext.privileged unset or false.
      Capabilities: capabilities.add only from the runtime's default set (``BASELINE_CAPABILITIES``).
      HostPath Volumes: spec.volumes[*].hostPath unset.
      Host Ports: ports[*].hostPort unset or 0.
      Host Probes / Lifecycle Hooks: the probes' and hooks' httpGet.host and tcpSocket.host unset or "".
      AppArmor: annotations container.apparmor.security.beta.kubernetes.io/* runtime/default or
        localhost/*; securityContext.appArmorProfile.type (pod, containers) RuntimeDefault or Localhost.
      SELinux: seLinuxOptions.type one of container_t, container_init_t, container_kvm_t or unset;
        seLinuxOptions.user and .role unset.
      /proc Mount Type: securityContext.procMount unset or Default.
      Seccomp: seccompProfile.type (pod, containers) never Unconfined.
      Sysctls: spec.securityContext.sysctls[*].name from the safe set (``SAFE_SYSCTLS``).
    Restricted
      Volume Types: spec.volumes[*] only configMap, csi, downwardAPI, emptyDir, ephemeral, image,
        persistentVolumeClaim, projected, secret.
      Privilege Escalation: securityContext.allowPrivilegeEscalation set to false on every container.
      Running as Non-root: spec.securityContext.runAsNonRoot true, or true on every container;
        never false on a container.
      Running as Non-root user: runAsUser (pod, containers) never 0.
      Seccomp: spec.securityContext.seccompProfile.type RuntimeDefault or Localhost, or set so on
        every container.
      Capabilities: capabilities.drop includes ALL; capabilities.add at most NET_BIND_SERVICE.

    Deliberately stricter than the admission plugin in one respect: the relaxations for pods in a
    user namespace (``hostUsers: false``) are not applied, since not every cluster has them.
    """
    found: list[str] = []
    annotations = annotations or {}
    pod_ctx = pod.get("securityContext") or {}
    containers = [c for key in ("containers", "initContainers", "ephemeralContainers") for c in pod.get(key) or []]

    def ctx(container: dict[str, Any]) -> dict[str, Any]:
        return container.get("securityContext") or {}

    # Baseline.
    if (pod_ctx.get("windowsOptions") or {}).get("hostProcess") or any(
        (ctx(c).get("windowsOptions") or {}).get("hostProcess") for c in containers
    ):
        found.append("HostProcess: windowsOptions.hostProcess")
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            found.append(f"Host Namespaces: spec.{key}")
    for c in containers:
        name = c.get("name")
        if ctx(c).get("privileged"):
            found.append(f"Privileged Containers: {name}.securityContext.privileged")
        added = set((ctx(c).get("capabilities") or {}).get("add") or [])
        if added - BASELINE_CAPABILITIES:
            found.append(f"Capabilities (baseline): {name} adds {sorted(added - BASELINE_CAPABILITIES)}")
        if any(p.get("hostPort") for p in c.get("ports") or []):
            found.append(f"Host Ports: {name}.ports[*].hostPort")
        handlers = [c.get(p) or {} for p in PROBES]
        handlers += [h or {} for h in (c.get("lifecycle") or {}).values()]
        if any((h.get(kind) or {}).get("host") for h in handlers for kind in ("httpGet", "tcpSocket")):
            found.append(f"Host Probes / Lifecycle Hooks: {name} sets a host")
        if ctx(c).get("procMount") not in (None, "Default"):
            found.append(f"/proc Mount Type: {name}.securityContext.procMount")
    if any(v.get("hostPath") is not None for v in pod.get("volumes") or []):
        found.append("HostPath Volumes: spec.volumes[*].hostPath")
    for key, value in annotations.items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
            value == "runtime/default" or value.startswith("localhost/")
        ):
            found.append(f"AppArmor: annotation {key}={value}")
    for where, context in [("pod", pod_ctx)] + [(str(c.get("name")), ctx(c)) for c in containers]:
        apparmor = (context.get("appArmorProfile") or {}).get("type")
        if apparmor not in (None, "RuntimeDefault", "Localhost"):
            found.append(f"AppArmor: {where}.securityContext.appArmorProfile.type {apparmor}")
        selinux = context.get("seLinuxOptions") or {}
        if selinux.get("type", "") not in SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
            found.append(f"SELinux: {where}.securityContext.seLinuxOptions")
        if (context.get("seccompProfile") or {}).get("type") == "Unconfined":
            found.append(f"Seccomp: {where}.securityContext.seccompProfile.type Unconfined")
        if context.get("runAsUser") == 0:
            found.append(f"Running as Non-root user: {where}.securityContext.runAsUser 0")
    for sysctl in pod_ctx.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            found.append(f"Sysctls: {sysctl.get('name')}")

    # Restricted.
    for volume in pod.get("volumes") or []:
        sources = set(volume) - {"name"}
        if sources - RESTRICTED_VOLUMES:
            found.append(f"Volume Types: {volume.get('name')} is {sorted(sources - RESTRICTED_VOLUMES)}")
    pod_non_root = pod_ctx.get("runAsNonRoot") is True
    pod_seccomp = (pod_ctx.get("seccompProfile") or {}).get("type") in ("RuntimeDefault", "Localhost")
    for c in containers:
        name, context = c.get("name"), ctx(c)
        if context.get("allowPrivilegeEscalation") is not False:
            found.append(f"Privilege Escalation: {name}.securityContext.allowPrivilegeEscalation is not false")
        non_root = context.get("runAsNonRoot")
        if non_root is False or (non_root is None and not pod_non_root):
            found.append(f"Running as Non-root: {name} may run as root (runAsNonRoot)")
        seccomp = (context.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost") and not (seccomp is None and pod_seccomp):
            found.append(f"Seccomp: {name} has no RuntimeDefault or Localhost profile")
        capabilities = context.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            found.append(f"Capabilities: {name} does not drop ALL")
        if set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
            found.append(f"Capabilities: {name} adds more than NET_BIND_SERVICE")
    return found


# --- what the repository makes ----------------------------------------------------------------------


def render(overlay: str) -> list[dict[str, Any]]:
    """``kubectl kustomize manifests/overlays/<overlay>`` (needs no server), as objects."""
    done = subprocess.run(
        [str(KUBECTL), "kustomize", str(MANIFESTS / "overlays" / overlay)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def pod_templates(obj: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(pod metadata, pod spec) of a workload object, or of the Job inside the trial template ConfigMap."""
    if obj["kind"] == "Pod":
        yield obj.get("metadata") or {}, obj["spec"]
    elif obj["kind"] == "CronJob":
        template = obj["spec"]["jobTemplate"]["spec"]["template"]
        yield template.get("metadata") or {}, template["spec"]
    elif obj["kind"] in WORKLOADS:
        yield obj["spec"]["template"].get("metadata") or {}, obj["spec"]["template"]["spec"]
    elif obj["kind"] == "ConfigMap" and obj["metadata"]["name"] == "nasagent-trial-template":
        yield from pod_templates(yaml.safe_load(obj["data"]["job.yaml"]))


def dry_run(capsys: pytest.CaptureFixture[str], *flags: str) -> dict[str, Any]:
    """The trial Job ``nasagent search --launcher kubernetes --dry-run FLAGS`` prints."""
    code = main(
        ["search", "--experiment", "admission", "--launcher", "kubernetes", "--trial-image", "img:1"]
        + ["--namespace", "nas", "--dry-run", *flags]
    )
    out = capsys.readouterr().out
    assert code == 0
    return yaml.safe_load(out)


def assert_requests_and_limits(job: dict[str, Any]) -> None:
    """Every container of the Job's pod has CPU and memory requests and limits."""
    pod = job["spec"]["template"]["spec"]
    for container in pod["containers"] + pod.get("initContainers", []):
        resources = container["resources"]
        for kind in ("cpu", "memory"):
            assert resources["requests"][kind] and resources["limits"][kind], (container["name"], kind)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_of_every_overlay_is_admitted_under_restricted(overlay: str) -> None:
    checked = 0
    for obj in render(overlay):
        for metadata, spec in pod_templates(obj):
            where = f"{overlay}: {obj['kind']}/{obj['metadata']['name']}"
            assert restricted_violations(spec, metadata.get("annotations")) == [], where
            for container in spec["containers"] + spec.get("initContainers", []):
                limits = container["resources"]["limits"]
                assert "cpu" in limits and "memory" in limits, f"{where}: {container['name']}"
            checked += 1
    assert checked >= 2, "PostgreSQL and the trial template at least"


def test_the_dry_run_job_without_a_template_is_admitted_and_sized(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NASAGENT_TRIAL_TEMPLATE", raising=False)
    job = dry_run(capsys)
    pod = job["spec"]["template"]
    assert restricted_violations(pod["spec"], pod["metadata"].get("annotations")) == []
    assert_requests_and_limits(job)
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert pod["spec"]["serviceAccountName"] == "nasagent-trial"


@pytest.mark.parametrize("template", TEMPLATES)
def test_the_dry_run_job_with_the_repositorys_templates_is_admitted(
    capsys: pytest.CaptureFixture[str], template: str
) -> None:
    job = dry_run(capsys, "--trial-template", str(REPO / template))
    pod = job["spec"]["template"]
    assert restricted_violations(pod["spec"], pod["metadata"].get("annotations")) == []
    assert_requests_and_limits(job)


def test_an_admins_partial_template_keeps_the_restricted_defaults(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A template that says only where trials run and how big they are: the defaults fill the rest."""
    template = tmp_path / "job.yaml"
    template.write_text(
        "apiVersion: batch/v1\nkind: Job\nspec:\n  template:\n    spec:\n"
        "      nodeSelector: {pool: a100}\n      containers:\n        - name: t\n"
        "          resources: {limits: {memory: 64Gi}, requests: {memory: 48Gi}}\n"
    )
    job = dry_run(capsys, "--trial-template", str(template))
    pod = job["spec"]["template"]
    assert restricted_violations(pod["spec"], pod["metadata"].get("annotations")) == []
    assert_requests_and_limits(job)
    resources = pod["spec"]["containers"][0]["resources"]
    assert (resources["requests"]["memory"], resources["limits"]["memory"]) == ("48Gi", "64Gi")
    assert pod["spec"]["nodeSelector"] == {"pool": "a100"}


# --- the checker catches what it claims to ------------------------------------------------------------

COMPLIANT: dict[str, Any] = {
    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
    "containers": [
        {
            "name": "c",
            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
            "ports": [{"containerPort": 80}],
            "readinessProbe": {"httpGet": {"path": "/", "port": 80}},
        }
    ],
    "volumes": [{"name": "v", "emptyDir": {}}],
}


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    return pod["containers"][0]


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation that sets ``path`` ("a.b.c"; a leading "c." means the container) to ``value``."""

    def mutate(pod: dict[str, Any]) -> None:
        parts = path.split(".")
        target = _container(pod) if parts[0] == "c" else pod
        for part in parts[1 if parts[0] == "c" else 0 : -1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value

    return mutate


VIOLATIONS: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("host process", _set("securityContext.windowsOptions.hostProcess", True), "HostProcess"),
    ("host network", _set("hostNetwork", True), "Host Namespaces"),
    ("host PID", _set("hostPID", True), "Host Namespaces"),
    ("host IPC", _set("hostIPC", True), "Host Namespaces"),
    ("privileged", _set("c.securityContext.privileged", True), "Privileged Containers"),
    ("SYS_ADMIN", _set("c.securityContext.capabilities.add", ["SYS_ADMIN"]), "Capabilities (baseline)"),
    ("CHOWN", _set("c.securityContext.capabilities.add", ["CHOWN"]), "Capabilities: c adds more"),
    ("no drop ALL", _set("c.securityContext.capabilities", {"drop": ["NET_RAW"]}), "does not drop ALL"),
    ("hostPath", lambda pod: pod["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), "HostPath Volumes"),
    ("nfs", lambda pod: pod["volumes"].append({"name": "n", "nfs": {"server": "s", "path": "/"}}), "Volume Types"),
    ("host port", _set("c.ports", [{"containerPort": 80, "hostPort": 80}]), "Host Ports"),
    ("probe host", _set("c.readinessProbe", {"httpGet": {"host": "10.0.0.1", "port": 80}}), "Host Probes"),
    ("hook host", _set("c.lifecycle", {"preStop": {"tcpSocket": {"host": "x", "port": 1}}}), "Lifecycle Hooks"),
    ("apparmor", _set("securityContext.appArmorProfile", {"type": "Unconfined"}), "AppArmor"),
    ("selinux user", _set("c.securityContext.seLinuxOptions", {"user": "system_u"}), "SELinux"),
    ("selinux type", _set("securityContext.seLinuxOptions", {"type": "spc_t"}), "SELinux"),
    ("procMount", _set("c.securityContext.procMount", "Unmasked"), "/proc Mount Type"),
    ("sysctl", _set("securityContext.sysctls", [{"name": "kernel.msgmax", "value": "1"}]), "Sysctls"),
    ("escalation allowed", _set("c.securityContext.allowPrivilegeEscalation", True), "Privilege Escalation"),
    (
        "escalation unset",
        lambda pod: _container(pod)["securityContext"].pop("allowPrivilegeEscalation"),
        "Privilege Escalation",
    ),
    ("root allowed", lambda pod: pod["securityContext"].pop("runAsNonRoot"), "Running as Non-root"),
    ("root container", _set("c.securityContext.runAsNonRoot", False), "Running as Non-root"),
    ("uid 0", _set("c.securityContext.runAsUser", 0), "Running as Non-root user"),
    ("no seccomp", lambda pod: pod["securityContext"].pop("seccompProfile"), "Seccomp"),
    ("unconfined", _set("c.securityContext.seccompProfile", {"type": "Unconfined"}), "Seccomp"),
]


def test_the_compliant_example_passes() -> None:
    assert restricted_violations(COMPLIANT) == []
    # The profile's allowances stay allowed.
    allowed = copy.deepcopy(COMPLIANT)
    _set("c.securityContext.capabilities.add", ["NET_BIND_SERVICE"])(allowed)
    _set("securityContext.sysctls", [{"name": "net.ipv4.tcp_syncookies", "value": "1"}])(allowed)
    _set("securityContext.seccompProfile", {"type": "Localhost", "localhostProfile": "p.json"})(allowed)
    allowed["volumes"].append({"name": "p", "persistentVolumeClaim": {"claimName": "c"}})
    assert restricted_violations(allowed, {"container.apparmor.security.beta.kubernetes.io/c": "runtime/default"}) == []


@pytest.mark.parametrize("mutate, control", [(m, c) for _, m, c in VIOLATIONS], ids=[n for n, _, _ in VIOLATIONS])
def test_the_checker_catches_each_violation(mutate: Callable[[dict[str, Any]], None], control: str) -> None:
    pod = copy.deepcopy(COMPLIANT)
    mutate(pod)
    found = restricted_violations(pod)
    assert any(control in line for line in found), found


def test_the_checker_looks_at_init_containers_and_apparmor_annotations() -> None:
    pod = copy.deepcopy(COMPLIANT)
    pod["initContainers"] = [{"name": "init", "securityContext": {"capabilities": {"drop": ["ALL"]}}}]
    assert any("init.securityContext.allowPrivilegeEscalation" in line for line in restricted_violations(pod))
    annotations = {"container.apparmor.security.beta.kubernetes.io/c": "unconfined"}
    assert any("AppArmor" in line for line in restricted_violations(COMPLIANT, annotations))
