"""What the two cluster launchers (Kubernetes Jobs, KFP runs) share: their settings, the outcome a
trial reports through ``trial_results``, and the attempt bookkeeping with bounded retries.

A trial launched on a cluster runs ``nasagent trial --experiment NAME --trial-id ID`` somewhere
else; that command writes its ``TrialOutcome`` as JSON into ``trial_results`` and exits. The
launcher sees the Job or run succeed, reads the row and hands the outcome to the agent, which
records it in its own transaction. A failed, timed-out, evicted, OOM-killed or too-long-pending
attempt is started again (a new Job or run, attempt + 1) up to ``max_retries`` times, then
returned as a failed outcome with the reason: one trial never stops the search.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nasagent.core.trial import TrialOutcome, TrialSpec, outcome_from_json
from nasagent.errors import AttemptError, ConfigError
from nasagent.execution.base import Runner
from nasagent.persistence.postgres import Store

log = logging.getLogger(__name__)

LAUNCHERS = ("local", "kfp", "kubernetes")
TOLERATION_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
# Secrets the trial pods read (same names for both launchers; see docs in the launchers' modules).
DB_SECRET = "nasagent-db"
S3_SECRET = "nasagent-s3"
S3_ENV = {
    "endpoint": "NASAGENT_S3_ENDPOINT",
    "access_key": "NASAGENT_S3_ACCESS_KEY",
    "secret_key": "NASAGENT_S3_SECRET_KEY",
}
# The environment variable through which a launcher tells ``nasagent trial`` its attempt number.
ATTEMPT_ENV = "NASAGENT_ATTEMPT"


@dataclass(frozen=True)
class LauncherSettings:
    """How a cluster launcher starts the trials of one experiment. Built by the CLI from the flags.

    ``trial_timeout`` bounds one attempt's run time, ``pending_timeout`` how long it may wait for a
    node (a GPU) before it is deleted and retried; ``ttl_after_finished`` is how long finished Jobs
    (and their pods' logs) stay for inspection.
    """

    experiment: str
    image: str
    namespace: str | None = None
    parallelism: int = 1
    gpus_per_trial: int = 1
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, str], ...] = ()
    trial_timeout: int = 4 * 3600
    pending_timeout: int = 900
    max_retries: int = 2
    kfp_host: str | None = None
    artifacts: str | None = None
    ttl_after_finished: int = 3600
    job_template: dict[str, Any] | None = None
    """kubernetes: the admin's trial Job (``--trial-template``) that each Job is built on."""

    def __post_init__(self) -> None:
        if not self.image:
            raise ConfigError("a cluster launcher needs --trial-image (an image with nasagent installed)")
        checks = (
            ("--parallelism", self.parallelism, 1),
            ("--gpus-per-trial", self.gpus_per_trial, 0),
            ("--trial-timeout", self.trial_timeout, 1),
            ("--pending-timeout", self.pending_timeout, 1),
            ("--max-retries", self.max_retries, 0),
        )
        for flag, value, least in checks:
            if value < least:
                raise ConfigError(f"{flag} must be at least {least}, got {value}")


def parse_node_selector(pairs: list[str]) -> dict[str, str]:
    """``--node-selector KEY=VALUE`` flags into a nodeSelector mapping (ConfigError if malformed)."""
    selector: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--node-selector expects KEY=VALUE, got {pair!r}")
        selector[key.strip()] = value.strip()
    return selector


def parse_toleration(text: str) -> dict[str, str]:
    """``--toleration KEY[=VALUE]:EFFECT`` into a Kubernetes toleration (operator Equal with a
    value, Exists without one). ConfigError if malformed."""
    head, sep, effect = text.rpartition(":")
    if not sep or effect not in TOLERATION_EFFECTS:
        raise ConfigError(
            f"--toleration expects KEY[=VALUE]:EFFECT with EFFECT one of {', '.join(TOLERATION_EFFECTS)}, got {text!r}"
        )
    key, has_value, value = head.partition("=")
    if not key:
        raise ConfigError(f"--toleration needs a key, got {text!r}")
    if has_value:
        return {"key": key, "operator": "Equal", "value": value, "effect": effect}
    return {"key": key, "operator": "Exists", "effect": effect}


def label_value(text: str) -> str:
    """``text`` as a Kubernetes label value (at most 63 of ``[A-Za-z0-9._-]``, alphanumeric at both
    ends). A name that had to change gets a short hash of the original, so two experiments whose
    names differ only in dropped characters still get different labels."""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")
    if clean == text and len(clean) <= 63:
        return clean
    digest = hashlib.sha1(text.encode()).hexdigest()[:8]
    return f"{clean[:54].strip('-._')}-{digest}".lstrip("-")


def dns_label(text: str, limit: int) -> str:
    """``text`` lowercased into ``[a-z0-9-]``, at most ``limit`` characters, alphanumeric at both ends."""
    clean = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return clean[:limit].strip("-") or "x"


def trial_command(experiment: str, trial_id: int) -> list[str]:
    """The command a trial pod runs (the contract between the launchers and ``nasagent trial``)."""
    return ["nasagent", "trial", "--experiment", experiment, "--trial-id", str(trial_id)]


@dataclass
class Attempt:
    """One try at a trial: a Job or a KFP run. ``name`` is the Job name or the run id."""

    spec: TrialSpec
    number: int
    name: str
    started: float
    running_since: float | None = None
    earlier_failures: list[str] = field(default_factory=list)
    next_poll: float = 0.0


class ClusterRunner(Runner):
    """The retry bookkeeping of a launcher that runs each attempt of a trial as a cluster object.

    Subclasses start and stop attempts (``_start``/``_stop``) and, from their ``wait``, report
    each attempt's end through ``_succeeded`` or ``_failed``; finished outcomes collect in
    ``_done`` until ``wait`` hands them over (``_take_done``). Used from the agent's thread only.
    """

    launcher = "cluster"

    def __init__(
        self, store: Store, settings: LauncherSettings, num_classes: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.capacity = settings.parallelism
        self.store = store
        self.settings = settings
        self.num_classes = num_classes
        self.clock = clock
        self._active: dict[str, Attempt] = {}
        self._done: list[TrialOutcome] = []

    @abstractmethod
    def _start(self, spec: TrialSpec, number: int) -> str:
        """Start attempt ``number`` of ``spec``; return its Job name or run id. A failure that a
        retry may fix raises ``AttemptError``; one that no retry fixes raises ``ClusterError``."""

    @abstractmethod
    def _stop(self, attempt: Attempt) -> None:
        """Delete or terminate an attempt still running; never raises for one already gone."""

    @property
    def in_flight(self) -> int:
        return len(self._active) + len(self._done)

    def submit(self, spec: TrialSpec) -> None:
        if self.in_flight >= self.capacity:
            raise RuntimeError("submit called at capacity")
        # A result left by an earlier agent process (this trial is being rerun after a crash)
        # must not be mistaken for this run's.
        self.store.clear_trial_result(spec.trial_id)
        self._launch(spec, 1, [])

    def _launch(self, spec: TrialSpec, number: int, earlier: list[str]) -> None:
        try:
            name = self._start(spec, number)
        except AttemptError as exc:
            failed = Attempt(
                spec, number, f"{self.launcher}-trial-{spec.trial_id}", self.clock(), earlier_failures=earlier
            )
            self._retry_or_give_up(failed, f"could not start: {exc}")
            return
        self._active[name] = Attempt(spec, number, name, self.clock(), earlier_failures=earlier)

    def _succeeded(self, attempt: Attempt) -> None:
        """The attempt's Job or run succeeded: hand over the outcome the trial reported."""
        self._active.pop(attempt.name, None)
        reported = self.store.trial_result(attempt.spec.trial_id)
        if reported is None:
            self._retry_or_give_up(attempt, "the trial finished without reporting a result to trial_results")
            return
        outcome = outcome_from_json(reported[1])
        outcome.trial_id = attempt.spec.trial_id
        outcome.info = {**outcome.info, **self._attempt_info(attempt)}
        self._done.append(outcome)

    def _failed(self, attempt: Attempt, reason: str, stop: bool = False, retry: bool = True) -> None:
        """The attempt failed for ``reason``: start the next one, or give the trial up as failed.
        ``stop``: the attempt's Job or run is still alive and must be deleted first."""
        self._active.pop(attempt.name, None)
        if stop:
            self._stop(attempt)
        if retry:
            self._retry_or_give_up(attempt, reason)
        else:
            self._give_up(attempt, reason)

    def _retry_or_give_up(self, attempt: Attempt, reason: str) -> None:
        if attempt.number <= self.settings.max_retries:
            log.warning(
                "trial %s attempt %s (%s) failed: %s; retrying",
                attempt.spec.trial_id,
                attempt.number,
                attempt.name,
                reason,
            )
            self._launch(
                attempt.spec, attempt.number + 1, [*attempt.earlier_failures, f"attempt {attempt.number}: {reason}"]
            )
        else:
            self._give_up(attempt, reason)

    def _give_up(self, attempt: Attempt, reason: str) -> None:
        if attempt.number > 1:
            reason = f"{reason} (gave up after {attempt.number} attempts)"
        outcome = TrialOutcome.failed(attempt.spec.trial_id, reason, self.num_classes, worker=attempt.name)
        outcome.info = self._attempt_info(attempt)
        self._done.append(outcome)

    def _attempt_info(self, attempt: Attempt) -> dict[str, Any]:
        info: dict[str, Any] = {"launcher": self.launcher, "attempt": attempt.number, "attempt_name": attempt.name}
        if attempt.earlier_failures:
            info["attempt_failures"] = list(attempt.earlier_failures)
        return info

    def _take_done(self) -> list[TrialOutcome]:
        done, self._done = self._done, []
        return done

    def close(self) -> None:
        """Stop every attempt still running: their trials are abandoned (a resume reruns them)."""
        for attempt in list(self._active.values()):
            self._stop(attempt)
        self._active.clear()
