"""The runner contract (``nasagent.execution.base.Runner``), one suite run over every runner.

- ``function``: ``FunctionRunner`` with a known reward.
- ``local``: ``LocalRunner`` with real spawned worker processes training tiny networks on the
  bundled ``digits`` for one epoch.
- ``kubernetes`` and ``kfp``: ``KubernetesRunner`` and ``KfpRunner`` against FAKES of their
  cluster APIs (``launcher_helpers``; no API server can run here), with the trial rows in a real
  PostgreSQL store and the fake pods reporting to ``trial_results`` as ``nasagent trial`` does.
- ``docstring-example``: the ``InlineRunner`` in ``Runner``'s docstring, so the example cannot rot.

Each is wrapped in a ``Kit`` that says how to make it and how to make one of its trials fail.
``test_launchers.py`` tests the cluster runners' watch, poll and retry logic in depth; this file
checks only what every runner owes the agent.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import math
import multiprocessing
import os
import signal
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from launcher_helpers import FakeClock, FakeKubernetes, FakePipelines, pod_reporter, running_trials

from nasagent.config import SearchConfig
from nasagent.core.networks import Network, parse_network
from nasagent.core.trial import Fault, TrialOutcome, TrialSpec, TrialStatus, outcome_to_json
from nasagent.execution.base import Runner
from nasagent.execution.cluster import LauncherSettings
from nasagent.execution.function import FunctionRunner
from nasagent.execution.kfp import KfpRunner
from nasagent.execution.kubernetes import KubernetesRunner
from nasagent.execution.local import LocalRunner
from nasagent.persistence.databases import create_database, drop_database
from nasagent.persistence.postgres import Store

# Small networks for digits (8x8 images, 10 classes): each trains in well under a second.
ARCHS = [
    "[C(8,3,1), SM(10)]",
    "[C(16,3,1), SM(10)]",
    "[C(8,1,1), SM(10)]",
    "[C(16,1,1), SM(10)]",
    "[C(4,3,1), SM(10)]",
    "[C(4,1,1), SM(10)]",
    "[C(32,1,1), SM(10)]",
    "[C(32,3,1), SM(10)]",
]
NUM_CLASSES = 10
DIVERGES: set[int] = set()  # trials whose (fake) pod reports a training that diverged
SLACK = 5.0  # seconds a wait may overrun its timeout (a busy 2-core machine, worker restarts)


@dataclass
class Kit:
    """How the suite drives one runner implementation."""

    make: Callable[[int], Runner]
    """A new runner with this capacity, or the runner's own where it has a fixed one."""
    trials: Callable[[int], list[TrialSpec]]
    """New trials (distinct architectures), with rows in the store where the runner needs them."""
    fail: Callable[[Runner, TrialSpec], None]
    """Submit a trial whose network fails to learn: its function raises, its training crashes, its
    pod reports a diverged training."""
    reason: str
    """Words the failed outcome's reason holds."""
    leftovers: Callable[[], int]
    """How many worker processes, Jobs or runs of the kit's runners are still running."""
    hold: Callable[[TrialSpec], None] | None = None
    """Before submit: this trial will not finish for at least a minute. None: the runner cannot."""
    clock: Callable[[], float] = time.monotonic
    """The time a runner's ``wait`` goes by (simulated for the cluster fakes)."""
    kill: Callable[[Runner, TrialSpec], None] | None = None
    """Submit a trial the machines do not run to its end: its worker is killed, its pod OOMKilled,
    its run fails. None: nothing of the runner can die under a trial."""
    fault: Fault | None = None
    """The ``Fault`` of ``kill``'s infrastructure failure."""


def known_reward(arch: Network) -> float:
    """A deterministic reward in [0.5, 1) for the runners that train nothing."""
    return 0.5 + int(arch.digest[:4], 16) / 2**17


def numbered_trials() -> Callable[[int], list[TrialSpec]]:
    """Trials without a store: ids 1, 2, ... over the architectures in turn."""
    ids = itertools.count(1)

    def trials(n: int) -> list[TrialSpec]:
        return [TrialSpec(i, ARCHS[(i - 1) % len(ARCHS)], seed=i) for i in itertools.islice(ids, n)]

    return trials


