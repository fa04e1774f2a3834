"""The cluster launchers: Kubernetes Jobs and KFP runs.

No Kubernetes API server or KFP server can run on these machines. So: the Job specs are validated
against the Kubernetes schema (kubernetes-validate, strict); the trial pipeline is compiled and
then run for real under ``kfp.local``; and the launchers' watch, poll and retry logic runs against
FAKES of their client interfaces (``tests/launcher_helpers.py``), with real PostgreSQL behind them.
Each test that uses a fake says so. The last test runs a whole search through the Kubernetes
launcher with a fake cluster whose kubelet runs the real ``nasagent trial`` processes.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from launcher_helpers import (
    FakeApiServer,
    FakeClock,
    FakeKubernetes,
    FakePipelines,
    SubprocessKubernetes,
    pod_reporter,
    quota,
    reported_accuracy,
    trial_role_url,
)

from nasagent.cli import main
from nasagent.config import SearchConfig
from nasagent.core.arch import Architecture
from nasagent.core.trial import Fault, TrialOutcome, TrialSpec, trial_seed
from nasagent.errors import ClusterError, ConfigError, InfrastructureError, KubeApiError, WatchExpired
from nasagent.execution.cluster import LauncherSettings, label_value, parse_quantity, parse_toleration
from nasagent.execution.kfp import KfpRunner, compile_trial_pipeline, trial_pipeline
from nasagent.execution.kubernetes import (
    ClientApi,
    KubernetesRunner,
    agent_owner,
    job_name,
    load_job_template,
    trial_job,
)
from nasagent.execution.launchers import launcher_settings
from nasagent.persistence.databases import create_database, drop_database
from nasagent.persistence.postgres import Store

K8S_VERSION = "1.30.0"
ARCHS = [
    "[C(8,3,1), SM(10)]",
    "[C(16,3,1), SM(10)]",
    "[C(8,1,1), SM(10)]",
    "[C(16,1,1), SM(10)]",
    "[C(32,3,1), SM(10)]",
]


def make_trials(store: Store, n: int, epochs: int = 1, name: str | None = None) -> list[TrialSpec]:
    """An experiment on digits (``name``, else a fresh one) with ``n`` trials recorded as running,
    as the agent leaves them when it submits them."""
    config = SearchConfig(dataset="digits", epochs=epochs, trials=n)
    experiment = store.create_experiment(name or f"exp-{uuid.uuid4().hex[:8]}", config.to_dict())
    specs = []
    with store.transaction() as tx:
        for text in ARCHS[:n]:
            arch = Architecture.parse(text)
            trial_id = tx.insert_trial(experiment.id, str(arch), arch.digest, 1.0)
            specs.append(TrialSpec(trial_id, str(arch), trial_seed(0, arch.digest)))
    return specs


def settings(**changes: Any) -> LauncherSettings:
    values: dict[str, Any] = dict(
        experiment="exp",
        image="registry.example/nasagent:1.0",
        namespace="nas",
        parallelism=2,
        pending_timeout=60,
        trial_timeout=600,
        max_retries=2,
    )
    return LauncherSettings(**{**values, **changes})


def run_all(runner: Any, specs: list[TrialSpec], rounds: int = 500) -> dict[int, TrialOutcome]:
    """Submit like the agent does (never above capacity) and wait until every trial came back."""
    queue, outcomes = list(specs), {}
    for _ in range(rounds):
        while queue and runner.in_flight < runner.capacity:
            runner.submit(queue.pop(0))
        for outcome in runner.wait(5.0):
            assert outcome.trial_id not in outcomes, "one outcome per trial"
            outcomes[outcome.trial_id] = outcome
        if len(outcomes) == len(specs):
            return outcomes
    raise AssertionError(f"only {len(outcomes)} of {len(specs)} trials came back")


@pytest.fixture(scope="module")
def shared_db_url(embedded_pg: Any) -> Iterator[str]:
    """One database for the tests of this module that can share it (each uses its own experiment):
    creating a database per test would cost more than most of these tests."""
    name = f"nastest_launchers_{uuid.uuid4().hex[:12]}"
    url = create_database(embedded_pg.url, name)
    try:
        yield url
    finally:
        drop_database(embedded_pg.url, name)


@pytest.fixture(scope="module")
def store(shared_db_url: str) -> Iterator[Store]:
    """This module's Store on the shared database (overrides conftest's per-test ``store``)."""
    with Store.connect(shared_db_url) as connected:
        yield connected


@pytest.fixture(scope="module")
def reporter(shared_db_url: str) -> Iterator[Callable[[int, int], None]]:
    """Writes a trial's result over its own connection, as a trial pod does."""
    report, connection = pod_reporter(shared_db_url)
    yield report
    connection.close()


def fake_cluster(script: Any = None, report: Any = None) -> tuple[FakeKubernetes, FakeClock]:
    clock = FakeClock()
    return FakeKubernetes(clock, clock.sleep, script, report), clock


def k8s_runner(api: FakeKubernetes, clock: FakeClock, store: Store, **changes: Any) -> KubernetesRunner:
    return KubernetesRunner(api, store, settings(**changes), num_classes=10, clock=clock, sleep=clock.sleep)


# -- Job specs against the Kubernetes schema -------------------------------------------------------


def test_job_spec_is_valid_kubernetes_and_carries_the_contract() -> None:
    launcher = settings(
        gpus_per_trial=2,
        node_selector={"nvidia.com/gpu.product": "A100"},
        tolerations=(parse_toleration("nvidia.com/gpu:NoSchedule"), parse_toleration("team=nas:NoExecute")),
        artifacts="s3://bucket/nas",
    )
    owner = {"apiVersion": "v1", "kind": "Pod", "name": "agent-0", "uid": "0c4b1f1e-0000-4000-8000-000000000001"}
    job = trial_job(launcher, 42, 3, job_name("exp", 42, 3, "ab12c"), owner)
    assert kubernetes_validate.validate(job, K8S_VERSION, strict=True) == "1.30"
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["nasagent", "trial", "--experiment", "exp", "--trial-id", "42"]
    assert container["image"] == "registry.example/nasagent:1.0"
    assert container["resources"] == {
        "requests": {"cpu": "4", "memory": "24Gi", "nvidia.com/gpu": 2},
        "limits": {"cpu": "8", "memory": "24Gi", "nvidia.com/gpu": 2},
    }
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"], spec["ttlSecondsAfterFinished"]) == (0, 600, 3600)
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == "nasagent-trial"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "A100"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "team", "operator": "Equal", "value": "nas", "effect": "NoExecute"},
    ]
    assert job["metadata"]["ownerReferences"] == [owner]
    labels = spec["template"]["metadata"]["labels"]
    assert labels == {**job["metadata"]["labels"]} and labels["nasagent.io/trial"] == "42"
    assert {k: labels[k] for k in ("app.kubernetes.io/part-of", "nasagent.io/role", "nasagent.io/experiment")} == {
        "app.kubernetes.io/part-of": "nasagent",
        "nasagent.io/role": "trial",
        "nasagent.io/experiment": "exp",
    }
    env = {e["name"]: e for e in container["env"]}
    # Trial pods connect as the role that may only record trial results, not as the owner.
    assert env["NASAGENT_DB"]["valueFrom"] == {"secretKeyRef": {"name": "nasagent-trial-db", "key": "url"}}
    assert env["NASAGENT_S3_SECRET_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "nasagent-s3",
        "key": "secret_key",
        "optional": True,
    }
    assert env["NASAGENT_ATTEMPT"]["value"] == "3" and env["NASAGENT_ARTIFACTS"]["value"] == "s3://bucket/nas"
    # The validator is strict: a misspelt field is rejected, so the checks above mean something.
    job["spec"]["backofLimit"] = 0
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, K8S_VERSION, strict=True)


