"""The support matrix, proven offline: every committed compiled pipeline (``pipelines/*.yaml``) is
parsed strictly with the protos each Kubeflow Pipelines backend parses it with, and avoids the
constructs older backends are known to mishandle.

No KFP API server can run here. What a backend does with a pipeline file is, first, parse it:
the API server reads the PipelineSpec and the PlatformSpec with ``protojson.Unmarshal`` and at run
creation the Argo compiler reads each executor's ``KubernetesExecutorConfig`` the same way, all
of which reject unknown fields (``backend/src/apiserver/template/v2_template.go`` and
``backend/src/v2/compiler/argocompiler/container.go`` at the release tags; in 2.5 the compiler
swallows the error and drops the pod's labels instead). The Go backend of a release is built
with the protos in its own tree (``go.mod`` replaces ``api`` and ``kubernetes_platform`` with
``./api`` and ``./kubernetes_platform``); the PyPI releases below carry the same messages and
fields, which the last test of this module checks descriptor by descriptor against the ``.pb.go``
files of each tag when a kubeflow/pipelines clone is at hand (``KFP_PIPELINES_GIT_DIR``), so
``google.protobuf.json_format.ParseDict`` without ``ignore_unknown_fields`` stands in for the Go
parser.

Each release's protos are installed from PyPI (``pip install --no-deps --target``) into
``.cache/kfp-protos/<release>/`` (git-ignored, reused between runs) together with the protobuf
runtime they were generated for, and imported in a subprocess started with ``python -I -S``, so
that neither the installed kfp nor its protos are visible there.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # components/ and pipelines/ live at the repository root
    sys.path.insert(0, str(ROOT))

from pipelines.search_pipeline import TARGETS  # noqa: E402

CACHE = ROOT / ".cache" / "kfp-protos"
PROTOBUF_4 = ("protobuf==4.25.9", "googleapis-common-protos==1.63.2")  # what 0.6.0 / 1.x require: <5
PROTOBUF_6 = ("protobuf==6.33.6", "googleapis-common-protos==1.76.0")  # what 2.15 / 2.16 require: >=6.31.1,<7


@dataclass(frozen=True)
class Release:
    """A KFP backend release and the PyPI protos identical to the ones it is built with."""

    name: str
    backend: str
    kubeflow: str
    pins: tuple[str, ...]
    supported: bool

    def pin(self, package: str) -> str:
        """The pinned version of ``package``."""
        return next(p.split("==")[1] for p in self.pins if p.startswith(f"{package}=="))


RELEASES = (
    # Kubeflow 1.10.0 shipped KFP 2.4.1: no Secret names, node selectors or tolerations from
    # parameters at all. Not supported; kept to show what the check rejects.
    Release("kfp-2.4", "2.4.1", "1.10.0", ("kfp-pipeline-spec==0.6.0", "kfp-kubernetes==1.4.0", *PROTOBUF_4), False),
    # kfp-pipeline-spec 0.6.0 lacks three PipelineConfig fields of the 2.5.0 tree (mutex_name,
    # resource_ttl, semaphore_key), which the pipeline never sets: it is the stricter parser.
    Release("kfp-2.5", "2.5.0", "1.10.1", ("kfp-pipeline-spec==0.6.0", "kfp-kubernetes==1.5.0", *PROTOBUF_4), True),
    Release("kfp-2.15", "2.15.0", "1.11", ("kfp-pipeline-spec==2.15.0", "kfp-kubernetes==2.15.0", *PROTOBUF_6), True),
    Release("kfp-2.16", "2.16.0", "26.03", ("kfp-pipeline-spec==2.16.0", "kfp-kubernetes==2.16.0", *PROTOBUF_6), True),
)

# Which backends accept which committed file. Each file must be accepted by its own target (the one
# README and docs/kubeflow.md tell to submit it to); the rest documents the boundaries.
ACCEPTED_BY = {
    "search_pipeline.yaml": {"kfp-2.16"},  # securityContext: 2.16 only
    "search_pipeline.kfp-2.15.yaml": {"kfp-2.15", "kfp-2.16"},  # Secret 'optional': 2.15 and later
    "search_pipeline.kfp-2.5.yaml": {"kfp-2.5", "kfp-2.15", "kfp-2.16"},
    # The one-component pipeline the kfp launcher compiles at run time (optional S3 Secret).
    "kfp-launcher trial pipeline": {"kfp-2.15", "kfp-2.16"},
}

PARSER = r"""
import importlib.util, json, os, sys
folder = sys.argv[1]
sys.path.insert(0, folder)
import google.protobuf
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2 as spec_pb2
# kfp/kubernetes/__init__.py imports the kfp SDK, which is not here: load the generated module alone.
location = os.path.join(folder, "kfp", "kubernetes", "kubernetes_executor_config_pb2.py")
loader = importlib.util.spec_from_file_location("kubernetes_executor_config_pb2", location)
k8s_pb2 = importlib.util.module_from_spec(loader)
loader.loader.exec_module(k8s_pb2)

