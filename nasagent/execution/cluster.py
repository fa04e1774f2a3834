"""What the two cluster launchers (Kubernetes Jobs, KFP runs) share: their settings, the outcome a
trial reports through ``trial_results``, and the attempt bookkeeping with bounded retries.

A trial launched on a cluster runs ``nasagent trial --experiment NAME --trial-id ID`` somewhere
else; that command writes its ``TrialOutcome`` as JSON into ``trial_results`` and exits. The
launcher sees the Job or run succeed, reads the row and hands the outcome to the agent, which
records it in its own transaction. Only such a reported outcome is a result of the architecture
(trained, or failed to learn: the paper's reward). An attempt that ends any other way (failed,
timed out, preempted, evicted, OOM-killed, never scheduled, deleted, finished without a report)
is an infrastructure failure: it is started again (a new Job or run, attempt + 1) up to
``max_retries`` times, then handed to the agent as ``TrialOutcome.infrastructure_failure`` with
its ``Fault``, and the agent puts the trial back in its queue without learning anything from it.
An image that cannot be pulled is not retried: the agent stops the search on it.

Trials outlive the agent: an agent that starts on an experiment takes over the attempts of the
trials still in flight (``resume``) instead of training them again. docs/cluster.md, "Faults".
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from abc import abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from nasagent.core.trial import Fault, TrialOutcome, TrialSpec, outcome_from_json
from nasagent.errors import AttemptError, ConfigError
from nasagent.execution.base import Runner
from nasagent.persistence.postgres import Store

log = logging.getLogger(__name__)

LAUNCHERS = ("local", "kfp", "kubernetes")
TOLERATION_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
# Secrets the pods read (same names for both launchers; see docs in the launchers' modules). The
# agent connects as the database owner (DB_SECRET); trial pods as the role nasagent_trial, which
# may only record trial results (TRIAL_DB_SECRET; nasagent/persistence/migrations/003_trial_role.sql).
DB_SECRET = "nasagent-db"
TRIAL_DB_SECRET = "nasagent-trial-db"
S3_SECRET = "nasagent-s3"
S3_ENV = {
    "endpoint": "NASAGENT_S3_ENDPOINT",
    "access_key": "NASAGENT_S3_ACCESS_KEY",
    "secret_key": "NASAGENT_S3_SECRET_KEY",
}
# The keys of an object-store Secret in Kubeflow's convention (a profile's mlpipeline-minio-artifact),
# which --s3-secret names instead of nasagent-s3; its endpoint comes from --s3-endpoint.
KUBEFLOW_S3_ENV = {"accesskey": "NASAGENT_S3_ACCESS_KEY", "secretkey": "NASAGENT_S3_SECRET_KEY"}
# The environment variable through which a launcher tells ``nasagent trial`` its attempt number.
ATTEMPT_ENV = "NASAGENT_ATTEMPT"
# What a trial pod gets when neither a flag nor the trial template says otherwise: room for one
# trial on a one-GPU node of 8 vCPUs and 32 GiB (GKE g2-standard-8, EKS g5/g6.2xlarge, whose
# allocatable memory is about 26-29 GiB), memory request equal to its limit (memory cannot be
# reclaimed, so the trial is never the node's first victim), and a /dev/shm cap (an emptyDir in
# memory, counted against the memory limit, so it costs only what is used). docs/cluster.md.
DEFAULT_TRIAL_RESOURCES = {
    "cpu_request": "4",
    "cpu_limit": "8",
    "memory_request": "24Gi",
    "memory_limit": "24Gi",
    "shm_size": "8Gi",
}
RESOURCE_FLAGS = {name: "--trial-" + name.replace("_", "-") for name in DEFAULT_TRIAL_RESOURCES}

_QUANTITY = re.compile(r"^\+?(?P<number>\d+(?:\.\d*)?|\.\d+)(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+)?$")
_BINARY_SI = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL_SI = {
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 10**3),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
}


def parse_quantity(text: Any, what: str) -> Fraction:
    """A Kubernetes resource quantity (``500m``, ``4``, ``1.5Gi``, ``24G``, ``1e3``) as an exact
    number; ConfigError naming ``what`` (a flag, a template field) if it is not one, or not above 0.

    The grammar of Kubernetes' ``resource.Quantity`` (decimal and binary SI suffixes, decimal
    exponents), positive values only: what a trial's requests and limits may be.
    """
    match = _QUANTITY.match(str(text).strip()) if isinstance(text, (str, int)) else None
    if match is None:
        raise ConfigError(f"{what} must be a Kubernetes quantity such as 500m, 4, 8Gi or 1.5G, got {text!r}")
    number, suffix = Fraction(match["number"]), match["suffix"] or ""
    if suffix in _BINARY_SI:
        value = number * _BINARY_SI[suffix]
    elif suffix[:1] in ("e", "E") and len(suffix) > 1:
        value = number * Fraction(10) ** int(suffix[1:])
    else:
        value = number * _DECIMAL_SI.get(suffix, Fraction(1))
    if value <= 0:
        raise ConfigError(f"{what} must be above 0, got {text!r}")
    return value


def check_trial_resources(resources: Mapping[str, Any], shm_size: Any, where: str) -> None:
    """ConfigError unless a trial container's ``resources`` can be admitted and make sense: CPU and
    memory each with a request and a limit, requests at most their limits, and the ``/dev/shm``
    cap (``shm_size``, None if there is no such volume) at most the memory limit it counts against.
    ``where`` says which flags or template the values came from."""
    requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
    for kind in ("cpu", "memory"):
        if kind not in requests or kind not in limits:
            raise ConfigError(f"{where}: the trial container needs a {kind} request and limit")
        request = parse_quantity(requests[kind], f"{where}: requests.{kind}")
        limit = parse_quantity(limits[kind], f"{where}: limits.{kind}")
        if request > limit:
            raise ConfigError(f"{where}: the {kind} request {requests[kind]} is above the {kind} limit {limits[kind]}")
    if shm_size is not None and parse_quantity(shm_size, f"{where}: /dev/shm sizeLimit") > parse_quantity(
        limits["memory"], f"{where}: limits.memory"
    ):
        raise ConfigError(
            f"{where}: /dev/shm ({shm_size}) cannot be larger than the memory limit {limits['memory']}"
            " it counts against"
        )


@dataclass(frozen=True)
class LauncherSettings:
    """How a cluster launcher starts the trials of one experiment. Built by the CLI from the flags.

    ``trial_timeout`` bounds one attempt's run time, ``pending_timeout`` how long it may wait for a
    node (a GPU) before it is deleted and retried, ``image_pull_timeout`` how long its pod may stay
    unable to pull its image; ``ttl_after_finished`` is how long finished Jobs (and their pods'
    logs) stay for inspection. ``cpu_request`` ... ``shm_size`` are the ``--trial-*`` resource flags
    as given (None: not given; ``trial_resources`` fills in ``DEFAULT_TRIAL_RESOURCES``).
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
    image_pull_timeout: int = 300
    cpu_request: str | None = None
    cpu_limit: str | None = None
    memory_request: str | None = None
    memory_limit: str | None = None
    shm_size: str | None = None
    s3_secret: str | None = None
    """kubernetes: the Secret (Kubeflow's keys ``accesskey``, ``secretkey``) trial pods read S3 keys from,
    instead of ``nasagent-s3``; then ``s3_endpoint`` is required."""
    s3_endpoint: str | None = None
    """kubernetes: the S3 endpoint URL of the trial pods, instead of ``nasagent-s3``'s key ``endpoint``."""

    def __post_init__(self) -> None:
        if self.s3_endpoint is not None and not re.match(r"^https?://[^/\s]+", self.s3_endpoint):
            raise ConfigError(f"--s3-endpoint must be an http:// or https:// URL, got {self.s3_endpoint!r}")
        if self.s3_secret is not None and not self.s3_endpoint:
            raise ConfigError(
                "--s3-secret needs the store's endpoint: give --s3-endpoint (or set NASAGENT_S3_ENDPOINT)"
            )
        if not self.image:
            raise ConfigError("a cluster launcher needs --trial-image (an image with nasagent installed)")
        checks = (
            ("--parallelism", self.parallelism, 1),
            ("--gpus-per-trial", self.gpus_per_trial, 0),
            ("--trial-timeout", self.trial_timeout, 1),
            ("--pending-timeout", self.pending_timeout, 1),
            ("--image-pull-timeout", self.image_pull_timeout, 1),
            ("--max-retries", self.max_retries, 0),
        )
        for flag, value, least in checks:
            if value < least:
                raise ConfigError(f"{flag} must be at least {least}, got {value}")
        for name in self.given_resources():
            parse_quantity(getattr(self, name), RESOURCE_FLAGS[name])

    def given_resources(self) -> dict[str, str]:
        """The ``--trial-*`` resource flags given, by field name (``cpu_request``, ...)."""
        return {name: getattr(self, name) for name in DEFAULT_TRIAL_RESOURCES if getattr(self, name) is not None}

    def trial_resources(self) -> dict[str, str]:
        """Every trial resource setting: the flag where one was given, else the default."""
        return {**DEFAULT_TRIAL_RESOURCES, **self.given_resources()}


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


