"""The Kubernetes manifests (manifests/): every overlay renders with ``kubectl kustomize`` and every
rendered object, and the trial Job template inside its ConfigMap, validates with
kubernetes-validate in strict mode (unknown fields are errors) against pinned Kubernetes versions:
1.30.0, the oldest supported, and 1.37.0, the newest the installed schemas know. Then the security
properties: the agent's Role holds exactly the verbs of the requests the real client adapter makes
(derived here from those requests), the trials' ServiceAccount is bound to nothing, no secret
values ship except the marked development defaults and pods read Secrets as files,
NetworkPolicies admit only nasagent's agent and trials (and PostgreSQL the dashboard) and cover
every pod, data sit on PersistentVolumeClaims, pods run as a high non-root user with CPU and memory
limits, server images are pinned by release and digest and nasagent's own by its release, the GPU
overlays request GPUs, only the overlays without a platform S3 store get nasagent's own SeaweedFS,
and every overlay has the live dashboard (components/dashboard), reachable in the Kubeflow overlay
through Kubeflow's gateway at its namespace's path. tests/test_admission.py checks the pods against
the Pod Security "restricted" profile, tests/test_checkov.py runs a real scanner,
tests/test_dashboard_manifests.py the dashboard component on its own and its database role.

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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import kubernetes_validate
import pytest
import yaml
from launcher_helpers import FakeApiServer

from nasagent.execution.kubernetes import ClientApi, KubernetesApi, trial_job
from nasagent.execution.launchers import launcher_settings

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # components/ lives at the repository root
    sys.path.insert(0, str(REPO))

from components import AGENT_IMAGE, REGISTRY  # noqa: E402

MANIFESTS = REPO / "manifests"
KUBECTL = Path(sys.executable).parent / "kubectl"
K8S_VERSIONS = ("1.30.0", "1.37.0")
OVERLAYS = sorted(p.name for p in (MANIFESTS / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
SECRET_NAMES = {"nasagent-postgres", "nasagent-db", "nasagent-trial-db", "nasagent-dashboard-db", "nasagent-s3"}
DEV_MARK = "nasagent.io/development-defaults"
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass"}
WORKLOADS = ("StatefulSet", "Deployment", "DaemonSet", "Job")
# Overlays whose namespace has no S3 store of the platform's, and so get components/seaweedfs.
OWN_OBJECT_STORE = {"dev", "gpu"}
# Overlays inside a Kubeflow profile namespace: the dashboard behind Kubeflow's gateway and login.
KUBEFLOW = {"kubeflow"}


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
        if obj["apiVersion"].startswith("networking.istio.io/"):
            # No Kubernetes schema knows Istio's kinds (and no Istio schema is installed here): the
            # dashboard's VirtualService is compared field by field in its own test below.
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as exc:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {getattr(exc, 'message', exc)}")
    assert not errors, f"{overlay} against Kubernetes {version}:\n" + "\n".join(errors)


def test_strict_validation_rejects_a_misspelt_field(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The check above would catch a typo: strict mode rejects a field the schema does not know."""
    job = json.loads(json.dumps(one(rendered["dev"], "StatefulSet", "seaweedfs")))
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


def rbac_attributes(method: str, path: str) -> tuple[str, str, str]:
    """(API group, resource, verb) that the API server authorizes an HTTP request as, by the rules
    of Kubernetes' request info: POST create, PUT update, PATCH patch, DELETE delete (deletecollection
    without a name), GET get with a name, else list, or watch with ``watch=true``."""
    url = urlsplit(path)
    parts = url.path.strip("/").split("/")
    group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
    assert rest[0] == "namespaces", f"{path}: only namespaced requests expected"
    resource = "/".join([rest[2]] + rest[4:5])
    named = len(rest) > 3
    watch = parse_qs(url.query).get("watch", [""])[0].lower() in ("true", "1")
    verbs = {"POST": "create", "PUT": "update", "PATCH": "patch"}
    if method in verbs:
        return group, resource, verbs[method]
    if method == "DELETE":
        return group, resource, "delete" if named else "deletecollection"
    return group, resource, "get" if named else ("watch" if watch else "list")