def submit_doomed(doomed: set[str]) -> Callable[[Runner, TrialSpec], None]:
    def fail(runner: Runner, spec: TrialSpec) -> None:
        doomed.add(spec.arch)
        runner.submit(spec)

    return fail


def function_kit(request: pytest.FixtureRequest, tmp_path: Path) -> Kit:
    doomed: set[str] = set()

    def reward(arch: Network) -> float:
        if str(arch) in doomed:
            raise KeyError(f"{arch} is not in the surrogate table")
        return known_reward(arch)

    return Kit(
        make=lambda capacity: FunctionRunner(reward, capacity, num_classes=NUM_CLASSES),
        trials=numbered_trials(),
        fail=submit_doomed(doomed),
        reason="trial crashed: KeyError",
        leftovers=lambda: 0,  # nothing runs outside the agent's thread
    )


def docstring_example() -> type[Runner]:
    """The runner in ``Runner``'s docstring: the indented block after its ``::``, executed."""
    doc = inspect.getdoc(Runner) or ""
    assert "::\n" in doc, "Runner's docstring lost its example"
    namespace: dict[str, Any] = {}
    exec(compile(textwrap.dedent(doc.split("::\n", 1)[1]), "<Runner docstring>", "exec"), namespace)
    return namespace["InlineRunner"]


def docstring_kit(request: pytest.FixtureRequest, tmp_path: Path) -> Kit:
    inline = docstring_example()
    doomed: set[str] = set()

    def score(spec: TrialSpec) -> float:
        if spec.arch in doomed:
            raise ValueError("this trial crashes")
        return known_reward(parse_network(spec.arch))

    return Kit(
        make=lambda capacity: inline(score, num_classes=NUM_CLASSES),
        trials=numbered_trials(),
        fail=submit_doomed(doomed),
        reason="trial crashed: ValueError: this trial crashes",
        leftovers=lambda: 0,
    )


def local_workers() -> int:
    """Worker processes of local runners still alive in this process."""
    return sum(p.name.startswith("local-") for p in multiprocessing.active_children())


def local_kit(request: pytest.FixtureRequest, tmp_path: Path) -> Kit:
    settings = SearchConfig(dataset="digits", epochs=1).trial_settings("cpu")
    settings = dataclasses.replace(settings, data_dir=str(tmp_path))

    def unbuildable(runner: Runner, spec: TrialSpec) -> None:
        # A network the builder rejects (7 outputs for 10 classes): its training crashes.
        runner.submit(dataclasses.replace(spec, arch="[C(8,3,1), SM(7)]"))

    def kill_worker(runner: Runner, spec: TrialSpec) -> None:
        runner.submit(spec)
        assert isinstance(runner, LocalRunner)
        [worker] = [w for w in runner._workers if w.trial == spec]
        os.kill(worker.process.pid, signal.SIGKILL)  # as the OOM killer would

    return Kit(
        make=lambda capacity: LocalRunner(settings, capacity, NUM_CLASSES),
        trials=numbered_trials(),
        fail=unbuildable,
        reason="trial crashed: ConfigError",
        leftovers=local_workers,
        kill=kill_worker,
        fault=Fault.KILLED,
    )


@pytest.fixture(scope="module")
def cluster_db(embedded_pg: Any) -> Iterator[tuple[Store, Callable[[int, int], None]]]:
    """A store and a pod reporter on one database for this module's cluster tests (each test
    makes its own experiment): a database per test would cost more than the tests."""
    name = f"nastest_runners_{os.getpid()}_{int(time.time())}"
    url = create_database(embedded_pg.url, name)
    pod_report, reporting = pod_reporter(url)

    def report(trial_id: int, attempt: int) -> None:
        """As a trial pod reports: a network of ``DIVERGES`` fails to learn, the others are trained."""
        if trial_id not in DIVERGES:
            pod_report(trial_id, attempt)
            return
        outcome = TrialOutcome.failed(trial_id, "diverged: loss became nan at epoch 1", NUM_CLASSES, "pod")
        with reporting.transaction() as tx:
            tx.save_trial_result(trial_id, attempt, outcome_to_json(outcome))

    try:
        with Store.connect(url) as store:
            yield store, report
    finally:
        reporting.close()
        drop_database(embedded_pg.url, name)


