"""Seed 003's transfer experiment (bench/transfer*.py): the fixed policy stays fixed, finished runs are
skipped on resume, and the report is a function of the committed raw records alone.

No network is trained here: the policy is driven with a known reward (as tests/test_gym_strategies.py
does), and the records are written with the experiment's own writer.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "bench") not in sys.path:
    sys.path.insert(0, str(ROOT / "bench"))

import transfer  # noqa: E402
import transfer_data  # noqa: E402
import transfer_records  # noqa: E402
import transfer_report  # noqa: E402

from nasagent.config import SearchConfig  # noqa: E402
from nasagent.core.nsc import CONV, NSCNetwork  # noqa: E402
from nasagent.envs.nas_env import NSCSpace  # noqa: E402
from nasagent.strategies.meta_a2c import MetaA2CStrategy, save_policy_from_state  # noqa: E402
from nasagent.strategies.meta_a2c import from_context as meta_a2c_from_context  # noqa: E402

SPACE = NSCSpace((1, 12, 12), 6, depth=10, tau=10)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def reward(net: NSCNetwork) -> float:
    """A known reward: 3x3 convolutions help (the same kind of toy as tests/test_gym_strategies.py)."""
    good = sum(1 for layer in net.layers if layer.type == CONV and layer.kernel == 3)
    return min(1.0, 0.2 + 0.1 * good)


def step_once(strategy: MetaA2CStrategy, known: dict[str, float]) -> None:
    """One proposal of the agent's loop: ask, answer from the cache or the reward, tell."""
    net = strategy.ask(len(known)).arch
    first = net.digest not in known
    if first:
        known[net.digest] = reward(net)  # type: ignore[arg-type]
    strategy.tell(net, known[net.digest], first)


# -- the fixed policy -------------------------------------------------------------------------------


def test_a_meta_trained_policy_loaded_as_the_transfer_runs_it_changes_no_parameter_over_an_episode(
    tmp_path: Path,
) -> None:
    trained = MetaA2CStrategy(SPACE, 0)
    known: dict[str, float] = {}
    while trained.env_steps < 60:
        step_once(trained, known)
    assert trained.updates > 0  # it did learn before being saved
    policy = tmp_path / "policy.pt"
    save_policy_from_state(json.loads(json.dumps(trained.state_dict())), policy)

    # What `nasagent search --strategy meta-a2c --policy FILE` builds (bench/transfer.py's fixed runs),
    # on another data shape and class count, as an unseen dataset has.
    config = SearchConfig(strategy="meta-a2c", trials=20, options={"policy": str(policy)})
    fixed = meta_a2c_from_context(config.strategy_context((1, 12, 12), 10))
    assert fixed.config.learn is False
    weights = {k: v.clone() for k, v in fixed.net.state_dict().items()}
    assert all(torch.equal(weights[k], v) for k, v in trained.net.state_dict().items())
    known = {}
    states = []
    while fixed.episodes < 3:  # whole episodes, each ending by one of the termination rules
        step_once(fixed, known)
        states.append(fixed.memory[0].h.clone())
    assert fixed.updates == 0 and fixed.optimizer.state_dict()["state"] == {}
    assert all(torch.equal(weights[k], v) for k, v in fixed.net.state_dict().items())
    # The weights are fixed, the recurrent state is not: it is what lets a fixed policy adapt (§4.2.4).
    assert not torch.equal(states[0], states[-1])
    assert fixed.state_dict()["summary"]["learning"] == 0


# -- resuming --------------------------------------------------------------------------------------


def args(**changes: object) -> argparse.Namespace:
    values = {
        "train": "shapes,gratings,digits",
        "eval": "glyphs,counts",
        "strategies": "meta-a2c-fixed,dqn,random-nsc",
        "meta_networks": 5,
        "budget": 4,
        "seeds": 2,
        "meta_seed": 0,
        "epochs": 1,
        "images": 300,
    }
    return argparse.Namespace(**{**values, **changes})


def network(n: int, accuracy: float, action: int = 1, classes: int = 10) -> dict[str, object]:
    layers = "".join(f"({i},1,3,{i - 1},0), " for i in range(1, 1 + n % 3))
    return {
        "n": n,
        "dataset": "glyphs",
        "arch": f"NSC[{layers}HEAD({classes})]".replace(", HEAD", "; HEAD"),
        "accuracy": accuracy,
        "status": "done",
        "action": action,
        "kind": "layer",
        "env_step": 2 * n,
        "layers": n % 3,
        "params": 1000,
        "train_seconds": 1.5,
    }


