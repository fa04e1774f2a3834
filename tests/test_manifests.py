"""The Kubernetes manifests (manifests/): every overlay renders with ``kubectl kustomize`` and every
rendered object, and the trial Job template inside its ConfigMap, validates with
kubernetes-validate in strict mode (unknown fields are errors) against pinned Kubernetes versions:
1.30.0, the oldest supported, and 1.37.0, the newest the installed schemas know. Then the security
properties: the agent's Role is exactly what the launcher needs, no secret values ship except the
marked development defaults, NetworkPolicies admit only nasagent's agent, trials and bucket setup,
data sit on PersistentVolumeClaims, pods run as non-root, and the GPU overlays request GPUs.

There is no API server here: these tests check what would be applied, not a running cluster.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
MANIFESTS = REPO / "manifests"
KUBECTL = Path(sys.executable).parent / "kubectl"
K8S_VERSIONS = ("1.30.0", "1.37.0")
OVERLAYS = sorted(p.name for p in (MANIFESTS / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
SECRET_NAMES = {"nasagent-db", "nasagent-s3", "nasagent-postgres", "nasagent-minio"}
DEV_MARK = "nasagent.io/development-defaults"
# Exactly what the Kubernetes launcher needs (the contract with nasagent/runners).
AGENT_RULES = (
    {("batch", "jobs", verb) for verb in ("create", "get", "list", "watch", "delete")}
    | {("", "pods", verb) for verb in ("get", "list", "watch")}
    | {("", "pods/log", "get")}
)
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass"}


def kustomization(overlay: str) -> dict[str, Any]:
    """The overlay's kustomization.yaml."""
    return yaml.safe_load((MANIFESTS / "overlays" / overlay / "kustomization.yaml").read_text())


def uses_gpu(overlay: str) -> bool:
    """Whether the overlay includes components/gpu."""
    return any(Path(c).name == "gpu" for c in kustomization(overlay).get("components", []))


