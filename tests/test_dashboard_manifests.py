"""The dashboard on a cluster: manifests/components/dashboard (and its kubeflow part) on top of the
base, rendered with ``kubectl kustomize`` as an overlay would include them, validated strictly
against the pinned Kubernetes versions, admitted under Pod Security "restricted", exposed to
nobody but the Istio ingress gateway, and its database role: created by the PostgreSQL init script
with the real psql, able to read everything and to write nothing, and enough for the dashboard.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import kubernetes_validate
import psycopg2
import psycopg2.errors
import pytest
import yaml
from test_admission import restricted_violations
from test_dashboard import seed

from nasagent.dashboard import data
from nasagent.dashboard.store import ReadOnlyStore
from nasagent.persistence.postgres import Store

REPO = Path(__file__).resolve().parent.parent
COMPONENT = REPO / "manifests" / "components" / "dashboard"
KUBECTL = Path(sys.executable).parent / "kubectl"
K8S_VERSIONS = ("1.30.0", "1.37.0")
NAMESPACE = "kubeflow-user-example-com"


def render(tmp_path: Path, kubeflow: bool) -> list[dict[str, Any]]:
    """base + components/dashboard (+ its kubeflow part) in ``NAMESPACE``, as an overlay includes them."""
    root = tmp_path / ("kubeflow" if kubeflow else "plain")
    root.mkdir()
    components = [COMPONENT] + ([COMPONENT / "kubeflow"] if kubeflow else [])
    (root / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": NAMESPACE,
                "resources": [os.path.relpath(REPO / "manifests" / "base", root)],
                "components": [os.path.relpath(c, root) for c in components],
            }
        )
    )
    done = subprocess.run([str(KUBECTL), "kustomize", str(root)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


@pytest.mark.parametrize("kubeflow", [False, True], ids=["plain", "kubeflow"])
def test_the_dashboard_renders_validates_and_is_admitted_under_restricted(tmp_path: Path, kubeflow: bool) -> None:
    objects = render(tmp_path, kubeflow)
    for obj in objects:
        if obj["apiVersion"].startswith("networking.istio.io"):
            continue  # an Istio resource: no Kubernetes schema knows it (checked below)
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
    deployment = one(objects, "Deployment", "nasagent-dashboard")
    template = deployment["spec"]["template"]
    assert restricted_violations(template["spec"], template["metadata"].get("annotations")) == []
    pod = template["spec"]
    assert pod["automountServiceAccountToken"] is False and pod["securityContext"]["runAsUser"] >= 10000
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    assert "--db-file=/run/secrets/nasagent-dashboard-db/url" in container["command"]
    assert not any("valueFrom" in e for e in container.get("env", [])), "secrets are read as files"
    secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets == {"nasagent-dashboard-db"}
    inject = template["metadata"]["annotations"]["sidecar.istio.io/inject"]
    assert inject == ("true" if kubeflow else "false")

    service = one(objects, "Service", "nasagent-dashboard")
    assert service["spec"]["type"] == "ClusterIP" and "externalIPs" not in service["spec"]
    assert all("nodePort" not in p for p in service["spec"]["ports"])
    ports = {p["name"] for p in container["ports"]}
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"] and "http" in ports
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    assert not [o for o in objects if o["kind"] == "Ingress"], "nothing public"

    # Only the Istio ingress gateway reaches the dashboard; the store admits the dashboard.
    policy = one(objects, "NetworkPolicy", "nasagent-dashboard-ingress")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    assert policy["spec"]["ingress"] == [
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
    postgres = one(objects, "NetworkPolicy", "postgres-ingress")
    roles = postgres["spec"]["ingress"][0]["from"][0]["podSelector"]["matchExpressions"][0]["values"]
    assert sorted(roles) == ["agent", "dashboard", "trial"]
    init = one(objects, "ConfigMap", "nasagent-postgres-init")["data"]
    assert set(init) == {"trial-role.sh", "dashboard-role.sh"}

    if kubeflow:
        route = one(objects, "VirtualService", "nasagent-dashboard")
        assert route["metadata"]["namespace"] == NAMESPACE
        assert route["spec"]["gateways"] == ["kubeflow/kubeflow-gateway"]
        http = route["spec"]["http"][-1]
        prefix = http["match"][0]["uri"]["prefix"]
        assert prefix == f"/nasagent/{NAMESPACE}/" and http["rewrite"] == {"uri": "/"}
        assert http["route"][0]["destination"] == {"host": "nasagent-dashboard", "port": {"number": 80}}
        links = json.loads((COMPONENT / "kubeflow" / "centraldashboard-links.json").read_text())
        assert [link["link"] for link in links["menuLinks"]] == [prefix]


def test_the_dashboard_role_reads_everything_and_writes_nothing(
    store: Store, db_url: str, tmp_path: Path, embedded_pg: object
) -> None:
    """dashboard-role.sh as the PostgreSQL image runs it (the owner, over the unix socket, the real
    psql), then the dashboard connected as that role."""
    import pgserver

    seed(store)
    url = urlsplit(db_url)
    env = {
        "PATH": f"{Path(pgserver.__file__).parent / 'pginstall' / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "PGHOST": parse_qs(url.query)["host"][0],
        "POSTGRES_USER": url.username or "postgres",
        "POSTGRES_DB": url.path.lstrip("/"),
        "NASAGENT_DASHBOARD_PASSWORD_FILE": str(tmp_path / "DASHBOARD_PASSWORD"),
    }
    script = COMPONENT / "dashboard-role.sh"
    (tmp_path / "DASHBOARD_PASSWORD").write_text("short")
    done = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "shorter than 8 characters" in done.stderr
    (tmp_path / "DASHBOARD_PASSWORD").write_text("a-long-dashboard-password-'; DROP TABLE trials; --")
    done = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "a-long-dashboard-password" not in done.stdout + done.stderr

    role_url = urlunsplit(url._replace(netloc="nasagent_dashboard@" + url.netloc.rpartition("@")[2]))
    conn = psycopg2.connect(role_url)
    try:
        with conn.cursor() as cur:
            for table in ("experiments", "trials", "trial_epochs", "q_values", "replay_memory", "agent_state"):
                cur.execute(f"SELECT count(*) FROM {table}")
        conn.rollback()
        for statement in ("DELETE FROM trials", "UPDATE experiments SET name = 'x'", "CREATE TABLE evil (x int)"):
            with conn.cursor() as cur, pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
                cur.execute(statement)
            conn.rollback()
        conn.autocommit = True
        with conn.cursor() as cur:  # even with the session's read-only default lifted: no privilege
            cur.execute("SET default_transaction_read_only = off")
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute("DELETE FROM trials")
    finally:
        conn.close()
    readonly = ReadOnlyStore.open(role_url)
    try:
        page = data.experiment_summary(readonly, "dash")
        assert page["status"]["unique_trained"] == 5
    finally:
        readonly.close()
