"""The library the Kubeflow components wrap, and one component run for real under kfp.local.

Prepared datasets (split once, stored, loaded bit-identical, over file:// and a real S3 server),
``nasagent prepare``, the live leaderboard hook, the pipeline glue of ``nasagent.kubeflow`` (flags,
artifact URLs, the ranks to finetune), and the ``trial`` component run standalone by kfp.local's
SubprocessRunner. The whole pipeline runs in ``test_pipeline.py``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from s3_helpers import s3_env, s3_server  # noqa: F401  (fixtures)

from nasagent.cli import main
from nasagent.config import SearchConfig
from nasagent.core.arch import Architecture
from nasagent.errors import ArtifactError, ConfigError
from nasagent.kubeflow import (
    DeploymentLimits,
    EarlyStopping,
    TrialResources,
    artifacts_url,
    check_trial_secrets,
    experiment_name,
    export_finetuned,
    finetune_ranks,
    mounted_trial_template,
    run_cli,
    search_argv,
    toleration_flags,
    use_s3_endpoint,
)
from nasagent.persistence.artifacts import ArtifactStore, open_artifacts
from nasagent.persistence.postgres import Store
from nasagent.results.finetune import finetune_experiment
from nasagent.search.leaderboard import LeaderboardPublisher, leaderboard_keys
from nasagent.search.progress import Progress
from nasagent.training.data import load_dataset
from nasagent.training.models import finetuned_prefix, list_models
from nasagent.training.prepared import dataset_name, prepare_dataset, val_size_value

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # components/ and pipelines/ live at the repository root
    sys.path.insert(0, str(ROOT))


def assert_same_data(a, b) -> None:  # type: ignore[no-untyped-def]
    """Two DataBundles hold exactly the same splits and statistics."""
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(a, split).x, getattr(b, split).x), split
        assert torch.equal(getattr(a, split).y, getattr(b, split).y), split
    assert a.mean == b.mean and a.std == b.std
    assert a.num_classes == b.num_classes and a.input_shape == b.input_shape


# -- prepared datasets ------------------------------------------------------------------------------


def test_prepared_digits_load_exactly_as_split_and_preparing_again_uploads_nothing(tmp_path: Path) -> None:
    store = open_artifacts(f"file://{tmp_path}/art")
    first = prepare_dataset("digits", store, tmp_path / "data", seed=3)
    assert first.uploaded and first.spec == f"prepared:file://{tmp_path}/art/{first.key}"
    assert first.key.startswith("datasets/digits/") and first.key.endswith(".npz")
    assert first.sizes == {"train": 1150, "val": 288, "test": 359} and first.num_classes == 10

    again = prepare_dataset("digits", store, tmp_path / "data", seed=3)
    assert not again.uploaded and again.spec == first.spec  # same content, same address
    other = prepare_dataset("digits", store, tmp_path / "data", seed=4)
    assert other.spec != first.spec  # another validation split is other data
    assert store.list("datasets/") == sorted([first.key, other.key])

    loaded = load_dataset(first.spec, tmp_path / "cache")
    assert_same_data(loaded, load_dataset("digits", tmp_path, seed=3))
    assert loaded.name == "digits"
    cached = list((tmp_path / "cache" / "prepared").iterdir())
    assert len(cached) == 1
    store.delete(first.key)  # the cached copy is read from then on
    assert_same_data(load_dataset(first.spec, tmp_path / "cache"), loaded)

    with pytest.raises(ConfigError, match="has its validation split already"):
        load_dataset(first.spec, tmp_path, val_size=0.1)
    with pytest.raises(ConfigError, match="is prepared already"):
        prepare_dataset(first.spec, store, tmp_path)


def test_8bit_images_are_stored_as_uint8_and_come_back_bit_identical(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(120, 6, 6, 3), dtype=np.uint8)
    y = np.repeat(np.arange(4), 30)
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    store = open_artifacts(f"file://{tmp_path}/art")
    prepared = prepare_dataset(f"npz:{tmp_path}/mine.npz", store, tmp_path, val_size=20, seed=1)
    assert prepared.name == "mine" and prepared.sizes == {"train": 76, "val": 20, "test": 24}
    with np.load(tmp_path / "art" / prepared.key) as archive:
        assert archive["x_train"].dtype == np.uint8 and int(archive["x_scale"]) == 255
        assert json.loads(str(archive["meta"]))["source"] == f"npz:{tmp_path}/mine.npz"
    expected = load_dataset(f"npz:{tmp_path}/mine.npz", tmp_path, val_size=20, seed=1)
    assert_same_data(load_dataset(prepared.spec, tmp_path / "cache"), expected)


def test_prepare_from_and_load_through_a_real_s3_server(tmp_path: Path, s3_env: str) -> None:  # noqa: F811
    rng = np.random.default_rng(1)
    source = tmp_path / "upload.npz"
    np.savez(source, x=rng.random((90, 5, 5), dtype=np.float32), y=np.repeat(np.arange(3), 30))
    store = open_artifacts(s3_env)
    store.put_file("uploads/upload.npz", source)
    prepared = prepare_dataset(f"npz:{s3_env}/uploads/upload.npz", store, tmp_path)
    assert prepared.spec == f"prepared:{s3_env}/{prepared.key}" and prepared.name == "upload"
    expected = load_dataset(f"npz:{source}", tmp_path)
    assert_same_data(load_dataset(prepared.spec, tmp_path / "cache"), expected)
    with pytest.raises(ArtifactError, match="no artifact missing.npz"):
        prepare_dataset(f"npz:{s3_env}/uploads/missing.npz", store, tmp_path)


def test_prepare_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"file://{tmp_path}/art"
    assert (
        main(["prepare", "--dataset", "digits", "--val-size", "0.25", "--artifacts", url, "--data-dir", str(tmp_path)])
        == 0
    )
    out, err = capsys.readouterr()
    spec = out.strip()
    assert spec.startswith(f"prepared:{url}/datasets/digits/") and "train 1078, val 360, test 359; stored at" in err
    assert main(["prepare", "--dataset", "digits", "--val-size", "0.25", "--artifacts", url, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["spec"] == spec and summary["uploaded"] is False and summary["sizes"]["val"] == 360
    # A search, its trials and finetuning take the printed spec as their dataset.
    assert SearchConfig(dataset=spec).dataset == spec
    for argv, message in (
        (["--dataset", "nope"], "unknown dataset 'nope'"),
        (["--dataset", "digits", "--val-size", "-1"], "--val-size must be"),
        (["--dataset", spec], "is prepared already"),
        (["--dataset", "digits", "--artifacts", "ftp://x"], "must start with file:/// or s3://"),
    ):
        assert main(["prepare", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


def test_small_helpers() -> None:
    assert dataset_name("cifar10") == "cifar10" and dataset_name("npz:s3://b/x/my data.npz") == "my-data"
    assert val_size_value(0.0) is None and val_size_value(0.2) == 0.2 and val_size_value(500.0) == 500
    with pytest.raises(ConfigError):
        val_size_value(1.5)


# -- the live leaderboard -----------------------------------------------------------------------------


def finished_experiment(store: Store, name: str, results: list[tuple[str, str, float]]) -> int:
    """An experiment whose trials ``(arch, status, accuracy)`` have finished; returns its id."""
    experiment = store.create_experiment(name, SearchConfig(trials=len(results) + 1).to_dict())
    with store.transaction() as tx:
        for arch, status, accuracy in results:
            trial_id = tx.insert_trial(experiment.id, arch, Architecture.parse(arch).digest, 1.0)
            tx.finish_trial(trial_id, status, accuracy, 1000, None if status == "done" else "diverged", 1.5)
    return experiment.id


class FailingStore(ArtifactStore):
    """An artifact store whose every write fails (the publisher must only log it)."""

    url = "file:///unwritable"

    def put_bytes(self, key: str, data: bytes) -> None:
        raise ArtifactError(f"cannot write {key} in {self.url}: read-only file system")

    put_file = get_bytes = get_file = exists = list = delete = None  # type: ignore[assignment]


def test_leaderboard_is_published_when_a_trial_finishes(
    tmp_path: Path, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    finished_experiment(
        store,
        "live",
        [("[FC(32), SM(10)]", "done", 0.9), ("[SM(10)]", "done", 0.7), ("[C(8,3,1), SM(10)]", "failed", 0.1)],
    )
    artifacts = open_artifacts(f"file://{tmp_path}")
    publisher = LeaderboardPublisher(store, artifacts, "live", k=2)
    json_key, md_key = leaderboard_keys("live")

    publisher(Progress(budget=4, unique_finished=3, failed=1))
    document = json.loads(artifacts.get_bytes(json_key))
    assert [(r["rank"], r["arch"], r["accuracy"]) for r in document["top"]] == [
        (1, "[FC(32), SM(10)]", 0.9),
        (2, "[SM(10)]", 0.7),
    ]
    assert document["status"]["unique_trained"] == 3 and document["status"]["failed"] == 1
    markdown = artifacts.get_bytes(md_key).decode()
    assert (
        "3 of 4 models trained, 1 failed" in markdown
        and "| 1 | 0.9000 | 1,000 | - | - | 1.00 | `[FC(32), SM(10)]` |" in markdown
    )

    artifacts.delete(json_key)
    publisher(Progress(budget=4, unique_finished=3, failed=1, trials_done=9))  # replay hits only: nothing new
    assert not artifacts.exists(json_key)
    publisher(Progress(budget=4, unique_finished=4, failed=1))
    assert artifacts.exists(json_key)

    failing = LeaderboardPublisher(store, FailingStore(), "live")
    with caplog.at_level(logging.WARNING):
        assert failing.publish() is False
    assert "could not publish the leaderboard of live" in caplog.text

    # As a search callback: the loop calls on_step with itself (store, experiment, progress).
    artifacts.delete(json_key)
    view = SimpleNamespace(
        store=store, experiment=store.get_experiment("live"), progress=Progress(budget=4, unique_finished=5)
    )
    publisher.on_step(view)
    assert artifacts.exists(json_key)


def test_the_live_leaderboard_marks_a_stopped_trials_predicted_accuracy(tmp_path: Path, store: Store) -> None:
    """A trial stopped early (``--early-stop predict``) ranks by its predicted final accuracy, and the
    live leaderboard says so: ``stopped@t`` and ``(predicted)`` in the Markdown, ``accuracy_source``
    in the JSON, while the trained trials stay plain."""
    config = SearchConfig(trials=3, epochs=6, early_stop="predict").to_dict()
    experiment = store.create_experiment("live-stop", config)
    with store.transaction() as tx:
        for arch, status, accuracy in (("[FC(32), SM(10)]", "done", 0.9), ("[C(8,3,1), SM(10)]", "stopped", 0.95)):
            trial_id = tx.insert_trial(experiment.id, arch, Architecture.parse(arch).digest, 1.0)
            stopped = {"stopped_epoch": 3, "observed_accuracy": 0.62, "predicted_accuracy": 0.95}
            reason = "predict: P(final <= 0.9) = 0.01 after epoch 3" if status == "stopped" else None
            tx.finish_trial(trial_id, status, accuracy, 1000, reason, 1.5, stopped if status == "stopped" else None)
    artifacts = open_artifacts(f"file://{tmp_path}")
    assert LeaderboardPublisher(store, artifacts, "live-stop").publish()
    json_key, md_key = leaderboard_keys("live-stop")

    document = json.loads(artifacts.get_bytes(json_key))
    assert [
        (r["rank"], r["status"], r.get("stopped_epoch"), r["accuracy"], r["accuracy_source"]) for r in document["top"]
    ] == [(1, "stopped", 3, 0.95, "predicted"), (2, "done", None, 0.9, "trained")]
    assert document["top"][0]["observed_accuracy"] == 0.62 and document["status"]["stopped"] == 1
    markdown = artifacts.get_bytes(md_key).decode()
    assert "2 of 3 models trained, 0 failed, 1 stopped early, 0 running, best accuracy 0.9000." in markdown
    assert "| 1 | 0.9500 (predicted) | stopped@3 | 1,000 |" in markdown
    assert "| 2 | 0.9000 | done | 1,000 |" in markdown
    assert "A trial with status stopped@t was stopped early" in markdown


# -- nasagent.kubeflow: what the components share --------------------------------------------------------


def test_artifact_urls_experiment_names_and_secrets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # By default the platform's own bucket, under the prefix a Kubeflow >= 1.11 profile may write to.
    monkeypatch.setenv("POD_NAMESPACE", "kubeflow-user-example-com")
    assert artifacts_url("") == "s3://mlpipeline/private/kubeflow-user-example-com/nasagent"
    assert artifacts_url("mine") == "s3://mine" and artifacts_url("file:///tmp/x") == "file:///tmp/x"
    assert artifacts_url("s3://b/prefix") == "s3://b/prefix"
    monkeypatch.delenv("POD_NAMESPACE")
    with pytest.raises(ConfigError, match="no bucket"):
        artifacts_url(" ")
    monkeypatch.setenv("NASAGENT_S3_ENDPOINT", "http://minio:9000")
    use_s3_endpoint("")  # "" keeps what the pod has
    assert os.environ["NASAGENT_S3_ENDPOINT"] == "http://minio:9000"
    use_s3_endpoint(" http://seaweedfs.kubeflow.svc.cluster.local:8333 ")
    assert os.environ["NASAGENT_S3_ENDPOINT"] == "http://seaweedfs.kubeflow.svc.cluster.local:8333"
    assert experiment_name("cifar", "Run of nasagent-search (x)", "3F2A9C1E-77") == "cifar"
    assert experiment_name("", "Run of nasagent-search (x)", "3F2A9C1E-77") == "run-of-nasagent-search-x-3f2a9c1e"
    with pytest.raises(ConfigError, match="no experiment name"):
        experiment_name(" ", "run", "")
    check_trial_secrets("kubernetes", "nasagent-db")
    check_trial_secrets("local", "other-db")
    with pytest.raises(ConfigError, match="database Secret must be nasagent-db: got other-db"):
        check_trial_secrets("kfp", "other-db")
    # The trial template ConfigMap is mounted optionally: no file, no --trial-template.
    assert mounted_trial_template(str(tmp_path)) == ""
    (tmp_path / "job.yaml").write_text("apiVersion: batch/v1\nkind: Job\n", encoding="utf-8")
    assert mounted_trial_template(str(tmp_path)) == str(tmp_path / "job.yaml")


TRIAL_FLAGS = {  # named with engineer 8b's `nasagent search` flags
    "--trial-cpu-request": "3",
    "--trial-cpu-limit": "4",
    "--trial-memory-request": "10Gi",
    "--trial-memory-limit": "10Gi",
    "--trial-shm-size": "2Gi",
}


def flag_values(argv: list[str]) -> dict[str, list[str]]:
    """``--flag value`` pairs of an argv (after the subcommand), every value of a repeated flag."""
    values: dict[str, list[str]] = {}
    for flag, value in zip(argv[1::2], argv[2::2]):
        values.setdefault(flag, []).append(value)
    return values


def test_search_command_line_of_the_agent_step(caplog: pytest.LogCaptureFixture) -> None:
    common = dict(
        experiment="e",
        dataset="prepared:s3://b/datasets/digits/x.npz",
        space="metaqnn-small",
        strategy="qlearning",
        trials=0,
        schedule="paper",
        epochs=20,
        seed=0,
        parallelism=8,
        trial_image="reg/nasagent-trainer:1",
        gpus_per_trial=1,
        node_selector={"nvidia.com/gpu.present": "true"},
        tolerations=[
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
            {"key": "pool", "operator": "Equal", "value": "gpu", "effect": "NoExecute"},
        ],
        pending_timeout=1200,
        artifacts="s3://mlpipeline/private/ns/nasagent",
        keep_top=10,
        trial_resources=TrialResources("3", "4", "10Gi", "10Gi", "2Gi"),
        s3_secret="mlpipeline-minio-artifact",
        s3_endpoint="http://seaweedfs.kubeflow.svc.cluster.local:8333",
        trial_template="/etc/nasagent/trial-template/job.yaml",
    )
    argv = search_argv(launcher="kubernetes", **common)
    assert argv[0] == "search" and len(argv) % 2 == 1  # every flag has its value
    values = flag_values(argv)
    assert "--trials" not in values  # 0: the whole schedule
    assert values["--toleration"] == ["nvidia.com/gpu:NoSchedule", "pool=gpu:NoExecute"]
    single = {flag: found[0] for flag, found in values.items() if flag != "--toleration"}
    assert single == {
        "--experiment": "e",
        "--dataset": "prepared:s3://b/datasets/digits/x.npz",
        "--space": "metaqnn-small",
        "--strategy": "qlearning",
        "--schedule": "paper",
        "--epochs": "20",
        "--seed": "0",
        "--parallelism": "8",
        "--artifacts": "s3://mlpipeline/private/ns/nasagent",
        "--keep-top": "10",
        "--launcher": "kubernetes",
        "--trial-image": "reg/nasagent-trainer:1",
        "--gpus-per-trial": "1",
        "--pending-timeout": "1200",
        "--node-selector": "nvidia.com/gpu.present=true",
        **TRIAL_FLAGS,
        # The trial pods read the same object-store Secret and endpoint as the pipeline's steps.
        "--s3-secret": "mlpipeline-minio-artifact",
        "--s3-endpoint": "http://seaweedfs.kubeflow.svc.cluster.local:8333",
        "--trial-template": "/etc/nasagent/trial-template/job.yaml",
    }
    # The CLI accepts exactly this command line (it fails later, at the cluster, not at the flags).
    from nasagent.cli import build_parser

    parsed = build_parser().parse_args(argv)
    assert parsed.toleration == ["nvidia.com/gpu:NoSchedule", "pool=gpu:NoExecute"] and parsed.gpus_per_trial == 1
    assert (parsed.trial_cpu_request, parsed.trial_memory_limit, parsed.trial_shm_size) == ("3", "10Gi", "2Gi")
    assert (parsed.s3_secret, parsed.s3_endpoint) == ("mlpipeline-minio-artifact", single["--s3-endpoint"])

    # No template mounted, no --trial-template; KFP builds its own trial pods.
    assert "--trial-template" not in search_argv(launcher="kubernetes", **{**common, "trial_template": ""})
    kfp = flag_values(search_argv(launcher="kfp", **common))
    assert kfp["--launcher"] == ["kfp"] and kfp["--trial-image"] == ["reg/nasagent-trainer:1"]
    assert not {"--trial-template", "--s3-secret", "--s3-endpoint", *TRIAL_FLAGS} & set(kfp)
    with pytest.raises(ConfigError, match="--trial-memory-limit needs a Kubernetes quantity"):
        search_argv(launcher="kubernetes", **{**common, "trial_resources": TrialResources("3", "4", "8Gi", " ", "1Gi")})

    with caplog.at_level(logging.WARNING):
        local = search_argv(launcher="local", **{**common, "trials": 5})
    assert "--trial-image" not in local and "--trials" in local and "are ignored" in caplog.text
    assert not {"--s3-secret", "--trial-template", *TRIAL_FLAGS} & set(local)
    with pytest.raises(ConfigError, match="launcher must be"):
        search_argv(launcher="slurm", **common)
    with pytest.raises(ConfigError, match="needs a key and an effect"):
        toleration_flags([{"operator": "Exists"}])


def agent_argv(launcher: str = "local", **changes: Any) -> list[str]:
    """The agent step's command line for a digits search, as a ``kfp.local`` run makes it."""
    given: dict[str, Any] = dict(
        experiment="e",
        dataset="digits",
        space="metaqnn-small",
        strategy="qlearning",
        trials=2,
        schedule="paper",
        epochs=3,
        seed=0,
        parallelism=1,
        launcher=launcher,
        trial_image="reg/nasagent-trainer:1",
        gpus_per_trial=0,
        node_selector={},
        tolerations=[],
        pending_timeout=900,
        artifacts="file:///tmp/unused",
        keep_top=1,
        trial_resources=TrialResources("3", "4", "10Gi", "10Gi", "2Gi"),
        s3_secret="mlpipeline-minio-artifact",
        s3_endpoint="",
    )
    return search_argv(**{**given, **changes})