def test_any_experiment_name_gives_valid_names_and_labels() -> None:
    for name in ("Résumé search/β 2024 " * 4, "a", "-._x_.-", "UPPER_and.dots-63-chars-" + "y" * 60):
        launcher = settings(experiment=name, gpus_per_trial=0)
        job = trial_job(launcher, 123456789, 10, job_name(name, 123456789, 10, "f00ba"))
        kubernetes_validate.validate(job, K8S_VERSION, strict=True)
        assert len(job["metadata"]["name"]) <= 63 and "nvidia.com/gpu" not in json.dumps(job)
        assert job["spec"]["template"]["spec"]["containers"][0]["command"][3] == name  # the real name, not the label
    assert label_value("exp-1") == "exp-1"
    assert label_value("a b") != label_value("a/b"), "names that sanitise alike still get distinct labels"


TEMPLATE = """
apiVersion: batch/v1
kind: Job
metadata: {name: nasagent-trial, labels: {team: vision}}
spec:
  backoffLimit: 4
  ttlSecondsAfterFinished: 7200
  template:
    metadata:
      annotations: {sidecar.istio.io/inject: "false"}
    spec:
      restartPolicy: OnFailure
      securityContext: {runAsNonRoot: true, runAsUser: 10001}
      nodeSelector: {nvidia.com/gpu.present: "true"}
      tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
      containers:
        - name: worker
          image: placeholder
          command: [nasagent, trial]
          args: [--verbose]
          env:
            - {name: NASAGENT_HOME, value: /var/lib/nasagent}
            - name: NASAGENT_S3_ENDPOINT
              valueFrom: {secretKeyRef: {name: nasagent-s3, key: endpoint}}
          resources:
            requests: {cpu: "2", memory: 8Gi, nvidia.com/gpu: 1}
            limits: {memory: 24Gi, nvidia.com/gpu: 1}
          securityContext: {readOnlyRootFilesystem: true}
          volumeMounts: [{name: home, mountPath: /var/lib/nasagent}]
      volumes: [{name: home, emptyDir: {}}]
"""


def test_jobs_are_built_on_the_admins_template(tmp_path: Path) -> None:
    """The template wins where it says something, the restricted defaults fill the rest, and the
    launcher's contract wins over both (kubernetes.merge_template, trial_job)."""
    path = tmp_path / "job.yaml"
    path.write_text(TEMPLATE)
    template = load_job_template(str(path))
    launcher = settings(
        job_template=template,
        gpus_per_trial=2,
        tolerations=(parse_toleration("nvidia.com/gpu:NoSchedule"),),
        node_selector={"pool": "a100"},
    )
    job = trial_job(launcher, 7, 1, job_name("exp", 7, 1, "ab12c"))
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    # The admin's settings stay ...
    assert job["spec"]["ttlSecondsAfterFinished"] == 7200 and job["metadata"]["labels"]["team"] == "vision"
    assert job["spec"]["template"]["metadata"]["annotations"] == {
        "sidecar.istio.io/inject": "false",  # the template's
        # The launcher's default, kept where the template is silent.
        "cluster-autoscaler.kubernetes.io/safe-to-evict": "false",
    }
    assert pod["securityContext"]["runAsUser"] == 10001 and {"name": "home", "emptyDir": {}} in pod["volumes"]
    assert {"name": "NASAGENT_HOME", "value": "/var/lib/nasagent"} in container["env"]
    # ... the restricted defaults fill in what it leaves out ...
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsGroup"] == 10001 and pod["automountServiceAccountToken"] is False
    assert container["securityContext"] == {
        "readOnlyRootFilesystem": True,  # the template's
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    # Mounts merge by path: the template's "home" stays at /var/lib/nasagent, the defaults add /tmp
    # and /dev/shm with their volumes.
    assert [m["mountPath"] for m in container["volumeMounts"]] == ["/var/lib/nasagent", "/tmp", "/dev/shm"]
    assert {v["name"] for v in pod["volumes"]} == {"home", "tmp", "shm"}
    # ... and the launcher's win where the contract needs them.
    assert (job["spec"]["backoffLimit"], pod["restartPolicy"], container["name"]) == (0, "Never", "trial")
    assert (
        container["command"] == ["nasagent", "trial", "--experiment", "exp", "--trial-id", "7"]
        and "args" not in container
    )
    assert [e for e in container["env"] if e["name"] == "NASAGENT_S3_ENDPOINT"][0]["valueFrom"]["secretKeyRef"][
        "optional"
    ] is True
    assert container["resources"] == {
        "requests": {"cpu": "2", "memory": "8Gi", "nvidia.com/gpu": 2},
        "limits": {"cpu": "8", "memory": "24Gi", "nvidia.com/gpu": 2},  # cpu: the default limit
    }
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true", "pool": "a100"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}], (
        "no duplicate"
    )
    cpu_job = trial_job(settings(job_template=template, gpus_per_trial=0), 7, 1, "nas-exp-7-1-ab12c")
    assert cpu_job["spec"]["template"]["spec"]["containers"][0]["resources"] == {
        "requests": {"cpu": "2", "memory": "8Gi"},
        "limits": {"cpu": "8", "memory": "24Gi"},
    }
    assert template["spec"]["backoffLimit"] == 4, "the template itself is not changed"