def render(directory: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize`` of ``directory`` (needs no server), as a list of objects."""
    done = subprocess.run([str(KUBECTL), "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"kubectl kustomize {directory} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """Every overlay, rendered once per module."""
    return {overlay: render(MANIFESTS / "overlays" / overlay) for overlay in OVERLAYS}


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    """The objects of ``kind`` (and ``name``, if given)."""
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The one object of ``kind`` named ``name`` (fails the test if there is not exactly one)."""
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def trial_template(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The trial Job that ConfigMap nasagent-trial-template carries under key job.yaml."""
    return yaml.safe_load(one(objects, "ConfigMap", "nasagent-trial-template")["data"]["job.yaml"])


def pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod template of the workloads, and of the trial Job template: (where, template)."""
    for obj in objects:
        if obj["kind"] in ("StatefulSet", "Deployment", "DaemonSet", "Job"):
            yield f"{obj['kind']}/{obj['metadata']['name']}", obj["spec"]["template"]
    yield "trial template", trial_template(objects)["spec"]["template"]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions, ANDed)."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        present, value = expr["key"] in labels, labels.get(expr["key"])
        op = expr["operator"]
        if op == "In" and not (present and value in expr["values"]):
            return False
        if op == "NotIn" and present and value in expr["values"]:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def secret_values(secret: dict[str, Any]) -> dict[str, str]:
    """A Secret's values, decoded."""
    data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    data.update(secret.get("stringData") or {})
    return data


# --- rendering and schema validation -------------------------------------------------------------


def test_there_are_dev_gpu_and_kubeflow_overlays() -> None:
    assert {"dev", "gpu", "kubeflow"} <= set(OVERLAYS)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_validates_strictly(
    rendered: dict[str, list[dict[str, Any]]], overlay: str, version: str
) -> None:
    objects = rendered[overlay] + [trial_template(rendered[overlay])]
    errors = []
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as exc:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {getattr(exc, 'message', exc)}")
    assert not errors, f"{overlay} against Kubernetes {version}:\n" + "\n".join(errors)


def test_strict_validation_rejects_a_misspelt_field(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The check above would catch a typo: strict mode rejects a field the schema does not know."""
    job = json.loads(json.dumps(one(rendered["dev"], "Job", "minio-bucket")))
    job["spec"]["template"]["spec"]["automountServiceAcountToken"] = False
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, K8S_VERSIONS[0], strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_everything_lands_in_the_overlays_namespace(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    namespace = kustomization(overlay)["namespace"]
    for obj in rendered[overlay]:
        if obj["kind"] in CLUSTER_SCOPED:
            continue
        assert obj["metadata"].get("namespace") == namespace, f"{obj['kind']}/{obj['metadata']['name']}"
    for ns in find(rendered[overlay], "Namespace"):
        assert ns["metadata"]["name"] == namespace


def test_kubeflow_overlay_leaves_the_profile_namespace_to_kubeflow(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Kubeflow's profile controller owns the namespace: applying (or deleting) ours must not touch it."""
    assert kustomization("kubeflow")["namespace"] == "kubeflow-user-example-com"
    assert not find(rendered["kubeflow"], "Namespace")
    assert [ns["metadata"]["name"] for ns in find(rendered["dev"], "Namespace")] == ["nasagent"]


# --- RBAC ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_agent_role_allows_exactly_what_the_launcher_needs(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objects = rendered[overlay]
    assert not find(objects, "ClusterRole") and not find(objects, "ClusterRoleBinding")
    roles = find(objects, "Role")
    assert [r["metadata"]["name"] for r in roles] == ["nasagent-agent"]
    granted = set()
    for rule in roles[0]["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "verbs"}, "no resourceNames or nonResourceURLs expected"
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"wildcard in {field}"
        granted |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    assert granted == AGENT_RULES

    account = one(objects, "ServiceAccount", "nasagent-agent")
    binding = one(objects, "RoleBinding", "nasagent-agent")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "nasagent-agent"}
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "nasagent-agent", "namespace": account["metadata"]["namespace"]}
    ]


# --- credentials ---------------------------------------------------------------------------------


