"""Write the images' lock files: requirements/agent.lock and requirements/trainer.lock.

Run ``make images-lock`` (that is, ``.venv/bin/python images/lock.py``) after pyproject.toml's
dependencies change. pip's own resolver chooses the versions (``pip install --dry-run --report``:
nothing is installed) against the package index that pip is configured with on this machine,
for this interpreter: CPython 3.11 on x86_64 Linux, the Python of both images. Each lock line pins
one exact version and the sha256 of the file pip chose, so the images install with
``--require-hashes`` and ``--no-deps``.

- agent.lock: nasagent's dependencies with torch's CPU build (``torch==X+cpu``), plus the build
  backend of ``[build-system] requires`` so that nasagent itself installs without fetching it.
- trainer.lock: the same set resolved with torch's default build, then without torch and without
  every package that only torch needs: the CUDA PyTorch base image provides those and they must
  not be reinstalled. Resolving with torch keeps the shared packages compatible with it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
COMMAND = "make images-lock  # .venv/bin/python images/lock.py"


class LockError(Exception):
    """pyproject.toml cannot be locked as asked (e.g. torch is not pinned to one version)."""


@dataclass(frozen=True)
class Locked:
    """One resolved distribution: what the lock line pins and what it depends on (canonical names)."""

    name: str
    version: str
    sha256: str
    requires: frozenset[str]
    requested: bool


def project_requirements(pyproject: Path) -> tuple[list[str], list[str]]:
    """The ``[project] dependencies`` and the ``[build-system] requires`` of ``pyproject``."""
    data = tomllib.loads(pyproject.read_text())
    return list(data["project"]["dependencies"]), list(data["build-system"]["requires"])


def torch_version(requirements: Sequence[str]) -> str:
    """The one version ``requirements`` pin torch to (``torch==2.13.0`` -> ``2.13.0``)."""
    for text in requirements:
        req = Requirement(text)
        if canonicalize_name(req.name) == "torch":
            pins = [spec.version for spec in req.specifier if spec.operator == "=="]
            if len(pins) != 1 or "+" in pins[0] or len(req.specifier) != 1:
                raise LockError(f"torch must be pinned to one version (torch==X.Y.Z) in pyproject.toml, got {text!r}")
            return pins[0]
    raise LockError("pyproject.toml does not depend on torch")


def with_torch(requirements: Sequence[str], pin: str) -> list[str]:
    """``requirements`` with the torch requirement replaced by ``torch==<pin>``."""
    return [f"torch=={pin}" if canonicalize_name(Requirement(t).name) == "torch" else t for t in requirements]


def parse_report(report: dict[str, Any]) -> list[Locked]:
    """The distributions of a ``pip install --report`` document, with their dependency edges.

    An edge counts when its marker holds in this environment (for the extras that were asked of
    the distribution) and it points at a distribution of the report.
    """
    items = report["install"]
    names = {canonicalize_name(item["metadata"]["name"]) for item in items}
    locked = []
    for item in items:
        meta = item["metadata"]
        extras = [""] + list(item.get("requested_extras") or [])
        requires = set()
        for text in meta.get("requires_dist") or []:
            req = Requirement(text)
            dep = canonicalize_name(req.name)
            if dep in names and (req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras)):
                requires.add(dep)
        hashes = item["download_info"].get("archive_info", {}).get("hashes", {})
        if "sha256" not in hashes:
            raise LockError(f"the index gave no sha256 for {meta['name']} {meta['version']}")
        locked.append(
            Locked(
                canonicalize_name(meta["name"]),
                meta["version"],
                hashes["sha256"],
                frozenset(requires),
                bool(item.get("requested")),
            )
        )
    return locked


def without_exclusive_deps(locked: Sequence[Locked], dropped: str) -> list[Locked]:
    """``locked`` less ``dropped`` and every distribution reachable only through it.

    Keeps what the other requested distributions reach without passing through ``dropped``.
    """
    by_name = {item.name: item for item in locked}
    keep: set[str] = set()
    todo = [item.name for item in locked if item.requested and item.name != dropped]
    while todo:
        name = todo.pop()
        if name in keep or name == dropped:
            continue
        keep.add(name)
        todo.extend(by_name[name].requires)
    return [item for item in locked if item.name in keep]


def resolve(requirements: Sequence[str], python: str = sys.executable) -> list[Locked]:
    """Resolve ``requirements`` with pip (dry run, ignoring what is installed) into ``Locked`` items."""
    with tempfile.TemporaryDirectory() as tmp:
        reqs = Path(tmp, "requirements.txt")
        reqs.write_text("\n".join(requirements) + "\n")
        report = Path(tmp, "report.json")
        cmd = [
            python,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--disable-pip-version-check",
            "--report",
            str(report),
            "-r",
            str(reqs),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise LockError(f"pip could not resolve the requirements:\n{done.stderr.strip()}")
        return parse_report(json.loads(report.read_text()))


def render(locked: Sequence[Locked], title: str) -> str:
    """The lock file's text: a header saying how it was made, then ``name==version --hash`` lines."""
    lines = [
        f"# {title}",
        f"# Generated by: {COMMAND}",
        "# From pyproject.toml, for CPython 3.11 on x86_64 Linux (glibc 2.34 or newer). Do not edit.",
        "",
    ]
    for item in sorted(locked, key=lambda i: i.name):
        lines.append(f"{item.name}=={item.version} \\\n    --hash=sha256:{item.sha256}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Resolve and write both lock files; exit 2 with one line when that is impossible."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyproject", type=Path, default=ROOT / "pyproject.toml")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "requirements")
    args = parser.parse_args(argv)
    if sys.version_info[:2] != (3, 11):
        print("images/lock.py: run it with Python 3.11, the images' Python (make images-lock)", file=sys.stderr)
        return 2
    try:
        deps, build = project_requirements(args.pyproject)
        version = torch_version(deps)
        agent = resolve(with_torch(deps, f"{version}+cpu") + build)
        trainer = without_exclusive_deps(resolve(with_torch(deps, version) + build), "torch")
    except LockError as exc:
        print(f"images/lock.py: {exc}", file=sys.stderr)
        return 2
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "agent.lock").write_text(
        render(agent, f"nasagent agent image (images/agent/Dockerfile): CPU torch {version}+cpu")
    )
    (args.out_dir / "trainer.lock").write_text(
        render(
            trainer,
            f"nasagent trainer image (images/trainer/Dockerfile): torch {version} "
            "and what only it needs come from the base image",
        )
    )
    print(
        f"wrote {args.out_dir / 'agent.lock'} ({len(agent)} packages) "
        f"and {args.out_dir / 'trainer.lock'} ({len(trainer)} packages)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