def errors(document, message):
    try:
        json_format.ParseDict(document, message)  # unknown fields are errors
        return []
    except json_format.ParseError as exc:
        return [str(exc).splitlines()[0]]

results = {}
for name, documents in json.load(sys.stdin).items():
    found = errors(documents[0], spec_pb2.PipelineSpec())
    for platform in documents[1:]:
        found += errors(platform, spec_pb2.PlatformSpec())
        executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        for executor, config in sorted(executors.items()):
            found += [f"{executor}: {e}" for e in errors(config, k8s_pb2.KubernetesExecutorConfig())]
    results[name] = found
loaded = [spec_pb2.__file__, k8s_pb2.__file__, google.protobuf.__file__]
print(json.dumps({"results": results, "protobuf": google.protobuf.__version__, "loaded": loaded}))
"""


def release_protos(release: Release) -> Path:
    """The folder holding ``release``'s protos (installed into the cache on first use)."""
    folder = CACHE / release.name
    marker = folder / "pins.txt"
    wanted = "\n".join(release.pins) + "\n"
    if marker.is_file() and marker.read_text(encoding="utf-8") == wanted:
        return folder
    CACHE.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{release.name}-", dir=CACHE))
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps"]
    done = subprocess.run(
        [*command, "--target", str(staging), *release.pins], capture_output=True, text=True, timeout=600
    )
    if done.returncode:
        shutil.rmtree(staging, ignore_errors=True)
        pytest.fail(f"cannot install the protos of {release.name} ({' '.join(release.pins)}): {done.stderr[-2000:]}")
    (staging / "pins.txt").write_text(wanted, encoding="utf-8")
    shutil.rmtree(folder, ignore_errors=True)
    try:
        staging.rename(folder)
    except OSError:  # another test session installed it at the same moment
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def parse_strictly(release: Release, documents: dict[str, list[dict[str, Any]]]) -> dict[str, list[str]]:
    """Parse each file's documents with ``release``'s protos, in an interpreter that sees nothing
    else; the parse errors of each file (empty: accepted)."""
    folder = release_protos(release)
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", PARSER, str(folder)],
        input=json.dumps(documents),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    # The isolation worked: the protos and the protobuf runtime came from the release's folder.
    assert all(Path(path).resolve().is_relative_to(folder.resolve()) for path in report["loaded"]), report["loaded"]
    assert report["protobuf"] == next(p for p in release.pins if p.startswith("protobuf==")).split("==")[1]
    return report["results"]


def committed_files() -> dict[str, list[dict[str, Any]]]:
    """Every committed compiled pipeline: file name -> its YAML documents (spec, platform spec)."""
    files = sorted((ROOT / "pipelines").glob("*.yaml"))
    assert {f.name for f in files} == {t.package.name for t in TARGETS}, "a target's file is missing, or a stray one"
    return {f.name: list(yaml.safe_load_all(f.read_text(encoding="utf-8"))) for f in files}


def trial_pipeline_documents(tmp_path: Path) -> list[dict[str, Any]]:
    """The kfp launcher's trial pipeline, compiled as an agent would with GPU, selector and toleration."""
    from nasagent.execution.cluster import LauncherSettings
    from nasagent.execution.kfp import compile_trial_pipeline

    settings = LauncherSettings(
        experiment="matrix",
        image="ghcr.io/nasagent/nasagent-trainer:0.1.0",
        gpus_per_trial=1,
        node_selector={"nvidia.com/gpu.present": "true"},
        tolerations=({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},),
        artifacts="s3://mlpipeline/private/ns/nasagent",
    )
    path = compile_trial_pipeline(settings, tmp_path / "trial.yaml")
    return list(yaml.safe_load_all(path.read_text(encoding="utf-8")))


@pytest.mark.parametrize("release", RELEASES, ids=[r.name for r in RELEASES])
def test_each_backend_accepts_exactly_the_files_that_claim_it(release: Release, tmp_path: Path) -> None:
    documents = {**committed_files(), "kfp-launcher trial pipeline": trial_pipeline_documents(tmp_path)}
    results = parse_strictly(release, documents)
    for name, errors in results.items():
        if release.name in ACCEPTED_BY[name]:
            assert errors == [], f"{name} is meant for {release.name} (Kubeflow {release.kubeflow}): {errors}"
        else:
            assert errors, f"{name} parses with {release.name}: add it to ACCEPTED_BY (and the docs)"


def test_every_supported_kubeflow_release_has_its_file() -> None:
    for target in TARGETS:
        release = next(r for r in RELEASES if r.backend == target.backend)
        assert release.supported and release.name == target.name
        assert release.name in ACCEPTED_BY[target.package.name]
    assert {r.name for r in RELEASES if r.supported} == {t.name for t in TARGETS}


