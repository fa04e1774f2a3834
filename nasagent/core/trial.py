"""What a trial is between the agent and a runner: its spec going out, its outcome coming back.

An outcome is one of two kinds (docs/cluster.md, "Faults"):

- an architecture result: the network was trained, or it failed to learn (diverged through the
  restarts, no better than chance, its model does not fit in the GPU's memory). Its accuracy is
  the reward, the chance-level one for a failure, as in the paper;
- an infrastructure failure (``TrialOutcome.fault`` is set): the machines did not run the trial
  to its end (never scheduled, preempted, evicted, node lost, image not pullable, API errors,
  quota or admission refusals, a worker killed by a signal or the host's OOM killer). It says
  nothing about the architecture: the agent never learns from it, and trains the trial again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class TrialStatus(str, Enum):
    """Where a trial stands; the value is what the ``trials.status`` column holds."""

    RUNNING = "running"
    """Launched, outcome not recorded yet (after a crash: trained again on resume)."""
    DONE = "done"
    """Trained; its accuracy is the reward."""
    FAILED = "failed"
    """The network could not be trained (diverged, out of memory, crashed): chance-level reward."""
    STOPPED = "stopped"
    """Stopped early by the experiment's rule (``--early-stop``): it counts towards the budget; its
    reward is the predicted final accuracy (``predict``) or the best accuracy it reached (``median``)."""

    def __str__(self) -> str:
        return self.value


class Fault(str, Enum):
    """Why the machines failed to run a trial (an infrastructure failure); the value is what the
    ``infra_failures.fault`` column holds."""

    UNSCHEDULABLE = "unschedulable"
    """No node took the trial within ``--pending-timeout`` (no free GPU, quota on pods, admission)."""
    PREEMPTED = "preempted"
    """The pod was preempted (``DisruptionTarget``: ``PreemptionByScheduler``)."""
    EVICTED = "evicted"
    """The pod was evicted: node pressure, a drain (the eviction API), a graceful node shutdown."""
    NODE_LOST = "node-lost"
    """The pod's node went away (``DeletionByTaintManager``, ``DeletionByPodGC``)."""
    IMAGE_PULL = "image-pull"
    """The trial image cannot be pulled: no retry helps, the search stops."""
    ADMISSION = "admission"
    """The API refused the trial for now: a ResourceQuota is exhausted (403 exceeded quota)."""
    API = "api"
    """The cluster API failed (5xx, timeouts, unreachable) while the trial was started or watched."""
    KILLED = "killed"
    """The trial's process was killed: a signal, the host's OOM killer, a container memory limit."""
    CRASHED = "crashed"
    """The trial's process ended without a result: an exit code other than the trial's own
    (the database or data unreachable from the pod), or a finished Job that reported nothing."""
    TIMEOUT = "timeout"
    """The trial ran longer than ``--trial-timeout`` (time lost to preemptions counts too)."""
    DELETED = "deleted"
    """Someone else deleted the trial's Job or canceled its run."""
    AGENT = "agent"
    """The agent stopped (killed, crashed, terminated) while the trial was in flight and its work
    could not be taken over: the resumed agent trains it again."""

    def __str__(self) -> str:
        return self.value


CONFIG_ERROR_EXIT = 3
"""The exit code of ``nasagent trial`` (cluster mode) for a configuration error that no retry
fixes: the trial Job's ``podFailurePolicy`` fails the Job at once on it, and the agent stops the
search with the trial's message instead of retrying."""


@dataclass(frozen=True)
class TrialSpec:
    """A trial handed to a runner: which architecture, under which record, with which seed."""

    trial_id: int
    arch: str
    seed: int


@dataclass
class TrialOutcome:
    """What a runner hands back: the reward and what the store records about the training."""

    trial_id: int
    status: TrialStatus
    accuracy: float
    params: int | None = None
    failure: str | None = None
    train_seconds: float | None = None
    worker: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    fault: Fault | None = None
    """Set for an infrastructure failure (``infrastructure_failure``): not a result, never a reward."""
    macs: int | None = None
    """Multiply-accumulates of one image's forward pass (``nasagent.core.cost``); None if unknown."""
    latency_ms: float | None = None
    """Batch-1 inference latency on the trial's device, median of repeats (``nasagent.training.latency``);
    None when not measured (a failed training)."""

    @classmethod
    def failed(cls, trial_id: int, reason: str, num_classes: int, worker: str | None = None) -> TrialOutcome:
        """An architecture that failed to learn (its training diverged, crashed or ran out of GPU
        memory): the paper's chance-level reward, so the search goes on."""
        return cls(trial_id, TrialStatus.FAILED, 1.0 / num_classes, failure=reason, worker=worker)

    @classmethod
    def infrastructure_failure(
        cls, trial_id: int, fault: Fault, reason: str, worker: str | None = None
    ) -> TrialOutcome:
        """The machines did not run the trial to its end (see ``Fault``): the agent requeues it.
        Its accuracy is NaN: it is no reward, and no comparison can mistake it for one."""
        return cls(trial_id, TrialStatus.FAILED, float("nan"), failure=reason, worker=worker, fault=fault)


def trial_seed(experiment_seed: int, digest: str) -> int:
    """A seed fixed by the experiment and the architecture: a rerun after a crash trains the same way."""
    return (experiment_seed * 1_000_003 + int(digest[:8], 16)) % 2**31


def outcome_to_json(outcome: TrialOutcome) -> dict[str, Any]:
    """A ``TrialOutcome`` as JSON (``trial_results.outcome``, ``nasagent trial``'s output)."""
    return dataclasses.asdict(outcome)


def outcome_from_json(data: dict[str, Any]) -> TrialOutcome:
    """Read back ``outcome_to_json``'s JSON (unknown keys, e.g. from a newer trial image, are dropped)."""
    known = {f.name for f in dataclasses.fields(TrialOutcome)}
    values = {k: v for k, v in data.items() if k in known}
    values["status"] = TrialStatus(values["status"])
    if values.get("fault") is not None:
        values["fault"] = Fault(values["fault"])
    return TrialOutcome(**values)