def test_a_template_that_mounts_its_own_volume_replaces_the_default_one(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(
        "apiVersion: batch/v1\nkind: Job\nspec:\n  template:\n    spec:\n      containers:\n"
        "        - name: t\n          volumeMounts: [{name: scratch, mountPath: /tmp}]\n"
        "      volumes: [{name: scratch, ephemeral: {volumeClaimTemplate: {spec: {accessModes: [ReadWriteOnce],"
        " resources: {requests: {storage: 100Gi}}}}}}]\n"
    )
    job = trial_job(settings(job_template=load_job_template(str(path))), 1, 1, "nas-exp-1-1-ab12c")
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    pod = job["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts == {"/tmp": "scratch", "/var/lib/nasagent": "home", "/dev/shm": "shm"}
    assert [v["name"] for v in pod["volumes"]] == ["scratch", "home", "shm"], "the unmounted default tmp is gone"


def test_resource_flags_fill_the_job_and_win_over_a_template(tmp_path: Path) -> None:
    flags = dict(cpu_request="500m", cpu_limit="1.5", memory_request="3Gi", memory_limit="6Gi", shm_size="2Gi")
    job = trial_job(settings(gpus_per_trial=0, **flags), 1, 1, "nas-exp-1-1-ab12c")
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"] == {
        "requests": {"cpu": "500m", "memory": "3Gi"},
        "limits": {"cpu": "1.5", "memory": "6Gi"},
    }
    assert {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}} in pod["volumes"]
    path = tmp_path / "job.yaml"
    path.write_text(TEMPLATE)
    templated = trial_job(
        settings(job_template=load_job_template(str(path)), cpu_limit="16", memory_limit="30Gi"), 1, 1, "nas-x"
    )
    resources = templated["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources["limits"] == {"cpu": "16", "memory": "30Gi", "nvidia.com/gpu": 1}, "a flag given wins"
    assert resources["requests"] == {"cpu": "2", "memory": "8Gi", "nvidia.com/gpu": 1}, "the template's"


def test_trial_pods_can_read_the_platforms_object_store_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """--s3-secret: a Secret in Kubeflow's convention (a profile's mlpipeline-minio-artifact, keys
    accesskey and secretkey) with the endpoint given literally, as the pipeline's steps read it."""
    env = {
        e["name"]: e
        for e in trial_job(
            settings(s3_secret="mlpipeline-minio-artifact", s3_endpoint="http://seaweedfs.kubeflow:8333"), 1, 1, "n"
        )["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["NASAGENT_S3_ACCESS_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "mlpipeline-minio-artifact", "key": "accesskey"}
    }
    assert env["NASAGENT_S3_SECRET_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "secretkey"
    assert env["NASAGENT_S3_ENDPOINT"] == {"name": "NASAGENT_S3_ENDPOINT", "value": "http://seaweedfs.kubeflow:8333"}
    # Without --s3-endpoint the agent's own endpoint is the trials'.
    monkeypatch.setenv("NASAGENT_S3_ENDPOINT", "http://minio-service.kubeflow:9000")
    made = launcher_settings("kubernetes", "e", 1, {"image": "i", "s3_secret": "mlpipeline-minio-artifact"})
    assert made is not None and made.s3_endpoint == "http://minio-service.kubeflow:9000"
    # An endpoint alone overrides nasagent-s3's key endpoint, the keys still come from nasagent-s3.
    env = {
        e["name"]: e
        for e in trial_job(settings(s3_endpoint="https://s3.example.com"), 1, 1, "n")["spec"]["template"]["spec"][
            "containers"
        ][0]["env"]
    }
    assert env["NASAGENT_S3_ENDPOINT"]["value"] == "https://s3.example.com"
    assert env["NASAGENT_S3_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "nasagent-s3"


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"cpu_request": "16"}, "the cpu request 16 is above the cpu limit 8"),
        ({"memory_request": "32Gi", "memory_limit": "16Gi"}, "the memory request 32Gi is above the memory limit 16Gi"),
        ({"shm_size": "32Gi"}, "/dev/shm (32Gi) cannot be larger than the memory limit 24Gi"),
    ],
)
def test_resources_that_cannot_be_admitted_are_a_config_error(changes: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(words)):
        trial_job(settings(**changes), 1, 1, "nas-exp-1-1-ab12c")


@pytest.mark.parametrize(
    "text",
    [
        "1",
        "500m",
        "1.5",
        "0.5",
        ".5",
        "+2",
        "100k",
        "1M",
        "24G",
        "1T",
        "3n",
        "7u",
        "1Ki",
        "8Gi",
        "1.5Gi",
        "2Ti",
        "1Pi",
        "1Ei",
        "1e3",
        "1E3",
        "2e-3",
        "12E+2",
        "1E",
    ],
)
def test_quantities_are_parsed_as_kubernetes_parses_them(text: str) -> None:
    """The launcher's small parser agrees with the official client's (kubernetes.utils.parse_quantity)."""
    from kubernetes.utils import parse_quantity as official

    assert parse_quantity(text, "--x") == Fraction(official(text))


@pytest.mark.parametrize(
    "text", ["", "abc", "1.5.3", "5 Gi", "5gi", "5GB", "1KiB", "-1", "0", "0Gi", "1e", "Gi", "0x10"]
)
def test_bad_quantities_are_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="--trial-cpu-limit"):
        settings(cpu_limit=text)


@pytest.mark.parametrize("relative", ["manifests/base/trial-job.yaml", "manifests/components/gpu/trial-job.yaml"])
def test_the_repositorys_trial_templates_give_valid_jobs(relative: str) -> None:
    path = Path(__file__).resolve().parents[1] / relative
    if not path.exists():
        pytest.skip(f"{relative} is not in this checkout")
    job = trial_job(settings(job_template=load_job_template(str(path))), 1, 1, "nas-exp-1-1-ab12c")
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][:2] == ["nasagent", "trial"]


@pytest.mark.parametrize(
    "text, words",
    [
        (None, "cannot read --trial-template"),
        ("a: [b", "is not YAML"),
        ("apiVersion: v1\nkind: Pod\n", "must be a batch/v1 Job"),
        (
            "apiVersion: batch/v1\nkind: Job\nspec: {template: {spec: {containers: [{name: a}, {name: b}]}}}\n",
            "exactly one container, has 2",
        ),
    ],
)
def test_a_bad_trial_template_is_a_config_error(tmp_path: Path, text: str | None, words: str) -> None:
    path = tmp_path / "job.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=words):
        load_job_template(str(path))


# -- the Kubernetes launcher against a FAKE of its client interface ---------------------------------


def test_trials_succeed_with_outcomes_from_trial_results_and_at_most_parallelism_jobs(store: Store, reporter) -> None:
    """FAKE Kubernetes API: five trials, two Jobs alive at most, each outcome read from real PostgreSQL."""
    api, clock = fake_cluster(report=reporter)
    specs = make_trials(store, 5)
    with k8s_runner(api, clock, store) as runner:
        outcomes = run_all(runner, specs)
    assert api.max_alive == 2 and len(api.created) == 5
    for spec in specs:
        outcome = outcomes[spec.trial_id]
        assert (outcome.status, outcome.accuracy, outcome.params) == ("done", reported_accuracy(spec.trial_id, 1), 1234)
        assert outcome.info["launcher"] == "kubernetes" and outcome.info["attempt"] == 1 and outcome.fault is None
    # The launcher leaves the trial rows to the agent.
    assert {store.trial(spec.trial_id).status for spec in specs} == {"running"}


def test_a_trial_that_keeps_failing_is_an_infrastructure_failure_and_the_others_go_on(store: Store, reporter) -> None:
    """FAKE Kubernetes API: trial 1's container is OOMKilled (its memory limit) on every attempt;
    the others succeed. No reward: the agent gets an infrastructure failure to requeue."""
    specs = make_trials(store, 3)
    first = specs[0].trial_id
    api, clock = fake_cluster(lambda trial, attempt: "oom" if trial == first else "succeed", reporter)
    with k8s_runner(api, clock, store, max_retries=2) as runner:
        outcomes = run_all(runner, specs)
    failed = outcomes[first]
    assert failed.fault is Fault.KILLED and math.isnan(failed.accuracy)
    assert failed.failure == "OOMKilled: container trial ran out of memory (limit 24Gi) (gave up after 3 attempts)"
    assert len(failed.info["attempt_failures"]) == 2 and failed.info["attempt"] == 3
    assert sum(j["metadata"]["labels"]["nasagent.io/trial"] == str(first) for j in api.created) == 3
    assert all(outcomes[s.trial_id].status == "done" for s in specs[1:])


