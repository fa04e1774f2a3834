"""The dashboard's HTTP server: one HTML page, its script and style, and read-only JSON endpoints.

Standard library only (``ThreadingHTTPServer``): the page is served from the package, so the
dashboard works with no internet access. Live updates are polling with ETags: the page asks every
second, and an endpoint answers ``304 Not Modified`` unless the experiment changed, which a cheap
"stamp" query tells without computing the page (``ReadOnlyStore.experiment_stamp``); computed
answers are cached by stamp, so many open pages cost one computation per change.

Safe by construction: GET and HEAD only (anything else is 405), every session of the store is
read-only, bound to 127.0.0.1 unless told otherwise, where requests naming another host are
refused (DNS rebinding); JSON escapes ``<``, ``>`` and ``&``; the page builds its DOM from text
only and a Content-Security-Policy forbids any script or style but the package's own.

Endpoints (all JSON but ``/``, ``/static/*`` and ``/api/checkpoint``):

- ``/api/experiments``: every experiment (``data.experiments_overview``)
- ``/api/experiment?name=N``: status, ETA, ε, Fig 3, Figs A3/A4, failures, timing
- ``/api/live?name=N``: counts and the running trials with their learning curves
- ``/api/trials?name=N&sort=accuracy&order=desc&offset=0&limit=50[&status=done]``: a leaderboard page
- ``/api/compare?name=A&name=B``: best accuracy so far of several experiments
- ``/api/trial?id=T``: one trial; ``/api/checkpoint?id=T``: its weights, when kept
- ``/healthz``: "ok" (a Kubernetes probe)
"""

from __future__ import annotations

import gzip
import hashlib
import ipaddress
import json
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from datetime import date, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from nasagent.dashboard import data
from nasagent.dashboard.store import StorePool
from nasagent.errors import ArtifactError, ConfigError, StoreError
from nasagent.persistence.artifacts import ArtifactStore

log = logging.getLogger(__name__)