EARLY_STOP_FLAGS = (
    "--early-stop",
    "--early-stop-min-trials",
    "--early-stop-start-epoch",
    "--early-stop-retrain-every",
    "--early-stop-delta",
    "--early-stop-wait",
)
LIMIT_FLAGS = (
    "--max-params",
    "--max-macs",
    "--max-latency-ms",
    "--objective",
    "--objective-metric",
    "--objective-target",
    "--objective-weight",
)


@pytest.mark.parametrize("launcher", ["local", "kubernetes", "kfp"])
def test_the_runs_early_stopping_limits_and_objective_become_search_flags(launcher: str) -> None:
    """The pipeline's ``early_stop*``, ``max_*`` and ``objective*`` parameters: "" and 0 give no
    flag (the CLI's defaults, or what a resumed experiment stored); anything else is passed as it
    is, with every launcher, and the CLI reads back exactly the values the run gave."""
    from nasagent.cli import _early_stop_given, build_parser

    off = agent_argv(launcher)
    assert off == agent_argv(
        launcher,
        early_stop=EarlyStopping(" ", 0, 0, 0, 0.0, 0.0),
        limits=DeploymentLimits(0, 0, 0.0, "", " ", 0.0, 0.0),
    )
    assert not {*EARLY_STOP_FLAGS, *LIMIT_FLAGS} & {arg.partition("=")[0] for arg in off}
    parsed = build_parser().parse_args(off)
    assert _early_stop_given(parsed) is None
    assert (parsed.max_params, parsed.max_macs, parsed.max_latency_ms, parsed.objective) == (None, None, None, None)

    early_stop = EarlyStopping(" predict ", 20, 2, 5, 0.95, 30.0)
    limits = DeploymentLimits(250_000, 40_000_000, 2.5, "mnas", "params", 100_000.0, -0.07)
    argv = agent_argv(launcher, early_stop=early_stop, limits=limits)
    added, at = [*early_stop.flags(), *limits.flags()], argv.index("--early-stop")
    assert argv[at : at + len(added)] == added and argv[:at] + argv[at + len(added) :] == off  # nothing else changes
    values = flag_values([arg for arg in argv if not arg.startswith("--objective-weight=")])
    assert {flag: values[flag] for flag in (*EARLY_STOP_FLAGS, *LIMIT_FLAGS[:-1])} == {
        "--early-stop": ["predict"],
        "--early-stop-min-trials": ["20"],
        "--early-stop-start-epoch": ["2"],
        "--early-stop-retrain-every": ["5"],
        "--early-stop-delta": ["0.95"],
        "--early-stop-wait": ["30.0"],
        "--max-params": ["250000"],
        "--max-macs": ["40000000"],
        "--max-latency-ms": ["2.5"],
        "--objective": ["mnas"],
        "--objective-metric": ["params"],
        "--objective-target": ["100000.0"],
    }
    assert "--objective-weight=-0.07" in argv  # a negative value cannot be taken for a flag
    parsed = build_parser().parse_args(argv)
    assert _early_stop_given(parsed) == {
        "rule": "predict",
        "min_trials": 20,
        "start_epoch": 2,
        "retrain_every": 5,
        "delta": 0.95,
        "wait_seconds": 30.0,
    }
    assert (parsed.max_params, parsed.max_macs, parsed.max_latency_ms) == (250_000, 40_000_000, 2.5)
    assert (parsed.objective, parsed.objective_metric, parsed.objective_target, parsed.objective_weight) == (
        "mnas",
        "params",
        100_000.0,
        -0.07,
    )
    # What the CLI then validates and stores: the same settings as `nasagent search` with these flags.
    config = SearchConfig(
        space="metaqnn-small",
        epochs=3,
        early_stop=_early_stop_given(parsed),
        max_params=parsed.max_params,
        max_macs=parsed.max_macs,
        max_latency_ms=parsed.max_latency_ms,
        objective=parsed.objective,
        objective_metric=parsed.objective_metric,
        objective_target=parsed.objective_target,
        objective_weight=parsed.objective_weight,
    )
    assert config.early_stop.to_dict() == _early_stop_given(parsed)
    assert (config.objective_metric, config.objective_target, config.objective_weight) == ("params", 1e5, -0.07)


