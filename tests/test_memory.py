"""Bounded memory: estimates before training, "does not fit" without building, capped workers,
worker plans that fit the machine, and 8-bit data held as 8 bits.

Everything that could allocate much runs in a child process whose address space is capped with
``resource.RLIMIT_AS``, so a regression fails the test instead of taking the (24 GB) machine down.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from nasagent.core.networks import parse_network
from nasagent.errors import ConfigError
from nasagent.execution.resources import GIB, MIB, WORKER_OVERHEAD, parse_memory, plan_local_workers
from nasagent.persistence.postgres import Store
from nasagent.spaces.metaqnn import MetaQNNSpace, load_space
from nasagent.training.build import build_model, count_params
from nasagent.training.data import load_dataset
from nasagent.training.memory import estimate_training_memory
from nasagent.training.settings import TrainConfig
from nasagent.training.sources import DataBundle, Split, as_float
from nasagent.training.trainer import train_architecture

REPO = Path(__file__).resolve().parent.parent
CHILD_LIMIT = 6 * GIB


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run_capped(code: str, limit: int = CHILD_LIMIT, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python whose address space is capped at ``limit`` bytes."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        preexec_fn=cap,
    )


# -- the estimate ----------------------------------------------------------------------------


def test_estimate_counts_exactly_the_parameters_the_builder_makes() -> None:
    rng = np.random.default_rng(0)
    for preset, shape in (("metaqnn-small", (1, 8, 8)), ("metaqnn-mnist", (1, 12, 12))):
        space = MetaQNNSpace(load_space(preset), shape[1], 10)
        for _ in range(25):
            arch = space.sample(lambda _s, actions: actions[int(rng.integers(len(actions)))])
            assert estimate_training_memory(arch, shape, 128).params == count_params(build_model(arch, shape)), arch
    nsc = parse_network("NSC[(1,1,3,0,0), (2,2,2,1,0), (3,1,5,2,0); HEAD(10)]")
    assert estimate_training_memory(nsc, (3, 32, 32), 128).params == count_params(build_model(nsc, (3, 32, 32)))


MEASURE = """
import json, re, sys
import torch
torch.set_num_threads(1)
from nasagent.core.networks import parse_network
from nasagent.training.memory import estimate_training_memory
from nasagent.training.settings import TrainConfig
from nasagent.training.sources import DataBundle, Split
from nasagent.training.trainer import train_architecture

