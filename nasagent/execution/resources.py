"""What one machine can run: how many local workers fit, and how much memory each may use.

A space may hold networks far larger than the machine, and ``--workers 64`` on two cores once
started 65 processes and trained nothing. So the local runner plans its workers before starting
any (``plan_local_workers``):

* at most one worker per CPU core (each trains on one thread; more only slow every trial down);
* each worker gets a share of the memory available now, less a reserve for the agent and its
  database: ``--max-memory`` sets the share, else it is an equal split. A worker needs its share
  for Python and torch (about 0.5 GiB), its copy of the data, and the network it trains; what is
  left is the trial's ``memory_limit``, which the trainer compares with each network's estimated
  training memory before building it (``nasagent.training.memory``). Too little left: refused,
  in one line, before anything starts;
* on a GPU the limit is the worker's part of its GPU's memory instead;
* a CPU worker's address space is capped (``cap_address_space``) at what it holds once its data
  are loaded plus its limit and some headroom, so a network that outgrows its estimate fails
  with "out of memory" in its own worker instead of taking the machine down. (Not on a GPU:
  CUDA reserves address space far beyond any physical memory.)
"""

from __future__ import annotations

import os
import re
import resource
from dataclasses import dataclass

from nasagent.errors import ConfigError

MIB = 1 << 20
GIB = 1 << 30
WORKER_OVERHEAD = 512 * MIB
"""A worker's Python, torch and libraries before data or network (about 0.4 GiB resident, measured)."""
MIN_TRAINING_MEMORY = 256 * MIB
"""Below this a worker could train only toy networks: such a plan is refused."""
AGENT_RESERVE = 1 * GIB
"""Left to the agent, its embedded database and the system."""
GPU_SHARE = 0.9
"""Of a GPU's memory, what its workers may plan with (the CUDA context and allocator need the rest)."""
CAP_HEADROOM = 512 * MIB
"""Address space a capped worker gets beyond its limit: allocator slack, thread stacks, libraries."""

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": MIB, "g": GIB, "t": 1 << 40}


def parse_memory(text: str) -> int:
    """``--max-memory`` as bytes: ``8G``, ``512M``, ``1.5GiB``, ``2048MB`` or plain bytes (powers of 1024)."""
    match = _SIZE.fullmatch(text)
    if match is None or float(match.group(1)) <= 0:
        raise ConfigError(f"--max-memory must be a size like 4G or 512M, got {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def gib(n: int) -> str:
    """Bytes as GiB with one decimal."""
    return f"{n / GIB:.1f} GiB"


def available_memory() -> int:
    """Bytes of memory available to new processes now (``MemAvailable``; total memory where unknown)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def cpu_cores() -> int:
    """The CPU cores this process may run on (its affinity, e.g. a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass(frozen=True)
class WorkerPlan:
    """How the local runner's workers share the machine."""

    workers: int
    memory_limit: int
    """Bytes one training may use: its network's estimated memory must fit (GPU memory on a GPU)."""
    cap: bool
    """Whether to cap each worker's address space (CPU workers)."""


def plan_local_workers(
    workers: int,
    data_bytes: int,
    max_memory: int | None = None,
    gpu_memory: list[int] | None = None,
    cores: int | None = None,
    available: int | None = None,
) -> WorkerPlan:
    """Check that ``workers`` local workers fit this machine and work out each one's memory limit.

    ``data_bytes`` is one copy of the dataset (every worker loads its own); ``max_memory`` the
    ``--max-memory`` share of one worker; ``gpu_memory`` the memory of each GPU the workers use
    (round-robin), empty on CPU. ``cores``/``available`` default to this machine's. A plan that
    does not fit is a one-line ConfigError saying what would.
    """
    cores = cpu_cores() if cores is None else cores
    available = available_memory() if available is None else available
    if workers > cores:
        raise ConfigError(
            f"--workers {workers} is more than the {cores} CPU core(s) this machine gives nasagent; each worker "
            f"needs a core of its own (more only slow every trial down): use --workers {cores} or fewer"
        )
    usable = available - AGENT_RESERVE
    own = WORKER_OVERHEAD + data_bytes  # what a worker holds before it trains anything
    if gpu_memory:
        if workers * own > usable:
            raise ConfigError(
                f"--workers {workers} need about {gib(workers * own)} of memory for torch and the data, but only "
                f"{gib(max(usable, 0))} is available: use fewer workers"
            )
        per_gpu = [workers // len(gpu_memory) + (i < workers % len(gpu_memory)) for i in range(len(gpu_memory))]
        limit = min(int(memory * GPU_SHARE) // max(n, 1) for memory, n in zip(gpu_memory, per_gpu))
        return WorkerPlan(workers, limit, cap=False)
    if max_memory is not None:
        if workers * max_memory > usable:
            raise ConfigError(
                f"--workers {workers} × --max-memory {gib(max_memory)} is more than the {gib(max(usable, 0))} of "
                "memory available: use fewer workers or a smaller --max-memory"
            )
        share = max_memory
    else:
        share = usable // workers
    limit = share - own
    if limit < MIN_TRAINING_MEMORY:
        what = f"--max-memory {gib(share)}" if max_memory is not None else f"a share of {gib(max(share, 0))}"
        raise ConfigError(
            f"{what} per worker leaves {gib(max(limit, 0))} for training once torch and the data "
            f"({gib(own)}) are loaded; a worker needs at least {gib(own + MIN_TRAINING_MEMORY)}: "
            "use fewer workers or more --max-memory"
        )
    return WorkerPlan(workers, limit, cap=True)


def cap_address_space(limit: int) -> int:
    """Cap this process's address space at what it maps now plus ``limit`` and ``CAP_HEADROOM``;
    return the cap. Called by a CPU worker once its data are loaded: an allocation past the cap
    then fails inside this process (torch raises "can't allocate memory", a failed trial) instead
    of the kernel's OOM killer picking a victim on a full machine."""
    cap = _mapped_bytes() + limit + CAP_HEADROOM
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    return cap


def _mapped_bytes() -> int:
    """This process's address space now (``VmSize``)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmSize in /proc/self/status")