@pytest.mark.parametrize(
    "script, fault, words",
    [
        ("oom", Fault.KILLED, "OOMKilled: container trial ran out of memory (limit 24Gi)"),
        ("exit", Fault.CRASHED, "exit code 2: nasagent: error: database postgresql://x: connection refused"),
        ("hang", Fault.TIMEOUT, "timed out: the Job ran longer than --trial-timeout 600s (DeadlineExceeded)"),
        ("no-result", Fault.CRASHED, "the trial finished without reporting a result to trial_results"),
        ("vanish", Fault.DELETED, "the Job was deleted before the trial finished"),
        (
            "pending",
            Fault.UNSCHEDULABLE,
            "pending for more than --pending-timeout 60s: Unschedulable: 0/3 nodes are available: "
            "3 Insufficient nvidia.com/gpu.",
        ),
    ],
)
def test_a_failed_attempt_is_retried_with_its_reason_then_handed_back_with_its_fault(
    store: Store, reporter, script: str, fault: Fault, words: str
) -> None:
    """FAKE Kubernetes API: attempt 1 fails in one way and attempt 2 succeeds (the reason is kept);
    a trial failing that way on its only attempt is handed back as that fault, never a reward."""
    api, clock = fake_cluster(lambda trial, attempt: script if attempt == 1 else "succeed", reporter)
    retried, once = make_trials(store, 2)
    started = clock()
    with k8s_runner(api, clock, store) as runner:
        outcome = run_all(runner, [retried])[retried.trial_id]
    assert outcome.status == "done" and outcome.accuracy == reported_accuracy(retried.trial_id, 2)
    assert outcome.info["attempt"] == 2 and outcome.info["attempt_failures"] == [f"attempt 1: {words}"]
    if script == "pending":
        assert clock() - started >= 60, "a pending Job is given --pending-timeout (simulated time)"
        assert api.deleted[0] == api.created[0]["metadata"]["name"], "the pending Job is deleted before the retry"
    with k8s_runner(api, clock, store, max_retries=0) as runner:
        handed_back = run_all(runner, [once])[once.trial_id]
    assert handed_back.fault is fault and handed_back.failure == words and math.isnan(handed_back.accuracy)


@pytest.mark.parametrize("disruption", ["preempt", "evict", "drain", "node-lost"])
def test_a_disrupted_pod_is_replaced_by_the_job_without_counting(store: Store, reporter, disruption: str) -> None:
    """FAKE Kubernetes API whose Job controller applies the Job's podFailurePolicy: the first pod is
    preempted, evicted (by the kubelet, or deleted by a drain) or lost with its node
    (``DisruptionTarget``); the Job ignores it and its next pod succeeds: one Job, one attempt, no
    failure seen by the launcher (backoffLimit 0 would have failed the Job on any counted one)."""
    api, clock = fake_cluster(lambda trial, attempt: [disruption, "succeed"], reporter)
    [spec] = make_trials(store, 1)
    with k8s_runner(api, clock, store, max_retries=0) as runner:
        outcome = run_all(runner, [spec])[spec.trial_id]
    assert outcome.status == "done" and outcome.accuracy == reported_accuracy(spec.trial_id, 1)
    assert outcome.info["attempt"] == 1 and "attempt_failures" not in outcome.info
    assert len(api.created) == 1 and sum(api.injected.values()) == 1, api.injected
    assert api.completions == {spec.trial_id: 1}


def test_a_configuration_error_fails_the_job_at_once_and_stops_the_search(store: Store, reporter) -> None:
    """FAKE Kubernetes API: the trial exits with CONFIG_ERROR_EXIT; podFailurePolicy fails the Job at
    once and the launcher stops the search with the trial's message (no retry fixes it)."""
    api, clock = fake_cluster(lambda trial, attempt: "config", reporter)
    [spec] = make_trials(store, 1)
    with k8s_runner(api, clock, store, max_retries=2) as runner:
        with pytest.raises(InfrastructureError, match=r"exited with a configuration error \(exit code 3\): nasagent"):
            run_all(runner, [spec])
    assert len(api.created) == 1, "not retried"
    ended = [job["status"]["conditions"] for _, kind, job in api.events if job["status"].get("conditions")][-1]
    assert [(c["type"], c["reason"]) for c in ended] == [
        ("FailureTarget", "PodFailurePolicy"),
        ("Failed", "PodFailurePolicy"),
    ]


def test_a_trial_pending_on_every_attempt_is_handed_back_unschedulable(store: Store) -> None:
    """FAKE Kubernetes API: no GPU node ever comes; after max_retries the trial goes back to the
    agent as unschedulable, its Jobs deleted."""
    api, clock = fake_cluster(lambda trial, attempt: "pending")
    [spec] = make_trials(store, 1)
    with k8s_runner(api, clock, store, max_retries=1) as runner:
        outcome = run_all(runner, [spec])[spec.trial_id]
    assert outcome.fault is Fault.UNSCHEDULABLE and "Insufficient nvidia.com/gpu" in outcome.failure
    assert outcome.failure.endswith("(gave up after 2 attempts)")
    assert api.deleted == [j["metadata"]["name"] for j in api.created] and api.alive() == 0


def test_a_pod_that_cannot_pull_its_image_is_given_up_within_the_bound(store: Store, reporter) -> None:
    """FAKE Kubernetes API whose kubelet reports ImagePullBackOff: after --image-pull-timeout
    (simulated time, long before --pending-timeout) the Job is deleted and the trial handed back
    at once as an image-pull fault, with one line naming the image (the agent stops the search on
    it: no new attempt pulls an image that cannot be pulled)."""
    api, clock = fake_cluster(lambda trial, attempt: "image-pull", reporter)
    [spec] = make_trials(store, 1)
    started = clock()
    with k8s_runner(api, clock, store, image_pull_timeout=120, pending_timeout=3600, max_retries=2) as runner:
        outcome = run_all(runner, [spec])[spec.trial_id]
    assert outcome.fault is Fault.IMAGE_PULL and len(api.created) == 1
    assert outcome.failure.startswith("cannot pull image registry.example/nasagent:1.0: ImagePullBackOff for ")
    assert "(--image-pull-timeout 120s)" in outcome.failure and "\n" not in outcome.failure
    assert api.deleted == [api.created[0]["metadata"]["name"]], "the stuck Job is deleted"
    assert 120 <= clock() - started < 120 + 60, "given up within the bound, not after the pending timeout"


def test_an_invalid_image_name_fails_at_once_and_a_slow_pull_is_waited_for(store: Store, reporter) -> None:
    """FAKE Kubernetes API: InvalidImageName never resolves, so the trial is handed back at the first
    look; an image pull that fails for a while (under the bound) and then works is not an error."""
    api, clock = fake_cluster(lambda trial, attempt: "bad-image-name", reporter)
    [spec] = make_trials(store, 1)
    started = clock()
    with k8s_runner(api, clock, store, max_retries=0) as runner:
        outcome = run_all(runner, [spec])[spec.trial_id]
    assert outcome.fault is Fault.IMAGE_PULL and outcome.failure.startswith(
        "cannot pull image registry.example/nasagent:1.0: InvalidImageName: "
    )
    assert clock() - started < 30
    api, clock = fake_cluster(lambda trial, attempt: "slow-pull", reporter)
    [spec] = make_trials(store, 1)
    with k8s_runner(api, clock, store, image_pull_timeout=300, pending_timeout=3600) as runner:
        outcome = run_all(runner, [spec])[spec.trial_id]
    assert outcome.status == "done" and outcome.info["attempt"] == 1 and "attempt_failures" not in outcome.info


def test_a_dropped_watch_reconnects_from_the_last_resource_version(store: Store, reporter) -> None:
    """FAKE Kubernetes API: the watch breaks after one event; the launcher resumes from its
    resourceVersion without listing again and misses nothing."""
    api, clock = fake_cluster(report=reporter)
    api.faults.append(("drop", 1))
    [spec] = make_trials(store, 1)
    with k8s_runner(api, clock, store) as runner:
        outcome = run_all(runner, [spec])[spec.trial_id]
    assert outcome.accuracy == reported_accuracy(spec.trial_id, 1)
    running_event = next(rv for rv, kind, job in api.events if job["status"].get("ready"))
    assert api.watch_calls[:2] == [str(running_event - 1), str(running_event)]
    assert api.list_calls == 2, "one list at start, one to start watching; none after the drop"