STATIC = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "index.html": "text/html; charset=utf-8",
}
SECURITY_HEADERS = {
    # Only the package's own script and style; the page may be framed by its own origin only (the
    # Kubeflow central dashboard shows it in an iframe from the same host).
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "SAMEORIGIN",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
CACHE_ENTRIES = 256
GZIP_MIN_BYTES = 1024


def _clean(value: Any) -> Any:
    """``value`` with NaN and infinities as None and dates as ISO strings: strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


def to_json(document: Any) -> bytes:
    """Compact, strict JSON with ``<``, ``>`` and ``&`` escaped, so that no name, architecture or
    reason can ever be read as markup, whatever reads the bytes."""
    try:  # the common case, at C speed; a NaN somewhere takes the slow path
        text = json.dumps(document, separators=(",", ":"), allow_nan=False, ensure_ascii=False, default=_plain)
    except ValueError:
        text = json.dumps(_clean(document), separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode("utf-8")


class _Cache:
    """Computed answers by ETag (least recently used first out), shared by the request threads."""

    def __init__(self, size: int = CACHE_ENTRIES) -> None:
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            body = self._items.get(key)
            if body is not None:
                self._items.move_to_end(key)
            return body

    def put(self, key: str, body: bytes) -> None:
        with self._lock:
            self._items[key] = body
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


class _HttpError(Exception):
    """An answer other than 200: its status and one line for the page."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


def _etag(*parts: Any) -> str:
    return '"' + hashlib.sha256(repr(parts).encode()).hexdigest()[:24] + '"'


class Dashboard:
    """The application behind the handler: routes a GET to its document, with ETags and a cache."""

    def __init__(self, pool: StorePool, artifacts: ArtifactStore | None = None) -> None:
        self.pool = pool
        self.artifacts = artifacts
        self.cache = _Cache()

    def static(self, name: str) -> tuple[bytes, str]:
        """A file of the page (``STATIC``), read from the package."""
        if name not in STATIC:
            raise _HttpError(HTTPStatus.NOT_FOUND, f"no such file: {name}")
        return resources.files("nasagent.dashboard").joinpath("static", name).read_bytes(), STATIC[name]

    def api(self, path: str, query: dict[str, list[str]], if_none_match: str | None) -> tuple[str, bytes | None]:
        """(ETag, JSON body) of an API path; the body is None when ``if_none_match`` is still current."""

        def one(key: str, default: str | None = None) -> str:
            values = query.get(key)
            if not values:
                if default is None:
                    raise _HttpError(HTTPStatus.BAD_REQUEST, f"missing query parameter {key!r}")
                return default
            return values[0]

        def integer(key: str, default: str | None = None) -> int:
            text = one(key, default)
            if not text.lstrip("-").isdigit():
                raise _HttpError(HTTPStatus.BAD_REQUEST, f"{key} must be an integer, got {text!r}")
            return int(text)

        with self.pool.store() as store:
            if path == "/api/experiments":
                return self._answer(if_none_match, None, lambda: data.experiments_overview(store))
            if path == "/api/trial":
                trial_id = integer("id")
                return self._answer(if_none_match, None, lambda: data.trial_detail(store, trial_id, self.artifacts))
            if path == "/api/compare":
                names = [n for v in query.get("name", []) for n in v.split(",") if n]
                stamps = [self._stamp(store, name) for name in names]
                return self._answer(if_none_match, ("compare", names, stamps), lambda: data.compare(store, names))
            name = one("name")
            stamp = self._stamp(store, name)
            if path == "/api/experiment":
                # Epochs alone change nothing here: recomputed when trials start or finish.
                key = ("experiment", name, stamp[:6], stamp[8:])
                return self._answer(if_none_match, key, lambda: data.experiment_summary(store, name))
            if path == "/api/live":
                return self._answer(if_none_match, ("live", name, stamp), lambda: data.experiment_live(store, name))
            if path == "/api/trials":
                args = (one("sort", "accuracy"), one("order", "desc"), integer("offset", "0"))
                limit, status = integer("limit", str(data.PAGE_SIZE)), query.get("status", [None])[0] or None
                key = ("trials", name, args, limit, status, stamp[:6], stamp[11:])
                return self._answer(if_none_match, key, lambda: data.trials_page(store, name, *args, limit, status))
        raise _HttpError(HTTPStatus.NOT_FOUND, f"no such endpoint: {path}")

    def checkpoint(self, query: dict[str, list[str]]) -> tuple[bytes, str]:
        """The kept checkpoint of trial ``id`` as a download, and its file name."""
        text = (query.get("id") or [""])[0]
        if not text.isdigit():
            raise _HttpError(HTTPStatus.BAD_REQUEST, "id must be a trial id")
        if self.artifacts is None:
            raise _HttpError(HTTPStatus.NOT_FOUND, "the dashboard was started without an artifact store")
        with self.pool.store() as store:
            detail = data.trial_detail(store, int(text), self.artifacts)
        if not (detail["checkpoint"] or {}).get("kept"):
            raise _HttpError(HTTPStatus.NOT_FOUND, f"trial {text} has no checkpoint kept")
        return self.artifacts.get_bytes(detail["checkpoint"]["key"]), f"trial-{int(text)}.pt"

    def _stamp(self, store: Any, name: str) -> tuple[Any, ...]:
        experiment = store.find_experiment(name)
        if experiment is None:
            raise _HttpError(HTTPStatus.NOT_FOUND, f"unknown experiment {name!r}")
        return (experiment.id, *store.experiment_stamp(experiment.id))

    def _answer(
        self, if_none_match: str | None, key: tuple[Any, ...] | None, build: Callable[[], Any]
    ) -> tuple[str, bytes | None]:
        """With a ``key`` (what the answer depends on), the ETag is known before computing, and a
        computed answer is cached under it; without one, the ETag is the answer's own hash."""
        if key is not None:
            etag = _etag(*key)
            if if_none_match == etag:
                return etag, None
            body = self.cache.get(etag)
            if body is None:
                body = to_json(build())
                self.cache.put(etag, body)
            return etag, body
        body = to_json(build())
        etag = _etag(hashlib.sha256(body).hexdigest())
        return etag, None if if_none_match == etag else body


def loopback_hosts(host: str, port: int) -> set[str] | None:
    """The Host headers a server bound to ``host`` accepts: for a loopback address only the
    loopback names (a web page elsewhere cannot reach it through a DNS name of its own); None
    (any) when bound to a real interface, where a proxy or gateway names it."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        return None
    names = {"localhost", "127.0.0.1", "[::1]", host if ":" not in host else f"[{host}]"}
    return names | {f"{name}:{port}" for name in names}


class _Handler(BaseHTTPRequestHandler):
    """One request. GET and HEAD answer; every other method is 405."""

    server: DashboardServer
    protocol_version = "HTTP/1.1"
    server_version = "nasagent-dashboard"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._serve(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(head=True)

    def _refuse(self) -> None:
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, to_json({"error": "the dashboard is read-only"}), "application/json")

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse  # noqa: N815

    def _serve(self, head: bool) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        allowed = self.server.allowed_hosts
        try:
            if allowed is not None and self.headers.get("Host", "") not in allowed:
                raise _HttpError(HTTPStatus.MISDIRECTED_REQUEST, "unknown host name")
            app = self.server.app
            if url.path in ("/", "/index.html"):
                body, kind = app.static("index.html")
                self._send(HTTPStatus.OK, body, kind, head=head)
            elif url.path.startswith("/static/"):
                body, kind = app.static(url.path[len("/static/") :])
                self._send(HTTPStatus.OK, body, kind, head=head, cache="max-age=300")
            elif url.path == "/healthz":
                self._send(HTTPStatus.OK, b"ok\n", "text/plain; charset=utf-8", head=head)
            elif url.path == "/api/checkpoint":
                body, filename = app.checkpoint(query)
                self._send(HTTPStatus.OK, body, "application/octet-stream", head=head, filename=filename)
            elif url.path.startswith("/api/"):
                etag, body = app.api(url.path, query, self.headers.get("If-None-Match"))
                if body is None:
                    self._send(HTTPStatus.NOT_MODIFIED, b"", None, head=True, etag=etag)
                else:
                    self._send(HTTPStatus.OK, body, "application/json", head=head, etag=etag)
            else:
                raise _HttpError(HTTPStatus.NOT_FOUND, f"no such page: {url.path}")
        except _HttpError as exc:
            self._send(exc.status, to_json({"error": str(exc)}), "application/json", head=head)
        except ConfigError as exc:
            self._send(HTTPStatus.BAD_REQUEST, to_json({"error": str(exc)}), "application/json", head=head)
        except StoreError as exc:
            unknown = str(exc).startswith("unknown")
            status = HTTPStatus.NOT_FOUND if unknown else HTTPStatus.SERVICE_UNAVAILABLE
            self._send(status, to_json({"error": str(exc)}), "application/json", head=head)
        except ArtifactError as exc:
            self._send(HTTPStatus.BAD_GATEWAY, to_json({"error": str(exc)}), "application/json", head=head)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the page went away mid-answer
        except Exception:
            log.exception("dashboard: %s failed", url.path)
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, to_json({"error": "internal error"}), "application/json")

    def _send(
        self,
        status: HTTPStatus,
        body: bytes,
        kind: str | None,
        head: bool = False,
        etag: str | None = None,
        cache: str = "no-cache",
        filename: str | None = None,
    ) -> None:
        if kind is not None and len(body) >= GZIP_MIN_BYTES and "gzip" in self.headers.get("Accept-Encoding", ""):
            body = gzip.compress(body, compresslevel=5)
            encoded = True
        else:
            encoded = False
        self.send_response(status)
        for header, value in SECURITY_HEADERS.items():
            self.send_header(header, value)
        self.send_header("Cache-Control", cache)
        if etag is not None:
            self.send_header("ETag", etag)
        if kind is not None:
            self.send_header("Content-Type", kind)
            self.send_header("Vary", "Accept-Encoding")
        if encoded:
            self.send_header("Content-Encoding", "gzip")
        if filename is not None:
            self.send_header("Content-Disposition", f'attachment; filename="{filename}"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head and status != HTTPStatus.NOT_MODIFIED:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        log.debug("dashboard: " + format, *args)


class DashboardServer(ThreadingHTTPServer):
    """A threading HTTP server carrying the ``Dashboard`` and the Host names it accepts."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: Dashboard) -> None:
        self.app = app
        super().__init__(address, _Handler)
        self.allowed_hosts = loopback_hosts(address[0], self.server_address[1])  # port 0: the one bound

    @property
    def url(self) -> str:
        """Where the page is, e.g. ``http://127.0.0.1:8080/``."""
        host, port = self.server_address[:2]
        shown = f"[{host}]" if ":" in str(host) else str(host)
        return f"http://{shown}:{port}/"


def serve(
    pool: StorePool, host: str = "127.0.0.1", port: int = 8080, artifacts: ArtifactStore | None = None
) -> DashboardServer:
    """A dashboard server bound to ``host:port`` (not yet serving: call ``serve_forever``).
    ConfigError in one line if the address cannot be bound (a port in use, an unknown host)."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be within 0..65535, got {port}")
    try:
        return DashboardServer((host, port), Dashboard(pool, artifacts))
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"cannot serve the dashboard on {host}:{port}: {reason}") from None