def launcher_settings(capacity: int) -> LauncherSettings:
    return LauncherSettings(
        experiment="exp",
        image="registry.example/nasagent:1.0",
        namespace="nas",
        parallelism=capacity,
        pending_timeout=60,
        trial_timeout=600,
        max_retries=1,
    )


def kubernetes_kit(request: pytest.FixtureRequest, tmp_path: Path) -> Kit:
    """FAKE Kubernetes API (one per runner); a held trial's first Job stays Pending."""
    store, report = request.getfixturevalue("cluster_db")
    clock = FakeClock()
    doomed: set[int] = set()
    held: set[int] = set()
    apis: list[FakeKubernetes] = []

    def script(trial: int, attempt: int) -> str:
        if trial in doomed:
            return "oom"
        return "pending" if trial in held and attempt == 1 else "succeed"

    def diverge(runner: Runner, spec: TrialSpec) -> None:
        DIVERGES.add(spec.trial_id)
        runner.submit(spec)

    def make(capacity: int) -> Runner:
        apis.append(FakeKubernetes(clock, clock.sleep, script, report))
        return KubernetesRunner(
            apis[-1], store, launcher_settings(capacity), NUM_CLASSES, clock=clock, sleep=clock.sleep
        )

    def fail(runner: Runner, spec: TrialSpec) -> None:
        doomed.add(spec.trial_id)
        runner.submit(spec)

    return Kit(
        make=make,
        trials=lambda n: running_trials(store, ARCHS[:n]),
        fail=diverge,
        reason="diverged: loss became nan",
        leftovers=lambda: sum(api.alive() for api in apis),
        hold=lambda spec: held.add(spec.trial_id),
        clock=clock,
        kill=fail,
        fault=Fault.KILLED,
    )


def kfp_kit(request: pytest.FixtureRequest, tmp_path: Path) -> Kit:
    """FAKE KFP client (one per runner); a held trial's first run stays PENDING."""
    store, report = request.getfixturevalue("cluster_db")
    clock = FakeClock()
    doomed: set[int] = set()
    held: set[int] = set()
    clients: list[FakePipelines] = []

    def script(trial: int, attempt: int) -> list[str]:
        if trial in doomed:
            return ["RUNNING", "FAILED"]
        return ["PENDING"] if trial in held and attempt == 1 else ["PENDING", "RUNNING", "SUCCEEDED"]

    def make(capacity: int) -> Runner:
        clients.append(FakePipelines(script, report))
        return KfpRunner(clients[-1], store, launcher_settings(capacity), NUM_CLASSES, clock=clock, sleep=clock.sleep)

    def fail(runner: Runner, spec: TrialSpec) -> None:
        doomed.add(spec.trial_id)
        runner.submit(spec)

    def running_runs() -> int:
        ended = ("SUCCEEDED", "FAILED", "ERROR", "SKIPPED", "CANCELED")
        return sum(run["states"][0] not in ended for client in clients for run in client.runs.values())

    def diverge(runner: Runner, spec: TrialSpec) -> None:
        DIVERGES.add(spec.trial_id)
        runner.submit(spec)

    return Kit(
        make=make,
        trials=lambda n: running_trials(store, ARCHS[:n]),
        fail=diverge,
        reason="diverged: loss became nan",
        leftovers=running_runs,
        hold=lambda spec: held.add(spec.trial_id),
        clock=clock,
        kill=fail,
        fault=Fault.CRASHED,
    )


KITS = {
    "function": function_kit,
    "local": local_kit,
    "kubernetes": kubernetes_kit,
    "kfp": kfp_kit,
    "docstring-example": docstring_kit,
}


