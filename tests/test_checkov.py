"""A real security scanner over what nasagent ships: checkov (pinned in the Makefile, installed in its
own virtualenv ``.venv-checkov`` because its dependencies clash with kfp's; ``make test`` creates it).

Scanned: every rendered overlay (``kubectl kustomize manifests/overlays/X``), the trial Job that
``nasagent search --launcher kubernetes --dry-run`` prints for that overlay (with no template, and
with the overlay's own trial template), scanned together with the overlay so that checkov's graph
checks see the NetworkPolicies the Job's pods fall under, and both Dockerfiles. No check may fail;
a check may be skipped only where the scanned file itself says why (``checkov:skip=ID:reason`` in a
Dockerfile, a ``checkov.io/skip1: ID=reason`` annotation on the Job or on the dashboard's
Deployment), and the skips are exactly the ones listed here. Skipped, with the reason why, if
``.venv-checkov`` is missing.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from nasagent.cli import main
from nasagent.execution.kubernetes import TRIAL_JOB_ANNOTATIONS

REPO = Path(__file__).resolve().parent.parent
CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"
KUBECTL = Path(sys.executable).parent / "kubectl"
OVERLAYS = sorted(p.name for p in (REPO / "manifests" / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
DOCKERFILES = ("images/agent/Dockerfile", "images/trainer/Dockerfile")
# A trial image as `make images-push` leaves it, pinned by its digest (what docs/cluster.md asks for).
PINNED_IMAGE = "registry.example.com/ml/nasagent-trainer:0.1.0@sha256:" + "0" * 64
# The only checks skipped anywhere, and where; each carries its reason in the scanned file. In the
# overlays: the image digest of the dashboard, nasagent's own image, known only once the admin has
# pushed their build (its Deployment's annotation says so; test_manifests.py pins it by digest).
EXPECTED_SKIPS = {"trial Job": {"CKV_K8S_35"}, "Dockerfile": {"CKV_DOCKER_2"}, "overlay": {"CKV_K8S_43"}}
DASHBOARD = REPO / "manifests" / "components" / "dashboard" / "dashboard.yaml"

pytestmark = pytest.mark.skipif(
    not CHECKOV.exists(),
    reason="checkov's virtualenv .venv-checkov is missing: run `make checkov-env` (`make test` creates it)",
)


def pinned_version() -> str:
    """CHECKOV_VERSION from the Makefile."""
    match = re.search(r"^CHECKOV_VERSION\s*:?=\s*(\S+)", (REPO / "Makefile").read_text(), re.M)
    assert match, "the Makefile pins CHECKOV_VERSION"
    return match.group(1)


def run_checkov(*args: str) -> dict[str, Any]:
    """checkov's JSON report for ``args`` (one framework), offline."""
    done = subprocess.run(
        [str(CHECKOV), *args, "--output", "json", "--skip-download"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true"},
    )
    assert done.returncode in (0, 1), done.stderr[-2000:]
    report = json.loads(done.stdout)
    return report if isinstance(report, dict) else report[0]


def by_file(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per scanned file (its name): passed count, failed and skipped checks."""
    files: dict[str, dict[str, Any]] = {}
    for kind in ("passed", "failed", "skipped"):
        for check in report["results"].get(f"{kind}_checks", []):
            entry = files.setdefault(Path(check["file_path"]).name, {"passed": 0, "failed": [], "skipped": []})
            if kind == "passed":
                entry["passed"] += 1
            else:
                entry[kind].append(check)
    return files


def dry_run_job(namespace: str, *flags: str) -> str:
    """What ``nasagent search --launcher kubernetes --dry-run`` prints, with ``flags``."""
    out = io.StringIO()
    args = ["search", "--experiment", "scan", "--launcher", "kubernetes", "--namespace", namespace]
    with contextlib.redirect_stdout(out):
        assert main([*args, "--dry-run", *flags]) == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Every target scanned once: {target name: {"passed", "failed", "skipped"}}."""
    results: dict[str, dict[str, Any]] = {}
    for overlay in OVERLAYS:
        directory = tmp_path_factory.mktemp(f"scan-{overlay}")
        rendered = subprocess.run(
            [str(KUBECTL), "kustomize", str(REPO / "manifests" / "overlays" / overlay)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        (directory / "overlay.yaml").write_text(rendered)
        objects = [o for o in yaml.safe_load_all(rendered) if o]
        namespace = next(o["metadata"]["namespace"] for o in objects if o["kind"] == "ConfigMap")
        template = next(o for o in objects if o["metadata"]["name"] == "nasagent-trial-template")
        (directory / "template.yaml").write_text(template["data"]["job.yaml"])
        (directory / "trial-job-default.yaml").write_text(dry_run_job(namespace, "--trial-image", PINNED_IMAGE))
        (directory / "trial-job-template.yaml").write_text(
            dry_run_job(namespace, "--trial-image", PINNED_IMAGE, "--trial-template", str(directory / "template.yaml"))
        )
        (directory / "template.yaml").unlink()  # a template alone is no workload: not a scan target
        if overlay == OVERLAYS[0]:
            (directory / "trial-job-tag.yaml").write_text(dry_run_job(namespace, "--trial-image", "nasagent:0.1.0"))
        files = by_file(run_checkov("--directory", str(directory), "--framework", "kubernetes"))
        results[f"overlay {overlay}"] = files["overlay.yaml"]
        results[f"trial Job, {overlay}, no template"] = files["trial-job-default.yaml"]
        results[f"trial Job, {overlay}, its template"] = files["trial-job-template.yaml"]
        if "trial-job-tag.yaml" in files:
            results["trial Job, image by tag only"] = files["trial-job-tag.yaml"]
    report = run_checkov(*(a for f in DOCKERFILES for a in ("--file", str(REPO / f))), "--framework", "dockerfile")
    for check in ("passed", "failed", "skipped"):
        for item in report["results"].get(f"{check}_checks", []):
            item["file_path"] = item["file_path"].replace("/Dockerfile", ".Dockerfile")
    for name, entry in by_file(report).items():
        results[f"Dockerfile {name.removesuffix('.Dockerfile').rsplit('/', 1)[-1]}"] = entry
    return results


def counts(entry: dict[str, Any]) -> str:
    return f"{entry['passed']} passed, {len(entry['failed'])} failed, {len(entry['skipped'])} skipped"


def test_checkov_is_the_pinned_version() -> None:
    done = subprocess.run([str(CHECKOV), "--version"], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == pinned_version()


def test_every_target_was_scanned(scans: dict[str, dict[str, Any]]) -> None:
    wanted = {f"overlay {o}" for o in OVERLAYS} | {"Dockerfile agent", "Dockerfile trainer"}
    wanted |= {f"trial Job, {o}, {t}" for o in OVERLAYS for t in ("no template", "its template")}
    assert wanted <= set(scans)
    for name, entry in scans.items():
        assert entry["passed"] >= 20, f"{name}: {counts(entry)}: did checkov see the file?"
    print("\n" + "\n".join(f"checkov {name}: {counts(entry)}" for name, entry in sorted(scans.items())))


def test_no_check_fails(scans: dict[str, dict[str, Any]]) -> None:
    failures = {
        name: sorted(f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in entry["failed"])
        for name, entry in scans.items()
        if entry["failed"] and name != "trial Job, image by tag only"
    }
    assert not failures, json.dumps(failures, indent=2)


def test_every_skip_is_expected_and_gives_its_reason_in_the_scanned_file(scans: dict[str, dict[str, Any]]) -> None:
    dockerfiles = "\n".join((REPO / f).read_text() for f in DOCKERFILES)
    deployment = next(d for d in yaml.safe_load_all(DASHBOARD.read_text()) if d["kind"] == "Deployment")
    for name, entry in scans.items():
        kind = next((k for k in EXPECTED_SKIPS if name.startswith(k)), None)
        assert Counter(c["check_id"] for c in entry["skipped"]).keys() == EXPECTED_SKIPS.get(kind, set()), name
        for check in entry["skipped"]:
            reason = check["check_result"].get("suppress_comment", "")
            assert len(reason) > 20 and reason != "No comment provided", f"{name}: {check['check_id']}"
            if kind == "Dockerfile":
                assert f"checkov:skip={check['check_id']}:{reason}" in dockerfiles
            elif kind == "overlay":
                assert check["resource"].startswith("Deployment.") and check["resource"].endswith(".nasagent-dashboard")
                assert f"{check['check_id']}={reason}" in deployment["metadata"]["annotations"].values()
            else:
                assert f"{check['check_id']}={reason}" in TRIAL_JOB_ANNOTATIONS.values()


def test_a_trial_image_without_a_digest_is_what_the_scanner_flags(scans: dict[str, dict[str, Any]]) -> None:
    """Why docs/cluster.md asks for --trial-image pinned by digest: by tag alone, exactly the
    digest check and the pull-policy check fail; everything else about the Job passes."""
    entry = scans["trial Job, image by tag only"]
    assert {c["check_id"] for c in entry["failed"]} == {"CKV_K8S_43", "CKV_K8S_15"}
