"""The container images (images/*/Dockerfile, mk/images.mk, requirements/*.lock), checked without a
Docker engine, since these machines have none: the Dockerfiles are parsed and must build from
pinned bases (an exact release tag; the sha256 digests they also carry were cross-checked against
independent public projects pinning the same tags, not pulled from a registry, which is out of
reach here), install only locked, hashed dependencies, never reinstall torch in the trainer, run
as a non-root numeric user and have ``nasagent`` as entrypoint. The lock files must satisfy
pyproject.toml, the build context must carry what the Dockerfiles copy, and ``make images`` must
name the missing engine in one line.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
IMAGES = ("agent", "trainer")
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
TORCH = next(Requirement(d) for d in PYPROJECT["project"]["dependencies"] if Requirement(d).name == "torch")
TORCH_VERSION = next(iter(TORCH.specifier)).version


def load_lock_module() -> ModuleType:
    """images/lock.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("images_lock", REPO / "images" / "lock.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


lock_tool = load_lock_module()


def instructions(path: Path) -> list[tuple[str, str]]:
    """A Dockerfile as (INSTRUCTION, arguments) pairs: continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # Docker drops comment lines inside a continued instruction too
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        result.append((keyword.upper(), args.strip()))
    assert not pending, f"{path} ends inside a continued line"
    return result


def dockerfile(image: str) -> list[tuple[str, str]]:
    """The instructions of images/<image>/Dockerfile."""
    return instructions(REPO / "images" / image / "Dockerfile")


def args_of(image: str, keyword: str) -> list[str]:
    """The arguments of every ``keyword`` instruction of the image's Dockerfile, in order."""
    return [args for kw, args in dockerfile(image) if kw == keyword]


def lock_entries(name: str) -> dict[str, tuple[str, list[str]]]:
    """requirements/<name>.lock as {canonical name: (version, [sha256, ...])}."""
    text = (REPO / "requirements" / f"{name}.lock").read_text().replace("\\\n", " ")
    entries = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        spec, *options = line.split()
        pkg, _, version = spec.partition("==")
        hashes = [o.removeprefix("--hash=sha256:") for o in options]
        assert version and all(o.startswith("--hash=sha256:") for o in options), f"{name}.lock: {line}"
        entries[canonicalize_name(pkg)] = (version, hashes)
    return entries


# --- the Dockerfiles -----------------------------------------------------------------------------


@pytest.mark.parametrize("image", IMAGES)
def test_base_image_is_pinned_to_an_exact_release(image: str) -> None:
    (base,) = args_of(image, "FROM")
    reference, _, digest = base.partition("@")
    name, _, tag = reference.rpartition(":")
    assert name and re.match(r"\d+\.\d+\.\d+-", tag), f"{base}: not an exact release tag"
    assert not digest or re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"{base}: malformed digest"


def test_agent_is_slim_python_311_and_trainer_is_the_cuda_pytorch_of_pyproject() -> None:
    (agent,) = args_of("agent", "FROM")
    (trainer,) = args_of("trainer", "FROM")
    assert re.match(r"python:3\.11\.\d+-slim-", agent), "the locks are for CPython 3.11"
    assert re.match(rf"pytorch/pytorch:{re.escape(TORCH_VERSION)}-cuda[\d.]+-cudnn\d+-runtime[@$]", trainer + "$"), (
        f"trainer base must carry torch {TORCH_VERSION}, the version pyproject.toml pins"
    )


@pytest.mark.parametrize("image", IMAGES)
def test_runs_as_a_non_root_numeric_user_with_nasagent_as_entrypoint(image: str) -> None:
    steps = dockerfile(image)
    users = [args for kw, args in steps if kw == "USER"]
    assert users, "no USER: the image would run as root"
    uid, _, gid = users[-1].partition(":")
    # Numeric, so that Kubernetes can enforce runAsNonRoot against the image itself.
    assert uid.isdigit() and int(uid) > 0 and (not gid or (gid.isdigit() and int(gid) > 0))
    useradd = " ".join(args for kw, args in steps if kw == "RUN" and "useradd" in args)
    assert f"--uid {uid} " in useradd
    assert json.loads(args_of(image, "ENTRYPOINT")[-1]) == ["nasagent"]
    # The trial pods' securityContext runs as the same user the image creates.
    trial = yaml.safe_load((REPO / "manifests" / "base" / "trial-job.yaml").read_text())
    assert trial["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(uid)


@pytest.mark.parametrize("image", IMAGES)
def test_installs_only_locked_hashed_dependencies(image: str) -> None:
    pip_runs = [args for args in args_of(image, "RUN") if "pip install" in args]
    assert len(pip_runs) == 2
    locked, project = pip_runs
    assert f"-r requirements/{image}.lock" in locked and "--require-hashes" in locked and "--no-deps" in locked
    assert (
        "--no-deps" in project
        and "--no-build-isolation" in project
        and project.split("pip install")[1].split("&&")[0].rstrip().endswith(" .")
    )
    assert f"requirements/{image}.lock requirements/{image}.lock" in args_of(image, "COPY")[0]


def test_trainer_never_reinstalls_torch() -> None:
    for args in args_of("trainer", "RUN"):
        for command in args.split("&&"):
            if "pip install" in command:
                assert "torch" not in command and "--extra-index-url" not in command and "--index-url" not in command
    assert "torch" not in lock_entries("trainer")


@pytest.mark.parametrize("image", IMAGES)
def test_build_context_carries_what_the_dockerfile_copies(image: str) -> None:
    patterns = [
        p.strip() for p in (REPO / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")
    ]

    def excluded(relative: str) -> bool:
        """Whether .dockerignore keeps ``relative`` out of the build context."""
        # Docker's rule: the last pattern matching the path (or one of its parents) decides.
        parts = relative.split("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        verdict = False
        for pattern in patterns:
            negated = pattern.startswith("!")
            if any(fnmatch.fnmatchcase(c, pattern.lstrip("!")) for c in candidates):
                verdict = not negated
        return verdict

    for args in args_of(image, "COPY"):
        *sources, _ = args.split()
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: missing"
            assert not excluded(source), f"COPY {source}: excluded by .dockerignore"
    package = [str(p.relative_to(REPO)) for p in (REPO / "nasagent").rglob("*.py") if "__pycache__" not in p.parts]
    assert package and not any(excluded(p) for p in package)
    for outside in (
        ".venv/bin/python",
        "tests/test_images.py",
        ".git/HEAD",
        ".nasagent/db",
        "nasagent/__pycache__/x.pyc",
    ):
        assert excluded(outside), outside


# --- the lock files ------------------------------------------------------------------------------


@pytest.mark.parametrize("image", IMAGES)
def test_lock_satisfies_pyproject(image: str) -> None:
    """Fails when pyproject.toml's dependencies change without ``make images-lock``."""
    entries = lock_entries(image)
    wanted = [Requirement(d) for d in PYPROJECT["project"]["dependencies"] + PYPROJECT["build-system"]["requires"]]
    for req in wanted:
        name = canonicalize_name(req.name)
        if name == "torch":
            continue
        assert name in entries, f"{image}.lock lacks {req}: run make images-lock"
        assert req.specifier.contains(entries[name][0], prereleases=True), (
            f"{image}.lock has {name}=={entries[name][0]}, pyproject wants {req}"
        )
    for name, (_, hashes) in entries.items():
        assert hashes and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), name


def test_agent_lock_has_cpu_torch_and_no_cuda() -> None:
    entries = lock_entries("agent")
    assert entries["torch"][0] == f"{TORCH_VERSION}+cpu"
    assert not [n for n in entries if n.startswith(("nvidia-", "triton"))]


def test_trainer_lock_leaves_torch_and_its_cuda_stack_to_the_base() -> None:
    entries = lock_entries("trainer")
    assert not [n for n in entries if n == "torch" or n.startswith(("nvidia-", "triton", "torchvision"))]
    # What the rest of nasagent also needs stays, at the version resolved together with torch.
    assert entries["numpy"][0] == lock_entries("agent")["numpy"][0]


def locked(name: str, requires: tuple[str, ...] = (), requested: bool = False) -> Any:
    """A ``Locked`` entry for a hand-made dependency graph."""
    return lock_tool.Locked(name, "1.0", "0" * 64, frozenset(requires), requested)


def test_lock_tool_drops_only_what_torch_alone_needs() -> None:
    graph = [
        locked("nasagent-dep", ("numpy", "shared"), requested=True),
        locked("torch", ("shared", "sympy", "nvidia-cublas"), requested=True),
        locked("numpy"),
        locked("shared"),
        locked("sympy", ("mpmath",)),
        locked("mpmath"),
        locked("nvidia-cublas"),
    ]
    kept = {item.name for item in lock_tool.without_exclusive_deps(graph, "torch")}
    assert kept == {"nasagent-dep", "numpy", "shared"}


def test_lock_tool_reads_pips_report_with_markers_and_extras() -> None:
    def item(
        name: str, requires: list[str], extras: list[str] | None = None, requested: bool = False
    ) -> dict[str, Any]:
        entry = {
            "metadata": {"name": name, "version": "1.0", "requires_dist": requires},
            "requested": requested,
            "download_info": {"url": f"https://x/{name}.whl", "archive_info": {"hashes": {"sha256": "ab" * 32}}},
        }
        if extras:
            entry["requested_extras"] = extras
        return entry

    report = {
        "install": [
            item(
                "App",
                ["Lib>=1", "never; python_version < '3'", "extra-dep; extra == 'fast'", "absent"],
                extras=["fast"],
                requested=True,
            ),
            item("lib", []),
            item("extra_dep", []),
            item("never", []),
        ]
    }
    parsed = {p.name: p for p in lock_tool.parse_report(report)}
    assert parsed["app"].requires == {"lib", "extra-dep"} and parsed["app"].requested
    assert parsed["lib"].sha256 == "ab" * 32 and not parsed["lib"].requested


def test_lock_tool_insists_on_one_pinned_torch() -> None:
    assert lock_tool.torch_version(["numpy", "torch==2.13.0"]) == "2.13.0"
    assert lock_tool.with_torch(["torch==2.13.0", "numpy"], "2.13.0+cpu") == ["torch==2.13.0+cpu", "numpy"]
    for bad in (["torch>=2"], ["torch==2.13.0+cpu"], ["numpy"]):
        with pytest.raises(lock_tool.LockError):
            lock_tool.torch_version(bad)
    assert Version(TORCH_VERSION) == Version(lock_tool.torch_version(PYPROJECT["project"]["dependencies"]))


# --- make images ---------------------------------------------------------------------------------


def make(*args: str) -> subprocess.CompletedProcess[str]:
    """``make ARGS`` at the repository root, output captured."""
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO), *args], capture_output=True, text=True, timeout=60
    )