def test_no_secret_is_written_into_the_manifests() -> None:
    """Secrets exist only as the dev component's generator, never as objects in a file."""
    for path in sorted(MANIFESTS.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict):
                assert doc.get("kind") != "Secret", f"{path} holds a Secret"
                if doc.get("kind") in ("Kustomization", "Component") and doc.get("secretGenerator"):
                    assert path.parent.name == "dev-secrets", f"{path} generates Secrets"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_marked_development_defaults_are_rendered(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    secrets = find(rendered[overlay], "Secret")
    with_dev = any(Path(c).name == "dev-secrets" for c in kustomization(overlay).get("components", []))
    if not with_dev:
        assert not secrets, f"{overlay} must leave the Secrets to the cluster admin"
        return
    assert {s["metadata"]["name"] for s in secrets} == SECRET_NAMES
    for secret in secrets:
        assert secret["metadata"]["annotations"][DEV_MARK] == "true"
        for key, value in secret_values(secret).items():
            if re.search(r"password|secret|url", key, re.I):
                assert "dev-only-insecure" in value, f"{secret['metadata']['name']}.{key} is not marked"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_credentials_come_only_from_the_named_secrets(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    for where, template in pod_specs(rendered[overlay]):
        for container in template["spec"]["containers"]:
            assert "envFrom" not in container
            for env in container.get("env", []):
                if "value" in env:
                    assert not re.search(r"PASSWORD|SECRET|TOKEN|KEY|NASAGENT_DB", env["name"]), (
                        f"{where}: {env['name']} is a literal"
                    )
                else:
                    ref = env["valueFrom"]["secretKeyRef"]
                    assert ref["name"] in SECRET_NAMES, f"{where}: {env['name']} from {ref['name']}"


def test_dev_secrets_provide_every_referenced_key_consistently(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["dev"]
    values = {s["metadata"]["name"]: secret_values(s) for s in find(objects, "Secret")}
    for where, template in pod_specs(objects):
        for container in template["spec"]["containers"]:
            for env in container.get("env", []):
                if "valueFrom" in env:
                    ref = env["valueFrom"]["secretKeyRef"]
                    assert ref["key"] in values[ref["name"]], f"{where}: {ref['name']} has no key {ref['key']}"

    # nasagent-db's URL points at the PostgreSQL that the StatefulSet initialises.
    postgres_env = {
        e["name"]: e.get("value")
        for e in one(objects, "StatefulSet", "postgres")["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    service = one(objects, "Service", "postgres")
    url = urlsplit(values["nasagent-db"]["url"])
    assert url.scheme == "postgresql"
    assert (url.username, url.password) == (
        postgres_env["POSTGRES_USER"],
        values["nasagent-postgres"]["POSTGRES_PASSWORD"],
    )
    assert (url.hostname, url.port, url.path) == (
        "postgres",
        service["spec"]["ports"][0]["port"],
        f"/{postgres_env['POSTGRES_DB']}",
    )

    # nasagent-s3 reaches the MinIO Service as a user that the bucket Job can create (not root).
    s3 = values["nasagent-s3"]
    endpoint = urlsplit(s3["endpoint"])
    assert (endpoint.scheme, endpoint.hostname, endpoint.port) == (
        "http",
        "minio",
        one(objects, "Service", "minio")["spec"]["ports"][0]["port"],
    )
    assert s3["access_key"] != values["nasagent-minio"]["MINIO_ROOT_USER"]
    assert s3["bucket"] and len(s3["secret_key"]) >= 8 and len(values["nasagent-minio"]["MINIO_ROOT_PASSWORD"]) >= 8


# --- network -------------------------------------------------------------------------------------


AGENT_POD = {"app.kubernetes.io/part-of": "nasagent", "nasagent.io/role": "agent"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_admit_only_agent_trials_and_setup(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objects = rendered[overlay]
    trial = trial_template(objects)["spec"]["template"]["metadata"]["labels"]
    setup = one(objects, "Job", "minio-bucket")["spec"]["template"]["metadata"]["labels"]
    outsiders = [
        {"nasagent.io/role": "trial"},  # not part of nasagent
        {"app.kubernetes.io/part-of": "nasagent"},  # no role
        {"app.kubernetes.io/part-of": "nasagent", "nasagent.io/role": "notebook"},
        {"app": "something-else"},
    ]
    expected = {"postgres": (5432, [AGENT_POD, trial], [setup]), "minio": (9000, [AGENT_POD, trial, setup], [])}
    policies = find(objects, "NetworkPolicy")
    assert len(policies) == len(expected)
    for server, (port, admitted, refused) in expected.items():
        pod = one(objects, "StatefulSet", server)["spec"]["template"]["metadata"]["labels"]
        covering = [p for p in policies if selects(p["spec"]["podSelector"], pod)]
        assert len(covering) == 1, f"{server} should be guarded by one policy"
        spec = covering[0]["spec"]
        assert spec["policyTypes"] == ["Ingress"]
        assert [rule["ports"] for rule in spec["ingress"]] == [[{"protocol": "TCP", "port": port}]]
        sources = [peer for rule in spec["ingress"] for peer in rule["from"]]
        assert all(set(peer) == {"podSelector"} for peer in sources), "same-namespace pods only"

        def admits(labels: dict[str, str]) -> bool:
            """Whether some ingress peer of this policy selects a pod with ``labels``."""
            return any(selects(peer["podSelector"], labels) for peer in sources)

        assert all(admits(labels) for labels in admitted), server
        assert not any(admits(labels) for labels in refused + outsiders), server


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_reach_their_statefulsets(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objects = rendered[overlay]
    for name in ("postgres", "minio"):
        service, stateful = one(objects, "Service", name), one(objects, "StatefulSet", name)
        template = stateful["spec"]["template"]
        assert stateful["spec"]["serviceName"] == name
        assert selects({"matchLabels": service["spec"]["selector"]}, template["metadata"]["labels"])
        ports = {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
        assert all(p["targetPort"] in ports for p in service["spec"]["ports"])


# --- storage, pods, images -----------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_postgres_and_minio_keep_their_data_on_claims(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objects = rendered[overlay]
    for name, path in (("postgres", "/var/lib/postgresql/data"), ("minio", "/data")):
        stateful = one(objects, "StatefulSet", name)
        claims = {c["metadata"]["name"]: c["spec"] for c in stateful["spec"]["volumeClaimTemplates"]}
        assert claims["data"]["accessModes"] == ["ReadWriteOnce"]
        assert re.fullmatch(r"\d+[GM]i", claims["data"]["resources"]["requests"]["storage"])
        mounts = {
            m["mountPath"]: m["name"]
            for c in stateful["spec"]["template"]["spec"]["containers"]
            for m in c["volumeMounts"]
        }
        assert mounts[path] == "data"
        pod_volumes = {v["name"] for v in stateful["spec"]["template"]["spec"].get("volumes", [])}
        assert "data" not in pod_volumes, "the claim, not a pod volume, must back the data"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_runs_as_non_root_without_api_access(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    for where, template in pod_specs(rendered[overlay]):
        spec = template["spec"]
        assert spec["automountServiceAccountToken"] is False, where
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["runAsUser"] > 0, where
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert template["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false", where
        for container in spec["containers"]:
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False and ctx["capabilities"] == {"drop": ["ALL"]}, where
            assert ctx["readOnlyRootFilesystem"] is True, where
            assert "memory" in container["resources"]["limits"], where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_server_images_are_pinned_to_exact_releases(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    images = [
        c["image"]
        for obj in rendered[overlay]
        if obj["kind"] in ("StatefulSet", "Job")
        for c in obj["spec"]["template"]["spec"]["containers"]
    ]
    assert len(images) == 3
    for image in images:
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        assert re.match(r"(\d+\.\d+\.\d+|\d+\.\d+-|RELEASE\.\d{4}-\d\d-\d\dT)", tag), f"{image} is not an exact release"
    # Trial images are chosen per experiment: the launcher sets --trial-image.
    assert all("image" not in c for c in trial_template(rendered[overlay])["spec"]["template"]["spec"]["containers"])


# --- trials and GPUs -----------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_trial_template_labels_and_gpu_placement(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    job = trial_template(rendered[overlay])
    labels = {"app.kubernetes.io/part-of": "nasagent", "nasagent.io/role": "trial"}
    assert job["metadata"]["labels"] == labels and job["spec"]["template"]["metadata"]["labels"] == labels
    assert job["spec"]["backoffLimit"] == 0, "the launcher retries; Kubernetes must not as well"
    assert (
        job["spec"]["template"]["metadata"]["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
    )
    pod = job["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    if uses_gpu(overlay):
        assert resources["limits"]["nvidia.com/gpu"] == 1 and resources["requests"]["nvidia.com/gpu"] == 1
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    else:
        assert "nvidia.com/gpu" not in json.dumps(job)


def test_gpu_template_is_the_base_template_plus_a_gpu() -> None:
    """components/gpu/trial-job.yaml repeats base/trial-job.yaml (kustomize cannot patch a file inside a
    ConfigMap); apart from placement and resources the two must stay identical."""
    base = yaml.safe_load((MANIFESTS / "base" / "trial-job.yaml").read_text())
    gpu = yaml.safe_load((MANIFESTS / "components" / "gpu" / "trial-job.yaml").read_text())
    for job in (base, gpu):
        pod = job["spec"]["template"]["spec"]
        pod.pop("nodeSelector", None)
        pod.pop("tolerations", None)
        for container in pod["containers"]:
            container.pop("resources")
    assert gpu == base


def test_gpu_overlays_are_the_ones_that_say_so() -> None:
    assert uses_gpu("gpu") and uses_gpu("kubeflow") and not uses_gpu("dev")


# --- the bucket setup script, against a fake mc ---------------------------------------------------

FAKE_MC = """#!/bin/sh
# A fake of MinIO's `mc` command line (no MinIO server can run here): it logs its arguments, copies
# policy files it is given, and fails `admin policy attach` when FAKE_MC_ATTACHED is set, as the
# real mc does for a policy that is already attached.
echo "$*" >> "$FAKE_MC_LOG"
case "$*" in
  *"admin policy create"*) eval "last=\\${$#}"; cp "$last" "$FAKE_MC_LOG.policy.json" ;;
  *"admin policy attach"*) [ -z "${FAKE_MC_ATTACHED:-}" ] || { echo "policy change is already in effect" >&2; exit 1; } ;;
  *"admin user info"*) echo "PolicyName: nasagent-$S3_BUCKET" ;;
esac
"""


def run_setup(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run base/minio-setup.sh with the fake mc first on PATH; return the result and mc's calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "mc").write_text(FAKE_MC)
    (bin_dir / "mc").chmod(0o755)
    log = tmp_path / "mc.log"
    log.unlink(missing_ok=True)
    base_env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "TMPDIR": str(tmp_path),
        "FAKE_MC_LOG": str(log),
        "MINIO_URL": "http://minio:9000",
        "MINIO_ROOT_USER": "root",
        "MINIO_ROOT_PASSWORD": "rootpassword",
        "S3_ACCESS_KEY": "nasagent",
        "S3_SECRET_KEY": "s3secretkey",
        "S3_BUCKET": "models",
    }
    done = subprocess.run(
        ["sh", str(MANIFESTS / "base" / "minio-setup.sh")],
        env=base_env | env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done, log.read_text().splitlines() if log.exists() else []


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_bucket_setup_creates_a_bucket_scoped_user(tmp_path: Path) -> None:
    done, calls = run_setup(tmp_path)
    assert done.returncode == 0, done.stderr
    mc = [re.sub(r"^--config-dir \S+ ", "", c) for c in calls]
    assert mc[:3] == [
        "alias set nasagent http://minio:9000 root rootpassword",
        "mb --ignore-existing nasagent/models",
        "admin user add nasagent nasagent s3secretkey",
    ]
    assert mc[3].startswith("admin policy create nasagent nasagent-models ")
    assert mc[4] == "admin policy attach nasagent nasagent-models --user nasagent"
    assert all(c.startswith(f"--config-dir {tmp_path}/mc ") for c in calls), (
        "mc's config must go to the writable TMPDIR"
    )
    policy = json.loads((tmp_path / "mc.log.policy.json").read_text())
    resources = {r for statement in policy["Statement"] for r in statement["Resource"]}
    assert resources == {"arn:aws:s3:::models", "arn:aws:s3:::models/*"}
    assert not any("*" == a or a == "s3:*" for s in policy["Statement"] for a in s["Action"])


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_bucket_setup_runs_again_and_leaves_the_root_user_alone(tmp_path: Path) -> None:
    again, calls = run_setup(tmp_path, FAKE_MC_ATTACHED="1")
    assert again.returncode == 0, again.stderr
    assert any("admin user info" in c for c in calls)

    as_root, calls = run_setup(tmp_path, S3_ACCESS_KEY="root")
    assert as_root.returncode == 0, as_root.stderr
    assert not any("admin" in c for c in calls) and any("mb --ignore-existing" in c for c in calls)

    missing, _ = run_setup(tmp_path, S3_BUCKET="")
    assert missing.returncode != 0