# Faults after which no new attempt is started: the agent stops the search on them.
FATAL_FAULTS = frozenset({Fault.IMAGE_PULL})
# An attempt that could not even be started (the API down or refusing for now) is tried again
# after 1, 2, 4, ... seconds, at most this long: a restarting API server must not burn every
# attempt, and the agent's requeues, within a second.
MAX_START_BACKOFF = 30.0


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
    image_pull_failing_since: float | None = None
    adopted: bool = False
    """Started by an earlier agent and taken over by this one (``ClusterRunner.resume``)."""


@dataclass(frozen=True)
class Leftover:
    """An attempt found on the cluster at start: a Job or run of the experiment, any agent's.
    ``created``: when it was created (an ISO timestamp; the newest is taken over)."""

    trial_id: int
    number: int
    name: str
    finished: bool
    succeeded: bool = False
    created: str = ""


class ClusterRunner(Runner):
    """The retry bookkeeping of a launcher that runs each attempt of a trial as a cluster object.

    Subclasses start and stop attempts (``_start``/``_stop``), list what they find of the
    experiment on the cluster (``_leftovers``) and, from their ``wait``, report each attempt's
    end through ``_succeeded`` or ``_failed``; finished outcomes collect in ``_done`` until
    ``wait`` hands them over (``_take_done``). Used from the agent's thread only.
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
        self._delayed: list[tuple[float, TrialSpec, int, list[str]]] = []  # (when, spec, attempt, failures)

    @abstractmethod
    def _start(self, spec: TrialSpec, number: int) -> str:
        """Start attempt ``number`` of ``spec``; return its Job name or run id. A failure that a
        retry may fix raises ``AttemptError`` (with its ``Fault``); one that no retry fixes raises
        ``ClusterError``."""

    @abstractmethod
    def _stop(self, attempt: Attempt) -> None:
        """Delete or terminate an attempt still running; never raises for one already gone."""

    @abstractmethod
    def _leftovers(self) -> list[Leftover]:
        """Every attempt of the experiment's trials on the cluster now, finished or not."""

    @property
    def in_flight(self) -> int:
        return len(self._active) + len(self._done) + len(self._delayed)

    def _start_due(self) -> float | None:
        """Start the attempts whose backoff is over; return when the next one is due (None: none
        waits). Subclasses call it from ``wait`` and wake up for it."""
        now = self.clock()
        due = [d for d in self._delayed if d[0] <= now]
        self._delayed = [d for d in self._delayed if d[0] > now]
        for _, spec, number, earlier in due:
            self._launch(spec, number, earlier)
        return min((d[0] for d in self._delayed), default=None)

    def submit(self, spec: TrialSpec) -> None:
        if self.in_flight >= self.capacity:
            raise RuntimeError("submit called at capacity")
        # A result left by an earlier attempt that the agent did not take (it trains this trial
        # again) must not be mistaken for this one's.
        self.store.clear_trial_result(spec.trial_id)
        self._launch(spec, 1, [])

    def resume(self, specs: list[TrialSpec]) -> list[TrialSpec]:
        """Take over the newest attempt of each trial in ``specs`` found on the cluster (running,
        or finished while no agent watched: its end is handled as if it had been watched); stop
        every other unfinished attempt of the experiment. Returns the trials with no attempt."""
        found: dict[int, list[Leftover]] = {}
        for leftover in self._leftovers():
            found.setdefault(leftover.trial_id, []).append(leftover)
        rest = []
        for spec in specs:
            # The one to wait for: one that succeeded (its result is in), else one still running,
            # else the newest (its end is handled as if it had been watched).
            attempts = sorted(
                found.pop(spec.trial_id, []), key=lambda a: (a.succeeded, not a.finished, a.created, a.number)
            )
            if not attempts:
                rest.append(spec)
                continue
            newest = attempts.pop()
            log.info("taking over trial %s: attempt %s (%s)", spec.trial_id, newest.number, newest.name)
            self._active[newest.name] = Attempt(spec, newest.number, newest.name, self.clock(), adopted=True)
            found[spec.trial_id] = attempts  # older attempts of it: stopped below if still running
        for leftover in (a for attempts in found.values() for a in attempts if not a.finished):
            log.info("stopping %s, an attempt of trial %s that no agent waits for", leftover.name, leftover.trial_id)
            self._stop(Attempt(TrialSpec(leftover.trial_id, "", 0), leftover.number, leftover.name, self.clock()))
        return rest

    def _launch(self, spec: TrialSpec, number: int, earlier: list[str]) -> None:
        try:
            name = self._start(spec, number)
        except AttemptError as exc:
            failed = Attempt(
                spec, number, f"{self.launcher}-trial-{spec.trial_id}", self.clock(), earlier_failures=earlier
            )
            backoff = min(MAX_START_BACKOFF, 2.0 ** (number - 1))
            self._retry_or_give_up(failed, f"could not start: {exc}", Fault(exc.fault), backoff)
            return
        self._active[name] = Attempt(spec, number, name, self.clock(), earlier_failures=earlier)

    def _succeeded(self, attempt: Attempt) -> None:
        """The attempt's Job or run succeeded: hand over the outcome the trial reported."""
        self._active.pop(attempt.name, None)
        reported = self.store.trial_result(attempt.spec.trial_id)
        if reported is None:
            reason = "the trial finished without reporting a result to trial_results"
            self._retry_or_give_up(attempt, reason, Fault.CRASHED)
            return
        outcome = outcome_from_json(reported[1])
        outcome.trial_id = attempt.spec.trial_id
        outcome.info = {**outcome.info, **self._attempt_info(attempt)}
        self._done.append(outcome)

    def _failed(self, attempt: Attempt, reason: str, *, fault: Fault, stop: bool = False, retry: bool = True) -> None:
        """The attempt did not run to its end, for ``reason`` (an infrastructure ``fault``): start
        the next one, or hand the trial back to the agent (``FATAL_FAULTS`` at once). ``stop``:
        the attempt's Job or run is still alive and must be deleted first."""
        self._active.pop(attempt.name, None)
        if stop:
            self._stop(attempt)
        if retry and fault not in FATAL_FAULTS:
            self._retry_or_give_up(attempt, reason, fault)
        else:
            self._give_up(attempt, reason, fault)

    def _retry_or_give_up(self, attempt: Attempt, reason: str, fault: Fault, backoff: float = 0.0) -> None:
        """Start the next attempt (after ``backoff`` seconds), or hand the trial back to the agent."""
        if attempt.number <= self.settings.max_retries:
            log.warning(
                "trial %s attempt %s (%s) failed (%s): %s; retrying",
                attempt.spec.trial_id,
                attempt.number,
                attempt.name,
                fault,
                reason,
            )
            failures = [*attempt.earlier_failures, f"attempt {attempt.number}: {reason}"]
            if backoff > 0:
                self._delayed.append((self.clock() + backoff, attempt.spec, attempt.number + 1, failures))
            else:
                self._launch(attempt.spec, attempt.number + 1, failures)
        else:
            self._give_up(attempt, reason, fault)

    def _give_up(self, attempt: Attempt, reason: str, fault: Fault) -> None:
        if attempt.number > 1:
            reason = f"{reason} (gave up after {attempt.number} attempts)"
        outcome = TrialOutcome.infrastructure_failure(attempt.spec.trial_id, fault, reason, worker=attempt.name)
        outcome.info = self._attempt_info(attempt)
        self._done.append(outcome)

    def _attempt_info(self, attempt: Attempt) -> dict[str, Any]:
        info: dict[str, Any] = {"launcher": self.launcher, "attempt": attempt.number, "attempt_name": attempt.name}
        if attempt.earlier_failures:
            info["attempt_failures"] = list(attempt.earlier_failures)
        if attempt.adopted:
            info["adopted"] = True
        return info

    def _take_done(self) -> list[TrialOutcome]:
        done, self._done = self._done, []
        return done

    def close(self) -> None:
        """Stop every attempt still running: a stopped search holds no GPU (a resume reruns them)."""
        for attempt in list(self._active.values()):
            self._stop(attempt)
        self._active.clear()
        self._delayed.clear()

    def _leave_running(self) -> int:
        """Forget the attempts in flight without stopping them, for the next agent to take over."""
        left = len(self._active)
        self._delayed.clear()  # not started: nothing to take over, the next agent starts them again
        for attempt in self._active.values():
            log.warning(
                "leaving %s (trial %s) running for the next agent to take over", attempt.name, attempt.spec.trial_id
            )
        self._active.clear()
        return left