def test_410_gone_by_itself_lists_again_and_catches_up(store: Store, reporter) -> None:
    """FAKE Kubernetes API with a small watch cache: the watch breaks; while none is open the pods
    run and finish and their events push the launcher's resourceVersion out of the cache, so the
    API server answers the reconnect with 410 Gone by itself; the launcher lists again and finds
    every Job's end."""
    clock = FakeClock()
    api = FakeKubernetes(clock, clock.sleep, report=reporter, step_seconds=0.2, watch_cache=2)
    api.faults.append(("drop", 1))
    specs = make_trials(store, 2)
    with k8s_runner(api, clock, store) as runner:
        outcomes = run_all(runner, specs)
    assert {o.trial_id: o.accuracy for o in outcomes.values()} == {
        s.trial_id: reported_accuracy(s.trial_id, 1) for s in specs
    }
    assert api.injected["gone-410"] >= 1 and api.list_calls >= 3


def collect(runner: Any, n: int, rounds: int = 500) -> dict[int, TrialOutcome]:
    """Wait until ``n`` outcomes came back from what is already in flight (submitted or taken over)."""
    outcomes: dict[int, TrialOutcome] = {}
    for _ in range(rounds):
        for outcome in runner.wait(5.0):
            assert outcome.trial_id not in outcomes, "one outcome per trial"
            outcomes[outcome.trial_id] = outcome
        if len(outcomes) >= n:
            return outcomes
    raise AssertionError(f"only {len(outcomes)} of {n} trials came back")


def test_an_api_server_restart_is_ridden_out(store: Store, reporter) -> None:
    """FAKE Kubernetes API that restarts while a trial runs: the watch breaks, every request is
    refused for 30 s (simulated), the watch cache starts empty; the launcher reconnects (listing
    again if its resourceVersion is gone) and hands over the trial's result."""
    api, clock = fake_cluster(report=reporter)
    [spec] = make_trials(store, 1)
    with k8s_runner(api, clock, store) as runner:
        runner.submit(spec)
        assert runner.wait(0.5) == []
        api.restart(downtime=30)
        outcome = collect(runner, 1)[spec.trial_id]
    assert outcome.status == "done" and outcome.info["attempt"] == 1 and len(api.created) == 1
    assert api.injected["api-server-restart"] == 1 and clock() >= api.down_until


def test_an_agent_takes_over_the_jobs_it_finds_and_deletes_the_stale_ones(store: Store, reporter) -> None:
    """FAKE Kubernetes API: an earlier agent, killed, left trial A's Job running (its first pod was
    preempted and replaced meanwhile), trial B's Job finished while no agent watched, and trial C's
    Job pending though C is no longer in flight (its result was recorded). Also there: a finished
    Job of the experiment, and another experiment's Job. The new agent takes over A and B (no new
    Job, nothing trained twice), deletes C's, keeps the finished one (its logs) and leaves the
    other experiment alone."""
    a, b, c = make_trials(store, 3)
    plans = {a.trial_id: ["preempt", "succeed"], b.trial_id: "succeed", c.trial_id: "pending", 9: "pending"}
    api, clock = fake_cluster(lambda trial, attempt: plans.get(trial, "no-result"), reporter)
    earlier = k8s_runner(api, clock, store, parallelism=3)
    assert earlier.resume([]) == []
    for spec in (a, b, c):
        earlier.submit(spec)
    # The earlier agent is killed: no close, its Jobs run on. Other Jobs in the namespace:
    api.create_job("nas", trial_job(settings(), 999_999, 1, "nas-exp-999999-1-old00"))  # will finish
    api.create_job("nas", trial_job(settings(experiment="other"), 9, 1, "nas-other-9-1-old00"))
    clock.sleep(2.5)  # no agent watches: B finishes, A's first pod is preempted and replaced
    api.sync()
    jobs = {int(j["metadata"]["labels"]["nasagent.io/trial"]): name for name, j in api.jobs.items()}
    with k8s_runner(api, clock, store, parallelism=2) as runner:
        assert runner.resume([a, b]) == [] and runner.in_flight == 2
        assert api.deleted == [jobs[c.trial_id]]
        outcomes = collect(runner, 2)
    assert len(api.created) == 5, "no new Job"
    for spec in (a, b):
        outcome = outcomes[spec.trial_id]
        assert outcome.accuracy == reported_accuracy(spec.trial_id, 1)
        assert outcome.info["adopted"] is True and outcome.info["attempt"] == 1
    assert api.completions == {a.trial_id: 1, b.trial_id: 1}
    assert api.injected == {"preempted": 1}
    assert sorted(api.jobs) == sorted([jobs[999_999], jobs[9], jobs[a.trial_id], jobs[b.trial_id]])


def test_on_a_stop_signal_jobs_are_deleted_unless_the_agents_pod_is_disrupted(store: Store) -> None:
    """FAKE Kubernetes API: ``interrupt`` (SIGTERM, SIGINT) deletes the Jobs in flight when the
    agent is stopped on purpose (KFP's Terminate, Ctrl-C); when its own pod is being evicted or
    preempted (``DisruptionTarget``) it leaves them, and the agent that replaces it takes them over."""
    api, clock = fake_cluster(lambda trial, attempt: "hang")
    specs = make_trials(store, 2)

    def runner() -> KubernetesRunner:
        made = KubernetesRunner(
            api, store, settings(), 10, clock=clock, sleep=clock.sleep, agent_pod=("nas", "search-agent-0")
        )
        assert made.resume([]) == []
        return made

    stopped = runner()
    for spec in specs:
        stopped.submit(spec)
    assert stopped.interrupt() == 0 and api.alive() == 0, "a deliberate stop leaves no Job behind"
    drained = runner()
    for spec in specs:
        drained.submit(spec)
    disruption = {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}
    api.agent_pods["search-agent-0"] = {"metadata": {"name": "search-agent-0"}, "status": {"conditions": [disruption]}}
    assert drained.interrupt() == 2 and api.alive() == 2, "a drained agent leaves its Jobs to its successor"
    successor = KubernetesRunner(api, store, settings(), 10, clock=clock, sleep=clock.sleep)
    assert successor.resume(specs) == [] and successor.in_flight == 2
    successor.close()
    assert api.alive() == 0


def test_refusals_no_retry_fixes_stop_the_search_and_transient_ones_are_retried(store: Store, reporter) -> None:
    """FAKE Kubernetes API: a ResourceQuota refusing a Job (403 exceeded quota) and a 503 are
    infrastructure failures of one attempt (retried, then handed back); a 403 from RBAC stops the
    search (ClusterError): no retry fixes it."""
    api, clock = fake_cluster(report=reporter)
    api.admit = quota(api, 1)
    specs = make_trials(store, 3)
    with k8s_runner(api, clock, store, max_retries=0) as runner:
        outcomes = run_all(runner, specs[:2])
    assert outcomes[specs[0].trial_id].status == "done"
    refused = outcomes[specs[1].trial_id]
    assert refused.fault is Fault.ADMISSION and "exceeded quota: nasagent-quota" in refused.failure
    api.admit = None
    real_create = api.create_job
    refusals = [KubeApiError(503, "creating Job: 503 etcdserver: leader changed")]

    def create(namespace: str, job: dict) -> None:
        if refusals:
            raise refusals.pop(0)
        real_create(namespace, job)

    api.create_job = create  # type: ignore[method-assign]
    with k8s_runner(api, clock, store) as runner:
        outcome = run_all(runner, specs[2:])[specs[2].trial_id]
        assert outcome.info["attempt_failures"] == [
            "attempt 1: could not start: creating Job: 503 etcdserver: leader changed"
        ]
        refusals.append(
            KubeApiError(
                403, 'creating Job: 403 jobs.batch is forbidden: User "system:serviceaccount:nas:default" cannot create'
            )
        )
        with pytest.raises(ClusterError, match="cannot create trial Jobs in namespace nas: .*forbidden"):
            runner.submit(specs[0])


