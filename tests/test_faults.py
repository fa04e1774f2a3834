"""Faults: an architecture's own failure is a result; the machines' failure never is.

The agent against the real embedded PostgreSQL with runners whose reward is a known function of
the architecture, some of whose trials the "machines" fail to run (a runner handing back
infrastructure failures, as the cluster launchers and the local runner do); the real CLI in a
subprocess for the stop signals; and the FAKE Kubernetes cluster of ``launcher_helpers`` (no API
server can run here) for the Job controller's ``podFailurePolicy`` and the fake's own fidelity.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import kubernetes_validate
import psutil
import pytest
from agent_helpers import CrashAfter
from launcher_helpers import FakeApiServer, FakeClock, FakeKubernetes

from nasagent.config import SearchConfig
from nasagent.core.arch import Architecture, Conv
from nasagent.core.trial import CONFIG_ERROR_EXIT, Fault, TrialOutcome, outcome_to_json
from nasagent.errors import InfrastructureError
from nasagent.execution.cluster import LauncherSettings
from nasagent.execution.function import FunctionRunner
from nasagent.execution.kubernetes import pod_failure_policy, pod_fault, trial_job
from nasagent.persistence.postgres import Store
from nasagent.results.report import build_report, render_html
from nasagent.search.loop import FaultPolicy, SearchLoop
from nasagent.search.status import experiment_status
from nasagent.spaces.metaqnn import MetaQNNSpace, load_space
from nasagent.strategies.qlearning import QLearningStrategy
from nasagent.strategies.schedule import EpsilonSchedule

BUDGET = 24


def reward(arch: Architecture) -> float:
    """Known reward: more and wider convolutions score higher; a deterministic function of the arch."""
    convs = [layer for layer in arch.hidden if isinstance(layer, Conv)]
    return min(0.95, 0.3 + 0.05 * len(convs) + sum(c.filters for c in convs) / 2000)


def qlearner(seed: int) -> QLearningStrategy:
    space = MetaQNNSpace(load_space("metaqnn-small"), 8, 10)
    return QLearningStrategy(space, EpsilonSchedule.parse("1.0:12,0.5:6,0.1:6"), seed)


class FaultyRunner(FunctionRunner):
    """A ``FunctionRunner`` under which the machines fail: ``faults(arch, submission)`` names the
    ``Fault`` of an architecture's n-th submission (1, 2, ...), or None when it runs to its end."""

    def __init__(self, faults: Any, capacity: int = 1) -> None:
        super().__init__(reward, capacity)
        self.faults = faults
        self.submissions: Counter[str] = Counter()

    def wait(self, timeout: float) -> list[TrialOutcome]:
        if not self._queue:
            return []
        spec = self._queue[0]
        self.submissions[spec.arch] += 1
        fault = self.faults(spec.arch, self.submissions[spec.arch])
        if fault is None:
            return super().wait(timeout)
        self._queue.popleft()
        reason = f"{fault} on its submission {self.submissions[spec.arch]}"
        return [TrialOutcome.infrastructure_failure(spec.trial_id, fault, reason, worker="machine")]


def search(store: Store, name: str, runner: Any, faults: FaultPolicy | None = None) -> SearchLoop:
    experiment = store.find_experiment(name) or store.create_experiment(name, SearchConfig().to_dict())
    loop = SearchLoop(store, experiment, qlearner(seed=3), runner, BUDGET, seed=0, poll_seconds=0.0, faults=faults)
    return loop


def learned(store: Store, name: str) -> tuple[list[str], list[tuple[str, float]], dict[tuple[str, str], float]]:
    """What a search learned: its trials in launch order, its replay memory, its Q-table."""
    experiment = store.get_experiment(name)
    trials = [t.arch for t in store.trials(experiment.id)]
    return trials, store.load_replay(experiment.id), store.load_q(experiment.id)


