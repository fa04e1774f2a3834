"""The artifact store: checkpoints, finetuned models and reports, on local disk or in S3.

Keys are ``/``-separated paths such as ``<experiment>/checkpoints/trial-<id>.pt``,
``<experiment>/finetuned/rank-<r>/model.json``, ``<experiment>/reports/...`` or
``datasets/<name>/...``. Two backends behave identically (one contract test suite runs on both):

* ``file:///abs/path``: files under a directory; every write goes to a temporary file that is
  then renamed, so a reader (or a process killed mid-write) never leaves a half-written artifact.
  Files are created private to their owner (0600, folders 0700): weights and reports are the
  user's work, not the machine's other users'.
* ``s3://bucket/prefix``: any S3-compatible server through the ``minio`` SDK. The endpoint and
  credentials come from the environment (``NASAGENT_S3_ENDPOINT``, ``NASAGENT_S3_ACCESS_KEY``,
  ``NASAGENT_S3_SECRET_KEY``, falling back to ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``),
  never from the URL, so URLs can be logged and stored safely. The bucket must exist.

``open_artifacts(None)`` is ``$NASAGENT_ARTIFACTS`` or ``file://$NASAGENT_HOME/artifacts``. Every
failure a user can cause (bad URL, missing endpoint, wrong secret, unreachable server, missing
artifact) is an ``ArtifactError`` with a one-line message.
"""

from __future__ import annotations

import errno
import io
import os
import re
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from nasagent.errors import ArtifactError
from nasagent.persistence.embedded import nasagent_home

ENV_URL = "NASAGENT_ARTIFACTS"
ENV_ENDPOINT = "NASAGENT_S3_ENDPOINT"
ENV_ACCESS_KEY = "NASAGENT_S3_ACCESS_KEY"
ENV_SECRET_KEY = "NASAGENT_S3_SECRET_KEY"
ENV_REGION = "NASAGENT_S3_REGION"
# Connection failures should reach the user in seconds, not after minio's default 5-minute timeouts.
S3_CONNECT_TIMEOUT_S = 5.0
S3_READ_TIMEOUT_S = 120.0
S3_RETRIES = 2


T = TypeVar("T")


def check_key(key: str) -> str:
    """``key`` if it is a valid artifact key (``/``-separated, no empty, ``.`` or ``..`` parts), else ArtifactError."""
    if not isinstance(key, str) or not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise ArtifactError(f"invalid artifact key {key!r}")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise ArtifactError(f"invalid artifact key {key!r}")
    return key


def check_prefix(prefix: str) -> str:
    """``prefix`` if it can start valid keys ("" and a trailing ``/`` allowed), else ArtifactError."""
    if prefix:
        body = prefix[:-1] if prefix.endswith("/") else prefix
        if not body:
            raise ArtifactError(f"invalid artifact prefix {prefix!r}")
        check_key(body)
    return prefix


def experiment_key(experiment: str, *parts: str) -> str:
    """The key ``<experiment>/<parts...>``; ArtifactError if the experiment name cannot be one key segment."""
    if not experiment or "/" in experiment or experiment in (".", "..") or "\\" in experiment or "\x00" in experiment:
        raise ArtifactError(f"experiment name {experiment!r} cannot name artifacts (no '/', not '.' or '..')")
    return check_key("/".join((experiment, *parts)))