def status(key):
    return int(re.search(key + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024

arch, shape, n = {arch!r}, {shape!r}, {n}
g = torch.Generator().manual_seed(0)
def split(k):
    return Split((torch.rand((k, *shape), generator=g) * 255).to(torch.uint8), torch.arange(k) % 10)
data = DataBundle("synthetic", split(n), split(n // 4), None, 10, shape, [0.5] * shape[0], [0.25] * shape[0])
config = TrainConfig(epochs=1, device="cpu", max_restarts=0)
for warm in ("[C(4,3,1), P(2,2), FC(8), SM(10)]", "[C(4,3,1), GAP(10)]"):  # torch's one-time set-up
    train_architecture(parse_network(warm), data, config)
before = status("VmRSS")
result = train_architecture(parse_network(arch), data, config, keep_weights=True)
estimate = estimate_training_memory(parse_network(arch), shape, min(128, n), 0, len(data.val.y))
print(json.dumps({{"status": str(result.status), "measured": status("VmHWM") - before, "estimate": estimate.total}}))
"""


@pytest.mark.parametrize(
    ("arch", "shape"),
    [
        ("[C(64,3,1), C(64,3,1), SM(10)]", (3, 16, 16)),
        ("[C(32,3,1), P(2,2), C(128,3,1), GAP(10)]", (3, 16, 16)),
        ("[FC(2048), FC(2048), SM(10)]", (1, 8, 8)),
    ],
)
def test_estimate_covers_the_measured_peak_without_wild_overshoot(arch: str, shape: tuple[int, int, int]) -> None:
    result = run_capped(MEASURE.format(arch=arch, shape=shape, n=128))
    assert result.returncode == 0, result.stderr
    numbers = json.loads(result.stdout.strip().splitlines()[-1])
    measured, estimate = numbers["measured"], numbers["estimate"]
    print(f"{arch} {shape}: estimate {estimate / MIB:.0f} MiB, measured peak {measured / MIB:.0f} MiB")
    assert numbers["status"] == "done"
    assert measured <= estimate <= 4 * measured + 64 * MIB


def test_a_network_that_cannot_fit_fails_as_does_not_fit_without_being_built() -> None:
    # Under a 3 GiB address space: building C(100000,5,1) twice would need about a terabyte.
    result = run_capped(
        """
        import json
        from pathlib import Path
        from nasagent.core.arch import Architecture
        from nasagent.training.data import load_dataset
        from nasagent.training.settings import TrainConfig
        from nasagent.training.trainer import train_architecture
        data = load_dataset("digits", Path("."))
        arch = Architecture.parse("[C(100000,5,1), C(100000,5,1), SM(10)]")
        r = train_architecture(arch, data, TrainConfig(epochs=1, device="cpu", memory_limit=1 << 30))
        print(json.dumps({"status": str(r.status), "failure": r.failure, "params": r.params, "seconds": r.seconds}))
        """,
        limit=3 * GIB,
    )
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["status"] == "failed" and outcome["failure"].startswith("does not fit: training needs about")
    assert "a worker may use 1.0 GiB" in outcome["failure"]
    assert outcome["params"] == 100000 * 25 + 100000 + 100000 * 100000 * 25 + 100000 + 100000 * 64 * 10 + 10
    assert outcome["seconds"] < 1.0


def test_the_address_space_cap_turns_a_runaway_network_into_a_failed_trial() -> None:
    # No estimate check (memory_limit None): the cap alone must stop a network of ~1.3 GB.
    result = run_capped(
        """
        import json
        from pathlib import Path
        import torch
        torch.set_num_threads(1)
        from nasagent.core.arch import Architecture
        from nasagent.execution.resources import cap_address_space
        from nasagent.training.data import load_dataset
        from nasagent.training.settings import TrainConfig
        from nasagent.training.trainer import train_architecture
        data = load_dataset("digits", Path("."))
        cap_address_space(256 << 20)
        r = train_architecture(Architecture.parse("[FC(1000000), SM(10)]"), data, TrainConfig(epochs=1, device="cpu"))
        print(json.dumps({"status": str(r.status), "failure": r.failure}))
        """
    )
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["status"] == "failed" and outcome["failure"].startswith("out of memory"), outcome


HUGE_SPACE = """\
name: huge
max_depth: 1
conv:
  filters: [8, 100000]
  kernels: [3]
  strides: [1]
pool:
  shapes: []
terminals: [gap, softmax]
"""


def test_a_search_over_huge_layers_records_them_as_not_fitting(db_url: str, tmp_path: Path) -> None:
    space = tmp_path / "huge.yaml"
    space.write_text(HUGE_SPACE)
    args = ["search", "--experiment", "huge", "--space", str(space), "--trials", "6", "--epochs", "1"]
    args += ["--workers", "1", "--max-memory", "1.5G", "--data-dir", str(tmp_path)]

    def cap() -> None:  # the agent and (inherited) its worker: far below what one huge network would take
        resource.setrlimit(resource.RLIMIT_AS, (CHILD_LIMIT, CHILD_LIMIT))

    env = {**os.environ, "NASAGENT_DB": db_url}
    result = subprocess.run(
        [sys.executable, "-m", "nasagent.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        preexec_fn=cap,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    with Store.connect(db_url) as store:
        trials = store.trials(store.get_experiment("huge").id)
    assert len(trials) == 6  # the space has exactly 6 architectures: all trained once
    huge = [t for t in trials if "C(100000" in t.arch]
    assert len(huge) == 2 and all(t.status == "failed" and t.failure.startswith("does not fit") for t in huge)
    assert all(t.status == "done" for t in trials if t not in huge)


# -- worker plans ----------------------------------------------------------------------------


def test_worker_plans_refuse_more_workers_than_cores_or_memory() -> None:
    with pytest.raises(ConfigError, match=r"--workers 64 is more than the 2 CPU core\(s\).*--workers 2 or fewer"):
        plan_local_workers(64, 0, cores=2, available=64 * GIB)
    with pytest.raises(ConfigError, match="use fewer workers or more --max-memory"):
        plan_local_workers(16, 100 * MIB, cores=16, available=4 * GIB)
    with pytest.raises(ConfigError, match="--max-memory 8.0 GiB is more than"):
        plan_local_workers(4, 0, max_memory=8 * GIB, cores=4, available=16 * GIB)
    plan = plan_local_workers(2, 100 * MIB, cores=2, available=9 * GIB)
    assert plan.cap and plan.memory_limit == 4 * GIB - WORKER_OVERHEAD - 100 * MIB
    gpu = plan_local_workers(3, 0, gpu_memory=[80 * GIB, 80 * GIB], cores=16, available=64 * GIB)
    assert not gpu.cap and gpu.memory_limit == int(80 * GIB * 0.9) // 2  # two workers share the first GPU
    assert parse_memory("1.5G") == 3 * GIB // 2 and parse_memory("512MiB") == 512 * MIB
    with pytest.raises(ConfigError, match="--max-memory must be a size"):
        parse_memory("lots")


def test_too_many_workers_is_one_line_and_leaves_nothing(db_url: str) -> None:
    env = {**os.environ, "NASAGENT_DB": db_url}
    for flags in (["--workers", str((os.cpu_count() or 1) + 1)], ["--max-memory", "1M"]):
        args = ["search", "--experiment", "toomany", "--trials", "2", "--epochs", "1", *flags]
        result = subprocess.run([sys.executable, "-m", "nasagent.cli", *args], capture_output=True, text=True, env=env)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr
        with Store.connect(db_url) as store:
            assert store.find_experiment("toomany") is None


# -- 8-bit data ------------------------------------------------------------------------------


def test_8bit_data_are_held_as_8_bits(tmp_path: Path) -> None:
    path = tmp_path / "zeros.npz"
    np.savez_compressed(path, x=np.zeros((20000, 32, 32, 3), dtype=np.uint8), y=np.arange(20000) % 10)
    data = load_dataset(f"npz:{path}", tmp_path)
    assert data.train.x.dtype == torch.uint8
    images = 20000 * 3 * 32 * 32
    assert data.nbytes == images + 20000 * 8  # 61 MB, where float32 images took 246 MB
    # Floats that are exact multiples of 1/255 are 8-bit data too; other floats stay float32.
    np.savez(tmp_path / "f.npz", x=np.arange(60 * 16).reshape(60, 4, 4) % 256 / 255.0, y=np.arange(60) % 3)
    assert load_dataset(f"npz:{tmp_path / 'f.npz'}", tmp_path).train.x.dtype == torch.uint8
    np.savez(tmp_path / "g.npz", x=np.full((60, 4, 4), 0.3), y=np.arange(60) % 3)
    assert load_dataset(f"npz:{tmp_path / 'g.npz'}", tmp_path).train.x.dtype == torch.float32


def test_8bit_data_train_exactly_as_their_float_values(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, 256, (300, 1, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.arange(300) % 3

    def bundle(x: torch.Tensor) -> DataBundle:
        return DataBundle("t", Split(x[:240], y[:240]), Split(x[240:], y[240:]), None, 3, (1, 8, 8), [0.5], [0.3])

    arch = parse_network("[C(8,3,1), FC(16), SM(3)]")
    config = TrainConfig(epochs=2, device="cpu", max_restarts=0)
    as_codes = train_architecture(arch, bundle(codes), config)  # type: ignore[arg-type]
    as_floats = train_architecture(arch, bundle(as_float(codes)), config)  # type: ignore[arg-type]
    assert as_codes.history == as_floats.history and as_codes.accuracy == as_floats.accuracy
