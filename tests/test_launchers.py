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
import uuid
from collections.abc import Callable, Iterator
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
    reported_accuracy,
)

from nasagent.cli import main
from nasagent.config import SearchConfig
from nasagent.core.arch import Architecture
from nasagent.core.trial import TrialOutcome, TrialSpec, trial_seed
from nasagent.errors import ClusterError, ConfigError, KubeApiError, WatchExpired
from nasagent.execution.cluster import LauncherSettings, label_value, parse_toleration
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
    assert container["resources"] == {"limits": {"nvidia.com/gpu": 2}}
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"], spec["ttlSecondsAfterFinished"]) == (0, 600, 3600)
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
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
    assert env["NASAGENT_DB"]["valueFrom"] == {"secretKeyRef": {"name": "nasagent-db", "key": "url"}}
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
        assert (
            len(job["metadata"]["name"]) <= 63 and "resources" not in job["spec"]["template"]["spec"]["containers"][0]
        )
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
    assert (
        job["spec"]["template"]["metadata"]["annotations"]
        == {
            "sidecar.istio.io/inject": "false",  # the template's
            "cluster-autoscaler.kubernetes.io/safe-to-evict": "false",  # the launcher's default, kept where the template is silent
        }
    )
    assert pod["securityContext"]["runAsUser"] == 10001 and pod["volumes"] == [{"name": "home", "emptyDir": {}}]
    assert (
        container["securityContext"] == {"readOnlyRootFilesystem": True}
        and container["volumeMounts"][0]["name"] == "home"
    )
    assert {"name": "NASAGENT_HOME", "value": "/var/lib/nasagent"} in container["env"]
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
        "limits": {"memory": "24Gi", "nvidia.com/gpu": 2},
    }
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true", "pool": "a100"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}], (
        "no duplicate"
    )
    cpu_job = trial_job(settings(job_template=template, gpus_per_trial=0), 7, 1, "nas-exp-7-1-ab12c")
    assert cpu_job["spec"]["template"]["spec"]["containers"][0]["resources"] == {
        "requests": {"cpu": "2", "memory": "8Gi"},
        "limits": {"memory": "24Gi"},
    }
    assert template["spec"]["backoffLimit"] == 4, "the template itself is not changed"


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
        assert outcome.info["launcher"] == "kubernetes" and outcome.info["attempt"] == 1
    # The launcher leaves the trial rows to the agent.
    assert {store.trial(spec.trial_id).status for spec in specs} == {"running"}


def test_a_trial_that_keeps_failing_does_not_stop_the_others(store: Store, reporter) -> None:
    """FAKE Kubernetes API: trial 1 is OOMKilled on every attempt; the others succeed."""
    specs = make_trials(store, 3)
    first = specs[0].trial_id
    api, clock = fake_cluster(lambda trial, attempt: "oom" if trial == first else "succeed", reporter)
    with k8s_runner(api, clock, store, max_retries=2) as runner:
        outcomes = run_all(runner, specs)
    failed = outcomes[first]
    assert failed.status == "failed" and failed.accuracy == pytest.approx(0.1)
    assert failed.failure == "OOMKilled: container trial ran out of memory (gave up after 3 attempts)"
    assert len(failed.info["attempt_failures"]) == 2 and failed.info["attempt"] == 3
    assert sum(j["metadata"]["labels"]["nasagent.io/trial"] == str(first) for j in api.created) == 3
    assert all(outcomes[s.trial_id].status == "done" for s in specs[1:])


@pytest.mark.parametrize(
    "script, words",
    [
        ("evict", "pod evicted: The node was low on resource: memory."),
        ("exit", "exit code 2: nasagent: error: database postgresql://x: connection refused"),
        ("deadline", "timed out: the Job ran longer than --trial-timeout 600s (DeadlineExceeded)"),
        ("no-result", "the trial finished without reporting a result to trial_results"),
        ("vanish", "the Job was deleted before the trial finished"),
        (
            "pending",
            "pending for more than --pending-timeout 60s: Unschedulable: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
        ),
    ],
)
def test_a_failed_attempt_is_retried_with_its_reason(store: Store, reporter, script: str, words: str) -> None:
    """FAKE Kubernetes API: attempt 1 fails in one way, attempt 2 succeeds; the reason is kept."""
    api, clock = fake_cluster(lambda trial, attempt: script if attempt == 1 else "succeed", reporter)
    [spec] = make_trials(store, 1)
    started = clock()
    with k8s_runner(api, clock, store) as runner:
        outcome = run_all(runner, [spec])[spec.trial_id]
    assert outcome.status == "done" and outcome.accuracy == reported_accuracy(spec.trial_id, 2)
    assert outcome.info["attempt"] == 2 and outcome.info["attempt_failures"] == [f"attempt 1: {words}"]
    if script == "pending":
        assert clock() - started >= 60, "a pending Job is given --pending-timeout (simulated time)"
        assert api.deleted[0] == api.created[0]["metadata"]["name"], "the pending Job is deleted before the retry"


