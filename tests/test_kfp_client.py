"""How nasagent reaches the KFP API: the ``kfp`` launcher (``nasagent.execution.kfp.connect_kfp``)
and ``python -m pipelines.search_pipeline submit``, run with the real ``kfp.Client`` against a fake
KFP API server over HTTP, because no KFP server can run here.

In multi-user Kubeflow a pod authenticates with the service account token the PodDefault
``access-ml-pipeline`` projects (audience ``pipelines.kubeflow.org``) at the path kfp 2.17 reads
(``$KF_PIPELINES_SA_TOKEN_PATH``): the client must send exactly that token, re-read when the
kubelet rotates it, and say in one line what is missing when the pod has none. The PodDefault
shipped in ``manifests/overlays/kubeflow`` must project that token where the client reads it.
The documented ``submit`` command must start the run under the ServiceAccount ``nasagent-agent``,
which the kfp 2.17 CLI cannot do.
"""

from __future__ import annotations

import http.server
import json
import shlex
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from nasagent.errors import ClusterError
from nasagent.execution.kfp import ACCESS_LABEL, KFP_TOKEN_PATH, TOKEN_PATH_ENV, connect_kfp

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # components/ and pipelines/ live at the repository root
    sys.path.insert(0, str(ROOT))
PODDEFAULT = ROOT / "manifests" / "overlays" / "kubeflow" / "poddefault-access-ml-pipeline.yaml"


class FakeKfpServer:
    """A FAKE KFP API server (v2beta1 over HTTP on 127.0.0.1). It models the healthz answer
    (``multi_user``), listing experiments by name (none exist), creating one, and creating a run,
    and records each request's path, ``Authorization`` header and body. It checks no token (a real
    server sends it to a TokenReview), validates no pipeline and runs nothing."""

    def __init__(self, multi_user: bool) -> None:
        self.multi_user = multi_user
        self.requests: list[tuple[str, str, str | None]] = []
        self.bodies: dict[str, list[dict[str, Any]]] = {}
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _record(self) -> str:
                path = self.path.split("?")[0]
                fake.requests.append((self.command, path, self.headers.get("Authorization")))
                return path

            def do_GET(self) -> None:
                path = self._record()
                if path == "/apis/v2beta1/healthz":
                    self._reply({"multi_user": fake.multi_user})
                else:  # listing experiments by name: there are none yet
                    self._reply({})

            def do_POST(self) -> None:
                path = self._record()
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.bodies.setdefault(path, []).append(body)
                if path == "/apis/v2beta1/runs":
                    self._reply({"run_id": "run-1", "display_name": body["display_name"]})
                else:
                    self._reply({"experiment_id": "exp-1", "display_name": body["display_name"], "namespace": "ns"})

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def tokens(self, path: str) -> list[str | None]:
        """The Authorization headers of the requests to ``path``."""
        return [auth for _, request_path, auth in self.requests if request_path == path]


@pytest.fixture
def pod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A pod's environment: its namespace, no kfp CLI context, the token path the PodDefault sets."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("POD_NAMESPACE", "kubeflow-user-example-com")
    token = tmp_path / "kubeflow" / "pipelines" / "token"
    monkeypatch.setenv(TOKEN_PATH_ENV, str(token))
    return token


@pytest.fixture
def multi_user() -> Iterator[FakeKfpServer]:
    server = FakeKfpServer(multi_user=True)
    yield server
    server.close()


def test_the_projected_token_is_sent_and_reread_when_it_rotates(pod: Path, multi_user: FakeKfpServer) -> None:
    pod.parent.mkdir(parents=True)
    pod.write_text("token-1\n", encoding="utf-8")
    client = connect_kfp(multi_user.url, None)
    assert client.namespace == "kubeflow-user-example-com"  # runs go into the pod's profile namespace
    assert client.ensure_experiment("search") == "exp-1"
    assert multi_user.tokens("/apis/v2beta1/experiments") == ["Bearer token-1", "Bearer token-1"]  # list, create

    pod.write_text("token-2\n", encoding="utf-8")  # the kubelet rotates projected tokens
    client.ensure_experiment("search")
    assert multi_user.tokens("/apis/v2beta1/experiments")[-1] == "Bearer token-2"


