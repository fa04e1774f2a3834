"""Local runner: W worker processes on this machine, each loading the data once and training trials.

On a CPU-only machine each worker uses one thread (W workers use W cores without oversubscribing);
with GPUs, worker i uses GPU ``i % n_gpus``. Workers are planned against the machine first
(``nasagent.execution.resources``): no more than its cores, each with a memory limit its networks
must fit (checked before building them) and, on CPU, an address-space cap. Workers ignore Ctrl-C:
the agent alone handles it and stops them (``close``), so an interrupt prints one line, not a
traceback per worker. A worker that dies (a signal: the host's OOM killer, a segfault, ``kill -9``)
is replaced and its trial handed back as an infrastructure failure (``Fault.KILLED``, or
``Fault.CRASHED`` for an exit code), which the agent trains again without learning from it; a
network that runs out of memory inside its training is the architecture's result, reported by
the worker itself. The search goes on.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing.context import SpawnProcess
from typing import Any

import torch

from nasagent.core.trial import Fault, TrialOutcome, TrialSpec
from nasagent.execution.base import Runner
from nasagent.execution.resources import WorkerPlan, cap_address_space, plan_local_workers
from nasagent.execution.worker import TrialSettings, run_trial_or_fail
from nasagent.persistence.postgres import Store


def default_workers() -> int:
    """One worker per GPU, else one per core."""
    return torch.cuda.device_count() or os.cpu_count() or 1


def _worker_main(
    name: str, settings: TrialSettings, tasks: Any, results: Any, parent: int, cap: bool, db_url: str | None = None
) -> None:
    """Worker process: load the data once, then train trials until told to stop (None) or until
    the agent that started it is gone (a ``kill -9`` of the agent must not leave workers behind).
    With ``cap``, its address space is capped once the data are loaded (``cap_address_space``).
    With ``db_url`` it records every epoch of its trials in that store, as trial pods do."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the agent's: it stops us
    if settings.train.device.startswith("cuda"):
        torch.cuda.set_device(torch.device(settings.train.device))
    else:
        torch.set_num_threads(1)
    data = settings.load_data()
    store = Store.connect(db_url) if db_url else None  # its own connection: the live learning curves
    if cap and settings.train.memory_limit is not None:
        cap_address_space(settings.train.memory_limit)
    while True:
        try:
            spec = tasks.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:
                return
            continue
        if spec is None:
            return
        results.put(run_trial_or_fail(spec, data, settings, worker=name, store=store))


def _dead_worker(worker: _Worker) -> TrialOutcome:
    """The infrastructure failure of the trial whose worker died: killed by a signal (the host's
    OOM killer sends SIGKILL) or exited without reporting (exit code)."""
    assert worker.trial is not None
    code = worker.process.exitcode or 0
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        reason = f"worker process killed by {name} (exit code {code}; SIGKILL: the host's OOM killer or kill -9)"
        return TrialOutcome.infrastructure_failure(worker.trial.trial_id, Fault.KILLED, reason, worker.name)
    reason = f"worker process died (exit code {code})"
    return TrialOutcome.infrastructure_failure(worker.trial.trial_id, Fault.CRASHED, reason, worker.name)


@dataclass
class _Worker:
    name: str
    process: SpawnProcess
    tasks: Any
    trial: TrialSpec | None = None


