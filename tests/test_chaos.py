"""Chaos: a 30-trial search through the Kubernetes launcher on a cluster that fails in every way.

No Kubernetes API server can run here, so the cluster is the FAKE of ``launcher_helpers``
(``FakeKubernetes``: API server, Job controller and kubelet, in real time) served over HTTP
(``FakeApiServer``) to the real agent, ``nasagent search --launcher kubernetes``, running in a
process of its own and talking through the official client, with the real PostgreSQL. The fake
kubelet plays each trial pod: it writes to ``trial_results`` the accuracy a known function of the
architecture gives, as ``nasagent trial`` would (nothing is trained: the chaos is the point).

While the search runs, a chaos monkey preempts pods, evicts them (a drain, deleting them), loses
their nodes, compacts the API server's watch cache (410 Gone), drops every open watch, restarts the
API server (watches broken, requests refused for a moment), refuses Jobs at admission (403
exceeded quota), keeps pods unschedulable past ``--pending-timeout`` and OOM-kills containers; and
the agent is killed with SIGKILL twice and started again: once just after it created a trial's Job
(the next agent must take the Job over), once just after a trial's pod reported its result but
before the agent read it (the next agent must record it, not train the trial again).

The search must end with exactly 30 unique architectures, none trained to completion twice, no
infrastructure failure in the replay memory, and the very Q-table of a fault-free run with the
same seed. With one trial in flight (``--parallelism 1``) the order in which the agent asks and is
told is fixed by its seed and the rewards alone; an infrastructure failure tells it nothing, and a
restarted agent resumes the strategy (RNG included) from the step it committed last, so the faults
change when things happen but not what the agent learns: the trials, the replay memory (rewards
and order) and the Q-values are asserted equal to the last bit.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from launcher_helpers import FakeApiServer, FakeKubernetes

from nasagent.core.arch import Architecture, Conv
from nasagent.core.trial import TrialOutcome, outcome_to_json
from nasagent.persistence.postgres import Store

TRIALS = 30
KILL_AT_TRIAL = 8  # the agent is killed just after it created this trial's Job
KILL_AT_REPORT = 20  # ... and again just after the pod of this trial reported its result
LONG_TRIAL_SECONDS = 20
SPACE = """\
name: chaos
max_depth: 3
size_bins: [8, 4, 1]
conv: {filters: [8, 16], kernels: [1, 3], strides: [1]}
pool: {shapes: [[2, 2]]}
fc: {units: [16], max_consecutive: 1, max_size: 7}
terminals: [gap, softmax]
build: {activation: relu, dropout: paper}
"""


def reward(arch: Architecture) -> float:
    """A known function of the architecture: convolutions and filters help; the digest breaks ties."""
    convs = [layer for layer in arch.hidden if isinstance(layer, Conv)]
    return round(0.4 + 0.05 * len(convs) + sum(c.filters for c in convs) / 400 + int(arch.digest[:4], 16) / 2**22, 9)


class Kubelet:
    """What the fake kubelet's pods do: report the trial's result as ``nasagent trial`` does (the
    reward of its architecture), and, with ``chaos``, sometimes never get scheduled or get
    OOM-killed. Kills the agent right after the result of the ``kill_after_report``-th trial is
    written (before the Job completes, so before the agent can read it)."""

    def __init__(self, db_url: str, chaos: bool, seed: int) -> None:
        self.store = Store.connect(db_url)
        self.chaos = chaos
        self.random = random.Random(seed)
        self.trials: list[int] = []  # in the order their first pod was created
        self.reported: list[int] = []
        self.kill_after_report: int | None = None
        self.agent: subprocess.Popen | None = None
        self.kills: list[str] = []
        self.new_trial = threading.Event()

    def script(self, trial: int, attempt: int) -> str:
        if trial not in self.trials:
            self.trials.append(trial)
            self.new_trial.set()
        if not self.chaos:
            return "succeed"
        if self.long_trial(trial):
            return f"succeed-after:{LONG_TRIAL_SECONDS}"  # still running when the agent killed on its start is back
        draw = self.random.random()
        return "pending" if draw < 0.06 else "oom" if draw < 0.10 else "succeed"

    def long_trial(self, trial: int) -> bool:
        """The trial whose Job the agent is killed after creating: it trains long enough for the
        next agent to find it running (and the monkey spares its pods, or it would never end)."""
        return len(self.trials) >= KILL_AT_TRIAL and trial == self.trials[KILL_AT_TRIAL - 1]

    def report(self, trial_id: int, attempt: int) -> None:
        trial = self.store.trial(trial_id)
        assert trial is not None
        arch = Architecture.parse(trial.arch)
        outcome = TrialOutcome(trial_id, "done", reward(arch), params=1000, train_seconds=0.1, worker=f"pod-{trial_id}")
        with self.store.transaction() as tx:
            tx.save_trial_result(trial_id, attempt, outcome_to_json(outcome))
        self.reported.append(trial_id)
        if self.kill_after_report is not None and len(set(self.reported)) == self.kill_after_report:
            self.kill_after_report = None
            self.kill("a trial's pod reported its result; the agent had not read it yet")

    def kill(self, when: str) -> None:
        if self.agent is not None and self.agent.poll() is None:
            os.kill(self.agent.pid, signal.SIGKILL)
            self.kills.append(when)


class Monkey(threading.Thread):
    """Every 0.1 to 0.3 s, until stopped: disrupts a running pod (preempts it, evicts it, loses its
    node) with probability 0.35 when one runs, else, with probability 0.5, compacts the watch
    cache, drops every watch or (less often) restarts the API server; and refuses 5% of the Jobs
    at admission. ``spare(pod)``: a pod it leaves alone."""

    def __init__(self, cluster: FakeKubernetes, seed: int, spare: Any) -> None:
        super().__init__(name="chaos-monkey", daemon=True)
        self.cluster = cluster
        self.spare = spare
        self.random = random.Random(seed)
        self.stopped = threading.Event()
        cluster.admit = self.admit

    def admit(self, job: dict[str, Any]) -> str | None:
        if self.random.random() < 0.05:
            return "exceeded quota: gpu-quota, requested: requests.nvidia.com/gpu=1, used: 8, limited: 8"
        return None

    def run(self) -> None:
        cluster = self.cluster
        while not self.stopped.wait(self.random.uniform(0.1, 0.3)):
            running = [pod for pod in cluster.running_pods() if not self.spare(pod)]
            if running and self.random.random() < 0.35:
                disrupt = self.random.choice([cluster.preempt, cluster.evict, cluster.lose_node])
                disrupt(self.random.choice(running))
            elif self.random.random() < 0.5:
                fault = self.random.choice(["compact", "drop-watches", "restart-api-server"])
                if fault == "compact":
                    cluster.compact()
                elif fault == "drop-watches":
                    cluster.drop_watches()
                elif self.random.random() < 0.4:
                    cluster.restart(downtime=0.3)

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=5)


def search(name: str, db_url: str, tmp_path: Path, chaos: bool) -> dict[str, Any]:
    """Run ``nasagent search`` of experiment ``name`` against a fresh fake cluster until it ends,
    starting the agent again whenever it was killed. Returns what happened."""
    kubelet = Kubelet(db_url, chaos, seed=11)
    cluster = FakeKubernetes(time.monotonic, None, kubelet.script, kubelet.report, step_seconds=0.15, watch_cache=40)
    server = FakeApiServer(cluster)

    def spare(pod: str) -> bool:
        trial = int(pod.split("-")[-4])  # nas-<experiment>-<trial>-<attempt>-<token>-<pod>
        return kubelet.long_trial(trial)

    monkey = Monkey(cluster, seed=12, spare=spare) if chaos else None
    space = tmp_path / "chaos.yaml"
    space.write_text(SPACE)
    command = [sys.executable, "-m", "nasagent.cli", "search", "--experiment", name, "--db", db_url]
    command += ["--dataset", "digits", "--space", str(space), "--trials", str(TRIALS), "--seed", "5"]
    command += ["--schedule", "1.0:10,0.5:10,0.1:10", "--launcher", "kubernetes", "--trial-image", "img:1"]
    command += ["--parallelism", "1", "--gpus-per-trial", "0", "--pending-timeout", "2", "--max-retries", "1"]
    command += ["--max-requeues", "20", "--max-infra-failures", "20"]
    env = {**os.environ, "KUBECONFIG": str(server.kubeconfig(tmp_path / f"{name}.kubeconfig"))}
    env.update(NASAGENT_HOME=str(tmp_path), KUBERNETES_SERVICE_HOST="")
    if chaos:
        kubelet.kill_after_report = KILL_AT_REPORT
    started, runs, codes = time.monotonic(), 0, []
    try:
        if monkey is not None:
            monkey.start()
        while True:
            runs += 1
            with open(tmp_path / f"{name}-agent-{runs}.log", "w") as log:
                kubelet.agent = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
                if chaos and runs == 1:
                    # Kill the agent just after it created the Job of its KILL_AT_TRIAL-th trial.
                    while len(kubelet.trials) < KILL_AT_TRIAL and kubelet.agent.poll() is None:
                        kubelet.new_trial.wait(0.05)
                        kubelet.new_trial.clear()
                    kubelet.kill("the agent had just created a trial's Job")
                code = kubelet.agent.wait(timeout=600)
            codes.append(code)
            if code != -signal.SIGKILL:
                break
            assert runs <= 5, "the agent keeps getting killed"
        logs = "\n".join(p.read_text() for p in sorted(tmp_path.glob(f"{name}-agent-*.log")))
        assert code == 0, logs[-5000:]
    finally:
        if kubelet.agent is not None and kubelet.agent.poll() is None:
            kubelet.agent.kill()
            kubelet.agent.wait()
        if monkey is not None:
            monkey.stop()
        server.close()
        kubelet.store.close()
    return {
        "seconds": round(time.monotonic() - started, 1),
        "agent_runs": runs,
        "exit_codes": codes,
        "kills": kubelet.kills,
        "injected": dict(cluster.injected),
        "completions": dict(cluster.completions),
        "jobs_created": len(cluster.created),
        "jobs_deleted": len(cluster.deleted),
        "logs": logs,
    }


def test_a_search_through_chaos_learns_exactly_what_a_search_without_faults_learns(db_url: str, tmp_path: Path) -> None:
    clean = search("clean", db_url, tmp_path, chaos=False)
    chaotic = search("chaos", db_url, tmp_path, chaos=True)
    with Store.connect(db_url) as store:
        ids = {name: store.get_experiment(name).id for name in ("clean", "chaos")}
        trials = {name: store.trials(ids[name]) for name in ids}
        replay = {name: store.load_replay(ids[name]) for name in ids}
        q = {name: store.load_q(ids[name]) for name in ids}
        lost = store.infra_failures(ids["chaos"])
        status = store.infra_failure_counts(ids["chaos"])
    # Exactly the asked number of unique architectures, every one trained.
    assert len(trials["chaos"]) == TRIALS == len({t.digest for t in trials["chaos"]})
    assert all(t.status == "done" for t in trials["chaos"])
    # None trained to completion twice: each trial's pods ran to the end exactly once.
    assert chaotic["completions"] == {t.id: 1 for t in trials["chaos"]}, chaotic["completions"]
    # No infrastructure failure in the replay memory: every sample is its architecture's reward.
    assert all(r == reward(Architecture.parse(a)) for a, r in replay["chaos"])
    done = {t.arch for t in trials["chaos"]}
    assert {a for a, _ in replay["chaos"]} <= done
    # What a fault-free run with the same seed learns, to the last bit.
    assert [t.arch for t in trials["chaos"]] == [t.arch for t in trials["clean"]]
    assert replay["chaos"] == replay["clean"]
    assert q["chaos"] == q["clean"] and len(q["chaos"]) > TRIALS
    # The faults happened, and the agent saw them as faults, never as results.
    assert chaotic["kills"] == [
        "the agent had just created a trial's Job",
        "a trial's pod reported its result; the agent had not read it yet",
    ]
    assert chaotic["exit_codes"] == [-signal.SIGKILL, -signal.SIGKILL, 0]
    injected = chaotic["injected"]
    assert injected.get("preempted", 0) + injected.get("evicted", 0) + injected.get("node-lost", 0) > 0, injected
    assert injected.get("gone-410", 0) > 0 and injected.get("watches-dropped", 0) > 0, injected
    assert "took over 1 trial(s) still running" in chaotic["logs"]
    assert "recorded 1 result(s) reported meanwhile" in chaotic["logs"]
    summary = {
        "clean_seconds": clean["seconds"],
        "chaos_seconds": chaotic["seconds"],
        "agent_runs": chaotic["agent_runs"],
        "faults_injected": injected,
        "jobs_created": {"clean": clean["jobs_created"], "chaos": chaotic["jobs_created"]},
        "infra_failures_seen_by_the_agent": status,
        "requeues": len([f for f in lost if f.fault != "agent"]),
    }
    print("chaos summary:", json.dumps(summary, sort_keys=True))
    assert Counter(f.fault for f in lost) == Counter(status)