@pytest.fixture(params=list(KITS))
def kit(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Kit]:
    """Each runner implementation in turn; every runner the test made is closed afterwards."""
    made: list[Runner] = []
    kit = KITS[request.param](request, tmp_path)
    make = kit.make

    def make_and_keep(capacity: int) -> Runner:
        made.append(make(capacity))
        return made[-1]

    kit.make = make_and_keep
    try:
        yield kit
    finally:
        for runner in made:
            runner.close()


def run_all(runner: Runner, specs: list[TrialSpec], submitted: list[TrialSpec] | None = None) -> dict:
    """Submit ``specs`` as the agent does (only while ``in_flight < capacity``) and wait until they
    and the ``submitted`` ones came back, checking ``in_flight`` and the outcomes on the way."""
    queue, sent = list(specs), list(submitted or [])
    outcomes: dict[int, TrialOutcome] = {}
    capacity = runner.capacity
    deadline = time.monotonic() + 300
    while len(outcomes) < len(sent) + len(queue):
        while queue and runner.in_flight < runner.capacity:
            sent.append(queue.pop(0))
            runner.submit(sent[-1])
            assert runner.in_flight == len(sent) - len(outcomes)
        for outcome in runner.wait(5.0):
            assert outcome.trial_id in {s.trial_id for s in sent}, f"an outcome of trial {outcome.trial_id}, never sent"
            assert outcome.trial_id not in outcomes, f"two outcomes of trial {outcome.trial_id}"
            outcomes[outcome.trial_id] = outcome
        assert runner.in_flight == len(sent) - len(outcomes), "in_flight counts the trials not yet returned"
        assert runner.capacity == capacity
        assert time.monotonic() < deadline, f"only {len(outcomes)} of {len(sent) + len(queue)} trials came back"
    return outcomes


def test_every_submitted_trial_comes_back_exactly_once(kit: Kit) -> None:
    runner = kit.make(2)
    assert isinstance(runner.capacity, int) and runner.capacity >= 1
    assert runner.in_flight == 0
    specs = kit.trials(4)
    outcomes = run_all(runner, specs)
    assert sorted(outcomes) == sorted(s.trial_id for s in specs)
    for outcome in outcomes.values():
        assert outcome.status is TrialStatus.DONE and outcome.failure is None, outcome
        assert 0.0 <= outcome.accuracy <= 1.0
    assert runner.in_flight == 0
    assert runner.wait(0.5) == [], "nothing comes back twice"


def test_wait_returns_within_about_its_timeout(kit: Kit) -> None:
    runner = kit.make(1)
    started = kit.clock()
    assert runner.wait(1.0) == []
    assert kit.clock() - started <= 1.0 + SLACK, "nothing in flight"
    [spec] = kit.trials(1)
    if kit.hold is not None:
        kit.hold(spec)
    runner.submit(spec)
    started = kit.clock()
    first = runner.wait(2.0)
    waited = kit.clock() - started
    assert waited <= 2.0 + SLACK
    if kit.hold is not None:  # a trial in flight that does not finish: wait blocks, then gives up
        assert first == [] and waited >= 1.5
    outcomes = run_all(runner, [], submitted=[] if first else [spec])
    assert [o.trial_id for o in first + list(outcomes.values())] == [spec.trial_id]


def test_a_network_that_fails_to_learn_is_a_failed_outcome_with_its_reason_and_the_runner_goes_on(kit: Kit) -> None:
    runner = kit.make(2)
    doomed, *others = kit.trials(3)
    kit.fail(runner, doomed)
    assert runner.in_flight == 1
    outcomes = run_all(runner, others, submitted=[doomed])
    failed = outcomes[doomed.trial_id]
    assert failed.status is TrialStatus.FAILED and kit.reason in (failed.failure or ""), failed
    assert failed.accuracy == pytest.approx(1 / NUM_CLASSES), "a failed trial is rewarded at chance"
    assert [outcomes[s.trial_id].status for s in others] == [TrialStatus.DONE, TrialStatus.DONE]
    assert runner.in_flight == 0 and failed.fault is None