def adapter_requests() -> set[tuple[str, str, str]]:
    """What the real client adapter (``ClientApi``, on the official client) asks the API server
    for, as RBAC attributes: every method of ``KubernetesApi`` is called once against a FAKE API
    server over HTTP (no real one can run here) that records the requests."""
    from kubernetes import client

    calls: dict[str, Callable[[ClientApi], Any]] = {
        "create_job": lambda api: api.create_job("nas", trial_job(launcher_settings_for_rbac(), 1, 1, "nas-x-1-1-a")),
        "delete_job": lambda api: api.delete_job("nas", "gone"),
        "list_jobs": lambda api: api.list_jobs("nas", "nasagent.io/role=trial"),
        "watch_jobs": lambda api: list(api.watch_jobs("nas", "nasagent.io/role=trial", "8", 5)),
        "list_pods": lambda api: api.list_pods("nas", "job-name=x"),
        "read_pod": lambda api: api.read_pod("nas", "agent"),
    }
    protocol = {name for name in vars(KubernetesApi) if not name.startswith("_")}
    assert set(calls) == protocol, "call every method of KubernetesApi here"
    server = FakeApiServer()
    try:
        configuration = client.Configuration()
        configuration.host = server.url
        api = ClientApi(client.ApiClient(configuration))
        for call in calls.values():
            call(api)
    finally:
        server.close()
    return {rbac_attributes(method, path) for method, path in server.requests}


def launcher_settings_for_rbac() -> Any:
    """Settings for one trial Job, to create through the adapter."""
    return launcher_settings("kubernetes", "x", 1, {"image": "img:1", "namespace": "nas"})


def test_the_adapter_requests_are_what_the_role_documents() -> None:
    """The derivation itself: these are the launcher's requests today (so a change shows here)."""
    assert adapter_requests() == {
        ("batch", "jobs", "create"),
        ("batch", "jobs", "delete"),
        ("batch", "jobs", "list"),
        ("batch", "jobs", "watch"),
        ("", "pods", "list"),
        ("", "pods", "get"),
    }
    assert rbac_attributes("GET", "/api/v1/namespaces/n/pods/p/log?tailLines=5") == ("", "pods/log", "get")
    assert rbac_attributes("DELETE", "/apis/batch/v1/namespaces/n/jobs") == ("batch", "jobs", "deletecollection")


def granted(role: dict[str, Any]) -> set[tuple[str, str, str, str]]:
    """A Role's rules as (API group, resource, resource name or "", verb); no wildcards allowed."""
    result = set()
    for rule in role["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "resourceNames", "verbs"}, "no nonResourceURLs expected"
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"wildcard in {field}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for name in rule.get("resourceNames", [""]):
                    result |= {(group, resource, name, verb) for verb in rule["verbs"]}
    return result


# What KFP's own containers need in every step pod of a run started as nasagent-agent, as read in
# the KFP backend of each supported release (docs/kubeflow.md, "Identity: who the steps run as").
KFP_STEP_RULES = {
    ("", "configmaps", "kfp-launcher", "get"),
    ("", "secrets", "mlpipeline-minio-artifact", "get"),
    ("", "pods", "", "get"),
    ("argoproj.io", "workflowtaskresults", "", "create"),
    ("argoproj.io", "workflowtaskresults", "", "patch"),
}


def render_with(overlay: str, component: str, tmp_path: Path) -> list[dict[str, Any]]:
    """An overlay with one more component, as an admin's copy of it would add it."""
    root = tmp_path / "with-component"
    root.mkdir()
    (root / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(MANIFESTS / "overlays" / overlay, root)],
                "components": [os.path.relpath(MANIFESTS / "components" / component, root)],
            }
        )
    )
    return render(root)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_agent_role_allows_exactly_what_the_adapter_requests(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objects = rendered[overlay]
    assert not find(objects, "ClusterRole") and not find(objects, "ClusterRoleBinding")
    roles = {r["metadata"]["name"]: granted(r) for r in find(objects, "Role")}
    assert {(g, r, v) for g, r, n, v in roles.pop("nasagent-agent")} == adapter_requests()
    # Kubeflow only: what KFP's own step containers need, kept in a Role of its own.
    assert roles == ({"nasagent-kfp-step": KFP_STEP_RULES} if overlay == "kubeflow" else {})

    account = one(objects, "ServiceAccount", "nasagent-agent")
    for binding in find(objects, "RoleBinding"):
        name = binding["metadata"]["name"]
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name}
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "nasagent-agent", "namespace": account["metadata"]["namespace"]}
        ]