class ArtifactStore(ABC):
    """A flat namespace of keys holding bytes. ``url`` names the store in messages and reports."""

    url: str

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, replacing what was there."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The bytes under ``key``; ArtifactError("no artifact <key> in <url>") if there are none."""

    @abstractmethod
    def put_file(self, key: str, path: Path) -> None:
        """Store the file at ``path`` under ``key``."""

    @abstractmethod
    def get_file(self, key: str, path: Path) -> None:
        """Write the artifact ``key`` to ``path`` (parent directories created); ArtifactError if missing."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether ``key`` holds an artifact."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """All keys starting with ``prefix`` (a plain string prefix, as in S3), sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is fine."""

    def delete_prefix(self, prefix: str) -> None:
        """Remove every key starting with ``prefix``."""
        for key in self.list(prefix):
            self.delete(key)

    def check_writable(self, prefix: str) -> None:
        """Write and delete a small object under ``prefix`` (``<experiment>/``): ArtifactError, in one
        line, if the store cannot take writes (read-only, no space, no permission, wrong secret).

        A search calls it before its first trial, so it never trains for hours into a store that
        cannot keep the results."""
        key = f"{check_prefix(prefix)}.write-check-{uuid.uuid4().hex}"
        self.put_bytes(key, b"nasagent write check\n")
        self.delete(key)

    def missing(self, key: str) -> ArtifactError:
        """The error for an absent ``key``."""
        return ArtifactError(f"no artifact {key} in {self.url}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


# ---------------------------------------------------------------------------------------------
# file://


class FileArtifactStore(ArtifactStore):
    """Artifacts as files under ``root`` (created on the first write)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.url = "file://" + self.root.as_posix()

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def _failed(self, action: str, key: str, exc: OSError) -> ArtifactError:
        return ArtifactError(f"cannot {action} {key} in {self.url}: {exc.strerror or exc}")

    def _write_atomically(self, key: str, fill: Any) -> None:
        target = self._path(key)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            _make_private_dirs(target.parent)
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE), "wb") as out:
                fill(out)
            os.replace(tmp, target)
        except OSError as exc:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass  # the name itself is unusable (too long): nothing was created
            raise self._failed("write", key, exc) from None

    def put_bytes(self, key: str, data: bytes) -> None:
        self._write_atomically(key, lambda out: out.write(data))

    def put_file(self, key: str, path: Path) -> None:
        try:
            source = open(path, "rb")
        except OSError as exc:
            raise ArtifactError(f"cannot read {path}: {exc.strerror or exc}") from None
        with source:
            self._write_atomically(key, lambda out: shutil.copyfileobj(source, out))

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise self.missing(key) from None
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                raise self.missing(key) from None
            raise self._failed("read", key, exc) from None

    def get_file(self, key: str, path: Path) -> None:
        source = self._path(key)
        try:
            found = source.is_file()
        except OSError as exc:
            raise self._failed("read", key, exc) from None
        if not found:
            raise self.missing(key)
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, tmp)
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise self._failed("copy", key, exc) from None

    def exists(self, key: str) -> bool:
        try:
            return self._path(key).is_file()
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                return False  # no file can have that name
            raise self._failed("check", key, exc) from None

    def list(self, prefix: str = "") -> list[str]:
        # Walk only the deepest directory the prefix names completely.
        directory = check_prefix(prefix).rpartition("/")[0]
        start = self.root.joinpath(*directory.split("/")) if directory else self.root
        keys = []
        try:
            for path in _files_under(start):
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix) and not _is_temporary(path.name):
                    keys.append(key)
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                return []  # no file can have that name: there are no such keys
            raise self._failed("list", prefix or "keys", exc) from None
        return sorted(keys)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except IsADirectoryError:
            return
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                return  # no file can have that name: there is nothing to delete
            raise self._failed("delete", key, exc) from None
        # Remove directories left empty, so the tree mirrors the keys (as S3 "directories" do).
        parent = path.parent
        while parent != self.root and self.root in parent.parents:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent


_TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{32}\.tmp$")
PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700


def _make_private_dirs(directory: Path) -> None:
    """``mkdir -p`` whose new folders are all 0700 (``os.makedirs`` applies its mode to the last one only)."""
    missing = []
    while not directory.is_dir():
        missing.append(directory)
        if directory.parent == directory:
            break
        directory = directory.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=PRIVATE_DIR_MODE)
        except FileExistsError:
            if not folder.is_dir():
                raise


def _is_temporary(name: str) -> bool:
    return bool(_TEMPORARY.match(name))


def _files_under(directory: Path) -> Iterator[Path]:
    if not directory.is_dir():
        return
    for parent, _dirs, files in os.walk(directory):
        for name in files:
            yield Path(parent, name)


# ---------------------------------------------------------------------------------------------
# s3://