def test_a_trial_pending_on_every_attempt_is_recorded_failed(store: Store) -> None:
    """FAKE Kubernetes API: no GPU node ever comes; after max_retries the trial is failed, Jobs deleted."""
    api, clock = fake_cluster(lambda trial, attempt: "pending")
    [spec] = make_trials(store, 1)
    with k8s_runner(api, clock, store, max_retries=1) as runner:
        outcome = run_all(runner, [spec])[spec.trial_id]
    assert outcome.status == "failed" and "Insufficient nvidia.com/gpu" in outcome.failure
    assert outcome.failure.endswith("(gave up after 2 attempts)")
    assert api.deleted == [j["metadata"]["name"] for j in api.created] and api.alive() == 0


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
    assert api.list_calls == 2, "one list for stale Jobs, one to start watching; none after the drop"


def test_410_gone_lists_again_and_catches_up(store: Store, reporter) -> None:
    """FAKE Kubernetes API: while no watch is open the Job runs and completes and the history is
    compacted (410 Gone); the launcher lists the Jobs again and finds it complete."""
    api, clock = fake_cluster(report=reporter)
    api.faults.append(("gone", 2))
    [spec] = make_trials(store, 1)
    with k8s_runner(api, clock, store) as runner:
        outcome = run_all(runner, [spec])[spec.trial_id]
    assert outcome.accuracy == reported_accuracy(spec.trial_id, 1) and outcome.info["attempt"] == 1
    assert api.list_calls == 3


def test_stale_jobs_are_deleted_at_start_and_own_jobs_on_close(store: Store) -> None:
    """FAKE Kubernetes API: Jobs an earlier agent left running are deleted; finished ones are kept
    for their logs; close() deletes the Jobs still in flight."""
    api, clock = fake_cluster(lambda trial, attempt: "pending")
    old = settings()
    api.create_job("nas", trial_job(old, 1, 1, "nas-exp-1-1-old00"))
    api.create_job("nas", trial_job(old, 2, 1, "nas-exp-2-1-old00"))
    api.jobs["nas-exp-2-1-old00"]["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    api.create_job("nas", trial_job(settings(experiment="other"), 3, 1, "nas-other-3-1-old00"))
    specs = make_trials(store, 2)
    runner = k8s_runner(api, clock, store)
    assert api.deleted == ["nas-exp-1-1-old00"]
    for spec in specs:
        runner.submit(spec)
    runner.close()
    assert api.deleted[1:] == [j["metadata"]["name"] for j in api.created[3:]]
    assert sorted(api.jobs) == ["nas-exp-2-1-old00", "nas-other-3-1-old00"]


def test_refusals_no_retry_fixes_are_one_line_errors_and_transient_ones_are_retried(store: Store, reporter) -> None:
    """FAKE Kubernetes API: 403 on create stops the search (ClusterError); a 503 is one failed attempt."""
    api, clock = fake_cluster(report=reporter)
    real_create = api.create_job
    refusals = [KubeApiError(503, "creating Job: 503 etcdserver: leader changed")]

    def create(namespace: str, job: dict) -> None:
        if refusals:
            raise refusals.pop(0)
        real_create(namespace, job)

    api.create_job = create  # type: ignore[method-assign]
    specs = make_trials(store, 2)
    with k8s_runner(api, clock, store) as runner:
        outcome = run_all(runner, specs[:1])[specs[0].trial_id]
        assert outcome.info["attempt_failures"] == [
            "attempt 1: could not start: creating Job: 503 etcdserver: leader changed"
        ]
        refusals.append(
            KubeApiError(
                403, 'creating Job: 403 jobs.batch is forbidden: User "system:serviceaccount:nas:default" cannot create'
            )
        )
        with pytest.raises(ClusterError, match="cannot create trial Jobs in namespace nas: .*forbidden"):
            runner.submit(specs[1])


def test_owner_reference_is_the_agent_pod_in_the_same_namespace() -> None:
    """FAKE Kubernetes API (pod lookup only)."""
    api, _ = fake_cluster()
    cluster = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "POD_NAMESPACE": "nas", "POD_NAME": "search-abc"}
    assert agent_owner(api, "nas", {}) is None, "outside a cluster there is no pod to own the Jobs"
    assert agent_owner(api, "nas", {**cluster, "POD_UID": "u-1"}) == {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": "search-abc",
        "uid": "u-1",
    }
    assert agent_owner(api, "nas", cluster)["uid"] == "uid-of-search-abc"
    assert agent_owner(api, "elsewhere", {**cluster, "POD_UID": "u-1"}) is None, "owners cannot span namespaces"


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
    ],
)
def test_bad_launcher_flags_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, args: list[str], words: str
) -> None:
    monkeypatch.delenv("NASAGENT_TRIAL_IMAGE", raising=False)
    try:
        code = main(["search", "--experiment", "x", *args])
    except SystemExit as exc:  # argparse's own errors (an unknown --launcher) exit from the parser
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and words in err[0], err


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
    assert secrets["nasagent-db"]["keyToEnv"] == [{"envVar": "NASAGENT_DB", "secretKey": "url"}]
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
    "first, runs, status, words",
    [
        (["RUNNING", "FAILED"], 2, "done", "attempt 1: run failed: task 'trial' failed: exit status 1"),
        (["SKIPPED"], 2, "done", "attempt 1: run skipped"),
        (["PENDING"], 2, "done", "attempt 1: pending for more than --pending-timeout 60s (run state PENDING)"),
        (["RUNNING"], 2, "done", "attempt 1: timed out: the run ran longer than --trial-timeout 600s"),
        (["ERR", "RUNNING", "ERR", "SUCCEEDED"], 1, "done", None),
        (["RUNNING", "CANCELED"], 1, "failed", "run canceled in KFP"),
    ],
)
def test_kfp_run_states_are_retried_or_recorded(
    store: Store, reporter, first: list[str], runs: int, status: str, words: str | None
) -> None:
    """FAKE KFP client: how attempt 1's run states end; attempt 2 always succeeds."""
    client, clock = (
        FakePipelines(lambda trial, attempt: first if attempt == 1 else ["SUCCEEDED"], reporter),
        FakeClock(),
    )
    [spec] = make_trials(store, 1)
    with kfp_runner(client, store, clock) as runner:
        outcome = run_all(runner, [spec])[spec.trial_id]
    assert len(client.runs) == runs and outcome.status == status
    if status == "failed":
        assert outcome.failure == words
    elif words:
        assert outcome.info["attempt_failures"] == [words]
    if "pending" in (words or "") or "timed out" in (words or ""):
        assert client.terminated == ["run-1"], "a stuck run is terminated before the retry"