def test_trial_jobs_are_owned_by_the_controller_of_the_agents_pod() -> None:
    """FAKE Kubernetes API (the agent's own pod only): in a KFP run the Jobs are owned by the run's
    Argo Workflow, so a retried step or a rescheduled agent keeps them and deleting the run
    deletes them; a bare pod owns them itself; never across namespaces."""
    api, _ = fake_cluster()
    cluster = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "POD_NAMESPACE": "nas", "POD_NAME": "search-abc"}
    pod_owner = {"apiVersion": "v1", "kind": "Pod", "name": "search-abc", "uid": "u-1"}
    assert agent_owner(api, "nas", {}) is None, "outside a cluster there is no pod to own the Jobs"
    assert agent_owner(api, "nas", {**cluster, "POD_UID": "u-1"}) == pod_owner
    assert agent_owner(api, "nas", cluster)["uid"] == "uid-of-search-abc"
    assert agent_owner(api, "elsewhere", {**cluster, "POD_UID": "u-1"}) is None, "owners cannot span namespaces"
    workflow = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "name": "search-7k2x", "uid": "wf-1"}
    api.agent_pods["search-abc"] = {
        "metadata": {"name": "search-abc", "uid": "u-1", "ownerReferences": [{**workflow, "controller": True}]}
    }
    assert agent_owner(api, "nas", cluster) == workflow
    api.restart(downtime=60)  # the pod cannot be read: the downward API's uid still names the pod
    assert agent_owner(api, "nas", {**cluster, "POD_UID": "u-1"}) == pod_owner
    assert agent_owner(api, "nas", cluster) is None


# -- flags --------------------------------------------------------------------------------------------


def test_launcher_flags_are_parsed_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NASAGENT_TRIAL_IMAGE", "img:2")
    made = launcher_settings(
        "kubernetes", "e", 3, {"node_selector": ["pool=gpu"], "tolerations": ["gpu=yes:NoSchedule"], "max_retries": 0}
    )
    assert made is not None and (made.image, made.parallelism, made.max_retries) == ("img:2", 3, 0)
    assert made.node_selector == {"pool": "gpu"} and made.tolerations[0]["value"] == "yes"
    assert launcher_settings("local", "e", 2, {"image": None, "node_selector": []}) is None
    for bad in ("gpu", "gpu:Sometimes", "=x:NoSchedule"):
        with pytest.raises(ConfigError, match="--toleration"):
            parse_toleration(bad)


@pytest.mark.parametrize(
    "args, words",
    [
        (["--launcher", "local", "--trial-image", "img"], "--trial-image: only for --launcher kubernetes or kfp"),
        (["--launcher", "kubernetes"], "needs --trial-image"),
        (
            ["--launcher", "kubernetes", "--trial-image", "i", "--node-selector", "pool"],
            "--node-selector expects KEY=VALUE",
        ),
        (["--launcher", "kfp", "--trial-image", "i", "--gpus-per-trial", "-1"], "--gpus-per-trial must be at least 0"),
        (["--launcher", "kubernetes", "--trial-image", "i", "--parallelism", "2", "--workers", "3"], "disagree"),
        (
            ["--launcher", "kfp", "--trial-image", "i", "--trial-template", "job.yaml"],
            "--trial-template: only for --launcher kubernetes",
        ),
        (
            ["--launcher", "kubernetes", "--trial-image", "i", "--trial-template", "/nonexistent/job.yaml"],
            "cannot read --trial-template",
        ),
        (["--launcher", "slurm"], "--launcher"),
        (
            ["--launcher", "kubernetes", "--trial-image", "i", "--trial-memory-limit", "24GB"],
            "--trial-memory-limit must be a Kubernetes quantity such as 500m, 4, 8Gi or 1.5G, got '24GB'",
        ),
        (["--launcher", "kubernetes", "--trial-image", "i", "--trial-cpu-request", "0"], "--trial-cpu-request must be"),
        (
            ["--launcher", "kubernetes", "--trial-image", "i", "--trial-cpu-request", "12"],
            "the cpu request 12 is above the cpu limit 8",
        ),
        (["--launcher", "kubernetes", "--trial-image", "i", "--image-pull-timeout", "0"], "--image-pull-timeout must"),
        (
            ["--launcher", "kfp", "--trial-image", "i", "--trial-cpu-limit", "4"],
            "--trial-cpu-limit: only for --launcher kubernetes",
        ),
        (["--launcher", "local", "--trial-shm-size", "1Gi"], "--trial-shm-size: only for --launcher kubernetes or kfp"),
        (["--launcher", "kfp", "--trial-image", "i", "--dry-run"], "--dry-run: only for --launcher kubernetes"),
        (["--dry-run"], "--dry-run: only for --launcher kubernetes"),
        (
            ["--launcher", "kubernetes", "--trial-image", "i", "--s3-secret", "mlpipeline-minio-artifact"],
            "--s3-secret needs the store's endpoint: give --s3-endpoint",
        ),
        (["--launcher", "kubernetes", "--trial-image", "i", "--s3-endpoint", "seaweedfs:8333"], "http:// or https://"),
        (
            ["--launcher", "kfp", "--trial-image", "i", "--s3-secret", "s"],
            "--s3-secret: only for --launcher kubernetes",
        ),
    ],
)
def test_bad_launcher_flags_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, args: list[str], words: str
) -> None:
    monkeypatch.delenv("NASAGENT_TRIAL_IMAGE", raising=False)
    monkeypatch.delenv("NASAGENT_S3_ENDPOINT", raising=False)
    try:
        code = main(["search", "--experiment", "x", *args])
    except SystemExit as exc:  # argparse's own errors (an unknown --launcher) exit from the parser
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and words in err[0], err