class S3ArtifactStore(ArtifactStore):
    """Artifacts as objects ``<prefix>/<key>`` in ``bucket`` of the S3 server at ``endpoint``."""

    def __init__(
        self, bucket: str, prefix: str, endpoint: str, access_key: str | None, secret_key: str | None, region: str
    ) -> None:
        import urllib3
        from minio import Minio

        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") or parts.query:
            raise ArtifactError(f"{ENV_ENDPOINT} must look like http://HOST:PORT or https://HOST, got {endpoint!r}")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint = f"{parts.scheme}://{parts.netloc}"
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=S3_CONNECT_TIMEOUT_S, read=S3_READ_TIMEOUT_S),
            maxsize=10,
            retries=urllib3.Retry(total=S3_RETRIES, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        )
        try:
            # A fixed region skips minio's GetBucketLocation round trip (S3-compatible servers ignore it).
            self.client = Minio(
                parts.netloc,
                access_key=access_key,
                secret_key=secret_key,
                secure=parts.scheme == "https",
                region=region,
                http_client=http,
            )
        except ValueError as exc:
            raise ArtifactError(f"cannot use S3 endpoint {self.endpoint}: {exc}") from None

    def _name(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _key(self, name: str) -> str:
        return name[len(self.prefix) + 1 :] if self.prefix else name

    def _error(self, exc: Exception, action: str, key: str) -> ArtifactError:
        """One line for any failure of the SDK, the server or the network."""
        code, status = _s3_code(exc)
        where = f"{self.url} at {self.endpoint}"
        if code in ("NoSuchKey", "NotFound") and key:
            return self.missing(key)
        if code == "NoSuchBucket":
            return ArtifactError(f"no bucket {self.bucket!r} at {self.endpoint}: create it first")
        if code in ("AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId") or status == 403:
            return ArtifactError(
                f"access denied to {where} ({code or status}): check {ENV_ACCESS_KEY} and {ENV_SECRET_KEY}"
            )
        if code is not None or status is not None:
            return ArtifactError(f"cannot {action} {key or 'objects'} in {where}: S3 error {code or status}")
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        if isinstance(exc, ValueError):  # the SDK's own argument checks
            return ArtifactError(f"cannot {action} {key or 'objects'} in {self.url}: {reason}")
        return ArtifactError(f"cannot reach S3 endpoint {self.endpoint} ({action} {key or self.url}): {reason}")

    def _call(self, action: str, key: str, fn: Callable[[], T]) -> T:
        """``fn()``, with every SDK, server and network failure turned into an ArtifactError."""
        import urllib3
        from minio.error import MinioException

        try:
            return fn()
        except (MinioException, urllib3.exceptions.HTTPError, ValueError) as exc:
            raise self._error(exc, action, key) from None

    def _prefix_name(self, prefix: str) -> str:
        base = self.prefix + "/" if self.prefix else ""
        return base + check_prefix(prefix)

    def put_bytes(self, key: str, data: bytes) -> None:
        name = self._name(key)
        self._call("write", key, lambda: self.client.put_object(self.bucket, name, io.BytesIO(data), len(data)))

    def put_file(self, key: str, path: Path) -> None:
        name = self._name(key)
        if not Path(path).is_file():
            raise ArtifactError(f"cannot read {path}: not a file")
        self._call("write", key, lambda: self.client.fput_object(self.bucket, name, str(path)))

    def get_bytes(self, key: str) -> bytes:
        name = self._name(key)

        def read() -> bytes:
            response = self.client.get_object(self.bucket, name)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        return self._call("read", key, read)

    def get_file(self, key: str, path: Path) -> None:
        name = self._name(key)
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # fget_object streams into a temporary file and renames it into place when complete.
            self._call("read", key, lambda: self.client.fget_object(self.bucket, name, str(path)))
        except OSError as exc:
            raise ArtifactError(f"cannot write {path}: {exc.strerror or exc}") from None

    def exists(self, key: str) -> bool:
        name = self._name(key)
        try:
            self._call("check", key, lambda: self.client.stat_object(self.bucket, name))
            return True
        except ArtifactError as exc:
            if str(exc) != str(self.missing(key)):
                raise
        # A HEAD answer has no body, so a missing bucket reads as a missing key: tell them apart.
        if not self._call("check", "", lambda: self.client.bucket_exists(self.bucket)):
            raise ArtifactError(f"no bucket {self.bucket!r} at {self.endpoint}: create it first")
        return False

    def list(self, prefix: str = "") -> list[str]:
        full = self._prefix_name(prefix)
        objects = self._call(
            "list", "", lambda: list(self.client.list_objects(self.bucket, prefix=full, recursive=True))
        )
        return sorted(self._key(o.object_name) for o in objects if not o.is_dir)

    def delete(self, key: str) -> None:
        name = self._name(key)
        self._call("delete", key, lambda: self.client.remove_object(self.bucket, name))

    def delete_prefix(self, prefix: str) -> None:
        from minio.deleteobjects import DeleteObject

        names = [DeleteObject(self._name(key)) for key in self.list(prefix)]
        if not names:
            return
        # remove_objects is lazy: its errors come only as the result is consumed.
        errors = self._call("delete", prefix, lambda: list(self.client.remove_objects(self.bucket, names)))
        if errors:
            raise ArtifactError(f"cannot delete {errors[0].name} in {self.url}: S3 error {errors[0].code}")


def _s3_code(exc: Exception) -> tuple[str | None, int | None]:
    """(S3 error code, HTTP status) of an SDK exception, whatever its content type.

    Servers that answer errors as ``text/xml`` rather than ``application/xml`` (rclone's S3
    server does) make minio raise ``InvalidResponseError`` with the XML left in the body.
    """
    from minio.error import InvalidResponseError, S3Error, ServerError

    if isinstance(exc, S3Error):
        status = exc.response.status if exc.response is not None else None
        return exc.code, status
    if isinstance(exc, InvalidResponseError):
        body = exc._body or ""  # no public accessor in minio 7
        match = re.search(r"<Code>\s*([A-Za-z]+)\s*</Code>", body)
        return (match.group(1) if match else None), exc._code
    if isinstance(exc, ServerError):
        return None, exc.status_code
    return None, None


# ---------------------------------------------------------------------------------------------
# opening


def default_artifacts_url() -> str:
    """``$NASAGENT_ARTIFACTS``, else ``file://$NASAGENT_HOME/artifacts`` (absolute)."""
    configured = os.environ.get(ENV_URL)
    if configured:
        return configured
    return "file://" + (nasagent_home() / "artifacts").absolute().as_posix()


def open_artifacts(url: str | None = None) -> ArtifactStore:
    """The artifact store at ``url`` (None: ``default_artifacts_url()``).

    ``file:///abs/path`` or ``s3://bucket[/prefix]`` (endpoint and credentials from the
    environment, see the module docstring). Opening checks the URL only; the first request
    reports a wrong secret, a missing bucket or an unreachable server (ArtifactError, one line).
    """
    url = url or default_artifacts_url()
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ArtifactError(f"artifact URL {url!r} must be file:///ABSOLUTE/PATH")
        return FileArtifactStore(Path(parts.path))
    if parts.scheme == "s3":
        return _open_s3(url, parts.netloc, parts.path)
    raise ArtifactError(f"artifact URL {url!r} must start with file:/// or s3://")


def _open_s3(url: str, bucket: str, path: str) -> S3ArtifactStore:
    from minio.helpers import check_bucket_name

    try:
        check_bucket_name(bucket, strict=True)
    except ValueError:
        raise ArtifactError(f"artifact URL {url!r}: {bucket!r} is not a valid S3 bucket name") from None
    prefix = path.strip("/")
    if prefix:
        check_key(prefix)
    endpoint = os.environ.get(ENV_ENDPOINT)
    if not endpoint:
        raise ArtifactError(f"artifact URL {url} needs the S3 endpoint in {ENV_ENDPOINT} (e.g. http://127.0.0.1:9000)")
    access = os.environ.get(ENV_ACCESS_KEY) or os.environ.get("AWS_ACCESS_KEY_ID")
    secret = os.environ.get(ENV_SECRET_KEY) or os.environ.get("AWS_SECRET_ACCESS_KEY")
    if bool(access) != bool(secret):
        raise ArtifactError(
            f"S3 credentials need both {ENV_ACCESS_KEY} and {ENV_SECRET_KEY} (or neither, for anonymous access)"
        )
    return S3ArtifactStore(
        bucket, prefix, endpoint, access or None, secret or None, os.environ.get(ENV_REGION) or "us-east-1"
    )


__all__ = [
    "ArtifactError",
    "ArtifactStore",
    "FileArtifactStore",
    "S3ArtifactStore",
    "check_key",
    "check_prefix",
    "default_artifacts_url",
    "experiment_key",
    "open_artifacts",
]