def test_make_images_builds_both_from_the_repository_root() -> None:
    done = make("-n", "images", "DOCKER=docker", "REGISTRY=registry.example.com/ml/", "TAG=1.2.3")
    assert done.returncode == 0, done.stderr
    builds = [line for line in done.stdout.splitlines() if line.startswith("docker build")]
    assert builds == [
        "docker build -f images/agent/Dockerfile -t registry.example.com/ml/nasagent-agent:1.2.3 .",
        "docker build -f images/trainer/Dockerfile -t registry.example.com/ml/nasagent-trainer:1.2.3 .",
    ]
    pushes = [
        line
        for line in make("-n", "images-push", "DOCKER=docker", "REGISTRY=r.example/x", "TAG=t").stdout.splitlines()
        if line.startswith("docker push")
    ]
    assert pushes == ["docker push r.example/x/nasagent-agent:t", "docker push r.example/x/nasagent-trainer:t"]


def test_make_images_says_in_one_line_that_there_is_no_engine() -> None:
    missing = make("images", "DOCKER=nasagent-no-such-docker")
    assert missing.returncode != 0
    assert "'nasagent-no-such-docker' not found: building images needs a Docker engine" in missing.stderr
    unreachable = make("images", "DOCKER=false")
    assert unreachable.returncode != 0 and "'false' cannot reach a Docker engine" in unreachable.stderr
    no_registry = make("images-push", "DOCKER=false", "REGISTRY=")
    assert no_registry.returncode != 0 and "make images-push: set REGISTRY" in no_registry.stderr
    latest = make("images-push", "DOCKER=false", "TAG=latest")
    assert latest.returncode != 0 and "TAG must name one build" in latest.stderr


def test_the_pipelines_default_images_are_what_make_images_push_pushes() -> None:
    """A run that keeps the default agent_image and trainer_image pulls exactly the images
    ``make images-push`` (default REGISTRY, TAG = the package version) pushed: a version tag,
    never ``latest``, which images-push does not make and Docker Hub does not have."""
    sys.path.insert(0, str(REPO))
    try:
        import components
    finally:
        sys.path.remove(str(REPO))
    assert components.VERSION == PYPROJECT["project"]["version"]
    pushes = [
        line.removeprefix("docker push ")
        for line in make("-n", "images-push", "DOCKER=docker").stdout.splitlines()
        if line.startswith("docker push ")
    ]
    assert pushes == [components.AGENT_IMAGE, components.TRAINER_IMAGE]
    for image in pushes:
        reference, _, tag = image.rpartition(":")
        host = reference.split("/")[0]
        # Docker's rule: a first component with a dot, a port or "localhost" names a registry;
        # anything else is a Docker Hub repository.
        assert "/" in reference and ("." in host or ":" in host or host == "localhost"), f"{image}: Docker Hub"
        assert tag == PYPROJECT["project"]["version"] and tag != "latest"
