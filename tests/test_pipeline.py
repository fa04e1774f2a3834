"""The search pipeline: the committed YAML is what the code compiles to, its parameters and
Kubernetes settings are the documented ones, and the compiled file runs end to end under
kfp.local (SubprocessRunner in this environment) against the real embedded PostgreSQL with file
artifacts: prepare -> search agent (local worker processes) -> finetune the top 2 in a
ParallelFor -> ensemble. Every reported number is recomputed from the artifacts it describes.

No Kubeflow cluster exists here: what only a cluster does (pods, Secrets, GPUs, labels) is checked
in the compiled spec, not run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from nasagent.persistence.artifacts import open_artifacts
from nasagent.persistence.postgres import Store
from nasagent.training.checkpoints import checkpoint_ids
from nasagent.training.data import load_dataset
from nasagent.training.models import list_models, load_model, predict_proba

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # components/ and pipelines/ live at the repository root
    sys.path.insert(0, str(ROOT))

from pipelines.search_pipeline import LOCAL_ARGUMENTS, PACKAGE, compile_pipeline, run_local  # noqa: E402

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
    "gpus_per_trial": ("NUMBER_INTEGER", 1.0),
    "gpu_node_selector": ("STRUCT", {"nvidia.com/gpu.present": "true"}),
    "gpu_tolerations": ("LIST", [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]),
    "pending_timeout": ("NUMBER_INTEGER", 900.0),
    "launcher": ("STRING", "kubernetes"),
    "agent_image": ("STRING", "nasagent-agent:latest"),
    "trainer_image": ("STRING", "nasagent-trainer:latest"),
    "db_secret": ("STRING", "nasagent-db"),
    "s3_secret": ("STRING", "nasagent-s3"),
    "bucket": ("STRING", None),
    "keep_top": ("NUMBER_INTEGER", 10.0),
    "finetune_top": ("NUMBER_INTEGER", 10.0),
    "finetune_epochs": ("NUMBER_INTEGER", 0.0),
    "finetune_schedule": ("STRING", None),
    "ensemble_top": ("NUMBER_INTEGER", 5.0),
}


def compiled() -> tuple[dict[str, Any], dict[str, Any]]:
    """The committed package: (pipeline spec, Kubernetes platform spec)."""
    spec, platform = yaml.safe_load_all(PACKAGE.read_text(encoding="utf-8"))
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_committed_yaml_is_what_the_code_compiles_to(tmp_path: Path) -> None:
    fresh = compile_pipeline(tmp_path / "search_pipeline.yaml").read_text(encoding="utf-8")
    assert PACKAGE.read_text(encoding="utf-8") == fresh, "pipelines/search_pipeline.yaml is stale: run make pipelines"


def test_pipeline_parameters_and_structure() -> None:
    spec, _ = compiled()
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert {name: (p["parameterType"], p.get("defaultValue")) for name, p in inputs.items()} == {
        name: (kind, default if default is not None else "") for name, (kind, default) in PARAMETERS.items()
    }
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


def test_kubernetes_settings_of_every_step() -> None:
    spec, executors = compiled()
    roles = {"exec-prepare": "agent", "exec-search-agent": "agent", "exec-finetune": "trial", "exec-ensemble": "agent"}
    assert set(executors) == set(roles)
    for name, role in roles.items():
        pod = executors[name]
        # The NetworkPolicies of manifests/ let only these labels reach PostgreSQL and MinIO.
        assert pod["podMetadata"]["labels"] == {"app.kubernetes.io/part-of": "nasagent", "nasagent.io/role": role}
        assert pod["podMetadata"]["annotations"] == {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"}
        secrets = {
            s["secretNameParameter"]["componentInputParameter"].removeprefix("pipelinechannel--"): s
            for s in pod["secretAsEnv"]
        }
        s3 = secrets["s3_secret"]
        assert {k["secretKey"]: k["envVar"] for k in s3["keyToEnv"]} == {
            "endpoint": "NASAGENT_S3_ENDPOINT",
            "access_key": "NASAGENT_S3_ACCESS_KEY",
            "secret_key": "NASAGENT_S3_SECRET_KEY",
            "bucket": "NASAGENT_S3_BUCKET",
        }
        if name != "exec-prepare":
            assert secrets["db_secret"]["keyToEnv"] == [{"envVar": "NASAGENT_DB", "secretKey": "url"}]
            assert secrets["db_secret"]["optional"] is False
    finetune = executors["exec-finetune"]
    assert (
        finetune["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"] == "pipelinechannel--gpu_node_selector"
    )
    assert finetune["tolerations"][0]["tolerationJson"]["componentInputParameter"] == "pipelinechannel--gpu_tolerations"
    assert {e["name"]: e["fieldPath"] for e in executors["exec-search-agent"]["fieldPathAsEnv"]} == {
        "POD_NAME": "metadata.name",
        "POD_UID": "metadata.uid",
        "POD_NAMESPACE": "metadata.namespace",
    }
    containers = {name: e["container"] for name, e in spec["deploymentSpec"]["executors"].items()}
    assert containers["exec-finetune"]["resources"]["accelerator"] == {
        "resourceCount": "{{$.inputs.parameters['pipelinechannel--gpus_per_trial']}}",
        "resourceType": "nvidia.com/gpu",
        "type": "nvidia.com/gpu",
    }
    images = {name: c["image"] for name, c in containers.items()}
    assert images == {
        "exec-prepare": "{{$.inputs.parameters['pipelinechannel--trainer_image']}}",
        "exec-search-agent": "{{$.inputs.parameters['pipelinechannel--agent_image']}}",
        "exec-finetune": "{{$.inputs.parameters['pipelinechannel--trainer_image']}}",
        "exec-ensemble": "{{$.inputs.parameters['pipelinechannel--agent_image']}}",
    }
    for container in containers.values():  # lightweight components, run by the image's own Python and nasagent
        assert "pip install" not in " ".join(container["command"]) and "import nasagent" not in container["command"][0]


def test_the_compiled_pipeline_runs_end_to_end_under_kfp_local(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "NASAGENT_DB", db_url
    )  # every step is a subprocess: the URL reaches them through the environment
    monkeypatch.setenv("NASAGENT_HOME", str(tmp_path / "home"))
    bucket = f"file://{tmp_path}/artifacts"
    arguments = {
        **LOCAL_ARGUMENTS,
        "experiment": "pipe-e2e",
        "bucket": bucket,
        "trials": 3,
        "epochs": 4,
        "keep_top": 2,
        "finetune_top": 2,
        "finetune_epochs": 0,
        "finetune_schedule": "0.002:3,0.0005:1",
        "ensemble_top": 2,
    }
    with pytest.warns(
        UserWarning, match="accelerator.*will be ignored"
    ):  # GPU settings are ignored locally, with a warning
        outputs = run_local(arguments, tmp_path / "root")
    name = outputs["experiment"]
    assert name == "pipe-e2e"
    store = open_artifacts(bucket)

    # The search: 3 architectures on the prepared digits split, recorded in PostgreSQL.
    with Store.connect(db_url) as db:
        experiment = db.get_experiment(name)
        top = db.top(experiment.id, 3)
        counts = db.counts(experiment.id)
    prepared = experiment.config["dataset"]
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
    assert rank_report["schedule"] == [[0.002, 3], [0.0005, 1]] and rank_report["epochs"] == 4
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
