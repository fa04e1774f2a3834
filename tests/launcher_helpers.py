"""FAKES of the cluster client interfaces, for the launcher tests.

No Kubernetes API server and no KFP server can run on these machines, so the launchers' watch,
poll and retry logic is tested against fakes of the small interfaces they talk through
(``KubernetesApi``, ``PipelineClient``). Everything else is real: the launchers, PostgreSQL, and
in the end-to-end test the ``nasagent trial`` processes that the fake kubelet starts.

- ``FakeClock``: simulated time, so "pending for 15 minutes" takes no time.
- ``FakeKubernetes``: Jobs, pods, resourceVersions and a watch stream, with a scripted kubelet:
  each Job plays a script ("succeed", "oom", "evict", "pending", ...) one step per watch round.
  Faults can be queued: a watch dropped mid-stream, or ``410 Gone``.
- ``SubprocessKubernetes``: the same API whose kubelet runs each Job's container command as a
  real subprocess with the Job's environment (Secrets resolved), in real time.
- ``FakePipelines``: KFP experiments and runs whose states follow a script per attempt.
- ``pod_reporter``, ``running_trials``: the PostgreSQL side: trial rows a pod reads, results it writes.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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


class FakeKubernetes:
    """A FAKE of ``nasagent.execution.kubernetes.KubernetesApi`` (see the module docstring).

    ``script(trial_id, attempt)`` names what the Job of that attempt does; ``report(trial_id,
    attempt)`` is called when a "succeed" pod finishes, to write the trial's result as the real
    ``nasagent trial`` would. Records every call, the Jobs created and deleted, and the most Jobs
    alive (not finished) at any moment.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        advance: Callable[[float], None],
        script: Callable[[int, int], str] | None = None,
        report: Callable[[int, int], None] | None = None,
    ) -> None:
        self.clock = clock
        self.advance = advance
        self.script = script or (lambda trial, attempt: "succeed")
        self.report = report or (lambda trial, attempt: None)
        self.jobs: dict[str, dict[str, Any]] = {}
        self.pods: dict[str, dict[str, Any]] = {}  # job name -> its pod
        self.steps: dict[str, list[str]] = {}  # job name -> remaining kubelet steps
        self.events: list[tuple[int, str, dict[str, Any]]] = []
        self.rv = 100
        self.compacted = 0  # the resourceVersion before which history is gone (after a "gone" fault)
        self.faults: list[tuple[str, int]] = []
        self.created: list[dict[str, Any]] = []
        self.deleted: list[str] = []
        self.watch_calls: list[str | None] = []
        self.list_calls = 0
        self.max_alive = 0

    # -- the KubernetesApi interface -----------------------------------------------------------
    def create_job(self, namespace: str, job: dict[str, Any]) -> None:
        name = job["metadata"]["name"]
        if name in self.jobs:
            raise KubeApiError(409, f"jobs.batch {name!r} already exists")
        job = copy.deepcopy(job)
        job["metadata"].update(namespace=namespace, uid=f"uid-{name}")
        job["status"] = {}
        self.jobs[name] = job
        self.created.append(copy.deepcopy(job))
        labels = job["spec"]["template"]["metadata"]["labels"]
        self.steps[name] = self._plan(name, int(labels["nasagent.io/trial"]), int(labels["nasagent.io/attempt"]))
        self._emit("ADDED", name)
        self.max_alive = max(self.max_alive, self.alive())

    def delete_job(self, namespace: str, name: str) -> None:
        if name not in self.jobs:
            return
        self.deleted.append(name)
        self._remove(name)

    def list_jobs(self, namespace: str, label_selector: str) -> tuple[list[dict[str, Any]], str]:
        self.list_calls += 1
        jobs = [copy.deepcopy(j) for j in self.jobs.values() if _matches(j["metadata"]["labels"], label_selector)]
        return jobs, str(self.rv)

    def watch_jobs(
        self, namespace: str, label_selector: str, resource_version: str | None, timeout_seconds: int
    ) -> Iterator[dict[str, Any]]:
        self.watch_calls.append(resource_version)
        fault, after = self.faults.pop(0) if self.faults else ("", 0)
        if fault == "gone":
            # Things happen while nobody watches, and etcd compacts their history away.
            for _ in range(after):
                self.step()
            self.compacted = self.rv
            raise WatchExpired("watching Jobs: too old resource version")
        cursor = int(resource_version or 0)
        deadline = self.clock() + timeout_seconds
        sent = 0
        while True:
            for rv, kind, job in [e for e in self.events if e[0] > cursor]:
                cursor = rv
                if _matches(job["metadata"]["labels"], label_selector):
                    yield {"type": kind, "object": copy.deepcopy(job)}
                    sent += 1
                    if fault == "drop" and sent >= after:
                        raise KubeApiError(None, "watching Jobs: ('Connection broken: connection reset by peer')")
            if self.clock() >= deadline:
                return
            if not self.step():
                self.idle(deadline)

    def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(p) for p in self.pods.values() if _matches(p["metadata"]["labels"], label_selector)]

    def read_pod_uid(self, namespace: str, name: str) -> str:
        return f"uid-of-{name}"

    # -- the fake kubelet --------------------------------------------------------------------------
    def alive(self) -> int:
        return sum(1 for j in self.jobs.values() if not self._finished(j))

    @staticmethod
    def _finished(job: dict[str, Any]) -> bool:
        return any(
            c["status"] == "True" and c["type"] in ("Complete", "Failed") for c in job["status"].get("conditions", [])
        )

    def _plan(self, name: str, trial: int, attempt: int) -> list[str]:
        what = self.script(trial, attempt)
        self._pod(name, "Pending")
        if what == "pending":
            self.pods[name]["status"]["conditions"] = [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                }
            ]
            return []
        if what == "vanish":
            return ["vanish"]
        return ["run", what]

    def _pod(self, name: str, phase: str) -> None:
        job = self.jobs[name]
        labels = {**job["spec"]["template"]["metadata"]["labels"], "job-name": name}
        self.pods[name] = {
            "metadata": {"name": f"{name}-pod", "labels": labels, "creationTimestamp": "2030-01-01T00:00:00Z"},
            "spec": copy.deepcopy(job["spec"]["template"]["spec"]),
            "status": {"phase": phase},
        }

    def step(self) -> bool:
        """Every Job with something left to do does its next step; True if anything happened."""
        moved = False
        for name in list(self.jobs):
            if self.steps.get(name):
                self._do(name, self.steps[name].pop(0))
                moved = True
        return moved

    def idle(self, deadline: float) -> None:
        self.advance(deadline - self.clock())

    def _do(self, name: str, what: str) -> None:
        job, pod = self.jobs[name], self.pods[name]
        labels = job["metadata"]["labels"]
        trial, attempt = int(labels["nasagent.io/trial"]), int(labels["nasagent.io/attempt"])
        if what == "vanish":
            self._remove(name)
            return
        if what == "run":
            pod["status"] = {"phase": "Running", "containerStatuses": [{"name": "trial", "state": {"running": {}}}]}
            job["status"].update(active=1, ready=1)
            self._emit("MODIFIED", name)
            return
        failed = {
            "status": "True",
            "type": "Failed",
            "reason": "BackoffLimitExceeded",
            "message": "Job has reached the specified backoff limit",
        }
        if what in ("succeed", "no-result"):
            if what == "succeed":
                self.report(trial, attempt)
            pod["status"] = {
                "phase": "Succeeded",
                "containerStatuses": [
                    {"name": "trial", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
                ],
            }
            job["status"] = {"succeeded": 1, "conditions": [{"status": "True", "type": "Complete"}]}
        elif what == "oom":
            pod["status"] = {
                "phase": "Failed",
                "containerStatuses": [
                    {"name": "trial", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}
                ],
            }
            job["status"] = {"failed": 1, "conditions": [failed]}
        elif what == "evict":
            pod["status"] = {"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory."}
            job["status"] = {"failed": 1, "conditions": [failed]}
        elif what == "exit":
            message = "Traceback (most recent call last):\n  ...\nnasagent: error: database postgresql://x: connection refused\n"
            pod["status"] = {
                "phase": "Failed",
                "containerStatuses": [
                    {"name": "trial", "state": {"terminated": {"exitCode": 2, "reason": "Error", "message": message}}}
                ],
            }
            job["status"] = {"failed": 1, "conditions": [failed]}
        elif what == "deadline":
            del self.pods[name]
            job["status"] = {
                "failed": 1,
                "conditions": [
                    {
                        "status": "True",
                        "type": "Failed",
                        "reason": "DeadlineExceeded",
                        "message": "Job was active longer than specified deadline",
                    }
                ],
            }
        else:
            raise AssertionError(f"unknown script step {what!r}")
        self._emit("MODIFIED", name)

    def _emit(self, kind: str, name: str) -> None:
        self.rv += 1
        self.jobs[name]["metadata"]["resourceVersion"] = str(self.rv)
        self.events.append((self.rv, kind, copy.deepcopy(self.jobs[name])))

    def _remove(self, name: str) -> None:
        self._emit("DELETED", name)
        del self.jobs[name]
        self.pods.pop(name, None)
        self.steps.pop(name, None)


class SubprocessKubernetes(FakeKubernetes):
    """The FAKE cluster whose kubelet really runs each Job's container command as a subprocess,
    with the container's environment (``secrets`` resolve ``secretKeyRef``s, as the kubelet does),
    in real time. Exit code 0 completes the Job, anything else fails it with the last log lines as
    termination message (``FallbackToLogsOnError``). ``OMP_NUM_THREADS=1`` stands for a CPU limit."""

    def __init__(self, secrets: dict[str, dict[str, str]], workdir: Path) -> None:
        super().__init__(time.monotonic, lambda seconds: None)
        self.secrets = secrets
        self.workdir = workdir
        self.processes: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}

    def _plan(self, name: str, trial: int, attempt: int) -> list[str]:
        container = self.jobs[name]["spec"]["template"]["spec"]["containers"][0]
        env = {
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "HOME": str(self.workdir),
            "HOSTNAME": f"{name}-pod",
            "OMP_NUM_THREADS": "1",
        }
        for var in container["env"]:
            if "value" in var:
                env[var["name"]] = var["value"]
                continue
            ref = var["valueFrom"]["secretKeyRef"]
            value = self.secrets.get(ref["name"], {}).get(ref["key"])
            if value is None and not ref.get("optional"):
                raise AssertionError(f"Job {name} needs Secret {ref['name']} key {ref['key']}")
            if value is not None:
                env[var["name"]] = value
        self._pod(name, "Running")
        self.jobs[name]["status"].update(active=1, ready=1)
        self.logs[name] = self.workdir / f"{name}.log"
        with open(self.logs[name], "wb") as log:
            self.processes[name] = subprocess.Popen(
                container["command"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
            )
        return []

    def step(self) -> bool:
        moved = False
        for name, process in list(self.processes.items()):
            code = process.poll()
            if code is None:
                continue
            del self.processes[name]
            if name not in self.jobs:
                continue
            tail = self.logs[name].read_text(errors="replace")[-2048:]
            terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error", "message": tail}
            self.pods[name]["status"] = {
                "phase": "Succeeded" if code == 0 else "Failed",
                "containerStatuses": [{"name": "trial", "state": {"terminated": terminated}}],
            }
            condition = (
                {"status": "True", "type": "Complete"}
                if code == 0
                else {"status": "True", "type": "Failed", "reason": "BackoffLimitExceeded"}
            )
            self.jobs[name]["status"] = {"succeeded" if code == 0 else "failed": 1, "conditions": [condition]}
            self._emit("MODIFIED", name)
            moved = True
        return moved

    def idle(self, deadline: float) -> None:
        time.sleep(max(0.0, min(0.05, deadline - self.clock())))

    def delete_job(self, namespace: str, name: str) -> None:
        process = self.processes.pop(name, None)
        if process is not None:
            process.kill()
            process.wait()
        super().delete_job(namespace, name)

    def kill_all(self) -> None:
        for name in list(self.processes):
            self.delete_job("", name)


class FakePipelines:
    """A FAKE of ``nasagent.execution.kfp.PipelineClient`` (no KFP server can run here).

    ``script(trial_id, attempt)`` lists the states that successive ``run_state`` calls of that
    run return (the last one repeats); "ERR" raises a transient API error instead. When a run
    first reports SUCCEEDED, ``report(trial_id, attempt)`` writes its result as the component would.
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
    """A FAKE Kubernetes API server over HTTP (a few canned responses on 127.0.0.1), so that the
    real adapter ``ClientApi`` runs through the official client: list, watch (one event, then
    ``410 Gone`` for an old resourceVersion), create (then 403), delete (404), pods, one pod."""

    JOB = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "nas-e-1-1-abcde", "resourceVersion": "7", "labels": {"nasagent.io/trial": "1"}},
        "spec": {
            "backoffLimit": 0,
            "template": {"spec": {"containers": [{"name": "trial", "image": "i"}], "restartPolicy": "Never"}},
        },
        "status": {"ready": 1, "conditions": [{"type": "Complete", "status": "True"}]},
    }

    def __init__(self) -> None:
        import http.server
        import json
        import threading

        server = self
        self.requests: list[tuple[str, str]] = []
        self.created = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                server.requests.append(("GET", self.path))
                if "/jobs" in self.path and "watch=True" in self.path:
                    if "resourceVersion=1&" in self.path or self.path.endswith("resourceVersion=1"):
                        lines = [
                            {
                                "type": "ERROR",
                                "object": {
                                    "kind": "Status",
                                    "code": 410,
                                    "reason": "Expired",
                                    "message": "too old resource version: 1 (7)",
                                },
                            }
                        ]
                    else:
                        lines = [
                            {"type": "MODIFIED", "object": FakeApiServer.JOB},
                            {"type": "BOOKMARK", "object": {"kind": "Job", "metadata": {"resourceVersion": "9"}}},
                        ]
                    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                elif "/jobs" in self.path:
                    self._send(
                        200,
                        {
                            "kind": "JobList",
                            "apiVersion": "batch/v1",
                            "metadata": {"resourceVersion": "8"},
                            "items": [FakeApiServer.JOB],
                        },
                    )
                elif self.path.startswith("/api/v1/namespaces/nas/pods/"):
                    self._send(
                        200, {"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "agent", "uid": "uid-123"}}
                    )
                else:
                    pod = {
                        "metadata": {"name": "p", "creationTimestamp": "2030-01-01T00:00:00Z"},
                        "status": {
                            "phase": "Failed",
                            "containerStatuses": [
                                {
                                    "name": "trial",
                                    "image": "i",
                                    "imageID": "",
                                    "ready": False,
                                    "restartCount": 0,
                                    "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
                                }
                            ],
                        },
                    }
                    self._send(
                        200,
                        {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "8"}, "items": [pod]},
                    )

            def do_POST(self) -> None:
                server.requests.append(("POST", self.path))
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.created += 1
                if server.created > 1:
                    self._send(
                        403,
                        {
                            "kind": "Status",
                            "code": 403,
                            "reason": "Forbidden",
                            "message": 'jobs.batch is forbidden: User "system:serviceaccount:nas:default" cannot create resource "jobs"',
                        },
                    )
                else:
                    self._send(201, body)

            def do_DELETE(self) -> None:
                server.requests.append(("DELETE", self.path))
                self._send(
                    404, {"kind": "Status", "code": 404, "reason": "NotFound", "message": 'jobs.batch "gone" not found'}
                )

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


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
