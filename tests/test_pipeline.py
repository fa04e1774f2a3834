"""The search pipeline: each committed YAML (one per supported KFP backend) is what the code
compiles to, its parameters and Kubernetes settings are the documented ones (requests and limits,
deadlines, the platform's object store, the admin's trial template, the non-root user where the
backend can set it), the agent step prints its experiment's address on the live dashboard first
(and never a broken one), and the compiled file runs end to end under
kfp.local (SubprocessRunner in this environment) against the real embedded PostgreSQL with file
artifacts: prepare -> search agent (local worker processes) -> finetune the top 2 in a
ParallelFor -> ensemble. Every reported number is recomputed from the artifacts it describes.

No Kubeflow cluster exists here: what only a cluster does (pods, Secrets, GPUs, labels) is checked
in the compiled spec, not run; tests/test_support_matrix.py checks that each backend can parse it.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import torch
import yaml

from nasagent.errors import ConfigError
from nasagent.kubeflow import dashboard_address, dashboard_line
from nasagent.persistence.artifacts import open_artifacts
from nasagent.persistence.postgres import Store
from nasagent.training.checkpoints import checkpoint_ids
from nasagent.training.data import load_dataset
from nasagent.training.models import list_models, load_model, predict_proba

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # components/ and pipelines/ live at the repository root
    sys.path.insert(0, str(ROOT))

from components import AGENT_IMAGE, TRAINER_IMAGE  # noqa: E402
from pipelines.search_pipeline import (  # noqa: E402
    IMAGE_USER,
    LOCAL_ARGUMENTS,
    PACKAGE,
    STEP_DEADLINES,
    TARGETS,
    Target,
    compile_pipeline,
    run_local,
)

EARLY_STOP_PARAMETERS = {
    "early_stop": ("STRING", None),
    "early_stop_min_trials": ("NUMBER_INTEGER", 0.0),
    "early_stop_start_epoch": ("NUMBER_INTEGER", 0.0),
    "early_stop_retrain_every": ("NUMBER_INTEGER", 0.0),
    "early_stop_delta": ("NUMBER_DOUBLE", 0.0),
    "early_stop_wait": ("NUMBER_DOUBLE", 0.0),
}
LIMIT_PARAMETERS = {
    "max_params": ("NUMBER_INTEGER", 0.0),
    "max_macs": ("NUMBER_INTEGER", 0.0),
    "max_latency_ms": ("NUMBER_DOUBLE", 0.0),
    "objective": ("STRING", None),
    "objective_metric": ("STRING", None),
    "objective_target": ("NUMBER_DOUBLE", 0.0),
    "objective_weight": ("NUMBER_DOUBLE", 0.0),
}
PARAMETERS = {
    "experiment": ("STRING", None),
    "dataset": ("STRING", "cifar10"),
    "val_size": ("NUMBER_DOUBLE", 0.0),
    "space": ("STRING", "metaqnn-cifar"),
    "strategy": ("STRING", "qlearning"),
    "trials": ("NUMBER_INTEGER", 0.0),
    "schedule": ("STRING", "paper"),
    "epochs": ("NUMBER_INTEGER", 20.0),
    "seed": ("NUMBER_INTEGER", 0.0),
    "parallelism": ("NUMBER_INTEGER", 4.0),
    # Early stopping, limits and objective: "" and 0 are off (no flag), the CLI's defaults apply.
    **EARLY_STOP_PARAMETERS,
    **LIMIT_PARAMETERS,
    "gpus_per_trial": ("NUMBER_INTEGER", 1.0),
    "gpu_node_selector": ("STRUCT", {"nvidia.com/gpu.present": "true"}),
    "gpu_tolerations": ("LIST", [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]),
    "pending_timeout": ("NUMBER_INTEGER", 900.0),
    # A one-GPU node: 4 vCPUs and 16 GB (e.g. g4dn.xlarge, n1-standard-4 + T4), less what the
    # kubelet and the DaemonSets keep.
    "trial_cpu_request": ("STRING", "3"),
    "trial_cpu_limit": ("STRING", "4"),
    "trial_memory_request": ("STRING", "10Gi"),
    "trial_memory_limit": ("STRING", "10Gi"),
    "trial_shm_size": ("STRING", "2Gi"),
    "trial_template": ("STRING", "nasagent-trial-template"),
    "launcher": ("STRING", "kubernetes"),
    "agent_image": ("STRING", "ghcr.io/nasagent/nasagent-agent:0.1.0"),
    "trainer_image": ("STRING", "ghcr.io/nasagent/nasagent-trainer:0.1.0"),
    "db_secret": ("STRING", "nasagent-db"),
    "s3_secret": ("STRING", "mlpipeline-minio-artifact"),  # the profile namespace's own object-store keys
    "s3_endpoint": ("STRING", "per target"),
    "bucket": ("STRING", None),
    "dashboard_url": ("STRING", None),  # "": the dashboard's path on Kubeflow's gateway in the run's namespace
    "keep_top": ("NUMBER_INTEGER", 10.0),
    "finetune_top": ("NUMBER_INTEGER", 10.0),
    "finetune_epochs": ("NUMBER_INTEGER", 0.0),
    "finetune_schedule": ("STRING", None),
    "ensemble_top": ("NUMBER_INTEGER", 5.0),
}


# The platform's object store in each target's Kubeflow release (kubeflow/manifests at v1.10.2,
# v1.11.0, 26.03: the MinIO service, then SeaweedFS, whose S3 port profile namespaces may reach).
S3_ENDPOINTS = {
    "kfp-2.16": "http://seaweedfs.kubeflow.svc.cluster.local:8333",
    "kfp-2.15": "http://seaweedfs.kubeflow.svc.cluster.local:8333",
    "kfp-2.5": "http://minio-service.kubeflow.svc.cluster.local:9000",
}
BY_NAME = {target.name: target for target in TARGETS}


def compiled(target: Target = TARGETS[0]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A committed package: (pipeline spec, Kubernetes platform spec)."""
    spec, platform = yaml.safe_load_all(target.package.read_text(encoding="utf-8"))
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_the_default_file_is_for_the_newest_backend() -> None:
    assert PACKAGE == TARGETS[0].package == ROOT / "pipelines" / "search_pipeline.yaml"
    assert [(t.name, t.kubeflow) for t in TARGETS] == [("kfp-2.16", "26.03"), ("kfp-2.15", "1.11"), ("kfp-2.5", "1.10")]