@pytest.mark.parametrize(
    "changes,words",
    [
        ({"limits": DeploymentLimits(max_params=-5)}, "--max-params must be a positive whole number, got -5"),
        ({"limits": DeploymentLimits(max_latency_ms=-1.5)}, "--max-latency-ms must be a positive number"),
        ({"limits": DeploymentLimits(max_params=10)}, "no network of space 'metaqnn-small'"),
        ({"limits": DeploymentLimits(objective="mnas")}, "--objective mnas needs --objective-target"),
        ({"limits": DeploymentLimits(objective="fastest")}, "--objective must be one of"),
        ({"limits": DeploymentLimits(objective_weight=-1e-05)}, "--objective-weight applies to --objective mnas"),
        ({"early_stop": EarlyStopping(rule="sometimes")}, "--early-stop must be one of none, median, predict"),
        ({"early_stop": EarlyStopping(rule="predict", delta=1.5)}, "--early-stop-delta must be in [0.5, 1)"),
        ({"early_stop": EarlyStopping(rule="median", start_epoch=3)}, "must be below --epochs 3"),
        ({"early_stop": EarlyStopping(rule="median", retrain_every=5)}, "--early-stop-retrain-every needs"),
        ({"early_stop": EarlyStopping(min_trials=-2)}, "--early-stop-min-trials"),
    ],
)
def test_a_bad_early_stop_or_limit_parameter_is_the_clis_one_line_error(
    changes: dict[str, Any],
    words: str,
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """What the agent step does with the run's parameters (``run_cli(search_argv(...))``): a bad
    value stops the step with the CLI's one line and exit code 2, and no experiment is created."""
    monkeypatch.setenv("NASAGENT_DB", db_url)
    monkeypatch.setenv("NASAGENT_HOME", str(tmp_path))
    with pytest.raises(SystemExit) as stopped:
        run_cli(agent_argv("local", experiment="refused", **changes))
    assert stopped.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nasagent: error: ") and words in lines[0], lines
    with Store.connect(db_url) as store:
        assert store.find_experiment("refused") is None


def test_the_agent_steps_trial_job_carries_the_pipelines_sizes_store_and_template(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """What the agent step's command line makes of a trial pod, shown by ``nasagent search --dry-run``
    (the Job it would create; no cluster, no database): the ``trial_*`` sizes, the platform's
    object-store Secret and endpoint, and the admin's template (here the one manifests/ ship)."""
    argv = search_argv(
        experiment="e",
        dataset="prepared:s3://mlpipeline/private/ns/nasagent/datasets/digits/x.npz",
        space="metaqnn-small",
        strategy="qlearning",
        trials=0,
        schedule="paper",
        epochs=20,
        seed=0,
        parallelism=8,
        launcher="kubernetes",
        trial_image="ghcr.io/nasagent/nasagent-trainer:0.1.0",
        gpus_per_trial=1,
        node_selector={"nvidia.com/gpu.present": "true"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        pending_timeout=900,
        artifacts="s3://mlpipeline/private/ns/nasagent",
        keep_top=10,
        trial_resources=TrialResources("3", "4", "10Gi", "10Gi", "2Gi"),
        s3_secret="mlpipeline-minio-artifact",
        s3_endpoint="http://seaweedfs.kubeflow.svc.cluster.local:8333",
        trial_template=str(ROOT / "manifests" / "base" / "trial-job.yaml"),
    )
    assert main([*argv, "--dry-run"]) == 0
    job = yaml.safe_load(capsys.readouterr().out)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"] == {
        "requests": {"cpu": "3", "memory": "10Gi", "nvidia.com/gpu": 1},
        "limits": {"cpu": "4", "memory": "10Gi", "nvidia.com/gpu": 1},
    }
    env = {e["name"]: e.get("value") or e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert env["NASAGENT_S3_ACCESS_KEY"] == {"name": "mlpipeline-minio-artifact", "key": "accesskey"}
    assert env["NASAGENT_S3_SECRET_KEY"] == {"name": "mlpipeline-minio-artifact", "key": "secretkey"}
    assert env["NASAGENT_S3_ENDPOINT"] == "http://seaweedfs.kubeflow.svc.cluster.local:8333"
    shm = next(v for v in pod["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True  # the template's
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}


def test_ranks_to_finetune_drop_models_of_an_earlier_larger_top(tmp_path: Path, store: Store) -> None:
    finished_experiment(
        store, "ft", [("[FC(32), SM(10)]", "done", 0.9), ("[SM(10)]", "done", 0.7), ("[FC(8), SM(10)]", "done", 0.5)]
    )
    artifacts = open_artifacts(f"file://{tmp_path}")
    for rank in (1, 2, 3, 4):  # models of an earlier run with finetune_top 4
        artifacts.put_bytes(
            finetuned_prefix("ft", rank) + "model.json",
            json.dumps({"format": "nasagent-model/1", "rank": rank}).encode(),
        )
    assert finetune_ranks(store, "ft", artifacts, 2) == [1, 2]
    assert [m["rank"] for m in list_models(artifacts, "ft")] == [1, 2]
    assert finetune_ranks(store, "ft", artifacts, 10) == [1, 2, 3]  # only 3 finished trials
    assert finetune_ranks(store, "ft", artifacts, 0) == []
    assert list_models(artifacts, "ft") == []


def test_finetune_of_one_rank_refuses_ranks_that_do_not_exist(
    tmp_path: Path, store: Store, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    finished_experiment(store, "one", [("[FC(32), SM(10)]", "done", 0.9), ("[SM(10)]", "done", 0.7)])
    artifacts = open_artifacts(f"file://{tmp_path}")
    with pytest.raises(ConfigError, match="--rank must be at least 1"):
        finetune_experiment(store, "one", artifacts, only_rank=0)
    url = f"file://{tmp_path}"
    assert main(["finetune", "--experiment", "one", "--rank", "3", "--artifacts", url, "--db", db_url]) == 2
    assert "'one' has 2 finished trial(s): no rank 3 to finetune" in capsys.readouterr().err


def test_a_model_whose_finetuning_failed_leaves_its_reason_as_the_model_artifact(tmp_path: Path) -> None:
    row = {"rank": 2, "arch": "[SM(10)]", "status": "failed", "failure": "diverged (NaN loss)", "location": None}
    export_finetuned(open_artifacts(f"file://{tmp_path}/art"), "x", row, tmp_path / "model")
    assert json.loads((tmp_path / "model" / "failure.json").read_text())["failure"] == "diverged (NaN loss)"


# -- a component, run for real --------------------------------------------------------------------------


@pytest.mark.filterwarnings(
    "ignore:You may be attemping to run a task:RuntimeWarning"
)  # it runs in this Python on purpose
def test_trial_component_runs_standalone_under_kfp_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ``trial`` component, executed by kfp.local's SubprocessRunner in this environment
    (standalone mode: no database), trains its architecture and reports metrics and the outcome."""
    from kfp import local

    from components.trial import trial

    monkeypatch.setenv("NASAGENT_HOME", str(tmp_path / "home"))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    task = trial(arch="[C(32,3,1), P(2,2), FC(64), SM(10)]", dataset="digits", epochs=4, seed=1)
    accuracy = task.outputs["Output"]
    assert accuracy > 0.6  # chance is 0.1
    metrics = task.outputs["metrics"].metadata
    assert metrics["accuracy"] == pytest.approx(accuracy) and metrics["failed"] == 0.0 and metrics["epochs_run"] == 4.0
    outcome = json.loads(Path(task.outputs["outcome"].path).read_text())
    assert outcome["status"] == "done" and outcome["accuracy"] == pytest.approx(accuracy)
    assert len(outcome["info"]["history"]) == 4