def test_the_kfp_launcher_component_grants_the_kfp_api_calls_only(tmp_path: Path) -> None:
    """components/kfp-launcher, for --launcher kfp: the KFP API's resources for what KfpClient
    calls (experiments found or created; runs created, read, listed, terminated), nothing else."""
    objects = render_with("kubeflow", "kfp-launcher", tmp_path)
    role = one(objects, "Role", "nasagent-kfp-launcher")
    assert granted(role) == {
        ("pipelines.kubeflow.org", "experiments", "", verb) for verb in ("get", "list", "create")
    } | {("pipelines.kubeflow.org", "runs", "", verb) for verb in ("get", "list", "create", "terminate")}
    binding = one(objects, "RoleBinding", "nasagent-kfp-launcher")
    assert [s["name"] for s in binding["subjects"]] == ["nasagent-agent"]
    for version in K8S_VERSIONS:
        for obj in (role, binding):
            kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_trials_run_as_a_service_account_without_rights_or_token(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objects = rendered[overlay]
    account = one(objects, "ServiceAccount", "nasagent-trial")
    assert account["automountServiceAccountToken"] is False
    bound = {s["name"] for b in find(objects, "RoleBinding") for s in b["subjects"] if s["kind"] == "ServiceAccount"}
    assert bound == {"nasagent-agent"}, "nasagent-trial is bound to nothing"
    pod = trial_template(objects)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "nasagent-trial" and pod["automountServiceAccountToken"] is False


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
def test_pods_read_secrets_as_files_from_the_named_secrets(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    """No manifest puts a Secret into an environment variable (the trial Job's own environment is
    the launcher's, tests/test_checkov.py); the Secrets mounted are the documented ones."""
    for where, template in pod_specs(rendered[overlay]):
        spec = template["spec"]
        for container in spec["containers"] + spec.get("initContainers", []):
            assert "envFrom" not in container
            for env in container.get("env", []):
                assert "valueFrom" not in env, f"{where}: {env['name']} comes from a Secret"
                if not env["value"].startswith("/"):  # a file's path is no credential
                    assert not re.search(r"PASSWORD|SECRET|TOKEN|_KEY$|NASAGENT_DB", env["name"]), (
                        f"{where}: {env['name']} is a literal"
                    )
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] in SECRET_NAMES, f"{where}: {volume['secret']}"
                assert volume["secret"]["defaultMode"] == 0o440, f"{where}: readable by the pod's group only"


def mounted_secret_file(spec: dict[str, Any], container: dict[str, Any], path: str) -> tuple[str, str]:
    """(Secret name, key) of the file ``path`` a container reads from a mounted Secret."""
    volumes = {v["name"]: v for v in spec["volumes"]}
    for mount in container["volumeMounts"]:
        if path.startswith(mount["mountPath"] + "/") and "secret" in volumes[mount["name"]]:
            return volumes[mount["name"]]["secret"]["secretName"], path[len(mount["mountPath"]) + 1 :]
    raise AssertionError(f"{path} is not in a mounted Secret")


def test_dev_secrets_provide_every_referenced_key_consistently(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["dev"]
    values = {s["metadata"]["name"]: secret_values(s) for s in find(objects, "Secret")}

    # PostgreSQL reads its passwords from the files of Secret nasagent-postgres.
    postgres = one(objects, "StatefulSet", "postgres")["spec"]["template"]["spec"]
    container = postgres["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    files = {
        name: mounted_secret_file(postgres, container, env[name])
        for name in ("POSTGRES_PASSWORD_FILE", "NASAGENT_TRIAL_PASSWORD_FILE", "NASAGENT_DASHBOARD_PASSWORD_FILE")
    }
    assert files == {
        "POSTGRES_PASSWORD_FILE": ("nasagent-postgres", "POSTGRES_PASSWORD"),
        "NASAGENT_TRIAL_PASSWORD_FILE": ("nasagent-postgres", "TRIAL_PASSWORD"),
        "NASAGENT_DASHBOARD_PASSWORD_FILE": ("nasagent-postgres", "DASHBOARD_PASSWORD"),
    }
    service = one(objects, "Service", "postgres")

    # nasagent-db is the owner (the agent), nasagent-trial-db the trial role, nasagent-dashboard-db
    # the dashboard's read-only role; all reach that server.
    for secret, user, password in (
        ("nasagent-db", env["POSTGRES_USER"], values["nasagent-postgres"]["POSTGRES_PASSWORD"]),
        ("nasagent-trial-db", "nasagent_trial", values["nasagent-postgres"]["TRIAL_PASSWORD"]),
        ("nasagent-dashboard-db", "nasagent_dashboard", values["nasagent-postgres"]["DASHBOARD_PASSWORD"]),
    ):
        url = urlsplit(values[secret]["url"])
        assert (url.scheme, url.username, url.password) == ("postgresql", user, password), secret
        assert (url.hostname, url.port, url.path) == (
            "postgres",
            service["spec"]["ports"][0]["port"],
            f"/{env['POSTGRES_DB']}",
        ), secret
    # The roles the init scripts create are the ones migrations 003 and 006 grant to.
    migrations = REPO / "nasagent" / "persistence" / "migrations"
    assert "ALTER ROLE nasagent_trial LOGIN" in (MANIFESTS / "base" / "postgres-init.sh").read_text()
    assert "TO nasagent_trial" in (migrations / "003_trial_role.sql").read_text()
    role_script = (MANIFESTS / "components" / "dashboard" / "dashboard-role.sh").read_text()
    assert "ALTER ROLE nasagent_dashboard LOGIN" in role_script and "NASAGENT_DASHBOARD_PASSWORD_FILE" in role_script
    assert "TO nasagent_dashboard" in (migrations / "006_trial_epochs.sql").read_text()

    # The dashboard reads its URL from the file of nasagent-dashboard-db that it mounts.
    dashboard = one(objects, "Deployment", "nasagent-dashboard")["spec"]["template"]["spec"]
    command = dashboard["containers"][0]["command"]
    db_file = next(arg.partition("=")[2] for arg in command if arg.startswith("--db-file="))
    assert mounted_secret_file(dashboard, dashboard["containers"][0], db_file) == ("nasagent-dashboard-db", "url")

    # nasagent-s3 reaches SeaweedFS's S3 port, with keys that its identities file accepts.
    s3 = values["nasagent-s3"]
    endpoint = urlsplit(s3["endpoint"])
    assert (endpoint.scheme, endpoint.hostname, endpoint.port) == (
        "http",
        "seaweedfs",
        one(objects, "Service", "seaweedfs")["spec"]["ports"][0]["port"],
    )
    done, config = run_s3_config(Path(os.environ.get("TMPDIR", "/tmp")), s3)
    assert done.returncode == 0, done.stderr
    assert config["identities"][0]["credentials"] == [{"accessKey": s3["access_key"], "secretKey": s3["secret_key"]}]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_postgres_does_not_start_without_a_password_its_init_scripts_read(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    """Secret nasagent-postgres's volume names every key a ``*_PASSWORD_FILE`` of PostgreSQL points
    to: without one the pod does not start (the kubelet cannot find the key), rather than the init
    scripts failing half-way through, after which a restart would skip them on the initialised
    volume and leave a role without its login."""
    postgres = one(rendered[overlay], "StatefulSet", "postgres")["spec"]["template"]["spec"]
    container = postgres["containers"][0]
    read = {
        mounted_secret_file(postgres, container, e["value"])
        for e in container["env"]
        if e["name"].endswith("PASSWORD_FILE")
    }
    assert read == {("nasagent-postgres", key) for key in ("POSTGRES_PASSWORD", "TRIAL_PASSWORD", "DASHBOARD_PASSWORD")}
    volume = next(v["secret"] for v in postgres["volumes"] if v["name"] == "credentials")
    assert sorted((item["key"], item["path"]) for item in volume["items"]) == sorted((k, k) for _, k in read)
    assert not volume.get("optional")
    scripts = one(rendered[overlay], "ConfigMap", "nasagent-postgres-init")["data"]
    assert sorted(scripts) == ["dashboard-role.sh", "trial-role.sh"]


# --- network -------------------------------------------------------------------------------------


AGENT_POD = {"app.kubernetes.io/part-of": "nasagent", "nasagent.io/role": "agent"}
SERVERS = {"postgres": 5432, "seaweedfs": 8333}
# Who may connect to each server, besides the agent and the trials: the dashboard reads the store.
ALSO_ADMITTED = {"postgres": {"dashboard"}, "seaweedfs": set()}


def dashboard_pod(objects: list[dict[str, Any]]) -> dict[str, str]:
    """The labels of the dashboard's pods."""
    return one(objects, "Deployment", "nasagent-dashboard")["spec"]["template"]["metadata"]["labels"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_admit_only_nasagents_own_pods(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objects = rendered[overlay]
    trial = trial_template(objects)["spec"]["template"]["metadata"]["labels"]
    dashboard = dashboard_pod(objects)
    assert dashboard["nasagent.io/role"] == "dashboard"
    outsiders = [
        {"nasagent.io/role": "trial"},  # not part of nasagent
        {"app.kubernetes.io/part-of": "nasagent"},  # no role
        {"app.kubernetes.io/part-of": "nasagent", "nasagent.io/role": "notebook"},
        {"app": "something-else"},
    ]
    policies = find(objects, "NetworkPolicy")
    servers = {name: port for name, port in SERVERS.items() if find(objects, "StatefulSet", name)}
    assert set(servers) == ({"postgres", "seaweedfs"} if overlay in OWN_OBJECT_STORE else {"postgres"})
    for server, port in servers.items():
        pod = one(objects, "StatefulSet", server)["spec"]["template"]["metadata"]["labels"]
        covering = [p for p in policies if selects(p["spec"]["podSelector"], pod)]
        assert len(covering) == 1, f"{server} should be guarded by one policy"
        spec = covering[0]["spec"]
        assert spec["policyTypes"] == ["Ingress"]
        assert [rule["ports"] for rule in spec["ingress"]] == [[{"protocol": "TCP", "port": port}]]
        sources = [peer for rule in spec["ingress"] for peer in rule["from"]]
        assert all(set(peer) == {"podSelector"} for peer in sources), "same-namespace pods only"

        def admits(labels: dict[str, str], sources: list[dict[str, Any]] = sources) -> bool:
            """Whether some ingress peer of this policy selects a pod with ``labels``."""
            return any(selects(peer["podSelector"], labels) for peer in sources)

        assert admits(AGENT_POD) and admits(trial), server
        assert admits(dashboard) == ("dashboard" in ALSO_ADMITTED[server]), server
        assert not any(admits(labels) for labels in outsiders), server

    # Agent and trial pods accept no connections; every pod of the overlay has a policy.
    for labels in (AGENT_POD, trial):
        denying = [p for p in policies if selects(p["spec"]["podSelector"], labels)]
        assert [p["spec"].get("ingress") for p in denying] == [[]], labels
    for where, template in pod_specs(objects):
        assert any(selects(p["spec"]["podSelector"], template["metadata"]["labels"]) for p in policies), where

    # The dashboard: only the Istio ingress gateway (Kubeflow's authenticated entry), on its port.
    guarding = [p["spec"] for p in policies if selects(p["spec"]["podSelector"], dashboard)]
    assert len(guarding) == 1 and guarding[0]["policyTypes"] == ["Ingress"]
    assert guarding[0]["ingress"] == [
        {
            "from": [
                {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "istio-system"}},
                    "podSelector": {"matchLabels": {"app": "istio-ingressgateway"}},
                }
            ],
            "ports": [{"protocol": "TCP", "port": 8080}],
        }
    ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_reach_their_statefulsets(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objects = rendered[overlay]
    for name in SERVERS:
        if not find(objects, "StatefulSet", name):
            continue
        service, stateful = one(objects, "Service", name), one(objects, "StatefulSet", name)
        template = stateful["spec"]["template"]
        assert stateful["spec"]["serviceName"] == name
        assert selects({"matchLabels": service["spec"]["selector"]}, template["metadata"]["labels"])
        ports = {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
        assert all(p["targetPort"] in ports for p in service["spec"]["ports"])


# --- storage, pods, images -----------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_servers_keep_their_data_on_claims(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objects = rendered[overlay]
    for name, path in (("postgres", "/var/lib/postgresql/data"), ("seaweedfs", "/data")):
        if not find(objects, "StatefulSet", name):
            continue
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
def test_only_overlays_without_a_platform_store_get_seaweedfs(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    names = {o["metadata"]["name"] for o in rendered[overlay]}
    assert ("seaweedfs" in names) == (overlay in OWN_OBJECT_STORE)
    assert not [n for n in names if "minio" in n], "MinIO is gone"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_runs_as_a_high_non_root_user_without_api_access(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    for where, template in pod_specs(rendered[overlay]):
        spec = template["spec"]
        assert spec["automountServiceAccountToken"] is False, where
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        # High, so the user cannot be one of the node's own (checkov CKV_K8S_40).
        assert spec["securityContext"]["runAsUser"] >= 10000, where
        assert spec["securityContext"]["runAsGroup"] >= 10000, where
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        # No Istio sidecar (a trial Job must be able to finish), but for the dashboard in a Kubeflow
        # profile: there the sidecar is what applies the profile's authorization to it.
        sidecar = overlay in KUBEFLOW and where == "Deployment/nasagent-dashboard"
        assert template["metadata"]["annotations"]["sidecar.istio.io/inject"] == str(sidecar).lower(), where
        for container in spec["containers"] + spec.get("initContainers", []):
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False and ctx["capabilities"] == {"drop": ["ALL"]}, where
            assert ctx["readOnlyRootFilesystem"] is True, where
            limits, requests = container["resources"]["limits"], container["resources"]["requests"]
            assert {"cpu", "memory"} <= set(limits) and {"cpu", "memory"} <= set(requests), where


def workload_containers(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every container (and init container) of the workloads."""
    return [
        c
        for obj in objects
        if obj["kind"] in WORKLOADS
        for c in obj["spec"]["template"]["spec"]["containers"]
        + obj["spec"]["template"]["spec"].get("initContainers", [])
    ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_server_images_are_pinned_to_exact_releases_and_digests(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    containers = workload_containers(rendered[overlay])
    own = [c for c in containers if c["image"].startswith(f"{REGISTRY}/")]
    images = [c["image"] for c in containers if c not in own]
    assert len(images) == (3 if overlay in OWN_OBJECT_STORE else 1)
    # nasagent's own image (the dashboard's): the release the pipeline's steps run, pulled at every
    # start until the admin pins the digest of the build they pushed (test below).
    assert [(c["image"], c["imagePullPolicy"]) for c in own] == [(AGENT_IMAGE, "Always")]
    for image in images:
        reference, _, digest = image.partition("@")
        tag = reference.rsplit("/", 1)[-1].partition(":")[2]
        assert re.match(r"(\d+\.\d+\.\d+|\d+\.\d+-|\d+\.\d+$)", tag), f"{image} is not an exact release"
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"{image} is not pinned by digest"
    # Trial images are chosen per experiment: the launcher sets --trial-image.
    assert all("image" not in c for c in trial_template(rendered[overlay])["spec"]["template"]["spec"]["containers"])


def test_the_admin_pins_nasagents_own_image_by_digest_with_kustomize(tmp_path: Path) -> None:
    """What docs/dashboard.md tells the admin to do after ``make images-push``: an ``images:`` entry
    in their kustomization replaces the dashboard's image by their registry's build, by digest."""
    digest = "sha256:" + "ab" * 32
    root = tmp_path / "pinned"
    root.mkdir()
    (root / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(MANIFESTS / "overlays" / "gpu", root)],
                "images": [
                    {
                        "name": AGENT_IMAGE.partition(":")[0],
                        "newName": "registry.example.com/ml/nasagent-agent",
                        "digest": digest,
                    }
                ],
            }
        )
    )
    own = [c["image"] for c in workload_containers(render(root)) if "nasagent-agent" in c["image"]]
    assert own == [f"registry.example.com/ml/nasagent-agent@{digest}"]


# --- the dashboard -------------------------------------------------------------------------------


def test_every_overlay_has_the_dashboard_and_kubeflow_its_route() -> None:
    for overlay in OVERLAYS:
        components = [Path(c).as_posix() for c in kustomization(overlay).get("components", [])]
        assert "../../components/dashboard" in components, overlay
        kubeflow_part = "../../components/dashboard/kubeflow"
        assert (kubeflow_part in components) == (overlay in KUBEFLOW), overlay
        if overlay in KUBEFLOW:  # it patches the dashboard's Deployment, so it comes after it
            assert components.index(kubeflow_part) > components.index("../../components/dashboard")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_dashboard_is_served_inside_the_cluster_only(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objects = rendered[overlay]
    deployment = one(objects, "Deployment", "nasagent-dashboard")
    service = one(objects, "Service", "nasagent-dashboard")
    assert service["spec"]["type"] == "ClusterIP" and selects(
        {"matchLabels": service["spec"]["selector"]}, deployment["spec"]["template"]["metadata"]["labels"]
    )
    assert not find(objects, "Ingress") and all(
        s["spec"].get("type", "ClusterIP") == "ClusterIP" for s in find(objects, "Service")
    )
    routes = find(objects, "VirtualService")
    if overlay not in KUBEFLOW:
        assert not routes  # kubectl port-forward svc/nasagent-dashboard 8080:80
        return
    # Kubeflow: /nasagent/<namespace>/ on Kubeflow's own gateway (behind its login) to the Service.
    namespace = kustomization(overlay)["namespace"]
    [route] = routes
    assert set(route) == {"apiVersion", "kind", "metadata", "spec"}
    assert route["apiVersion"] == "networking.istio.io/v1beta1" and set(route["spec"]) == {"gateways", "hosts", "http"}
    assert route["spec"]["gateways"] == ["kubeflow/kubeflow-gateway"] and route["spec"]["hosts"] == ["*"]
    http = {rule["name"]: rule for rule in route["spec"]["http"]}
    assert [set(rule) for rule in route["spec"]["http"]] == [
        {"name", "match", "redirect"},
        {"name", "match", "rewrite", "route"},
    ]
    assert http["nasagent-dashboard"]["rewrite"] == {"uri": "/"}  # the page asks by relative URLs
    assert http["nasagent-dashboard-slash"]["match"] == [{"uri": {"exact": f"/nasagent/{namespace}"}}]
    assert http["nasagent-dashboard-slash"]["redirect"] == {"uri": f"/nasagent/{namespace}/"}
    assert http["nasagent-dashboard"]["match"] == [{"uri": {"prefix": f"/nasagent/{namespace}/"}}]
    destination = http["nasagent-dashboard"]["route"][0]["destination"]
    assert destination == {"host": service["metadata"]["name"], "port": {"number": service["spec"]["ports"][0]["port"]}}
    links = json.loads(
        (MANIFESTS / "components" / "dashboard" / "kubeflow" / "centraldashboard-links.json").read_text()
    )
    assert [link["link"] for link in links["menuLinks"]] == [f"/nasagent/{namespace}/"]


def test_the_dashboards_route_follows_the_kubeflow_overlays_namespace(tmp_path: Path) -> None:
    """Another profile: change the overlay's one namespace line, and the route is that namespace's."""
    copy = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, copy)
    path = copy / "overlays" / "kubeflow" / "kustomization.yaml"
    text = path.read_text()
    assert text.count("namespace: kubeflow-user-example-com\n") == 1
    path.write_text(text.replace("namespace: kubeflow-user-example-com\n", "namespace: team-vision\n"))
    route = one(render(path.parent), "VirtualService", "nasagent-dashboard")
    assert route["metadata"]["namespace"] == "team-vision"
    uris = json.dumps(route["spec"]["http"])
    assert "kubeflow-user-example-com" not in uris and uris.count("/nasagent/team-vision") == 3


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
    ConfigMap); apart from placement, resources and the /dev/shm size the two must stay identical."""
    base = yaml.safe_load((MANIFESTS / "base" / "trial-job.yaml").read_text())
    gpu = yaml.safe_load((MANIFESTS / "components" / "gpu" / "trial-job.yaml").read_text())
    for job in (base, gpu):
        pod = job["spec"]["template"]["spec"]
        pod.pop("nodeSelector", None)
        pod.pop("tolerations", None)
        for container in pod["containers"]:
            container.pop("resources")
        for volume in pod["volumes"]:
            if volume["name"] == "shm":
                volume["emptyDir"].pop("sizeLimit")
    assert gpu == base


def test_gpu_overlays_are_the_ones_that_say_so() -> None:
    assert uses_gpu("gpu") and uses_gpu("kubeflow") and not uses_gpu("dev")


# --- SeaweedFS's identities file, written from Secret nasagent-s3 -------------------------------------

S3_SECRET = {"access_key": "nasagent", "secret_key": "s3secretkey+/=", "bucket": "models"}


def run_s3_config(tmp_path: Path, secret: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], Any]:
    """Run components/seaweedfs/s3-config.sh with ``secret`` as the mounted Secret's files; return
    the result and the identities file it wrote (None if none)."""
    secret_dir = tmp_path / f"secret-{len(list(tmp_path.glob('secret-*')))}"
    secret_dir.mkdir(parents=True)
    for key, value in secret.items():
        (secret_dir / key).write_text(value)
    config = secret_dir / "s3.json"
    done = subprocess.run(
        ["sh", str(MANIFESTS / "components" / "seaweedfs" / "s3-config.sh")],
        env={"PATH": os.environ["PATH"], "S3_SECRET_DIR": str(secret_dir), "S3_CONFIG": str(config)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done, json.loads(config.read_text()) if config.exists() else None


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_seaweedfs_knows_one_identity_scoped_to_the_bucket(tmp_path: Path) -> None:
    done, config = run_s3_config(tmp_path, S3_SECRET)
    assert done.returncode == 0, done.stderr
    assert config == {
        "identities": [
            {
                "name": "nasagent",
                "credentials": [{"accessKey": "nasagent", "secretKey": "s3secretkey+/="}],
                "actions": ["Read:models", "List:models", "Write:models"],
            }
        ]
    }
    assert "s3secretkey" not in done.stdout + done.stderr, "the secret key is never printed"
    written = next(tmp_path.glob("secret-*/s3.json"))
    assert written.stat().st_mode & 0o077 == 0, "the identities file is private"


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
@pytest.mark.parametrize(
    "change, words",
    [
        ({"secret_key": 'a"b}, {"x'}, "may hold only letters"),
        ({"access_key": "a b"}, "may hold only letters"),
        ({"secret_key": "short"}, "secret_key at least 8"),
        ({"bucket": "Models_1"}, "not a valid S3 bucket name"),
        ({"bucket": None}, "Secret nasagent-s3 has no key bucket"),
    ],
)
def test_seaweedfs_setup_refuses_keys_it_cannot_write_safely(
    tmp_path: Path, change: dict[str, str | None], words: str
) -> None:
    secret = {k: v for k, v in {**S3_SECRET, **change}.items() if v is not None}
    done, config = run_s3_config(tmp_path, secret)  # type: ignore[arg-type]
    assert done.returncode != 0 and config is None
    assert words in done.stderr and len(done.stderr.strip().splitlines()) == 1