@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
def test_committed_yaml_is_what_the_code_compiles_to(target: Target, tmp_path: Path) -> None:
    fresh = compile_pipeline(tmp_path / target.package.name, target).read_text(encoding="utf-8")
    assert target.package.read_text(encoding="utf-8") == fresh, f"{target.package.name} is stale: run make pipelines"


@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
def test_pipeline_parameters_and_structure(target: Target) -> None:
    spec, _ = compiled(target)
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    expected = {**PARAMETERS, "s3_endpoint": ("STRING", S3_ENDPOINTS[target.name])}
    assert {name: (p["parameterType"], p.get("defaultValue")) for name, p in inputs.items()} == {
        name: (kind, default if default is not None else "") for name, (kind, default) in expected.items()
    }
    assert (inputs["agent_image"]["defaultValue"], inputs["trainer_image"]["defaultValue"]) == (
        AGENT_IMAGE,
        TRAINER_IMAGE,
    )
    assert all(p["isOptional"] for p in inputs.values())  # kfp run create needs only what differs
    assert set(spec["root"]["outputDefinitions"]["artifacts"]) == {"leaderboard", "search_metrics"}

    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"prepare", "search-agent", "condition-1"}
    assert tasks["search-agent"]["dependentTasks"] == ["prepare"]
    assert tasks["search-agent"]["inputs"]["parameters"]["dataset"]["taskOutputParameter"]["producerTask"] == "prepare"
    assert tasks["search-agent"]["retryPolicy"]["maxRetryCount"] == 3  # a retried agent resumes from PostgreSQL
    assert "finetune_top" in tasks["condition-1"]["triggerPolicy"]["condition"]
    inner = spec["components"]["comp-condition-1"]["dag"]["tasks"]
    assert inner["for-loop-2"]["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--search-agent-ranks"
    assert inner["ensemble"]["dependentTasks"] == ["for-loop-2"]
    for task in (*tasks.values(), *inner.values(), *spec["components"]["comp-for-loop-2"]["dag"]["tasks"].values()):
        assert task.get("cachingOptions", {}).get("enableCache") is not True  # a cached search would skip the search


STEPS = {
    "exec-prepare": "prepare",
    "exec-search-agent": "search-agent",
    "exec-finetune": "finetune",
    "exec-ensemble": "ensemble",
}
ROLES = {"exec-prepare": "agent", "exec-search-agent": "agent", "exec-finetune": "trial", "exec-ensemble": "agent"}


@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
def test_kubernetes_settings_of_every_step(target: Target) -> None:
    spec, executors = compiled(target)
    assert set(executors) == set(ROLES)
    for name, role in ROLES.items():
        pod = executors[name]
        # The NetworkPolicies of manifests/ let only these labels reach PostgreSQL.
        labels = {"app.kubernetes.io/part-of": "nasagent", "nasagent.io/role": role}
        if name == "exec-search-agent":  # the PodDefault that projects the KFP API token selects it
            labels["access-ml-pipeline"] = "true"
        assert pod["podMetadata"]["labels"] == labels
        assert pod["podMetadata"]["annotations"] == {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"}
        secrets = {
            s["secretNameParameter"]["componentInputParameter"].removeprefix("pipelinechannel--"): s
            for s in pod["secretAsEnv"]
        }
        assert set(secrets) == ({"s3_secret"} if name == "exec-prepare" else {"db_secret", "s3_secret"})
        # Kubeflow's object-store Secret (mlpipeline-minio-artifact) has exactly these two keys.
        assert {k["secretKey"]: k["envVar"] for k in secrets["s3_secret"]["keyToEnv"]} == {
            "accesskey": "NASAGENT_S3_ACCESS_KEY",
            "secretkey": "NASAGENT_S3_SECRET_KEY",
        }
        if name != "exec-prepare":
            assert secrets["db_secret"]["keyToEnv"] == [{"envVar": "NASAGENT_DB", "secretKey": "url"}]
        for secret in secrets.values():  # every Secret is required; 2.5 cannot even say so
            assert secret.get("optional", False) is False and ("optional" in secret) == target.secret_optional
        assert {"name": "POD_NAMESPACE", "fieldPath": "metadata.namespace"} in pod["fieldPathAsEnv"]
        # A pod stuck in ImagePullBackOff (or anything else) is failed by the kubelet at its deadline.
        assert int(pod["activeDeadlineSeconds"]) == STEP_DEADLINES[STEPS[name]]
        if target.security_context:
            assert pod["securityContext"] == {
                "runAsUser": str(IMAGE_USER),
                "runAsGroup": str(IMAGE_USER),
                "runAsNonRoot": True,
            }
        else:
            assert "securityContext" not in pod
    agent = executors["exec-search-agent"]
    assert {e["name"]: e["fieldPath"] for e in agent["fieldPathAsEnv"]} == {
        "POD_NAME": "metadata.name",
        "POD_UID": "metadata.uid",
        "POD_NAMESPACE": "metadata.namespace",
    }
    # The admin's trial Job template, where nasagent.kubeflow.mounted_trial_template looks; optional.
    assert agent["configMapAsVolume"] == [
        {
            "configMapNameParameter": {"componentInputParameter": "trial_template"},
            "mountPath": "/etc/nasagent/trial-template",
            "optional": True,
        }
    ]
    finetune = executors["exec-finetune"]
    assert (
        finetune["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"] == "pipelinechannel--gpu_node_selector"
    )
    assert finetune["tolerations"][0]["tolerationJson"]["componentInputParameter"] == "pipelinechannel--gpu_tolerations"
    assert finetune["emptyDirMounts"] == [
        {"medium": "Memory", "mountPath": "/dev/shm", "sizeLimit": "2Gi", "volumeName": "shm"}
    ]
    containers = {name: e["container"] for name, e in spec["deploymentSpec"]["executors"].items()}
    resources = {name: c["resources"] for name, c in containers.items()}
    assert resources["exec-finetune"]["accelerator"] == {
        "resourceCount": "{{$.inputs.parameters['pipelinechannel--gpus_per_trial']}}",
        "resourceType": "nvidia.com/gpu",
        "type": "nvidia.com/gpu",
    }
    # Every step has CPU and memory requests and limits (a Profile's ResourceQuota admits no pod
    # without them); a finetune pod is sized like a default trial pod, within one GPU node.
    kinds = ("resourceCpuRequest", "resourceCpuLimit", "resourceMemoryRequest", "resourceMemoryLimit")
    sizes = {name: tuple(given.get(kind) for kind in kinds) for name, given in resources.items()}
    assert sizes == {
        "exec-prepare": ("1", "2", "4Gi", "8Gi"),
        "exec-search-agent": ("1", "2", "4Gi", "8Gi"),
        "exec-finetune": ("3", "4", "10Gi", "10Gi"),
        "exec-ensemble": ("1", "2", "4Gi", "8Gi"),
    }
    trial = tuple(
        PARAMETERS[f"trial_{kind}"][1] for kind in ("cpu_request", "cpu_limit", "memory_request", "memory_limit")
    )
    assert sizes["exec-finetune"] == trial
    images = {name: c["image"] for name, c in containers.items()}
    assert images == {
        "exec-prepare": "{{$.inputs.parameters['pipelinechannel--trainer_image']}}",
        "exec-search-agent": "{{$.inputs.parameters['pipelinechannel--agent_image']}}",
        "exec-finetune": "{{$.inputs.parameters['pipelinechannel--trainer_image']}}",
        "exec-ensemble": "{{$.inputs.parameters['pipelinechannel--agent_image']}}",
    }
    for container in containers.values():  # lightweight components, run by the image's own Python and nasagent
        assert "pip install" not in " ".join(container["command"]) and "import nasagent" not in container["command"][0]


@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
def test_the_agent_step_prints_its_dashboard_address_before_it_searches(target: Target) -> None:
    """The run's ``dashboard_url`` reaches the agent step, whose code prints the address first,
    before anything is created (a bad ``dashboard_url`` then stops the step with nothing made)."""
    spec, _ = compiled(target)
    task = spec["root"]["dag"]["tasks"]["search-agent"]
    assert task["inputs"]["parameters"]["dashboard_url"] == {"componentInputParameter": "dashboard_url"}
    component = spec["components"][task["componentRef"]["name"]]
    assert component["inputDefinitions"]["parameters"]["dashboard_url"]["parameterType"] == "STRING"
    source = spec["deploymentSpec"]["executors"]["exec-search-agent"]["container"]["command"][-1]
    body = source.partition("import collections")[2]
    printed = body.index("dashboard = kubeflow.dashboard_line(dashboard_url, name)\n    if dashboard:\n        print(")
    assert printed < body.index("kubeflow.run_cli(") and printed < body.index("open_artifacts(")


@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
def test_the_agent_step_gets_the_runs_early_stopping_limits_and_objective(target: Target) -> None:
    """Each ``early_stop*``, ``max_*`` and ``objective*`` run parameter reaches the agent step as an
    input of the same name and type, and the step's code hands them all to ``search_argv``."""
    spec, _ = compiled(target)
    task = spec["root"]["dag"]["tasks"]["search-agent"]
    component = spec["components"][task["componentRef"]["name"]]["inputDefinitions"]["parameters"]
    for name, (kind, _) in {**EARLY_STOP_PARAMETERS, **LIMIT_PARAMETERS}.items():
        assert task["inputs"]["parameters"][name] == {"componentInputParameter": name}
        assert component[name]["parameterType"] == kind
    source = spec["deploymentSpec"]["executors"]["exec-search-agent"]["container"]["command"][-1]
    call = source.partition("kubeflow.search_argv(")[2].partition("store = open_artifacts")[0]
    assert "early_stop=kubeflow.EarlyStopping(" in call and "limits=kubeflow.DeploymentLimits(" in call
    assert all(name in call for name in (*EARLY_STOP_PARAMETERS, *LIMIT_PARAMETERS))


HOSTILE = 'a/b\n#/trial/1?x=1&y=<script>alert("x")</script> ü%2F\u2028 \t'


def test_the_dashboard_address_of_an_experiment(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the agent step prints: its experiment's page (the dashboard's ``#/experiment/NAME``
    route), where the run can reach it."""
    monkeypatch.setenv("POD_NAMESPACE", "team-vision")
    # By default: the dashboard's path on Kubeflow's gateway, in the run's namespace
    # (manifests/overlays/kubeflow routes /nasagent/<namespace>/ to it).
    assert dashboard_address("", "cifar-run-3f2a9c1e") == "/nasagent/team-vision/#/experiment/cifar-run-3f2a9c1e"
    assert dashboard_line(" ", "cifar-run-3f2a9c1e") == (
        "live dashboard: /nasagent/team-vision/#/experiment/cifar-run-3f2a9c1e on your Kubeflow's address"
    )
    # Given: that dashboard's root, with or without its trailing slash.
    for given in (
        "https://kubeflow.example.com/nasagent/team-vision",
        "https://kubeflow.example.com/nasagent/team-vision/",
    ):
        assert (
            dashboard_line(given, "s1")
            == "live dashboard: https://kubeflow.example.com/nasagent/team-vision/#/experiment/s1"
        )
    assert dashboard_address("http://127.0.0.1:8080", "s1") == "http://127.0.0.1:8080/#/experiment/s1"  # port-forward
    assert dashboard_address("/nasagent/team-vision/", "s1") == "/nasagent/team-vision/#/experiment/s1"
    # Off.
    assert dashboard_address("none", "s1") is None and dashboard_line(" None ", "s1") is None
    # Outside a pipeline pod (kfp.local): what `nasagent dashboard` serves by default.
    monkeypatch.delenv("POD_NAMESPACE")
    assert dashboard_line("", "s1") == (
        "live dashboard: http://127.0.0.1:8080/#/experiment/s1 (start it with `nasagent dashboard` on this database)"
    )


def test_a_hostile_experiment_name_cannot_break_the_address_or_the_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "team-vision")
    line = dashboard_line("", HOSTILE)
    assert line is not None and line.isprintable() and len(line.splitlines()) == 1
    address = line.split()[2]
    root, _, encoded = address.partition("#/experiment/")
    assert root == "/nasagent/team-vision/"
    # One path segment of the page's route (app.js splits on "/" and "?", then decodeURIComponent).
    assert set(encoded) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789%-._~")
    assert unquote(encoded) == HOSTILE


@pytest.mark.parametrize(
    "given",
    [
        "javascript:alert(1)",
        "kubeflow.example.com/nasagent/ns/",  # no scheme: neither a URL nor an absolute path
        "//evil.example.com/x",
        "ftp://kubeflow.example.com/",
        "https://",
        "https://kubeflow.example.com/?next=/x",
        "https://kubeflow.example.com/#/experiment/other",
        "https://kubeflow.example.com/a b/",
        "https://kubeflow.example.com/\nforged line",
    ],
)
def test_a_bad_dashboard_url_is_one_clear_error(given: str) -> None:
    with pytest.raises(ConfigError) as caught:
        dashboard_address(given, "s1")
    assert str(caught.value).startswith("dashboard_url must be an http(s) URL") and "\n" not in str(caught.value)


def test_step_pods_on_kfp_2_16_meet_the_restricted_profile_where_the_pipeline_decides() -> None:
    """Pod Security Standards, "restricted" (kubernetes.io/docs/concepts/security/pod-security-standards):
    the fields it constrains are volume types, allowPrivilegeEscalation (false), runAsNonRoot
    (true), runAsUser (not 0), seccompProfile.type (RuntimeDefault or Localhost), capabilities
    (drop ALL, add at most NET_BIND_SERVICE), plus everything "baseline" forbids (privileged,
    host namespaces, hostPath, hostPorts, added capabilities, AppArmor/SELinux overrides, /proc
    mount, sysctls). kfp-kubernetes 2.17 lets a pipeline set runAsUser, runAsGroup and
    runAsNonRoot (backend 2.16 only); the KFP 2.16 compiler itself sets allowPrivilegeEscalation
    false, drops ALL capabilities and sets seccomp RuntimeDefault on every step container
    (backend/src/v2/compiler/argocompiler/security_context.go at 2.16.0). The pipeline asks for
    nothing baseline forbids: its only volumes are a ConfigMap and a memory emptyDir."""
    _, executors = compiled(BY_NAME["kfp-2.16"])
    for name, pod in executors.items():
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True and int(context["runAsUser"]) > 0, name
        volumes = {key for key in pod if key.endswith(("Volume", "Mount", "Mounts", "pvcMount"))}
        assert volumes <= {"configMapAsVolume", "emptyDirMounts"}, name  # both allowed volume types
        forbidden = {"hostNetwork", "hostPID", "hostIPC", "privileged", "hostPath"}
        assert not forbidden & set(pod), name


def test_the_compiled_pipeline_runs_end_to_end_under_kfp_local(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(
        "NASAGENT_DB", db_url
    )  # every step is a subprocess: the URL reaches them through the environment
    monkeypatch.setenv("NASAGENT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("POD_NAMESPACE", raising=False)  # as on a laptop: no pipeline pod's namespace
    bucket = f"file://{tmp_path}/artifacts"
    arguments = {
        **LOCAL_ARGUMENTS,
        "experiment": "pipe-e2e",
        "bucket": bucket,
        "trials": 3,
        "epochs": 2,  # an epoch is at least 100 optimiser steps (TrainConfig.min_steps): ~11 passes on digits
        "keep_top": 2,
        "finetune_top": 2,
        "finetune_epochs": 0,
        "finetune_schedule": "0.002:2,0.0005:1",
        "ensemble_top": 2,
        # Early stopping and a limit travel from the run's parameters to the search (a median rule
        # that needs 50 trained trials first: it judges every epoch but stops nothing here).
        "early_stop": "median",
        "early_stop_min_trials": 50,
        "early_stop_start_epoch": 1,
        "max_params": 1_000_000,
    }
    with pytest.warns(
        UserWarning, match="accelerator.*will be ignored"
    ):  # GPU settings are ignored locally, with a warning
        outputs = run_local(arguments, tmp_path / "root")
    name = outputs["experiment"]
    assert name == "pipe-e2e"
    store = open_artifacts(bucket)
    # The agent step's log (kfp.local prints it here) points to the experiment's live page first.
    log = capsys.readouterr().out
    assert "live dashboard: http://127.0.0.1:8080/#/experiment/pipe-e2e (start it with `nasagent dashboard`" in log
    first_trial = re.search(r"trial \d+ .* -> ", log)  # the search's line per finished trial
    assert first_trial and log.index("live dashboard:") < first_trial.start()

    # The search: 3 architectures on the prepared digits split, recorded in PostgreSQL.
    with Store.connect(db_url) as db:
        experiment = db.get_experiment(name)
        top = db.top(experiment.id, 3)
        counts = db.counts(experiment.id)
    prepared = experiment.config["dataset"]
    assert experiment.config["early_stop"] == {
        "rule": "median",
        "min_trials": 50,
        "start_epoch": 1,
        "retrain_every": None,
        "delta": None,
        "wait_seconds": 10.0,
    }
    assert experiment.config["max_params"] == 1_000_000 and experiment.config["max_macs"] is None
    assert counts["stopped"] == 0 and all(trial.params <= 1_000_000 for trial in top)
    assert prepared.startswith(f"prepared:{bucket}/datasets/digits/")
    assert counts["unique_trained"] == 3 and len(top) == 3
    metrics = outputs["search_metrics"].metadata
    assert metrics["unique_trained"] == 3 and metrics["best_accuracy"] == pytest.approx(top[0].accuracy)
    assert top[0].accuracy > 0.5  # chance is 0.1

    # The leaderboard artifact, and the live one in the artifact store, list exactly that top.
    leaderboard = Path(outputs["leaderboard"].path).read_text(encoding="utf-8")
    for rank, trial in enumerate(top, start=1):
        assert f"| {rank} | {trial.accuracy:.4f} |" in leaderboard and trial.arch in leaderboard
    live = json.loads(store.get_bytes(f"{name}/reports/leaderboard.json"))
    assert [(row["arch"], row["accuracy"]) for row in live["top"]] == [(t.arch, t.accuracy) for t in top]
    assert live["status"]["unique_trained"] == 3
    assert store.exists(f"{name}/reports/search/index.html")
    report_page = (tmp_path / "root").glob("*/search-agent/report")
    assert "<h1>Experiment <code>pipe-e2e</code></h1>" in next(report_page).read_text(encoding="utf-8")
    assert len(checkpoint_ids(store, name)) == 2  # keep_top

    # Finetuning: one ParallelFor iteration per rank, each model in the store and as a Model artifact.
    models = list_models(store, name)
    assert [m["rank"] for m in models] == [1, 2]
    assert [m["architecture"] for m in models] == [t.arch for t in top[:2]]
    rank_report = json.loads(store.get_bytes(f"{name}/reports/finetune-rank-1.json"))
    assert rank_report["schedule"] == [[0.002, 2], [0.0005, 1]] and rank_report["epochs"] == 3
    data = load_dataset(prepared, tmp_path / "check")
    probabilities = {}
    for model_dir in (tmp_path / "root").glob("*/for-loop-2-iteration-*/finetune/model"):
        module = load_model(model_dir)
        rank = module.metadata["source"]["rank"]
        probabilities[rank] = predict_proba(module, data.test.x)
        accuracy = float((probabilities[rank].argmax(1) == data.test.y).float().mean())
        assert accuracy == pytest.approx(module.metrics["test_accuracy"], abs=1e-6)
    assert sorted(probabilities) == [1, 2]

    # The ensemble: the softmax average of both models on the test split, recomputed here.
    ensemble = json.loads(store.get_bytes(f"{name}/reports/ensemble.json"))
    assert ensemble["source"] == "finetuned" and {m["rank"] for m in ensemble["members"]} == {1, 2}
    average = torch.stack(list(probabilities.values())).mean(0)
    expected = float((average.argmax(1) == data.test.y).float().mean())
    assert ensemble["ensemble_test_accuracy"] == pytest.approx(expected, abs=1e-6)
    assert ensemble["ensemble_test_accuracy"] > 0.5
    table = next((tmp_path / "root").glob("*/ensemble/table")).read_text(encoding="utf-8")
    assert f"Ensemble test accuracy **{expected:.4f}**" in table