def test_a_multi_user_kfp_without_a_token_is_one_clear_line(pod: Path, multi_user: FakeKfpServer) -> None:
    with pytest.raises(ClusterError) as error:
        connect_kfp(multi_user.url, "team-a")
    message = str(error.value)
    assert "\n" not in message and f"no KFP token at {pod}" in message
    assert f"label the pod {ACCESS_LABEL}=true" in message and "poddefault-access-ml-pipeline.yaml" in message
    assert [path for _, path, _ in multi_user.requests] == ["/apis/v2beta1/healthz"]  # nothing else was tried


def test_single_user_kfp_needs_no_token(pod: Path) -> None:
    server = FakeKfpServer(multi_user=False)
    try:
        client = connect_kfp(server.url, None)
        assert client.ensure_experiment("search") == "exp-1"
        assert set(server.tokens("/apis/v2beta1/experiments")) == {None}  # no service account token is sent
    finally:
        server.close()


def test_an_unreachable_kfp_is_one_line(pod: Path) -> None:
    server = FakeKfpServer(multi_user=True)
    url = server.url
    server.close()  # nothing listens there any more
    with pytest.raises(ClusterError, match=f"^cannot reach Kubeflow Pipelines at {url}: [^\n]+$"):
        connect_kfp(url, None)


def test_the_poddefault_projects_the_token_where_the_client_reads_it() -> None:
    poddefault = yaml.safe_load(PODDEFAULT.read_text(encoding="utf-8"))
    assert poddefault["apiVersion"] == "kubeflow.org/v1alpha1" and poddefault["kind"] == "PodDefault"
    assert poddefault["metadata"]["name"] == ACCESS_LABEL
    spec = poddefault["spec"]
    assert spec["selector"] == {"matchLabels": {ACCESS_LABEL: "true"}}
    (volume,) = spec["volumes"]
    (source,) = volume["projected"]["sources"]
    # The KFP API server's TokenReview audience (DefaultTokenReviewAudience, backend 2.5 to 2.16).
    assert source["serviceAccountToken"]["audience"] == "pipelines.kubeflow.org"
    (mount,) = spec["volumeMounts"]
    assert mount["name"] == volume["name"] and mount.get("readOnly") is True
    token_path = Path(mount["mountPath"]) / source["serviceAccountToken"]["path"]
    assert str(token_path) == KFP_TOKEN_PATH
    assert {"name": TOKEN_PATH_ENV, "value": KFP_TOKEN_PATH} in spec["env"]


def documented_submit_commands() -> list[str]:
    """The ``python -m pipelines.search_pipeline submit`` commands of README.md and docs/kubeflow.md."""
    commands = []
    for page in (ROOT / "README.md", ROOT / "docs" / "kubeflow.md"):
        lines = page.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if line.startswith(".venv/bin/python -m pipelines.search_pipeline submit "):
                command = line
                while command.endswith("\\"):
                    i += 1
                    command = command[:-1] + lines[i]
                commands.append(command)
    return commands


def test_the_documented_submit_command_runs_the_pipeline_as_nasagent_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipelines.search_pipeline import main

    monkeypatch.setenv("HOME", str(tmp_path))
    commands = documented_submit_commands()
    assert len(commands) == 2
    for command in commands:
        server = FakeKfpServer(multi_user=True)
        try:
            words = shlex.split(command.replace("$NS", "kubeflow-user-example-com").replace("$TOKEN", "tok"))
            argv = words[words.index("submit") :]
            argv[argv.index("--endpoint") + 1] = server.url  # the port-forward, here the fake
            assert main(argv) == 0, command
            (run,) = server.bodies["/apis/v2beta1/runs"]
        finally:
            server.close()
        assert run["service_account"] == "nasagent-agent"
        assert run["display_name"] == argv[argv.index("--run-name") + 1]
        assert run["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "nasagent-search"
        given = dict(word.split("=", 1) for word in argv if "=" in word and not word.startswith("-"))
        parameters = run["runtime_config"]["parameters"]
        assert {key: str(parameters[key]) for key in given} == given
        assert set(server.tokens("/apis/v2beta1/runs")) == {"Bearer tok"}
        assert "as service account nasagent-agent" in capsys.readouterr().out


def test_the_kfp_cli_cannot_set_a_runs_service_account() -> None:
    """Why ``submit`` exists: ``kfp run create`` (kfp 2.17) has no service-account option, the SDK has."""
    import inspect

    from kfp import Client
    from kfp.cli.run import create

    options = {option for param in create.params for option in getattr(param, "opts", [])}
    assert "--package-file" in options and not {o for o in options if "service" in o}
    assert "service_account" in inspect.signature(Client.create_run_from_pipeline_package).parameters