def test_dry_run_prints_the_job_without_a_cluster_or_a_database(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No kubeconfig, no API server, a database URL nothing listens on: the Job is printed anyway,
    valid for ``kubectl apply --dry-run=server -f -``, with the flags given."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-kubeconfig"))
    monkeypatch.setenv("NASAGENT_HOME", str(tmp_path / "home"))
    args = ["search", "--experiment", "dry", "--db", "postgresql://nobody@127.0.0.1:9/none", "--launcher"]
    args += ["kubernetes", "--trial-image", "img:2", "--gpus-per-trial", "0", "--trial-cpu-limit", "3"]
    args += ["--trial-memory-request", "5Gi", "--trial-memory-limit", "6Gi", "--trial-shm-size", "1Gi", "--dry-run"]
    args += ["--trial-cpu-request", "2", "--node-selector", "pool=cpu"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("# The Job nasagent search would create")
    job = yaml.safe_load(out)
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    pod = job["spec"]["template"]["spec"]
    assert job["metadata"]["namespace"] == "default", "kubeconfig's namespace, else default"
    assert pod["containers"][0]["image"] == "img:2" and pod["nodeSelector"] == {"pool": "cpu"}
    assert pod["containers"][0]["resources"] == {
        "requests": {"cpu": "2", "memory": "5Gi"},
        "limits": {"cpu": "3", "memory": "6Gi"},
    }
    assert not (tmp_path / "home" / "pg").exists(), "no embedded database was started"


def test_no_cluster_configuration_is_one_line(
    shared_db_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-kubeconfig"))
    code = main(
        [
            "search",
            "--experiment",
            "no-cluster",
            "--db",
            shared_db_url,
            "--trials",
            "1",
            "--epochs",
            "1",
            "--launcher",
            "kubernetes",
            "--trial-image",
            "img:1",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no Kubernetes configuration" in err[0], err


# -- the KFP launcher: the trial pipeline for real, the polling against a FAKE ------------------------


def test_trial_pipeline_compiles_with_the_platform_settings(tmp_path: Path) -> None:
    launcher = settings(
        gpus_per_trial=1,
        node_selector={"pool": "gpu"},
        tolerations=(parse_toleration("nvidia.com/gpu:NoSchedule"),),
        artifacts="s3://b/p",
    )
    pipeline_doc, platform_doc = yaml.safe_load_all(compile_trial_pipeline(launcher, tmp_path / "p.yaml").read_text())
    assert set(pipeline_doc["root"]["inputDefinitions"]["parameters"]) == {"experiment", "trial_id", "attempt"}
    [executor] = pipeline_doc["deploymentSpec"]["executors"].values()
    container = executor["container"]
    assert container["image"] == "registry.example/nasagent:1.0"
    assert container["resources"]["accelerator"]["resourceCount"] == "1"
    assert {"name": "NASAGENT_ARTIFACTS", "value": "s3://b/p"} in container["env"]
    [config] = platform_doc["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values()
    secrets = {s["secretName"]: s for s in config["secretAsEnv"]}
    # Trial runs connect as the trial role (it may only record trial results), never with the owner's Secret.
    assert secrets["nasagent-trial-db"]["keyToEnv"] == [{"envVar": "NASAGENT_DB", "secretKey": "url"}]
    assert "nasagent-db" not in secrets
    assert secrets["nasagent-s3"]["optional"] is True
    assert config["nodeSelector"]["labels"] == {"pool": "gpu"}
    assert config["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert config["activeDeadlineSeconds"] == "600"
    assert config["podMetadata"]["labels"]["nasagent.io/experiment"] == "exp"


def test_trial_pipeline_runs_under_kfp_local_and_reports_the_trial(
    store: Store, shared_db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kfp import local

    [spec] = make_trials(store, 1, name="kfp-local")
    monkeypatch.setenv("NASAGENT_DB", shared_db_url)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path))
    pipeline = trial_pipeline(settings(experiment="kfp-local", image="python:3.11-nasagent", gpus_per_trial=0))
    pipeline(experiment="kfp-local", trial_id=spec.trial_id, attempt=2)
    attempt, reported = store.trial_result(spec.trial_id)
    assert attempt == 2 and reported["status"] == "done" and reported["accuracy"] > 0.2, reported  # chance: 0.1
    assert reported["trial_id"] == spec.trial_id and reported["info"]["epochs_run"] == 1
    [artifact] = tmp_path.glob("*/*/outcome")
    assert json.loads(artifact.read_text()) == reported
    [metrics] = tmp_path.glob("*/*/executor_output.json")
    logged = json.loads(metrics.read_text())["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert logged["accuracy"] == reported["accuracy"] and logged["params"] == reported["params"]
    assert store.trial(spec.trial_id).status == "running", "the trial row is the agent's to write"


def kfp_runner(client: FakePipelines, store: Store, clock: FakeClock, **changes: Any) -> KfpRunner:
    return KfpRunner(
        client, store, settings(**changes), num_classes=10, clock=clock, sleep=clock.sleep, poll_seconds=10.0
    )


def test_kfp_runs_in_an_experiment_named_after_the_search(store: Store, reporter) -> None:
    """FAKE KFP client: three trials, two runs at a time, outcomes from real PostgreSQL."""
    client, clock = (
        FakePipelines(lambda trial, attempt: ["PENDING", "RUNNING", "RUNNING", "SUCCEEDED"], reporter),
        FakeClock(),
    )
    specs = make_trials(store, 3)
    with kfp_runner(client, store, clock) as runner:
        outcomes = run_all(runner, specs)
    assert list(client.experiments) == ["exp"]
    assert [run["name"] for run in client.runs.values()] == [f"exp trial {s.trial_id} attempt 1" for s in specs]
    assert all(run["experiment_id"] == "exp-1" for run in client.runs.values())
    for spec in specs:
        assert outcomes[spec.trial_id].accuracy == reported_accuracy(spec.trial_id, 1)
        assert outcomes[spec.trial_id].info["launcher"] == "kfp"


@pytest.mark.parametrize(
    "first, runs, fault, words",
    [
        (["RUNNING", "FAILED"], 2, None, "attempt 1: run failed: task 'trial' failed: exit status 1"),
        (["SKIPPED"], 2, None, "attempt 1: run skipped"),
        (["PENDING"], 2, None, "attempt 1: pending for more than --pending-timeout 60s (run state PENDING)"),
        (["RUNNING"], 2, None, "attempt 1: timed out: the run ran longer than --trial-timeout 600s"),
        (["ERR", "RUNNING", "ERR", "SUCCEEDED"], 1, None, None),
        (["RUNNING", "CANCELED"], 1, Fault.DELETED, "run canceled in KFP"),
    ],
)
def test_kfp_run_states_are_retried_or_handed_back(
    store: Store, reporter, first: list[str], runs: int, fault: Fault | None, words: str | None
) -> None:
    """FAKE KFP client: how attempt 1's run states end; attempt 2 always succeeds. A run canceled
    by someone goes back to the agent at once, as an infrastructure failure (never a reward)."""
    client, clock = (
        FakePipelines(lambda trial, attempt: first if attempt == 1 else ["SUCCEEDED"], reporter),
        FakeClock(),
    )
    [spec] = make_trials(store, 1)
    with kfp_runner(client, store, clock) as runner:
        outcome = run_all(runner, [spec])[spec.trial_id]
    assert len(client.runs) == runs and outcome.fault is fault
    if fault is not None:
        assert outcome.failure == words and math.isnan(outcome.accuracy)
    else:
        assert outcome.status == "done"
        if words:
            assert outcome.info["attempt_failures"] == [words]
    if "pending" in (words or "") or "timed out" in (words or ""):
        assert client.terminated == ["run-1"], "a stuck run is terminated before the retry"


def test_kfp_run_failing_every_attempt_is_handed_back_as_an_infrastructure_failure(store: Store) -> None:
    """FAKE KFP client: every run fails (the component records its training's own failures as
    results, so a failed run never trained); after max_retries the trial goes back to the agent."""
    client, clock = FakePipelines(lambda trial, attempt: ["FAILED"], lambda t, a: None), FakeClock()
    [spec] = make_trials(store, 1)
    with kfp_runner(client, store, clock, max_retries=2) as runner:
        outcome = run_all(runner, [spec])[spec.trial_id]
    assert len(client.runs) == 3 and outcome.fault is Fault.CRASHED and math.isnan(outcome.accuracy)
    assert outcome.failure == "run failed: task 'trial' failed: exit status 1 (gave up after 3 attempts)"


def test_kfp_runs_left_by_a_killed_agent_are_taken_over(store: Store, reporter) -> None:
    """FAKE KFP client: an earlier agent, killed, left trial A's run running and a run of trial B,
    which is no longer in flight; the new agent finds A's run by its name in the KFP experiment
    and waits for it (no new run), and terminates B's."""
    a, b = make_trials(store, 2)
    client = FakePipelines(lambda trial, attempt: ["RUNNING", "RUNNING", "SUCCEEDED"], reporter)
    clock = FakeClock()
    earlier = kfp_runner(client, store, clock)
    assert earlier.resume([]) == []
    earlier.submit(a)
    earlier.submit(b)
    with kfp_runner(client, store, clock) as runner:
        assert runner.resume([a]) == [] and runner.in_flight == 1
        assert client.terminated == ["run-2"]
        outcome = collect(runner, 1)[a.trial_id]
    assert outcome.info["adopted"] is True and len(client.runs) == 2
    assert outcome.accuracy == reported_accuracy(a.trial_id, 1)


# -- end to end: the real agent through the Kubernetes launcher, real nasagent trial processes -------


def tiny_space(directory: Path) -> Path:
    """A MetaQNN space of small networks (at most three layers of 8 filters): quick to train on CPU."""
    path = directory / "tiny.yaml"
    path.write_text(
        "name: tiny\nmax_depth: 3\nsize_bins: [8, 4, 1]\nconv: {filters: [8], kernels: [1, 3], strides: [1]}\n"
        "pool: {shapes: [[2, 2]]}\nfc: {units: [16], max_consecutive: 1, max_size: 7}\nterminals: [gap, softmax]\n"
        "build: {activation: relu, dropout: paper}\n"
    )
    return path


def test_a_search_runs_end_to_end_through_the_kubernetes_launcher(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FAKE Kubernetes API whose kubelet runs each Job's command (``nasagent trial --experiment
    --trial-id``) as a real process with the Job's environment: the real CLI wiring, agent,
    launcher, trial command and PostgreSQL, as in a cluster."""
    from nasagent.search.run import run_search

    with Store.connect(db_url):  # the owner migrates: tables, and the grants of the trial role
        pass
    # Trial pods read Secret nasagent-trial-db: the role that may only record trial results.
    cluster = SubprocessKubernetes({"nasagent-trial-db": {"url": trial_role_url(db_url)}}, tmp_path)
    monkeypatch.setattr("nasagent.execution.kubernetes.connect_kubernetes", lambda: cluster)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")  # the agent "runs in a pod":
    monkeypatch.setenv("POD_NAMESPACE", "nas")
    monkeypatch.setenv("POD_NAME", "search-agent-0")
    monkeypatch.setenv("POD_UID", "6f1c7a52-0000-4000-8000-00000000abcd")
    launcher = settings(experiment="k8s-e2e", parallelism=2, gpus_per_trial=0)
    given = {"dataset": "digits", "space": str(tiny_space(tmp_path)), "trials": 3, "epochs": 1, "seed": 0}
    try:
        with Store.connect(db_url) as store:
            progress = run_search(store, "k8s-e2e", given, workers=2, launcher="kubernetes", cluster=launcher)
            trials = store.trials(store.get_experiment("k8s-e2e").id)
            results = {t.id: store.trial_result(t.id) for t in trials}
    finally:
        cluster.kill_all()
    assert progress.unique_finished == 3 and len(trials) == 3
    assert cluster.max_alive <= 2 and len(cluster.created) == 3
    for trial in trials:
        assert trial.status == "done" and 0.1 < trial.accuracy <= 1.0, trial
        assert trial.worker.rsplit("-", 1)[0] == trial.info["attempt_name"], "the name of a pod of its Job"
        assert trial.info["launcher"] == "kubernetes" and trial.info["attempt"] == 1
        attempt, reported = results[trial.id]
        assert attempt == 1 and reported["accuracy"] == trial.accuracy
    for job in cluster.created:
        assert job["metadata"]["ownerReferences"][0]["name"] == "search-agent-0"
        kubernetes_validate.validate(job, K8S_VERSION, strict=True)


def test_the_real_client_adapter_speaks_to_an_api_server() -> None:
    """A FAKE API server over HTTP (``FakeApiServer``, in real time; no real one can run here): the
    real ``ClientApi`` goes through the official client and returns plain dicts; a Job it creates
    runs and fails (OOMKilled) while it watches; a resourceVersion the watch cache no longer holds
    is 410 Gone, a broken stream and a restarting server are KubeApiErrors without a status or
    with 503, a quota's refusal is a 403 with the server's message, and deleting a Job already
    gone is no error."""
    from kubernetes import client

    cluster = FakeKubernetes(time.monotonic, None, lambda trial, attempt: "oom", step_seconds=0.05, watch_cache=4)
    server = FakeApiServer(cluster)
    selector = "nasagent.io/role=trial"
    try:
        configuration = client.Configuration()
        configuration.host = server.url
        api = ClientApi(client.ApiClient(configuration))
        jobs, listed_at = api.list_jobs("nas", selector)
        assert jobs == [] and listed_at == "100"
        api.create_job("nas", trial_job(settings(), 1, 1, "nas-exp-1-1-abcde"))
        events = list(api.watch_jobs("nas", selector, listed_at, 1))
        assert [e["type"] for e in events][0] == "ADDED" and events[-1]["type"] == "BOOKMARK"
        ended = [e["object"]["status"]["conditions"] for e in events if e["object"].get("status", {}).get("conditions")]
        assert [c["type"] for c in ended[-1]] == ["FailureTarget", "Failed"], "the pod was OOMKilled, backoffLimit 0"
        [job], _ = api.list_jobs("nas", selector)
        assert job["spec"]["backoffLimit"] == 0 and job["spec"]["podFailurePolicy"]["rules"][1]["action"] == "Ignore"
        [pod] = api.list_pods("nas", "job-name=nas-exp-1-1-abcde")
        assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] == "OOMKilled"
        with pytest.raises(WatchExpired, match="too old resource version"):
            list(api.watch_jobs("nas", selector, listed_at, 5))
        cluster.admit = quota(cluster, 1)
        with pytest.raises(KubeApiError, match="403 jobs.batch .* is forbidden: exceeded quota") as refused:
            api.create_job("nas", trial_job(settings(), 2, 1, "nas-exp-2-1-abcde"))
        assert refused.value.status == 403
        cluster.admit = None
        api.delete_job("nas", "gone")
        api.delete_job("nas", "nas-exp-1-1-abcde")
        assert cluster.deleted == ["nas-exp-1-1-abcde"]
        _, now = api.list_jobs("nas", selector)
        cluster.faults.append(("drop", 1))
        api.create_job("nas", trial_job(settings(), 3, 1, "nas-exp-3-1-abcde"))
        with pytest.raises(KubeApiError) as broken:
            list(api.watch_jobs("nas", selector, now, 5))
        assert broken.value.status is None and not isinstance(broken.value, WatchExpired)
        cluster.restart(downtime=0.5)
        with pytest.raises(KubeApiError, match="503"):
            api.list_jobs("nas", selector)
        time.sleep(0.6)
        assert len(api.list_jobs("nas", selector)[0]) == 1
        assert api.read_pod("nas", "agent")["metadata"]["uid"] == "uid-of-agent"
        assert ("POST", "/apis/batch/v1/namespaces/nas/jobs") in server.requests
    finally:
        server.close()


def test_trial_pods_opt_out_of_istio_and_autoscaler_eviction() -> None:
    """A sidecar would keep a finished trial pod alive forever; scale-down must not kill a training pod."""
    from nasagent.execution.kubernetes import trial_job
    from nasagent.execution.launchers import launcher_settings

    settings = launcher_settings("kubernetes", "exp", 2, {"image": "nasagent-trainer:1"})
    annotations = trial_job(settings, 7, 1, "nasagent-exp-7-1")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["sidecar.istio.io/inject"] == "false"
    assert annotations["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