def eval_record(run: transfer.EvalRun) -> dict[str, object]:
    summary = {
        "experiment": transfer.experiment_name(run.key),
        "rewarded": 6,
        "unique": run.settings.budget,
        "exhausted": None,
        "strategy_summary": {},
    }
    return transfer.eval_record(run, 10.0, summary)


def test_the_plan_keeps_evaluation_datasets_unseen_and_interleaves_searchers_within_a_seed() -> None:
    meta, runs = transfer.plan(args())
    assert meta.train == ("shapes", "gratings", "digits")
    assert len(runs) == 2 * 2 * 3 and [r.dataset for r in runs] == ["glyphs"] * 6 + ["counts"] * 6
    assert [r.seed for r in runs[:6]] == [0, 0, 0, 1, 1, 1]
    assert [r.label for r in runs[:3]] == ["meta-a2c-fixed", "dqn", "random-nsc"]
    assert all((r.policy == meta.tag) == (r.label == "meta-a2c-fixed") for r in runs)
    assert all(len(transfer.experiment_name(r.key)) <= 63 for r in runs)
    with pytest.raises(SystemExit, match="both a training and an evaluation dataset"):
        transfer.plan(args(eval="glyphs,shapes"))


def test_resume_skips_the_recorded_runs_and_only_those(tmp_path: Path) -> None:
    _, runs = transfer.plan(args())
    assert transfer.pending(runs, transfer_records.load(tmp_path).finished()) == runs
    for run in runs[:4]:
        transfer_records.add_run(tmp_path, eval_record(run), [network(i, 0.5) for i in range(1, 5)])
    assert transfer.pending(runs, transfer_records.load(tmp_path).finished()) == runs[4:]
    # Another scale is another run: a larger budget or a new policy does not count as done.
    _, bigger = transfer.plan(args(budget=8))
    assert transfer.pending(bigger, transfer_records.load(tmp_path).finished()) == bigger
    _, retrained = transfer.plan(args(meta_networks=9))
    assert [r.label for r in transfer.pending(retrained, transfer_records.load(tmp_path).finished())[:2]] == [
        "meta-a2c-fixed",
        "meta-a2c-fixed",
    ]


def test_retraining_is_done_only_when_recorded_with_the_same_schedule_and_depth(tmp_path: Path) -> None:
    _, runs = transfer.plan(args())
    run = runs[0]
    assert not transfer.finetune_done(transfer_records.load(tmp_path), run, 1, transfer.FINETUNE_SCHEDULE)
    records = transfer_records.add_finetuned(tmp_path, run.key, retrained(run.key, 0.5))
    assert transfer.finetune_done(records, run, 1, transfer.FINETUNE_SCHEDULE)
    assert not transfer.finetune_done(records, run, 2, transfer.FINETUNE_SCHEDULE)  # a deeper top
    assert not transfer.finetune_done(records, run, 1, "0.001:3")  # another schedule
    assert not transfer.finetune_done(records, runs[1], 1, transfer.FINETUNE_SCHEDULE)


def test_a_recorded_meta_training_with_its_policy_is_not_run_again(tmp_path: Path) -> None:
    meta, _ = transfer.plan(args())
    results, work = tmp_path / "results", tmp_path / "work"
    transfer_records.add_run(results, {"key": meta.key, "phase": "meta"}, [])
    policy = work / "policies" / f"{meta.tag}.pt"
    policy.parent.mkdir(parents=True)
    save_policy_from_state(MetaA2CStrategy(SPACE, 0).state_dict(), policy)
    # No database and no nasagent process: a run that was not skipped would fail on the URL.
    assert transfer.run_meta(meta, "postgresql://nowhere.invalid/x", work, results) == policy


# -- records and report ------------------------------------------------------------------------------


def synthetic(tmp_path: Path) -> transfer_records.Records:
    """Two seeds of two searchers on one unseen dataset, with known accuracies."""
    _, runs = transfer.plan(args(eval="glyphs", strategies="meta-a2c-fixed,random-nsc"))
    for run in runs:
        base = 0.6 if run.label == "meta-a2c-fixed" else 0.4
        accs = [base + 0.05 * run.seed + 0.01 * i for i in range(4)]
        transfer_records.add_run(
            tmp_path, eval_record(run), [network(i + 1, a, action=i % 8) for i, a in enumerate(accs)]
        )
    return transfer_records.load(tmp_path)


def retrained(run_key: str, test: float, schedule: str = transfer.FINETUNE_SCHEDULE) -> list[dict[str, object]]:
    return [
        {
            "rank": 1,
            "arch": "NSC[(1,1,3,0,0); HEAD(10)]",
            "search_accuracy": test + 0.02,
            "val_accuracy": test + 0.01,
            "test_accuracy": test,
            "status": "done",
            "train_seconds": 3.0,
            "schedule": schedule,
            "test_size": 60,
        }
    ]


