"""FAKES of the cluster APIs, for the launcher, fault and chaos tests.

No Kubernetes API server and no KFP server can run on these machines, so the launchers' watch,
poll, retry and takeover logic is tested against fakes of the small interfaces they talk through
(``KubernetesApi``, ``PipelineClient``), and the real client adapter (``ClientApi``, on the
official ``kubernetes`` client) against the same Kubernetes fake served over HTTP. Everything
else is real: the launchers, the agent, PostgreSQL, and in the end-to-end test the ``nasagent
trial`` processes that the fake kubelet starts.

- ``FakeClock``: simulated time, so "pending for 15 minutes" takes no time.
- ``FakeKubernetes``: an API server (Jobs, pods, resourceVersions, a bounded watch cache), the
  Job controller (pods, ``podFailurePolicy``, ``backoffLimit``, ``activeDeadlineSeconds``) and a
  kubelet playing a script per pod, in simulated or real time, with the faults a shared GPU
  cluster has: preemption, eviction, lost nodes, image pulls that fail, admission refusals,
  compaction (410 Gone), dropped watches, an API server restart. Its docstring says exactly
  what it models and what it does not.
- ``SubprocessKubernetes``: the same, whose kubelet runs each pod's container command as a real
  subprocess with the pod's environment (Secrets resolved), in real time.
- ``FakeApiServer``: a ``FakeKubernetes`` served over HTTP the way the API server serves it
  (JSON, chunked watch streams, Status errors), for the real adapter and for agents in other
  processes (``kubeconfig``).
- ``FakePipelines``: KFP experiments and runs whose states follow a script per attempt.
- ``pod_reporter``, ``running_trials``, ``trial_role_url``: the PostgreSQL side: trial rows a pod
  reads, results it writes, the database role it writes them as.
"""

from __future__ import annotations

import copy
import heapq
import itertools
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import psycopg2

from nasagent.config import SearchConfig
from nasagent.core.networks import parse_network
from nasagent.core.trial import TrialOutcome, TrialSpec, outcome_to_json, trial_seed
from nasagent.errors import KubeApiError, PipelineApiError, WatchExpired
from nasagent.persistence.postgres import Store


# A pod "reports" a trial like nasagent trial does: this accuracy, so tests can tell results apart.
def reported_accuracy(trial_id: int, attempt: int) -> float:
    return round(0.5 + trial_id / 100 + attempt / 1000, 6)