class LocalRunner(Runner):
    """Runs trials in ``workers`` local processes."""

    def __init__(
        self,
        settings: TrialSettings,
        workers: int,
        num_classes: int,
        max_memory: int | None = None,
        data_bytes: int = 0,
        db_url: str | None = None,
    ) -> None:
        """Plan and start ``workers`` workers: ConfigError, before any starts, if they do not fit the
        machine (``plan_local_workers``; ``max_memory`` is ``--max-memory``, ``data_bytes`` one copy of
        the dataset). With ``db_url`` (the search's store) the workers record each epoch of their
        trials there as it ends (``nasagent.execution.epochs``)."""
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._gpus = torch.cuda.device_count()
        on_gpu = self._gpus > 0 and settings.train.device in ("auto", "cuda")
        gpu_memory = [torch.cuda.get_device_properties(i).total_memory for i in range(self._gpus)] if on_gpu else []
        self.plan: WorkerPlan = plan_local_workers(workers, data_bytes, max_memory, gpu_memory)
        settings = dataclasses.replace(
            settings, train=dataclasses.replace(settings.train, memory_limit=self.plan.memory_limit)
        )
        self.capacity = workers
        self.settings = settings
        self.num_classes = num_classes
        self._db_url = db_url
        self._ctx = mp.get_context("spawn")  # fork would copy torch's thread pools into the children
        self._results = self._ctx.Queue()
        self._workers = [self._start(i) for i in range(workers)]
        self._idle_deaths = 0

    def _start(self, index: int) -> _Worker:
        settings = self.settings
        if self._gpus and settings.train.device in ("auto", "cuda"):
            settings = dataclasses.replace(
                settings, train=dataclasses.replace(settings.train, device=f"cuda:{index % self._gpus}")
            )
        name = f"local-{index}"
        tasks = self._ctx.Queue()
        process = self._ctx.Process(
            target=_worker_main,
            args=(name, settings, tasks, self._results, os.getpid(), self.plan.cap, self._db_url),
            name=name,
            daemon=True,
        )
        # Started with Ctrl-C ignored, which the new interpreter inherits: a Ctrl-C while it is
        # still importing torch (before _worker_main runs) must not print its traceback either.
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
        try:
            process.start()
        finally:
            if main_thread:
                signal.signal(signal.SIGINT, previous)
        return _Worker(name, process, tasks)  # type: ignore[arg-type]

    @property
    def in_flight(self) -> int:
        return sum(w.trial is not None for w in self._workers)

    def submit(self, spec: TrialSpec) -> None:
        worker = next((w for w in self._workers if w.trial is None), None)
        if worker is None:
            raise RuntimeError("submit called with every worker busy")
        worker.trial = spec
        worker.tasks.put(spec)

    def wait(self, timeout: float) -> list[TrialOutcome]:
        deadline = time.monotonic() + timeout
        outcomes: list[TrialOutcome] = []
        while True:
            try:
                # Once one result is in hand, only drain what is already there: an idle worker
                # should get its next trial at once.
                block = 0.0 if outcomes else max(0.0, min(0.2, deadline - time.monotonic()))
                outcome = self._results.get(timeout=block) if block > 0 else self._results.get_nowait()
                outcomes.append(self._release(outcome))
                continue
            except queue.Empty:
                pass
            outcomes += self._reap_dead()
            if outcomes or time.monotonic() >= deadline:
                return outcomes

    def _release(self, outcome: TrialOutcome) -> TrialOutcome:
        for worker in self._workers:
            if worker.trial is not None and worker.trial.trial_id == outcome.trial_id:
                worker.trial = None
        return outcome

    def _reap_dead(self) -> list[TrialOutcome]:
        """Infrastructure failures for trials whose worker died, and fresh workers in their place."""
        outcomes = []
        for index, worker in enumerate(self._workers):
            if worker.process.is_alive():
                continue
            had_trial = worker.trial is not None
            if had_trial:
                # The result may have landed just before the worker died: prefer it. (The dead
                # worker is replaced either way: a trial submitted to it would be lost.)
                try:
                    outcomes.append(self._release(self._results.get(timeout=0.1)))
                except queue.Empty:
                    pass
            if worker.trial is not None:
                outcomes.append(_dead_worker(worker))
            elif not had_trial:
                # A worker that keeps dying before it takes a trial cannot even load the data.
                self._idle_deaths += 1
                if self._idle_deaths > 3 * self.capacity:
                    raise RuntimeError(
                        f"local workers keep dying before training (exit code {worker.process.exitcode})"
                    )
            self._workers[index] = self._start(index)
        return outcomes

    def close(self) -> None:
        for worker in self._workers:
            if worker.process.is_alive():
                worker.tasks.put(None)
        for worker in self._workers:
            worker.process.join(timeout=2)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=2)
        self._workers = []