def test_records_round_trip_byte_for_byte(tmp_path: Path) -> None:
    records = synthetic(tmp_path / "a")
    key = next(iter(records.runs))
    records = transfer_records.add_finetuned(tmp_path / "a", key, retrained(key, 0.5))
    transfer_records.save(tmp_path / "b", records)
    for name in (transfer_records.RUNS, transfer_records.NETWORKS, transfer_records.FINETUNED):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    again = transfer_records.load(tmp_path / "b")
    assert again.runs == records.runs and again.networks == records.networks and again.finetuned == records.finetuned
    assert [r["n"] for r in next(iter(again.networks.values()))] == [1, 2, 3, 4]


def test_the_report_is_computed_from_the_records_and_keeps_the_hand_written_text(tmp_path: Path) -> None:
    records = synthetic(tmp_path / "results")
    doc = tmp_path / "docs" / "transfer.md"
    doc.parent.mkdir()
    doc.write_text("# Transfer\n\nHand-written reading.\n")
    transfer_report.write(records, doc)
    first = doc.read_text()
    assert first.startswith("# Transfer\n\nHand-written reading.\n") and transfer_report.START in first
    # best after 4 networks: fixed 0.63 and 0.68 (mean 0.655), random 0.43 and 0.48 (mean 0.455)
    fixed_row = next(line for line in first.splitlines() if line.startswith("| meta-a2c-fixed | 2 |"))
    assert "| 0.655 ± " in fixed_row
    random_row = next(line for line in first.splitlines() if line.startswith("| random-nsc | 2 |"))
    assert "| 0.455 ± " in random_row
    paired = next(line for line in first.splitlines() if line.startswith("| random-nsc | 2 | 0.200"))
    assert "(+0.200, +0.200)" in paired and "2/2 seeds" in paired
    assert (doc.parent / "transfer_b4-e1-n300.png").exists()
    assert "test accuracy |" not in first  # nothing retrained yet: no Table 6 analogue
    for run in records.runs.values():
        transfer_records.add_finetuned(
            tmp_path / "results", run["key"], retrained(run["key"], 0.7 if run["label"] == "meta-a2c-fixed" else 0.5)
        )
    transfer_report.write(transfer_records.load(tmp_path / "results"), doc)
    first = doc.read_text()
    assert (
        "| meta-a2c-fixed | 2 | 0.720 ± 0.000 | 0.710 ± 0.000 | 0.700 ± 0.000 |" in first
        and "| random-nsc | 2 | 0.520 ± 0.000 | 0.510 ± 0.000 | 0.500 ± 0.000 |" in first
    )
    # Regenerated from the files alone, the block is the same.
    transfer_report.write(transfer_records.load(tmp_path / "results"), doc)
    assert doc.read_text() == first


def test_the_committed_report_matches_the_committed_records(tmp_path: Path) -> None:
    if not (transfer.RESULTS / transfer_records.RUNS).exists():
        pytest.skip("no transfer records committed yet")
    committed = (ROOT / "docs" / "transfer.md").read_text()
    block = committed[committed.index(transfer_report.START) : committed.index(transfer_report.END)]
    doc = tmp_path / "transfer.md"
    transfer_report.write(transfer_records.load(transfer.RESULTS), doc)
    regenerated = doc.read_text()
    assert block == regenerated[regenerated.index(transfer_report.START) : regenerated.index(transfer_report.END)]


def test_the_interval_is_students_t() -> None:
    mean, half = transfer_report.interval([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0) and half == pytest.approx(4.302653 * 1.0 / np.sqrt(3), rel=1e-5)
    assert np.isnan(transfer_report.interval([0.5])[1])


def test_generated_datasets_are_deterministic_balanced_and_in_range(tmp_path: Path) -> None:
    for name, generate in transfer_data.GENERATORS.items():
        x, y = generate(120, 3)
        again, _ = generate(120, 3)
        assert np.array_equal(x, again), name
        assert x.shape == (120, transfer_data.SIZE, transfer_data.SIZE) and 0.0 <= x.min() and x.max() <= 1.0
        counts = np.bincount(y)
        assert counts.max() - counts.min() <= 1, name
    spec = transfer_data.dataset_spec("counts", tmp_path, 60)
    assert spec.startswith("npz:") and Path(spec[4:]).exists()
    assert transfer_data.dataset_spec("digits", tmp_path, 60) == "digits"