def test_infrastructure_failures_never_reach_the_strategy_and_the_trials_are_trained_again(store: Store) -> None:
    """Every third architecture is preempted, evicted or never scheduled on its first submission
    (one of them twice): none of it is rewarded, the trials run again, and the search learns exactly
    what a search on machines that never fail learns: same trials, replay memory and Q-table."""
    search(store, "reference", FunctionRunner(reward)).run()
    kinds = [Fault.PREEMPTED, Fault.EVICTED, Fault.UNSCHEDULABLE]
    seen: list[str] = []

    def faults(arch: str, submission: int) -> Fault | None:
        if arch not in seen:
            seen.append(arch)
        index = seen.index(arch)  # architectures 0, 3, 6, ... fail once; architecture 3 twice
        limit = 2 if index == 3 else 1
        return kinds[index // 3 % 3] if index % 3 == 0 and submission <= limit else None

    runner = FaultyRunner(faults)
    progress = search(store, "faulty", runner).run()
    assert learned(store, "faulty") == learned(store, "reference")
    experiment = store.get_experiment("faulty")
    trials = store.trials(experiment.id)
    assert all(t.status == "done" and t.accuracy == reward(Architecture.parse(t.arch)) for t in trials)
    lost = store.infra_failures(experiment.id)
    injected = sum(n - 1 for n in runner.submissions.values())
    assert len(lost) == injected == progress.infra_failures == 9
    by_kind = {"preempted": 3, "evicted": 4, "unschedulable": 2}
    assert Counter(f.fault for f in lost) == by_kind and all(f.worker == "machine" for f in lost)
    assert sorted(t.attempts for t in trials) == sorted([1] * 16 + [2] * 7 + [3]), "attempts count the requeues"
    status = experiment_status(store, "faulty")
    assert (status["failed"], status["infra_failures"], status["infra_failures_by_kind"]) == (0, 9, by_kind)
    report = build_report(store, "faulty")
    assert len(report.infra_failures) == 9 and report.infra_by_kind == by_kind and not report.failures
    page = render_html(report, {})
    assert "Infrastructure failures (9)" in page and "evicted on its submission 2" in page
    assert report.to_json()["infra_failures"]["by_kind"] == by_kind


def test_an_architecture_that_fails_to_learn_is_a_result_and_apart_from_infrastructure_failures(store: Store) -> None:
    """A network whose training crashes (the runner's reward raises) gets the paper's chance reward
    and counts as failed; a killed worker counts as an infrastructure failure, not as failed."""
    doomed: set[str] = set()

    class Mixed(FaultyRunner):
        def __init__(self) -> None:
            super().__init__(lambda arch, n: Fault.KILLED if len(self.submissions) == 2 and n == 1 else None)

            def scored(arch: Architecture) -> float:
                if str(arch) in doomed or not doomed:
                    doomed.add(str(arch))
                    raise FloatingPointError("diverged")
                return reward(arch)

            self.reward = scored

    search(store, "mixed", Mixed()).run()
    status = experiment_status(store, "mixed")
    assert (status["failed"], status["infra_failures"], status["infra_failures_by_kind"]) == (1, 1, {"killed": 1})
    experiment = store.get_experiment("mixed")
    [failed] = [t for t in store.trials(experiment.id) if t.status == "failed"]
    assert failed.accuracy == pytest.approx(0.1) and "diverged" in failed.failure
    assert (failed.arch, pytest.approx(0.1)) in [(a, r) for a, r in store.load_replay(experiment.id)]


def test_infrastructure_failures_in_a_row_stop_the_search_with_its_state_intact(store: Store) -> None:
    """The machines fail every trial: after --max-infra-failures in a row the search stops with one
    line naming the cause; nothing was learned, the trial is still in flight, and running the
    search again once the machines work continues it to the very same end as a search that never
    met a fault."""
    search(store, "reference", FunctionRunner(reward)).run()
    stuck = search(store, "stuck", FaultyRunner(lambda arch, n: Fault.UNSCHEDULABLE), FaultPolicy(10, 3))
    with pytest.raises(InfrastructureError) as stopped:
        stuck.run()
    message = str(stopped.value)
    assert "3 infrastructure failures in a row (--max-infra-failures)" in message and "\n" not in message
    assert "unschedulable" in message and "run the same command again" in message
    experiment = store.get_experiment("stuck")
    assert store.load_replay(experiment.id) == [] and store.load_q(experiment.id) == {}
    assert [t.status for t in store.trials(experiment.id)] == ["running"]
    assert len(store.infra_failures(experiment.id)) == 3
    search(store, "stuck", FunctionRunner(reward)).run()
    assert learned(store, "stuck") == learned(store, "reference")


def test_a_trial_requeued_too_often_stops_the_search(store: Store) -> None:
    """One architecture is never run to its end, the others are: the search stops once that trial
    went back to the queue more than --max-requeues times, naming it."""
    first: list[str] = []

    def faults(arch: str, submission: int) -> Fault | None:
        if not first:
            first.append(arch)
        return Fault.EVICTED if arch == first[0] else None

    with pytest.raises(InfrastructureError, match=r"trial \d+ was not run to its end 3 times \(--max-requeues 2\)"):
        search(store, "unlucky", FaultyRunner(faults), FaultPolicy(max_requeues=2, max_infra_failures=50)).run()


def test_an_image_that_cannot_be_pulled_stops_the_search_at_once(store: Store) -> None:
    failing = FaultyRunner(lambda arch, n: Fault.IMAGE_PULL)
    with pytest.raises(InfrastructureError, match="trial pods cannot pull their image"):
        search(store, "no-image", failing).run()
    assert sum(failing.submissions.values()) == 1


def test_a_result_a_trial_pod_reported_while_no_agent_ran_is_not_trained_again(store: Store) -> None:
    """The agent is killed while a trial is in flight; the trial's pod finishes and reports to
    trial_results meanwhile; the next agent records that result and trains the trial nowhere."""
    search(store, "reference", FunctionRunner(reward)).run()
    with pytest.raises(KeyboardInterrupt):
        search(store, "killed", CrashAfter(reward, 7)).run()
    experiment = store.get_experiment("killed")
    [running] = store.trials(experiment.id, status="running")
    outcome = TrialOutcome(running.id, "done", reward(Architecture.parse(running.arch)), worker="pod")
    with store.transaction() as tx:
        tx.save_trial_result(running.id, 1, outcome_to_json(outcome))
    resumed = FunctionRunner(reward)
    progress = search(store, "killed", resumed).run()
    assert running.arch not in [spec.arch for spec in resumed.submitted], "not trained again"
    assert learned(store, "killed") == learned(store, "reference")
    assert any("recorded 1 result(s) reported meanwhile" in note for note in progress.notes)
    assert store.trial(running.id).info["recovered"] is True
    assert store.infra_failures(experiment.id) == []


def test_a_trial_lost_with_its_agent_is_trained_again_and_recorded_apart(store: Store) -> None:
    with pytest.raises(KeyboardInterrupt):
        search(store, "lost", CrashAfter(reward, 3)).run()
    resumed = FunctionRunner(reward)
    search(store, "lost", resumed).run()
    experiment = store.get_experiment("lost")
    [lost] = store.infra_failures(experiment.id)
    assert lost.fault == "agent" and lost.arch == resumed.submitted[0].arch


# -- podFailurePolicy and the FAKE Job controller ---------------------------------------------------


def launcher(**changes: Any) -> LauncherSettings:
    return LauncherSettings(experiment="exp", image="img:1", namespace="nas", **changes)


def test_trial_jobs_carry_the_pod_failure_policy() -> None:
    """Disruptions do not count, a configuration error fails the Job at once; valid Kubernetes."""
    job = trial_job(launcher(), 1, 1, "nas-exp-1-1-abcde")
    kubernetes_validate.validate(job, "1.30.0", strict=True)
    assert (
        job["spec"]["podFailurePolicy"]
        == pod_failure_policy()
        == {
            "rules": [
                {"action": "FailJob", "onExitCodes": {"containerName": "trial", "operator": "In", "values": [3]}},
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]
        }
    )
    assert CONFIG_ERROR_EXIT == 3 and job["spec"]["backoffLimit"] == 0


@pytest.mark.parametrize(
    "what, fault, words",
    [
        ("preempt", Fault.PREEMPTED, "pod disrupted (PreemptionByScheduler)"),
        ("evict", Fault.EVICTED, "pod evicted: The node was low on resource: memory."),
        ("oom", Fault.KILLED, "OOMKilled"),
        ("exit", Fault.CRASHED, "exit code 2: nasagent: error: database"),
    ],
)
def test_without_the_policy_the_fake_job_controller_counts_every_failure(what: str, fault: Fault, words: str) -> None:
    """FAKE Kubernetes: a Job without podFailurePolicy (backoffLimit 0) fails on a preempted pod as
    on any other, as the real Job controller does; the launcher tells what the fault was."""
    clock = FakeClock()
    api = FakeKubernetes(clock, clock.sleep, lambda trial, attempt: what)
    job = trial_job(launcher(), 1, 1, "nas-exp-1-1-abcde")
    del job["spec"]["podFailurePolicy"]
    api.create_job("nas", job)
    clock.sleep(5)
    [listed], _ = api.list_jobs("nas", "nasagent.io/role=trial")
    assert [c["type"] for c in listed["status"]["conditions"]] == ["FailureTarget", "Failed"]
    assert listed["status"]["conditions"][1]["reason"] == "BackoffLimitExceeded"
    found = pod_fault(api.list_pods("nas", "job-name=nas-exp-1-1-abcde"))
    assert found is not None and found[0] is fault and words in found[1]


def test_the_fake_cluster_moves_on_with_no_watch_open_and_forgets_old_history() -> None:
    """FAKE Kubernetes: its pods run and finish whether or not anyone watches, and a watch from a
    resourceVersion its watch cache no longer holds is 410 Gone by itself."""
    from nasagent.errors import WatchExpired

    clock = FakeClock()
    api = FakeKubernetes(clock, clock.sleep, watch_cache=3)
    _, start = api.list_jobs("nas", "nasagent.io/role=trial")
    api.create_job("nas", trial_job(launcher(), 1, 1, "nas-exp-1-1-abcde"))
    clock.sleep(10)  # nobody watches
    [job], now = api.list_jobs("nas", "nasagent.io/role=trial")
    assert job["status"]["conditions"] == [{"type": "Complete", "status": "True"}] and api.completions == {1: 1}
    with pytest.raises(WatchExpired, match="too old resource version"):
        list(api.watch_jobs("nas", "nasagent.io/role=trial", start, 5))
    events = list(api.watch_jobs("nas", "nasagent.io/role=trial", now, 5))
    assert events == [{"type": "BOOKMARK", "object": events[0]["object"]}], "nothing new: just a bookmark"


# -- stop signals, through the real CLI in a subprocess ---------------------------------------------


def agent(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    """``nasagent search ARGS`` in a process group of its own (as a terminal's foreground job)."""
    return subprocess.Popen(
        [sys.executable, "-m", "nasagent.cli", "search", *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for(what: Any, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def running_trials(db_url: str, name: str) -> int:
    with Store.connect(db_url) as store:
        experiment = store.find_experiment(name)
        return 0 if experiment is None else len(store.trials(experiment.id, status="running"))


def test_ctrl_c_stops_a_local_search_and_leaves_no_worker_behind(db_url: str, tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the foreground process group, workers included) while trials train: the
    agent stops launching, commits, stops its workers and exits 130 with one line; no worker
    process outlives it; running the command again finishes the search."""
    args = ["--experiment", "ctrl-c", "--dataset", "digits", "--trials", "3", "--epochs", "1", "--workers", "2"]
    args += ["--db", db_url, "--data-dir", str(tmp_path)]
    env = {"NASAGENT_HOME": str(tmp_path)}
    process = agent(args, env)
    try:
        wait_for(lambda: running_trials(db_url, "ctrl-c") > 0 or process.poll() is not None)
        workers = [p.pid for p in psutil.Process(process.pid).children(recursive=True)]
        assert workers, "the local workers run as children of the agent"
        os.killpg(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1] == "nasagent: interrupted; run the same command again to resume"
    wait_for(
        lambda: not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in workers), 10
    )
    again = agent(args, env)
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    with Store.connect(db_url) as store:
        experiment = store.get_experiment("ctrl-c")
        trials = store.trials(experiment.id)
        assert len(trials) == 3 and all(t.status in ("done", "failed") for t in trials)
        assert {f.fault for f in store.infra_failures(experiment.id)} <= {"agent"}


def test_sigterm_stops_a_kubernetes_search_and_deletes_its_jobs(db_url: str, tmp_path: Path) -> None:
    """SIGTERM (KFP's Terminate) to an agent outside any drained pod: it deletes its trial Jobs
    (within seconds, well under a minute), commits and exits; the Jobs a rerun starts succeed.
    FAKE Kubernetes API server over HTTP (``FakeApiServer``), the real client in the agent."""
    runs: dict[str, Any] = {"hang": True, "first": None}

    def script(trial: int, attempt: int) -> str:
        # The first trial finishes (a search that trained nothing is forgotten when stopped); the
        # others train until they are stopped, and in the rerun they finish.
        runs["first"] = runs["first"] or trial
        return "hang" if runs["hang"] and trial != runs["first"] else "succeed"

    cluster = FakeKubernetes(time.monotonic, None, script)
    server = FakeApiServer(cluster)
    reporter = Store.connect(db_url)

    def report(trial_id: int, attempt: int) -> None:
        trial = reporter.trial(trial_id)
        assert trial is not None
        outcome = TrialOutcome(trial_id, "done", reward(Architecture.parse(trial.arch)), worker="pod")
        with reporter.transaction() as tx:
            tx.save_trial_result(trial_id, attempt, outcome_to_json(outcome))

    cluster.report = report
    cluster.step_seconds = 0.1
    args = ["--experiment", "sigterm", "--dataset", "digits", "--trials", "3", "--launcher", "kubernetes"]
    args += ["--trial-image", "img:1", "--parallelism", "2", "--gpus-per-trial", "0", "--db", db_url]
    env = {"KUBECONFIG": str(server.kubeconfig(tmp_path / "kubeconfig")), "NASAGENT_HOME": str(tmp_path)}
    env["KUBERNETES_SERVICE_HOST"] = ""  # the agent runs outside any cluster: nothing of its pod to read
    try:
        process = agent(args, env)
        try:
            wait_for(lambda: (cluster.alive() == 2 and len(cluster.completions) == 1) or process.poll() is not None)
            stopped_at = time.monotonic()
            process.send_signal(signal.SIGTERM)
            _, err = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
        assert process.returncode == 130 and cluster.alive() == 0, err
        assert time.monotonic() - stopped_at < 60 and len(cluster.deleted) == 2
        assert running_trials(db_url, "sigterm") == 2, "the trials in flight stay in flight for the rerun"
        assert "stopped by SIGTERM: no trial left running" in err
        runs["hang"] = False
        again = agent(args, env)
        _, err = again.communicate(timeout=300)
        assert again.returncode == 0, err
        with Store.connect(db_url) as store:
            experiment = store.get_experiment("sigterm")
            assert [t.status for t in store.trials(experiment.id)] == ["done"] * 3
            assert [f.fault for f in store.infra_failures(experiment.id)] == ["agent", "agent"]
            status = json.loads(json.dumps(experiment_status(store, "sigterm")))
            assert status["infra_failures_by_kind"] == {"agent": 2} and status["failed"] == 0
    finally:
        reporter.close()
        server.close()


def test_an_infrastructure_failure_carries_its_fault_and_no_reward() -> None:
    outcome = TrialOutcome.infrastructure_failure(7, Fault.NODE_LOST, "node gone")
    assert outcome.fault is Fault.NODE_LOST and outcome.accuracy != outcome.accuracy  # NaN: never a reward
    assert json.loads(json.dumps(outcome_to_json(outcome), default=str))["fault"] == "node-lost"