def test_kfp_run_failing_every_attempt_is_recorded_failed(store: Store) -> None:
    """FAKE KFP client: every run fails; after max_retries the trial is failed with the reason."""
    client, clock = FakePipelines(lambda trial, attempt: ["FAILED"], lambda t, a: None), FakeClock()
    [spec] = make_trials(store, 1)
    with kfp_runner(client, store, clock, max_retries=2) as runner:
        outcome = run_all(runner, [spec])[spec.trial_id]
    assert len(client.runs) == 3 and outcome.status == "failed" and outcome.accuracy == pytest.approx(0.1)
    assert outcome.failure == "run failed: task 'trial' failed: exit status 1 (gave up after 3 attempts)"


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

    cluster = SubprocessKubernetes({"nasagent-db": {"url": db_url}}, tmp_path)
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
        assert trial.worker.startswith("nas-k8s-e2e-") and trial.worker.endswith("-pod"), "the pod's name"
        assert trial.info["launcher"] == "kubernetes" and trial.info["attempt"] == 1
        attempt, reported = results[trial.id]
        assert attempt == 1 and reported["accuracy"] == trial.accuracy
    for job in cluster.created:
        assert job["metadata"]["ownerReferences"][0]["name"] == "search-agent-0"
        kubernetes_validate.validate(job, K8S_VERSION, strict=True)


def test_the_real_client_adapter_speaks_to_an_api_server() -> None:
    """A FAKE API server over HTTP (no real one can run here): the real ``ClientApi`` goes through
    the official client and returns plain dicts, maps 410 to WatchExpired and refusals to
    KubeApiError with the server's message, and ignores deleting a Job already gone."""
    from kubernetes import client

    server = FakeApiServer()
    try:
        configuration = client.Configuration()
        configuration.host = server.url
        api = ClientApi(client.ApiClient(configuration))
        jobs, resource_version = api.list_jobs("nas", "nasagent.io/role=trial")
        assert (
            resource_version == "8"
            and jobs[0]["metadata"]["name"] == "nas-e-1-1-abcde"
            and jobs[0]["spec"]["backoffLimit"] == 0
        )
        events = list(api.watch_jobs("nas", "nasagent.io/role=trial", "8", 5))
        assert [e["type"] for e in events] == ["MODIFIED", "BOOKMARK"] and events[0]["object"]["status"]["ready"] == 1
        assert events[1]["object"]["metadata"]["resourceVersion"] == "9"
        with pytest.raises(WatchExpired, match="too old resource version"):
            list(api.watch_jobs("nas", "nasagent.io/role=trial", "1", 5))
        job = trial_job(settings(), 1, 1, "nas-exp-1-1-abcde")
        api.create_job("nas", job)
        with pytest.raises(KubeApiError, match="403 jobs.batch is forbidden") as refused:
            api.create_job("nas", job)
        assert refused.value.status == 403
        api.delete_job("nas", "gone")
        pods = api.list_pods("nas", "job-name=x")
        assert pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] == "OOMKilled"
        assert api.read_pod_uid("nas", "agent") == "uid-123"
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
