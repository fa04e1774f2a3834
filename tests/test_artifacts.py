"""The artifact store contract, run on both backends: file:// and s3:// against a real S3 server
(``rclone serve s3`` on loopback, see ``s3_helpers``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from s3_helpers import S3Server, s3_env, s3_server  # noqa: F401  (fixtures)

from nasagent.errors import ArtifactError
from nasagent.persistence.artifacts import ArtifactStore, FileArtifactStore, S3ArtifactStore, open_artifacts


@pytest.fixture(params=["file", "s3"])
def artifacts(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    """An empty store of each backend, opened by URL as users open it."""
    if request.param == "file":
        return open_artifacts(f"file://{tmp_path / 'artifacts'}")
    return open_artifacts(request.getfixturevalue("s3_env"))


def test_binary_round_trip_and_overwrite(artifacts: ArtifactStore) -> None:
    every_byte = bytes(range(256)) * 3
    artifacts.put_bytes("exp/checkpoints/trial-1.pt", every_byte)
    assert artifacts.get_bytes("exp/checkpoints/trial-1.pt") == every_byte
    big = os.urandom(3 * 1024 * 1024 + 7)  # more than one S3 part buffer of small servers
    artifacts.put_bytes("exp/big.bin", big)
    assert artifacts.get_bytes("exp/big.bin") == big
    artifacts.put_bytes("exp/checkpoints/trial-1.pt", b"")
    assert artifacts.get_bytes("exp/checkpoints/trial-1.pt") == b""
    assert artifacts.exists("exp/checkpoints/trial-1.pt")


def test_missing_keys(artifacts: ArtifactStore, tmp_path: Path) -> None:
    assert not artifacts.exists("exp/nothing.pt")
    with pytest.raises(ArtifactError) as info:
        artifacts.get_bytes("exp/nothing.pt")
    assert str(info.value) == f"no artifact exp/nothing.pt in {artifacts.url}"
    with pytest.raises(ArtifactError, match="no artifact exp/nothing.pt in"):
        artifacts.get_file("exp/nothing.pt", tmp_path / "out" / "x")
    assert not (tmp_path / "out" / "x").exists()
    artifacts.delete("exp/nothing.pt")  # deleting what is not there is fine
    artifacts.delete_prefix("exp/")
    assert artifacts.list() == []


def test_listing_with_prefixes(artifacts: ArtifactStore) -> None:
    keys = [
        "a/checkpoints/trial-10.pt",
        "a/checkpoints/trial-2.pt",
        "a/finetuned/rank-1/model.json",
        "a/reports/finetune.json",
        "ab/reports/x.json",
        "datasets/digits/x.npz",
    ]
    for key in reversed(keys):
        artifacts.put_bytes(key, key.encode())
    assert artifacts.list() == sorted(keys)
    assert artifacts.list("a/") == keys[:4]
    assert artifacts.list("a") == keys[:5]  # a plain string prefix, as in S3
    assert artifacts.list("a/checkpoints/trial-1") == ["a/checkpoints/trial-10.pt"]
    assert artifacts.list("a/finetuned/rank-1/") == ["a/finetuned/rank-1/model.json"]
    assert artifacts.list("zzz/") == []
    assert all(artifacts.get_bytes(k) == k.encode() for k in keys)


def test_delete_and_delete_prefix(artifacts: ArtifactStore) -> None:
    for key in [
        "e/finetuned/rank-1/model.json",
        "e/finetuned/rank-1/weights.pt",
        "e/finetuned/rank-2/model.json",
        "e/checkpoints/trial-3.pt",
        "e2/finetuned/rank-1/model.json",
    ]:
        artifacts.put_bytes(key, b"x")
    artifacts.delete("e/checkpoints/trial-3.pt")
    assert not artifacts.exists("e/checkpoints/trial-3.pt")
    artifacts.delete_prefix("e/finetuned/rank-1/")
    assert artifacts.list("e/") == ["e/finetuned/rank-2/model.json"]
    artifacts.delete_prefix("e/")
    assert artifacts.list() == ["e2/finetuned/rank-1/model.json"]


def test_files_in_and_out(artifacts: ArtifactStore, tmp_path: Path) -> None:
    source = tmp_path / "weights.pt"
    source.write_bytes(os.urandom(100_000))
    artifacts.put_file("e/finetuned/rank-1/weights.pt", source)
    target = tmp_path / "pulled" / "deep" / "weights.pt"
    artifacts.get_file("e/finetuned/rank-1/weights.pt", target)
    assert target.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in target.parent.iterdir()) == ["weights.pt"]  # no temporary files left
    with pytest.raises(ArtifactError, match="cannot read"):
        artifacts.put_file("e/x", tmp_path / "no-such-file")


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "a/../b", "./a", "a/", "a\\b"])
def test_invalid_keys_are_refused(artifacts: ArtifactStore, key: str) -> None:
    with pytest.raises(ArtifactError, match="invalid artifact key"):
        artifacts.put_bytes(key, b"x")


def test_file_store_writes_atomically_under_its_root(tmp_path: Path) -> None:
    store = open_artifacts(f"file://{tmp_path}")
    assert isinstance(store, FileArtifactStore) and store.url == f"file://{tmp_path}"
    store.put_bytes("e/reports/r.json", b"{}")
    assert (tmp_path / "e" / "reports" / "r.json").read_bytes() == b"{}"
    # A temporary file of an interrupted write is never listed as a key.
    (tmp_path / "e" / "reports" / f".r.json.{'0' * 32}.tmp").write_bytes(b"partial")
    assert store.list() == ["e/reports/r.json"]
    store.delete("e/reports/r.json")
    assert (tmp_path / "e" / "reports").exists()  # holds the stray temporary file
    store.put_bytes("f/a/b/c", b"1")
    store.delete("f/a/b/c")
    assert not (tmp_path / "f").exists()  # emptied directories go, as S3 "directories" do


def test_default_location_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NASAGENT_ARTIFACTS", raising=False)
    monkeypatch.setenv("NASAGENT_HOME", str(tmp_path / "home"))
    assert open_artifacts().url == f"file://{tmp_path / 'home' / 'artifacts'}"
    monkeypatch.setenv("NASAGENT_ARTIFACTS", f"file://{tmp_path / 'elsewhere'}")
    assert open_artifacts(None).url == f"file://{tmp_path / 'elsewhere'}"


@pytest.mark.parametrize(
    "url, words",
    [
        ("ftp://host/x", "must start with file:/// or s3://"),
        ("/plain/path", "must start with file:/// or s3://"),
        ("file://relative/path", "must be file:///ABSOLUTE/PATH"),
        ("s3://A_Bad_Bucket/x", "not a valid S3 bucket name"),
        ("s3://good-bucket/x", "needs the S3 endpoint in NASAGENT_S3_ENDPOINT"),
    ],
)
def test_bad_urls_are_one_line_errors(url: str, words: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NASAGENT_S3_ENDPOINT", raising=False)
    with pytest.raises(ArtifactError) as info:
        open_artifacts(url)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_bad_endpoint_and_half_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NASAGENT_S3_ENDPOINT", "127.0.0.1:9000")
    with pytest.raises(ArtifactError, match="must look like http://HOST:PORT"):
        open_artifacts("s3://bucket/x")
    monkeypatch.setenv("NASAGENT_S3_ENDPOINT", "http://127.0.0.1:9000")
    monkeypatch.setenv("NASAGENT_S3_ACCESS_KEY", "key")
    monkeypatch.delenv("NASAGENT_S3_SECRET_KEY", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    with pytest.raises(ArtifactError, match="need both"):
        open_artifacts("s3://bucket/x")


def test_credentials_fall_back_to_aws_variables(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NASAGENT_S3_ENDPOINT", s3_server.endpoint)
    monkeypatch.delenv("NASAGENT_S3_ACCESS_KEY", raising=False)
    monkeypatch.delenv("NASAGENT_S3_SECRET_KEY", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    store = open_artifacts(f"s3://{s3_server.bucket}/aws-fallback")
    store.put_bytes("k", b"v")
    assert store.get_bytes("k") == b"v"
    # Objects live under the URL's prefix in the bucket, i.e. in the served directory.
    assert (s3_server.root / s3_server.bucket / "aws-fallback" / "k").read_bytes() == b"v"


def test_wrong_secret_is_one_line_access_denied(
    s3_server: S3Server, s3_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    open_artifacts(s3_env).put_bytes("k", b"v")
    monkeypatch.setenv("NASAGENT_S3_SECRET_KEY", "not-the-secret")
    store = open_artifacts(s3_env)
    for action in (
        lambda: store.get_bytes("k"),
        lambda: store.list(),
        lambda: store.put_bytes("k2", b"x"),
        lambda: store.exists("k"),
    ):
        with pytest.raises(ArtifactError) as info:
            action()
        message = str(info.value)
        assert (
            message.startswith("access denied to s3://") and "NASAGENT_S3_SECRET_KEY" in message and "\n" not in message
        )
        assert "not-the-secret" not in message


def test_missing_bucket_and_unreachable_server(
    s3_server: S3Server, s3_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_artifacts("s3://no-such-bucket/x")
    for action in (lambda: store.get_bytes("k"), lambda: store.put_bytes("k", b"x"), lambda: store.exists("k")):
        with pytest.raises(ArtifactError, match="no bucket 'no-such-bucket'"):
            action()
    from s3_helpers import free_port

    monkeypatch.setenv("NASAGENT_S3_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    store = open_artifacts(s3_env)
    assert isinstance(store, S3ArtifactStore)
    with pytest.raises(ArtifactError) as info:
        store.get_bytes("k")
    assert str(info.value).startswith("cannot reach S3 endpoint http://127.0.0.1:") and "\n" not in str(info.value)