def test_a_trial_the_machines_did_not_run_is_an_infrastructure_failure_and_the_runner_goes_on(kit: Kit) -> None:
    """Its worker killed (the OOM killer's SIGKILL), its pod OOMKilled, its run failed: an outcome
    carrying its ``Fault`` and no reward (NaN), which the agent never learns from."""
    if kit.kill is None:
        pytest.skip("nothing of this runner can die under a trial")
    runner = kit.make(2)
    killed, *others = kit.trials(3)
    kit.kill(runner, killed)
    outcomes = run_all(runner, others, submitted=[killed])
    lost = outcomes[killed.trial_id]
    assert lost.fault is kit.fault and math.isnan(lost.accuracy) and lost.failure, lost
    assert [outcomes[s.trial_id].status for s in others] == [TrialStatus.DONE, TrialStatus.DONE]
    assert runner.in_flight == 0


def test_resume_and_interrupt_leave_nothing_running_where_nothing_was_left(kit: Kit) -> None:
    """With nothing of an earlier agent to take over, ``resume`` hands every trial back to be
    submitted; ``interrupt`` (an agent stopped on purpose) stops what is in flight."""
    runner = kit.make(1)
    specs = kit.trials(2)
    assert runner.resume(specs) == specs and runner.in_flight == 0
    if kit.hold is not None:
        kit.hold(specs[0])
    runner.submit(specs[0])
    assert runner.interrupt() == 0 and kit.leftovers() == 0


def test_close_is_idempotent_and_the_with_block_closes(kit: Kit, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = kit.make(2)
    closes = []
    close = runner.close
    monkeypatch.setattr(runner, "close", lambda: closes.append(close()))
    with runner as entered:
        assert entered is runner
        specs = kit.trials(runner.capacity)
        for spec in specs:
            if kit.hold is not None:
                kit.hold(spec)
            runner.submit(spec)  # abandoned in flight
    assert len(closes) == 1 and kit.leftovers() == 0
    runner.close()
    assert len(closes) == 2 and kit.leftovers() == 0
    # A search that stops with an error closes its runner too.
    second = kit.make(1)
    with pytest.raises(KeyboardInterrupt), second:
        second.submit(kit.trials(1)[0])
        raise KeyboardInterrupt
    assert kit.leftovers() == 0


def test_the_docstring_example_is_a_runner() -> None:
    """The kit above runs the suite on it; here: it is what the docstring says it is."""
    inline = docstring_example()
    assert issubclass(inline, Runner) and inline.__name__ == "InlineRunner"
    assert not inspect.isabstract(inline)


# -- LocalRunner only: a regression --------------------------------------------------------------------


def test_a_local_worker_that_dies_just_after_reporting_is_replaced(tmp_path: Path) -> None:
    """White-box (the race is too narrow to hit from outside): a worker dies after putting its
    result but before ``wait`` took it. The result is handed over, not a failure, and the dead
    worker is replaced at once: a trial submitted to it would otherwise fail for nothing."""
    settings = dataclasses.replace(
        SearchConfig(dataset="digits", epochs=1).trial_settings("cpu"), data_dir=str(tmp_path)
    )
    first, second = numbered_trials()(2)
    with LocalRunner(settings, 1, NUM_CLASSES) as runner:
        runner.submit(first)
        deadline = time.monotonic() + 120
        while runner._results.empty():  # the result is in the queue, not yet taken
            assert time.monotonic() < deadline, "the trial did not finish"
            time.sleep(0.05)
        dead = runner._workers[0].process
        os.kill(dead.pid, signal.SIGKILL)
        dead.join()
        [outcome] = runner._reap_dead()
        assert (outcome.trial_id, outcome.status) == (first.trial_id, TrialStatus.DONE)
        assert runner._workers[0].process is not dead and runner._workers[0].trial is None
        outcomes = run_all(runner, [second])
        assert outcomes[second.trial_id].status is TrialStatus.DONE, outcomes[second.trial_id].failure