def dags(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every DAG of a pipeline spec: "root" and each DAG component, by name."""
    found = {"root": spec["root"]}
    found.update({name: c for name, c in spec["components"].items() if "dag" in c})
    return found


def test_no_task_is_renamed_so_older_backends_find_producers() -> None:
    """Before KFP 2.14 the driver finds a producer task by the name it ran under (taskInfo.name),
    while consumers name its task key: a display name breaks every task that reads its outputs
    (kubeflow/pipelines#11173, #10371; ``getDAGTasks`` in backend/src/v2/driver at 2.5.0)."""
    for name, (spec, _) in committed_files().items():
        for dag_name, component in dags(spec).items():
            for key, task in component["dag"]["tasks"].items():
                assert task["taskInfo"]["name"] == key, f"{name}: {dag_name}/{key} runs as {task['taskInfo']['name']!r}"


def test_every_parameter_a_task_reads_is_declared_by_its_dag() -> None:
    """The driver resolves a task's ``componentInputParameter`` (an input, a Secret or ConfigMap
    name, a node selector, tolerations) from the inputs of the DAG that runs the task
    (``resolveInputParameter``: "parent DAG does not have input parameter"); inside a ParallelFor
    that DAG is the loop's, which must declare it. kfp 2.17 declares what a task's Kubernetes
    settings read (the fix of kubeflow/pipelines#13078, seen failing on KFP 2.5), but not what
    only a CPU or memory setting reads: such a task fails in its loop (kfp.local shows it too)."""
    for name, (spec, platform) in committed_files().items():
        executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        checked = set()
        for dag_name, component in dags(spec).items():
            declared = set(component.get("inputDefinitions", {}).get("parameters", {}))
            for key, task in component["dag"]["tasks"].items():
                executor = spec["components"][task["componentRef"]["name"]].get("executorLabel")
                reads = parameter_references(task.get("inputs", {})) + parameter_references(executors.get(executor, {}))
                for reference in reads:
                    assert reference in declared, f"{name}: {dag_name}/{key} reads {reference}, which it lacks"
                    checked.add((dag_name, reference))
        # The finetune loop reads the Secret names and the GPU pool's selector and tolerations so.
        loop = {ref for dag_name, ref in checked if dag_name == "comp-for-loop-2"}
        assert {"pipelinechannel--db_secret", "pipelinechannel--gpu_node_selector"} <= loop, name


def parameter_references(config: Any) -> list[str]:
    """Every ``componentInputParameter`` in a Kubernetes executor config."""
    if isinstance(config, dict):
        found = [config["componentInputParameter"]] if "componentInputParameter" in config else []
        return found + [ref for value in config.values() for ref in parameter_references(value)]
    if isinstance(config, list):
        return [ref for item in config for ref in parameter_references(item)]
    return []


# -- the PyPI protos are the backends' own ------------------------------------------------------

KFP_GIT_DIR = os.environ.get("KFP_PIPELINES_GIT_DIR", "")
GO_DESCRIPTORS = {  # PyPI package -> (Go module of the backend, its generated file, the pb2's folder)
    "kfp-kubernetes": (
        "kubernetes_platform",
        "kubernetes_platform/go/kubernetesplatform/kubernetes_executor_config.pb.go",
        "kubernetes",
    ),
    "kfp-pipeline-spec": ("api", "api/v2alpha1/go/pipelinespec/pipeline_spec.pb.go", "pipeline_spec"),
}
# Where a PyPI release and the tree of its backend tag differ (message -> field names in only one).
KNOWN_DIFFERENCES = {
    # The 2.5.0 tree has three PipelineConfig fields kfp-pipeline-spec 0.6.0 lacks: the stricter
    # parser, and the pipeline sets none of them.
    ("kfp-2.5", "kfp-pipeline-spec"): {"ml_pipelines.PipelineConfig": {"mutex_name", "resource_ttl", "semaphore_key"}},
    # 0.6.0 knows a field 2.4.1 does not; 2.4.1 is shown rejecting the files on other grounds.
    ("kfp-2.4", "kfp-pipeline-spec"): {"ml_pipelines.PipelineTaskSpec.CachingOptions": {"cache_key"}},
}


def go_string(literal: str) -> bytes:
    """The bytes of a Go interpreted string literal's body."""
    simple = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92, '"': 34, "'": 39}
    out, i = bytearray(), 0
    while i < len(literal):
        if literal[i] != "\\":
            out += literal[i].encode()
            i += 1
        elif literal[i + 1] in simple:
            out.append(simple[literal[i + 1]])
            i += 2
        elif literal[i + 1] == "x":
            out.append(int(literal[i + 2 : i + 4], 16))
            i += 4
        elif literal[i + 1] in "01234567":
            out.append(int(literal[i + 1 : i + 4], 8))
            i += 4
        else:  # \u and \U
            width = 4 if literal[i + 1] == "u" else 8
            out += chr(int(literal[i + 2 : i + 2 + width], 16)).encode()
            i += 2 + width
    return bytes(out)


def git(*args: str) -> str:
    """``git ARGS`` in the kubeflow/pipelines clone; its output."""
    return subprocess.run(["git", f"--git-dir={KFP_GIT_DIR}", *args], capture_output=True, text=True, check=True).stdout


def go_module_revision(tag: str, module: str) -> str:
    """The revision whose ``module`` (``api``, ``kubernetes_platform``) the backend at ``tag`` is
    built with: its own tree when ``go.mod`` replaces the module with ``./module`` (2.5.0 and
    later), else the commit of the pseudo-version it requires (2.4.1)."""
    go_mod = git("show", f"{tag}:go.mod")
    if f"github.com/kubeflow/pipelines/{module} => ./{module}" in go_mod:
        return tag
    required = re.search(rf"github.com/kubeflow/pipelines/{module} v0\.0\.0-\d{{14}}-([0-9a-f]{{12}})", go_mod)
    assert required, f"{tag}: go.mod neither replaces nor pins {module}"
    return required.group(1)


def go_descriptor(tag: str, path: str) -> bytes:
    """The serialized FileDescriptorProto a ``.pb.go`` file at ``tag`` embeds (``rawDesc``)."""
    source = git("show", f"{tag}:{path}")
    start = re.search(r"(?:var|const) file_\w+_rawDesc = (\[\]byte\{|\"\" \+)", source)
    assert start, f"{path} at {tag}: no rawDesc"
    if start.group(1).startswith("[]byte"):
        body = source[start.end() : source.index("\n}", start.end())]
        return bytes(int(x, 16) for x in re.findall(r"0x([0-9a-f]{2})", body))
    body = source[start.end() : source.index("\n\n", start.end())]
    return b"".join(go_string(piece) for piece in re.findall(r'"((?:[^"\\]|\\.)*)"', body))


def pypi_descriptor(folder: Path, module: str) -> bytes:
    """The serialized FileDescriptorProto a generated ``*_pb2.py`` adds to the pool (read, not imported)."""
    text = (
        folder
        / "kfp"
        / module
        / f"{'kubernetes_executor_config' if module == 'kubernetes' else 'pipeline_spec'}_pb2.py"
    ).read_text()
    start = text.index("AddSerializedFile(") + len("AddSerializedFile(")
    return ast.literal_eval(text[start : text.index(")\n", start)])


def fields(serialized: bytes) -> dict[str, set[tuple[Any, ...]]]:
    """Every message's fields (name, number, type, label, type name) and every enum's values."""
    from google.protobuf import descriptor_pb2

    descriptor = descriptor_pb2.FileDescriptorProto.FromString(serialized)
    found: dict[str, set[tuple[Any, ...]]] = {}

    def walk(prefix: str, messages: Any, enums: Any) -> None:
        for enum in enums:
            found[f"{prefix}.{enum.name}"] = {(v.name, v.number) for v in enum.value}
        for message in messages:
            name = f"{prefix}.{message.name}"
            found[name] = {(f.name, f.number, f.type, f.label, f.type_name) for f in message.field}
            walk(name, message.nested_type, message.enum_type)

    walk(descriptor.package, descriptor.message_type, descriptor.enum_type)
    return found


@pytest.mark.skipif(not KFP_GIT_DIR, reason="set KFP_PIPELINES_GIT_DIR to a kubeflow/pipelines clone with its tags")
@pytest.mark.parametrize("release", RELEASES, ids=[r.name for r in RELEASES])
def test_the_pypi_protos_are_the_ones_the_backend_is_built_with(release: Release) -> None:
    """The backend parses with the Go code generated for it: in its own tree where ``go.mod``
    replaces ``api`` and ``kubernetes_platform`` with ``./api`` and ``./kubernetes_platform``, else
    at the commit it requires. The PyPI releases used above must describe the same messages,
    fields and enum values, but for ``KNOWN_DIFFERENCES``."""
    folder = release_protos(release)
    for package, (module, path, pb2) in GO_DESCRIPTORS.items():
        revision = go_module_revision(release.backend, module)
        backend = fields(go_descriptor(revision, path))
        pypi = fields(pypi_descriptor(folder, pb2))
        differences = {
            name: {field[0] for field in backend.get(name, set()) ^ pypi.get(name, set())}
            for name in set(backend) | set(pypi)
        }
        differences = {name: names for name, names in differences.items() if names}
        known = KNOWN_DIFFERENCES.get((release.name, package), {})
        assert differences == known, f"{package} {release.pin(package)} vs {module} at {revision}"
