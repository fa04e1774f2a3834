"""The transfer experiment's raw records: compressed JSON-lines files, the only input of its report.

``runs.jsonl.gz`` holds one line per finished run (a meta-training over the training datasets, or
one search on an evaluation dataset): its key, settings, wall time and what the strategy reported
about itself. ``networks.jsonl.gz`` holds one line per network a run trained, in the order it was
evaluated: the run's key, its position ``n`` (1..budget), the dataset, the architecture, its
reward (final-epoch validation accuracy), status, the action that produced it, its depth, and its
training time. ``finetuned.jsonl.gz`` holds one line per network retrained after a run (its best by
validation, ``nasagent finetune``) with its held-out test accuracy. A run is *finished* when its
line is in ``runs.jsonl.gz``: that is what the resume logic of ``bench/transfer.py`` skips. The
files are rewritten whole and atomically after each run (gzip without a timestamp, lines sorted),
so an interrupted write never leaves half a file and an unchanged set of records gives
byte-identical files.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RUNS = "runs.jsonl.gz"
NETWORKS = "networks.jsonl.gz"
FINETUNED = "finetuned.jsonl.gz"


@dataclass
class Records:
    """Every finished run (by key), every network those runs trained (by run key, in order) and the
    networks retrained on the test split afterwards (by run key, by rank)."""

    runs: dict[str, dict[str, Any]]
    networks: dict[str, list[dict[str, Any]]]
    finetuned: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def finished(self) -> set[str]:
        """Keys of the runs that need not run again."""
        return set(self.runs)


def _read(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _write(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write ``rows`` as gzip-compressed JSON lines, atomically and reproducibly (mtime 0)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as f:
        f.write(text.encode("utf-8"))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path)


def load(directory: Path) -> Records:
    """The records under ``directory`` (empty if there are none yet)."""
    directory = Path(directory)
    runs = {row["key"]: row for row in _read(directory / RUNS)}
    networks: dict[str, list[dict[str, Any]]] = {}
    for row in _read(directory / NETWORKS):
        networks.setdefault(row["key"], []).append(row)
    for rows in networks.values():
        rows.sort(key=lambda r: r["n"])
    finetuned: dict[str, list[dict[str, Any]]] = {}
    for row in _read(directory / FINETUNED):
        finetuned.setdefault(row["key"], []).append(row)
    for rows in finetuned.values():
        rows.sort(key=lambda r: r["rank"])
    return Records(runs, networks, finetuned)


def add_run(directory: Path, run: dict[str, Any], networks: list[dict[str, Any]]) -> Records:
    """Record a finished run and its networks (replacing any earlier record of the same key)."""
    records = load(directory)
    records.runs[run["key"]] = run
    records.networks[run["key"]] = [{**row, "key": run["key"]} for row in networks]
    save(directory, records)
    return records


def add_finetuned(directory: Path, key: str, rows: list[dict[str, Any]]) -> Records:
    """Record the retrained networks of run ``key`` (replacing any earlier record of them)."""
    records = load(directory)
    records.finetuned[key] = [{**row, "key": key} for row in rows]
    save(directory, records)
    return records


def save(directory: Path, records: Records) -> None:
    """Write the files: runs by key, networks by key then position (a stable, diffable order)."""
    directory = Path(directory)
    _write(directory / NETWORKS, [row for key in sorted(records.networks) for row in records.networks[key]])
    if records.finetuned:
        _write(directory / FINETUNED, [row for key in sorted(records.finetuned) for row in records.finetuned[key]])
    _write(directory / RUNS, [records.runs[key] for key in sorted(records.runs)])