class FakeClock:
    """Simulated monotonic time; ``sleep`` advances it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


def _matches(labels: dict[str, str], selector: str) -> bool:
    wanted = dict(part.split("=", 1) for part in selector.split(",") if part)
    return all(labels.get(k) == v for k, v in wanted.items())


def _finished(job: dict[str, Any]) -> bool:
    return any(
        c["status"] == "True" and c["type"] in ("Complete", "Failed") for c in job["status"].get("conditions", [])
    )


def _container(image: str, state: dict[str, Any], ready: bool = False) -> dict[str, Any]:
    """A container status with the fields the API always sets (the official client requires them)."""
    return {"name": "trial", "image": image, "imageID": "", "ready": ready, "restartCount": 0, "state": state}


# What the kubelet, the scheduler and the node controllers write when they end a pod (Kubernetes 1.26+).
DISRUPTIONS = {
    "preempted": ("PreemptionByScheduler", "Preempted in order to admit critical pod"),
    "evicted": ("EvictionByEvictionAPI", "Eviction API: evicting"),
    "kubelet-evicted": ("TerminationByKubelet", "The node was low on resource: memory."),
    "node-lost": ("DeletionByTaintManager", "Taint manager: deleting due to NoExecute taint"),
}
CONFIG_ERROR_LOG = "nasagent: error: experiment 'exp': unknown --option 'gamma' for strategy qlearning\n"
CRASH_LOG = "Traceback (most recent call last):\n  ...\nnasagent: error: database postgresql://x: connection refused\n"


class FakeKubernetes:
    """A FAKE Kubernetes cluster behind ``nasagent.execution.kubernetes.KubernetesApi``.

    It models, as Kubernetes 1.30 behaves:

    - the API server: Jobs and pods as the JSON the API returns, one global resourceVersion, list
      (with the list's resourceVersion), and watches that stream the events after a
      resourceVersion, end after ``timeoutSeconds`` with a BOOKMARK of the latest one, and answer
      410 Gone (``WatchExpired``) by themselves for a resourceVersion older than the watch cache
      holds (the last ``watch_cache`` Job events; ``compact`` drops them all);
    - admission: ``admit(job)`` may refuse a Job with 403 (``quota`` builds a ResourceQuota on
      ``count/jobs.batch``, which counts finished Jobs too, as the real one does);
    - the Job controller: one pod at a time, ``Complete`` when it succeeds; when it fails, the
      Job's ``podFailurePolicy`` (FailJob on exit codes, Ignore on pod conditions such as
      ``DisruptionTarget``, else Count against ``backoffLimit``), a replacement pod when the Job
      goes on, ``FailureTarget`` then ``Failed`` (BackoffLimitExceeded, PodFailurePolicy) when it
      does not; ``activeDeadlineSeconds`` (DeadlineExceeded, its pods deleted); deleting a Job
      deletes its pods;
    - a kubelet that plays ``script(trial, attempt)`` for each pod (a string, or a list: one per
      successive pod of the Job, the last repeating), one step per ``step_seconds`` of the clock,
      whether or not anyone watches: "succeed" (``report(trial, attempt)`` writes the result as
      ``nasagent trial`` does), "succeed-after:SECONDS" (a longer training), "no-result", "oom",
      "exit" (exit code 2), "config" (exit code 3), "hang" (runs until its deadline), "pending"
      (never scheduled), "image-pull" (ImagePullBackOff for ever), "slow-pull" (ImagePullBackOff
      for 120 s, then it runs and succeeds), "bad-image-name" (InvalidImageName), "vanish"
      (someone deletes the Job), and the disruptions "preempt", "evict" (node pressure: the
      kubelet's ``Evicted``), "drain" (the eviction API: the pod is deleted) and "node-lost" (the
      pod is deleted with its node), each with its ``DisruptionTarget`` condition. ``preempt``,
      ``evict`` and ``lose_node`` inflict the same on any running pod at any moment;
    - an API server restart (``restart``): every open watch breaks, the watch cache starts empty
      (older resourceVersions get 410), every request fails while it is down; ``drop_watches``
      breaks the open watches alone (a load balancer resetting connections).

    It does not model: nodes, scheduling and resources (a pod is scheduled or not as its script
    says), more than one container or pod at a time per Job (``parallelism`` 1), Jobs' own
    ``restartPolicy: OnFailure`` retries, pod logs and events, field selectors, finalizers and
    graceful deletion (deletions take effect at once), ``ttlSecondsAfterFinished``, namespaces
    (all one), authentication and RBAC (``admit`` stands for any refusal), and any API the
    launcher does not call. Bookmarks come only at the end of a watch.

    In simulated time (``advance`` given, e.g. ``FakeClock.sleep``), a watch with nothing to send
    moves the clock to the kubelet's next step; in real time (``advance`` None), ``start`` runs
    the kubelet on a thread of its own. Every method holds one lock: HTTP handler threads, the
    kubelet thread and a test may call it at once. Records the Jobs created and deleted, every
    watch's resourceVersion, the lists, the most Jobs alive at once, the faults inflicted
    (``injected``) and how many pods of each trial ran to completion (``completions``).
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        advance: Callable[[float], None] | None = None,
        script: Callable[[int, int], str | list[str]] | None = None,
        report: Callable[[int, int], None] | None = None,
        step_seconds: float = 1.0,
        watch_cache: int = 100,
    ) -> None:
        self.clock = clock
        self.advance = advance
        self.script = script or (lambda trial, attempt: "succeed")
        self.report = report or (lambda trial, attempt: None)
        self.step_seconds = step_seconds
        self.watch_cache = watch_cache
        self.admit: Callable[[dict[str, Any]], str | None] | None = None
        self.lock = threading.RLock()
        self.jobs: dict[str, dict[str, Any]] = {}
        self.pods: dict[str, dict[str, Any]] = {}  # pod name -> pod
        self.agent_pods: dict[str, dict[str, Any]] = {}  # pods read_pod finds besides the trials'
        self.events: list[tuple[int, str, dict[str, Any]]] = []  # the watch cache of Job events
        self.rv = 100
        self.compacted = 0  # watches from an older resourceVersion get 410 Gone
        self.epoch = 0  # bumped when every open watch breaks
        self.down_until = float("-inf")
        self.faults: list[tuple[str, int]] = []  # ("drop", n): the next watch breaks after n events
        self._actions: list[tuple[float, int, str, str]] = []  # heap: (when, seq, pod or Job name, what)
        self._seq = itertools.count()
        self._pods_of: Counter[str] = Counter()  # Job name -> pods made
        self._ending: dict[str, str] = {}  # pod name -> how it ends once running
        self._ticker: threading.Thread | None = None
        self._at: float | None = None  # the moment of the step being carried out
        self._stopped = threading.Event()
        self.created: list[dict[str, Any]] = []
        self.deleted: list[str] = []
        self.watch_calls: list[str | None] = []
        self.list_calls = 0
        self.max_alive = 0
        self.injected: Counter[str] = Counter()
        self.completions: Counter[int] = Counter()

    # -- the KubernetesApi interface -----------------------------------------------------------
    def create_job(self, namespace: str, job: dict[str, Any]) -> None:
        with self.lock:
            self._check_up()
            name = job["metadata"]["name"]
            if name in self.jobs:
                raise KubeApiError(409, f'creating Job {name}: 409 jobs.batch "{name}" already exists')
            refusal = self.admit(job) if self.admit is not None else None
            if refusal is not None:
                self.injected["admission-refused"] += 1
                raise KubeApiError(403, f'creating Job {name}: 403 jobs.batch "{name}" is forbidden: {refusal}')
            job = copy.deepcopy(job)
            job["metadata"].update(namespace=namespace, uid=f"uid-{name}", creationTimestamp=self._timestamp())
            job["status"] = {"startTime": self._timestamp()}
            self.jobs[name] = job
            self.created.append(copy.deepcopy(job))
            self._emit("ADDED", name)
            deadline = job["spec"].get("activeDeadlineSeconds")
            if deadline:
                self._schedule(float(deadline), name, "deadline")
            self._new_pod(name)
            self.max_alive = max(self.max_alive, self.alive())

    def delete_job(self, namespace: str, name: str) -> None:
        with self.lock:
            self._check_up()
            if name not in self.jobs:
                return
            self.deleted.append(name)
            self._remove_job(name)

    def list_jobs(self, namespace: str, label_selector: str) -> tuple[list[dict[str, Any]], str]:
        with self.lock:
            self._check_up()
            self.sync()
            self.list_calls += 1
            jobs = [copy.deepcopy(j) for j in self.jobs.values() if _matches(j["metadata"]["labels"], label_selector)]
            return jobs, str(self.rv)

    def watch_jobs(
        self, namespace: str, label_selector: str, resource_version: str | None, timeout_seconds: int
    ) -> Iterator[dict[str, Any]]:
        with self.lock:
            self._check_up()
            self.watch_calls.append(resource_version)
            fault, after = self.faults.pop(0) if self.faults else ("", 0)
            cursor = int(resource_version) if resource_version else self.rv
            epoch, deadline = self.epoch, self.clock() + timeout_seconds
        sent = 0
        while True:
            with self.lock:
                self.sync()
                if self.epoch != epoch:
                    raise KubeApiError(None, "watching Jobs: ('Connection broken: connection reset by peer')")
                if cursor < self.compacted:
                    self.injected["gone-410"] += 1
                    raise WatchExpired(f"watching Jobs: too old resource version: {cursor} ({self.compacted})")
                batch = [(rv, kind, copy.deepcopy(job)) for rv, kind, job in self.events if rv > cursor]
                latest = self.rv
            for rv, kind, job in batch:
                cursor = rv
                if _matches(job["metadata"]["labels"], label_selector):
                    yield {"type": kind, "object": job}
                    sent += 1
                    if fault == "drop" and sent >= after:
                        raise KubeApiError(None, "watching Jobs: ('Connection broken: connection reset by peer')")
            cursor = max(cursor, latest)
            if self.clock() >= deadline:
                bookmark = {"kind": "Job", "apiVersion": "batch/v1", "metadata": {"resourceVersion": str(cursor)}}
                yield {"type": "BOOKMARK", "object": bookmark}
                return
            self._idle(deadline)

    def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        with self.lock:
            self._check_up()
            self.sync()
            return [copy.deepcopy(p) for p in self.pods.values() if _matches(p["metadata"]["labels"], label_selector)]

    def read_pod(self, namespace: str, name: str) -> dict[str, Any]:
        """A trial pod, a pod of ``agent_pods``, or else a running pod of that name with no owner
        (the agent's own pod, which exists while it runs)."""
        with self.lock:
            self._check_up()
            pod = self.pods.get(name) or self.agent_pods.get(name)
            if pod is None:
                pod = {"metadata": {"name": name, "namespace": namespace, "uid": f"uid-of-{name}"}}
                pod["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
            return copy.deepcopy(pod)

    # -- what a test or a chaos monkey does to the cluster -------------------------------------------
    def running_pods(self) -> list[str]:
        """The pods whose trial is running now (what a disruption can hit)."""
        with self.lock:
            return [name for name, pod in self.pods.items() if pod["status"].get("phase") == "Running"]

    def preempt(self, pod: str) -> None:
        """The scheduler preempts the pod for a more important one: ``DisruptionTarget``, SIGTERM."""
        with self.lock:
            self._disrupt(pod, "preempted", exit_code=143, delete=False)

    def evict(self, pod: str) -> None:
        """The eviction API (a drain) evicts the pod: ``DisruptionTarget``, then the pod is deleted."""
        with self.lock:
            self._disrupt(pod, "evicted", exit_code=143, delete=True)

    def lose_node(self, pod: str) -> None:
        """The pod's node goes away: the taint manager marks the pod and deletes it."""
        with self.lock:
            self._disrupt(pod, "node-lost", exit_code=137, delete=True)

    def compact(self) -> None:
        """Drop the watch cache: every watch from before now gets 410 Gone."""
        with self.lock:
            self.injected["compaction"] += 1
            self.compacted, self.events = self.rv, []

    def drop_watches(self) -> None:
        """Every open watch breaks (connection reset); new ones work at once."""
        with self.lock:
            self.injected["watches-dropped"] += 1
            self.epoch += 1

    def restart(self, downtime: float = 0.0) -> None:
        """The API server restarts: every open watch breaks, the watch cache starts empty, and every
        request fails for ``downtime`` seconds."""
        with self.lock:
            self.injected["api-server-restart"] += 1
            self.epoch += 1
            self.compacted, self.events = self.rv, []
            self.down_until = self.clock() + downtime

    def alive(self) -> int:
        """Jobs not finished."""
        with self.lock:
            return sum(1 for j in self.jobs.values() if not _finished(j))

    def start(self) -> FakeKubernetes:
        """Real time: run the kubelet and the Job controller on their own thread until ``stop``."""

        def tick() -> None:
            while not self._stopped.wait(0.01):
                with self.lock:
                    self.sync()

        self._ticker = threading.Thread(target=tick, name="fake-kubelet", daemon=True)
        self._ticker.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._ticker is not None:
            self._ticker.join(timeout=5)

    def sync(self) -> None:
        """Carry out every kubelet step and deadline due by now, each at the moment it was due (so
        steps taken while nobody looked happen exactly as if someone had)."""
        with self.lock:
            while self._actions and self._actions[0][0] <= self.clock():
                when, _, name, what = heapq.heappop(self._actions)
                self._at = when
                try:
                    self._act(name, what)
                finally:
                    self._at = None

    # -- the kubelet ---------------------------------------------------------------------------------
    def _plan(self, job_name: str) -> str:
        job = self.jobs[job_name]
        labels = job["metadata"]["labels"]
        script = self.script(int(labels["nasagent.io/trial"]), int(labels["nasagent.io/attempt"]))
        steps = [script] if isinstance(script, str) else list(script)
        return steps[min(self._pods_of[job_name] - 1, len(steps) - 1)]

    def _new_pod(self, job_name: str) -> None:
        """The Job controller creates the Job's next pod; the kubelet starts playing its script."""
        job = self.jobs[job_name]
        self._pods_of[job_name] += 1
        name = f"{job_name}-{self._pods_of[job_name]:05x}"
        labels = {
            **job["spec"]["template"]["metadata"]["labels"],
            "job-name": job_name,
            "batch.kubernetes.io/job-name": job_name,
        }
        self.pods[name] = {
            "metadata": {
                "name": name,
                "namespace": job["metadata"]["namespace"],
                "uid": f"uid-{name}",
                "labels": labels,
                "creationTimestamp": self._timestamp(),
                "ownerReferences": [
                    {"apiVersion": "batch/v1", "kind": "Job", "name": job_name, "uid": job["metadata"]["uid"]}
                ],
            },
            "spec": copy.deepcopy(job["spec"]["template"]["spec"]),
            "status": {"phase": "Pending"},
        }
        job["status"].update(active=1, ready=0)
        self._emit("MODIFIED", job_name)
        self._start_pod(name, self._plan(job_name))

    def _image(self, pod: str) -> str:
        return str(self.pods[pod]["spec"]["containers"][0]["image"])

    def _start_pod(self, name: str, what: str) -> None:
        pod = self.pods[name]
        if what == "pending":
            pod["status"]["conditions"] = [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                }
            ]
            return
        if what in ("image-pull", "slow-pull", "bad-image-name"):
            image = self._image(name)
            reason, message = "ImagePullBackOff", f'Back-off pulling image "{image}"'
            if what == "bad-image-name":
                reason, message = "InvalidImageName", f'Failed to apply default image tag "{image}": invalid reference'
            pod["status"]["containerStatuses"] = [
                _container(image, {"waiting": {"reason": reason, "message": message}})
            ]
            if what == "slow-pull":
                self._ending[name] = "succeed"
                self._schedule(120.0, name, "run")
            return
        if what == "vanish":
            self._schedule(self.step_seconds, name, "vanish")
            return
        self._ending[name] = what
        self._schedule(self.step_seconds, name, "run")

    def _act(self, name: str, what: str) -> None:
        if what == "deadline":
            job = self.jobs.get(name)
            if job is not None and not _finished(job):
                for pod in [p for p, v in self.pods.items() if v["metadata"]["labels"]["job-name"] == name]:
                    self._forget_pod(pod)
                self._fail_job(name, "DeadlineExceeded", "Job was active longer than specified deadline")
            return
        pod = self.pods.get(name)
        if pod is None or pod["status"].get("phase") in ("Succeeded", "Failed"):
            return  # deleted or ended meanwhile
        job_name = pod["metadata"]["labels"]["job-name"]
        if what == "vanish":
            self.injected["job-deleted"] += 1
            self._remove_job(job_name)
        elif what == "run":
            image = self._image(name)
            pod["status"] = {"phase": "Running", "containerStatuses": [_container(image, {"running": {}}, ready=True)]}
            pod["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
            self.jobs[job_name]["status"].update(active=1, ready=1)
            self._emit("MODIFIED", job_name)
            ending = self._ending.get(name, "hang")
            if ending.startswith("succeed-after:"):
                self._ending[name] = "succeed"
                self._schedule(float(ending.partition(":")[2]), name, "end")
            elif ending != "hang":
                self._schedule(self.step_seconds, name, "end")
        elif what == "end":
            self._end(name, self._ending.pop(name))

    def _end(self, name: str, what: str) -> None:
        """The running pod ends as its script says."""
        pod = self.pods[name]
        labels = pod["metadata"]["labels"]
        trial, attempt = int(labels["nasagent.io/trial"]), int(labels["nasagent.io/attempt"])
        image = self._image(name)
        if what in ("preempt", "evict", "drain", "node-lost"):
            {"preempt": self.preempt, "evict": self._kubelet_evict, "drain": self.evict, "node-lost": self.lose_node}[
                what
            ](name)
            return
        if what in ("succeed", "no-result"):
            if what == "succeed":
                self.report(trial, attempt)
                self.completions[trial] += 1
            terminated = {"exitCode": 0, "reason": "Completed"}
            pod["status"] = {"phase": "Succeeded", "containerStatuses": [_container(image, {"terminated": terminated})]}
        elif what == "oom":
            terminated = {"exitCode": 137, "reason": "OOMKilled"}
            pod["status"] = {"phase": "Failed", "containerStatuses": [_container(image, {"terminated": terminated})]}
        elif what in ("exit", "config"):
            code, message = (2, CRASH_LOG) if what == "exit" else (3, CONFIG_ERROR_LOG)
            terminated = {"exitCode": code, "reason": "Error", "message": message}
            pod["status"] = {"phase": "Failed", "containerStatuses": [_container(image, {"terminated": terminated})]}
        else:
            raise AssertionError(f"unknown script step {what!r}")
        self._pod_ended(name)

    def _kubelet_evict(self, name: str) -> None:
        """Node-pressure eviction: the kubelet ends the pod, which stays, phase Failed, reason Evicted."""
        extra = {"reason": "Evicted", "message": "The node was low on resource: memory."}
        self._disrupt(name, "kubelet-evicted", exit_code=137, delete=False, extra=extra)

    def _disrupt(self, name: str, kind: str, exit_code: int, delete: bool, extra: dict[str, str] | None = None) -> None:
        pod = self.pods.get(name)
        if pod is None or pod["status"].get("phase") != "Running":
            return
        self.injected[kind] += 1
        reason, message = DISRUPTIONS[kind]
        terminated = {"exitCode": exit_code, "reason": "Error"}
        pod["status"] = {
            "phase": "Failed",
            **(extra or {}),
            "conditions": [{"type": "DisruptionTarget", "status": "True", "reason": reason, "message": message}],
            "containerStatuses": [_container(self._image(name), {"terminated": terminated})],
        }
        self._ending.pop(name, None)
        job_name = pod["metadata"]["labels"]["job-name"]
        if delete:
            self._forget_pod(name)
        self._pod_ended(name, pod, job_name)

    # -- the Job controller --------------------------------------------------------------------------
    def _pod_ended(self, name: str, pod: dict[str, Any] | None = None, job_name: str | None = None) -> None:
        """A pod of a Job ended (``pod``: its last state, when it is already deleted)."""
        pod = pod or self.pods[name]
        job_name = job_name or pod["metadata"]["labels"]["job-name"]
        job = self.jobs.get(job_name)
        if job is None or _finished(job):
            return
        status = job["status"]
        status.update(active=0, ready=0)
        if pod["status"]["phase"] == "Succeeded":
            status["succeeded"] = 1
            status["conditions"] = [{"type": "Complete", "status": "True"}]
            self._emit("MODIFIED", job_name)
            return
        action, index = self._policy(job, pod)
        if action == "FailJob":
            code = pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"]
            message = f"Container trial for pod nas/{name} failed with exit code {code} matching FailJob rule"
            message += f" at index {index}"
            self._fail_job(job_name, "PodFailurePolicy", message)
            return
        if action == "Count":
            status["failed"] = status.get("failed", 0) + 1
            if status["failed"] > job["spec"].get("backoffLimit", 6):
                self._fail_job(job_name, "BackoffLimitExceeded", "Job has reached the specified backoff limit")
                return
        self._emit("MODIFIED", job_name)
        self._new_pod(job_name)

    @staticmethod
    def _policy(job: dict[str, Any], pod: dict[str, Any]) -> tuple[str, int | None]:
        """The action of the first ``podFailurePolicy`` rule the failed pod matches, else Count."""
        terminated = [
            (c["name"], c["state"]["terminated"]["exitCode"])
            for c in pod["status"].get("containerStatuses", [])
            if "terminated" in c["state"]
        ]
        conditions = {(c["type"], c["status"]) for c in pod["status"].get("conditions", [])}
        for index, rule in enumerate((job["spec"].get("podFailurePolicy") or {}).get("rules", [])):
            codes = rule.get("onExitCodes")
            if codes is not None:
                found = [code for name, code in terminated if codes.get("containerName") in (None, name)]
                if codes["operator"] == "In" and any(code in codes["values"] for code in found):
                    return rule["action"], index
                if codes["operator"] == "NotIn" and any(code and code not in codes["values"] for code in found):
                    return rule["action"], index
            for pattern in rule.get("onPodConditions") or []:
                if (pattern["type"], pattern.get("status", "True")) in conditions:
                    return rule["action"], index
        return "Count", None

    def _fail_job(self, name: str, reason: str, message: str) -> None:
        """Kubernetes 1.31+: FailureTarget first, Failed once the pods are gone."""
        status = self.jobs[name]["status"]
        status.update(active=0, ready=0)
        target = {"type": "FailureTarget", "status": "True", "reason": reason, "message": message}
        status["conditions"] = [target]
        self._emit("MODIFIED", name)
        status["conditions"] = [target, {**target, "type": "Failed"}]
        self._emit("MODIFIED", name)

    # -- plumbing ------------------------------------------------------------------------------------
    def _now(self) -> float:
        return self.clock() if self._at is None else self._at

    def _schedule(self, after: float, name: str, what: str) -> None:
        heapq.heappush(self._actions, (self._now() + after, next(self._seq), name, what))

    def _idle(self, deadline: float) -> None:
        """Nothing to send: let time pass until the next kubelet step or the watch's end."""
        now = self.clock()
        if self.advance is None:
            time.sleep(max(0.0, min(0.01, deadline - now)))
            return
        with self.lock:
            due = self._actions[0][0] if self._actions else deadline
        self.advance(max(0.0, min(due, deadline) - now))

    def _check_up(self) -> None:
        if self.clock() < self.down_until:
            raise KubeApiError(None, "('Connection aborted.', ConnectionRefusedError(111, 'Connection refused'))")

    def _timestamp(self) -> str:
        moment = datetime(2030, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=self._now())
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def _emit(self, kind: str, name: str) -> None:
        self.rv += 1
        self.jobs[name]["metadata"]["resourceVersion"] = str(self.rv)
        self.events.append((self.rv, kind, copy.deepcopy(self.jobs[name])))
        while len(self.events) > self.watch_cache:
            self.compacted = self.events.pop(0)[0]

    def _forget_pod(self, name: str) -> None:
        self.pods.pop(name, None)
        self._ending.pop(name, None)

    def _remove_job(self, name: str) -> None:
        """Delete a Job and, as background propagation does, its pods."""
        for pod in [p for p, v in self.pods.items() if v["metadata"]["labels"]["job-name"] == name]:
            self._forget_pod(pod)
        self._emit("DELETED", name)
        del self.jobs[name]


def quota(cluster: FakeKubernetes, max_jobs: int) -> Callable[[dict[str, Any]], str | None]:
    """An ``admit`` for ``cluster``: a ResourceQuota of ``count/jobs.batch=max_jobs`` (finished Jobs
    count until they are deleted), refusing as the quota admission plugin does."""

    def check(job: dict[str, Any]) -> str | None:
        used = len(cluster.jobs)
        if used < max_jobs:
            return None
        return (
            f"exceeded quota: nasagent-quota, requested: count/jobs.batch=1, "
            f"used: count/jobs.batch={used}, limited: count/jobs.batch={max_jobs}"
        )

    return check


class SubprocessKubernetes(FakeKubernetes):
    """The FAKE cluster whose kubelet really runs each pod's container command as a subprocess,
    with the container's environment (``secrets`` resolve ``secretKeyRef``s, as the kubelet does),
    in real time. Exit code 0 succeeds, anything else fails the pod with the last log lines as
    termination message (``FallbackToLogsOnError``); the Job controller is ``FakeKubernetes``'.
    ``OMP_NUM_THREADS=1`` stands for a CPU limit. The pod's emptyDir volumes are directories under
    ``workdir``, and environment values that point into their mount paths (HOME, NASAGENT_HOME)
    are rewritten to them; nothing else of the pod's security context or filesystem is modelled."""

    def __init__(self, secrets: dict[str, dict[str, str]], workdir: Path) -> None:
        super().__init__(time.monotonic, None)
        self.secrets = secrets
        self.workdir = workdir
        self.processes: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}

    def _start_pod(self, name: str, what: str) -> None:
        pod = self.pods[name]
        container = pod["spec"]["containers"][0]
        env = {
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "HOME": str(self.workdir),
            "HOSTNAME": name,
            "OMP_NUM_THREADS": "1",
        }
        empty_dirs = {v["name"] for v in pod["spec"].get("volumes", []) if "emptyDir" in v}
        mounts = {
            m["mountPath"]: self.workdir / name / m["name"]
            for m in container.get("volumeMounts", [])
            if m["name"] in empty_dirs
        }
        for local in mounts.values():
            local.mkdir(parents=True, exist_ok=True)
        for var in container["env"]:
            if "value" in var:
                value = var["value"]
                for path, local in mounts.items():
                    if value == path or value.startswith(path + "/"):
                        value = str(local) + value[len(path) :]
                env[var["name"]] = value
                continue
            ref = var["valueFrom"]["secretKeyRef"]
            value = self.secrets.get(ref["name"], {}).get(ref["key"])
            if value is None and not ref.get("optional"):
                raise AssertionError(f"pod {name} needs Secret {ref['name']} key {ref['key']}")
            if value is not None:
                env[var["name"]] = value
        pod["status"] = {
            "phase": "Running",
            "containerStatuses": [_container(container["image"], {"running": {}}, True)],
        }
        job_name = pod["metadata"]["labels"]["job-name"]
        self.jobs[job_name]["status"].update(active=1, ready=1)
        self._emit("MODIFIED", job_name)
        self.logs[name] = self.workdir / f"{name}.log"
        with open(self.logs[name], "wb") as log:
            self.processes[name] = subprocess.Popen(
                container["command"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
            )

    def sync(self) -> None:
        with self.lock:
            super().sync()
            for name, process in list(self.processes.items()):
                code = process.poll()
                if code is None:
                    continue
                del self.processes[name]
                if name not in self.pods:
                    continue
                tail = self.logs[name].read_text(errors="replace")[-2048:]
                terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error", "message": tail}
                image = self._image(name)
                self.pods[name]["status"] = {
                    "phase": "Succeeded" if code == 0 else "Failed",
                    "containerStatuses": [_container(image, {"terminated": terminated})],
                }
                self._pod_ended(name)

    def _forget_pod(self, name: str) -> None:
        process = self.processes.pop(name, None)
        if process is not None:
            process.kill()
            process.wait()
        super()._forget_pod(name)

    def kill_all(self) -> None:
        with self.lock:
            for name in list(self.jobs):
                self._remove_job(name)


class FakePipelines:
    """A FAKE of ``nasagent.execution.kfp.PipelineClient`` (no KFP server can run here).

    ``script(trial_id, attempt)`` lists the states that successive ``run_state`` calls of that
    run return (the last one repeats); "ERR" raises a transient API error instead. When a run
    first reports SUCCEEDED, ``report(trial_id, attempt)`` writes its result as the component would.
    Runs live on while no client asks about them, so a new client (an agent that took over) finds
    them with ``list_runs``. Does not model: pipelines, run details beyond state and error,
    pagination, namespaces, time (a run moves one state per ``run_state`` call).
    """

    def __init__(self, script: Callable[[int, int], list[str]], report: Callable[[int, int], None]) -> None:
        self.script = script
        self.report = report
        self.experiments: dict[str, str] = {}
        self.runs: dict[str, dict[str, Any]] = {}
        self.terminated: list[str] = []

    def ensure_experiment(self, name: str) -> str:
        return self.experiments.setdefault(name, f"exp-{len(self.experiments) + 1}")

    def start_run(self, experiment_id: str, run_name: str, package_path: str, arguments: dict[str, Any]) -> str:
        assert Path(package_path).is_file(), "the trial pipeline must be compiled before runs start"
        run_id = f"run-{len(self.runs) + 1}"
        states = list(self.script(arguments["trial_id"], arguments["attempt"]))
        self.runs[run_id] = {
            "experiment_id": experiment_id,
            "name": run_name,
            "arguments": arguments,
            "states": states,
            "reported": False,
        }
        return run_id

    def run_state(self, run_id: str) -> tuple[str, str | None]:
        run = self.runs[run_id]
        state = run["states"].pop(0) if len(run["states"]) > 1 else run["states"][0]
        if state == "ERR":
            raise PipelineApiError(503, "reading run: 503 Service Unavailable")
        if state == "SUCCEEDED" and not run["reported"]:
            run["reported"] = True
            self.report(run["arguments"]["trial_id"], run["arguments"]["attempt"])
        return state, ("task 'trial' failed: exit status 1" if state == "FAILED" else None)

    def terminate_run(self, run_id: str) -> None:
        self.terminated.append(run_id)
        self.runs[run_id]["states"] = ["CANCELED"]

    def list_runs(self, experiment_id: str) -> list[tuple[str, str, str, str]]:
        """Every run of the experiment with the state it is in now (without consuming the script)."""
        return [
            (run_id, run["name"], run["states"][0], f"2030-01-01T00:00:{index:02d}+00:00")
            for index, (run_id, run) in enumerate(self.runs.items())
            if run["experiment_id"] == experiment_id
        ]


def trial_role_url(owner_url: str) -> str:
    """``owner_url``'s database as the trial pods' role ``nasagent_trial``, which schema migration
    003 created and granted (connect as the owner first). The role gets LOGIN here, as the
    manifests' ``postgres-init.sh`` gives it; the embedded server trusts local connections, so
    the URL carries no password."""
    conn = psycopg2.connect(owner_url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("ALTER ROLE nasagent_trial LOGIN")
    finally:
        conn.close()
    parts = urlsplit(owner_url)
    return urlunsplit(parts._replace(netloc="nasagent_trial@" + parts.netloc.rpartition("@")[2]))


def pod_reporter(db_url: str) -> tuple[Callable[[int, int], None], Store]:
    """A function that writes a trial's result to ``trial_results`` over its own connection, as a
    trial pod does, and that connection (close it after the test)."""
    store = Store.connect(db_url)

    def report(trial_id: int, attempt: int) -> None:
        outcome = TrialOutcome(
            trial_id,
            "done",
            reported_accuracy(trial_id, attempt),
            params=1234,
            train_seconds=2.5,
            worker=f"pod-{trial_id}-{attempt}",
            info={"epochs_run": 1},
        )
        with store.transaction() as tx:
            tx.save_trial_result(trial_id, attempt, outcome_to_json(outcome))

    return report, store


class FakeApiServer:
    """A ``FakeKubernetes`` served over HTTP on 127.0.0.1 as the Kubernetes API server serves it, so
    that the real adapter ``ClientApi`` runs through the official client, in this process or in an
    agent's own (``kubeconfig``).

    Models the wire: ``/apis/batch/v1/namespaces/NS/jobs`` (list, watch, create) and
    ``.../jobs/NAME`` (delete), ``/api/v1/namespaces/NS/pods`` (list) and ``.../pods/NAME`` (get),
    label selectors, JSON bodies, a watch as a chunked stream of JSON lines that ends after
    ``timeoutSeconds`` (a broken watch is a connection closed mid-stream; 410 Gone is an ``ERROR``
    event holding a ``Status``, as the API server sends it), refusals as ``Status`` objects with
    their code, and a server that is down refusing connections' worth of requests with 503.
    Records every request as (method, path). Does not model: authentication (any token is
    accepted), other resources and verbs (404), field selectors, ``resourceVersionMatch``,
    protobuf, HTTP/2, server-side apply, dry-run. Without a ``cluster`` it serves a fresh one in
    real time whose pods succeed.
    """

    def __init__(self, cluster: FakeKubernetes | None = None) -> None:
        import http.server

        self.cluster = cluster or FakeKubernetes(time.monotonic, None)
        if self.cluster.advance is None and self.cluster._ticker is None:
            self.cluster.start()
        self.requests: list[tuple[str, str]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _status(self, code: int, reason: str, message: str) -> None:
                self._send(
                    code,
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "status": "Failure",
                        "message": message,
                        "reason": reason,
                        "code": code,
                    },
                )

            def _refused(self, exc: KubeApiError) -> None:
                # KubeApiError's text is the adapter's ("creating Job x: 403 message"): the server sends the message.
                message = str(exc).split(f"{exc.status} ", 1)[-1] if exc.status else str(exc)
                reasons = {403: "Forbidden", 404: "NotFound", 409: "AlreadyExists"}
                if exc.status is None:
                    self._status(503, "ServiceUnavailable", "the API server is not available")
                else:
                    self._status(exc.status, reasons.get(exc.status, "Invalid"), message)

            def _route(self) -> tuple[str, str, str | None, dict[str, str]]:
                """(resource, namespace, name or None, query) of the request."""
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                parts = url.path.strip("/").split("/")
                # api/v1/namespaces/NS/pods[/NAME] or apis/batch/v1/namespaces/NS/jobs[/NAME]
                rest = parts[2:] if parts[0] == "api" else parts[3:]
                if len(rest) < 3 or rest[0] != "namespaces":
                    return "", "", None, query
                return rest[2], rest[1], (rest[3] if len(rest) > 3 else None), query

            def do_GET(self) -> None:
                server.requests.append(("GET", self.path))
                resource, namespace, name, query = self._route()
                cluster = server.cluster
                selector = query.get("labelSelector", "")
                try:
                    if resource == "jobs" and name is None and query.get("watch", "").lower() in ("true", "1"):
                        self._watch(namespace, selector, query)
                    elif resource == "jobs" and name is None:
                        jobs, rv = cluster.list_jobs(namespace, selector)
                        meta = {"resourceVersion": rv}
                        self._send(200, {"kind": "JobList", "apiVersion": "batch/v1", "metadata": meta, "items": jobs})
                    elif resource == "pods" and name is None:
                        pods = cluster.list_pods(namespace, selector)
                        with cluster.lock:
                            meta = {"resourceVersion": str(cluster.rv)}
                        self._send(200, {"kind": "PodList", "apiVersion": "v1", "metadata": meta, "items": pods})
                    elif resource == "pods":
                        self._send(200, {"kind": "Pod", "apiVersion": "v1", **cluster.read_pod(namespace, name)})
                    else:
                        self._status(404, "NotFound", f"the server could not find the requested resource {self.path}")
                except KubeApiError as exc:
                    self._refused(exc)

            def _watch(self, namespace: str, selector: str, query: dict[str, str]) -> None:
                events = server.cluster.watch_jobs(
                    namespace, selector, query.get("resourceVersion"), int(query.get("timeoutSeconds", "1800"))
                )
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    for event in events:
                        self._chunk({**event, "object": {"kind": "Job", "apiVersion": "batch/v1", **event["object"]}})
                except WatchExpired as exc:
                    message = str(exc).split(": ", 1)[-1]
                    self._chunk(
                        {
                            "type": "ERROR",
                            "object": {
                                "kind": "Status",
                                "apiVersion": "v1",
                                "status": "Failure",
                                "message": message,
                                "reason": "Expired",
                                "code": 410,
                            },
                        }
                    )
                except KubeApiError:
                    # The connection breaks mid-stream: no last chunk, the socket just closes.
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True
                    return
                self.wfile.write(b"0\r\n\r\n")

            def _chunk(self, line: dict[str, Any]) -> None:
                data = json.dumps(line).encode() + b"\n"
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def do_POST(self) -> None:
                server.requests.append(("POST", self.path))
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                resource, namespace, _, _ = self._route()
                if resource != "jobs":
                    self._status(404, "NotFound", "the server could not find the requested resource")
                    return
                try:
                    server.cluster.create_job(namespace, body)
                    with server.cluster.lock:
                        created = copy.deepcopy(server.cluster.jobs.get(body["metadata"]["name"], body))
                    self._send(201, created)
                except KubeApiError as exc:
                    self._refused(exc)

            def do_DELETE(self) -> None:
                server.requests.append(("DELETE", self.path))
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)  # the DeleteOptions: background propagation is what the fake does
                resource, namespace, name, _ = self._route()
                try:
                    with server.cluster.lock:
                        exists = name in server.cluster.jobs
                    if resource != "jobs" or name is None or not exists:
                        self._status(404, "NotFound", f'jobs.batch "{name}" not found')
                        return
                    server.cluster.delete_job(namespace, name)
                    self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})
                except KubeApiError as exc:
                    self._refused(exc)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def kubeconfig(self, path: Path, namespace: str = "nas") -> Path:
        """A kubeconfig file whose current context is this server and ``namespace`` (for ``KUBECONFIG``)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}],
            "current-context": "fake",
        }
        path.write_text(json.dumps(config))  # JSON is YAML
        return path

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.cluster.stop()


def running_trials(store: Store, archs: list[str], epochs: int = 1) -> list[TrialSpec]:
    """A new experiment on ``digits`` with one trial per architecture, recorded as running, as the
    agent leaves them when it submits them: what a trial pod (``nasagent trial``) reads."""
    config = SearchConfig(dataset="digits", epochs=epochs, trials=len(archs))
    experiment = store.create_experiment(f"exp-{uuid.uuid4().hex[:8]}", config.to_dict())
    specs = []
    with store.transaction() as tx:
        for text in archs:
            arch = parse_network(text)
            trial_id = tx.insert_trial(experiment.id, str(arch), arch.digest, 1.0)
            specs.append(TrialSpec(trial_id, str(arch), trial_seed(config.seed, arch.digest)))
    return specs
