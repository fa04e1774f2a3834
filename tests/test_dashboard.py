"""The dashboard's server and data, over HTTP against a real PostgreSQL (the embedded one).

What each endpoint shows agrees with the report (the same numbers behind Fig 3 and Figs A3/A4);
the leaderboard sorts and pages on the server; ETags answer 304 until the experiment changes and
change with each epoch recorded; nothing writes (every other method is 405, and the store's
session itself refuses writes); hostile experiment names, architectures and failure reasons never
come out as markup; the page loads nothing from elsewhere; requests naming another host are
refused; a bad ``--db`` and a port in use are one line and exit 2. ``test_dashboard_browser.py``
drives the page in a real Chromium.
"""

from __future__ import annotations

import gzip
import http.client
import json
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psycopg2.errors
import pytest

from nasagent.config import SearchConfig
from nasagent.core.arch import Architecture
from nasagent.dashboard import data
from nasagent.dashboard.server import DashboardServer, serve, to_json
from nasagent.dashboard.store import ReadOnlyStore, StorePool
from nasagent.errors import StoreError
from nasagent.persistence.artifacts import open_artifacts
from nasagent.persistence.postgres import EpochRow, Store
from nasagent.results.report import build_report

STATIC = Path(__file__).resolve().parent.parent / "nasagent" / "dashboard" / "static"
HOSTILE = "<script>alert('x')</script>\"&'"
ARCHS = [
    "[C(16,3,1), P(2,2), SM(10)]",
    "[C(8,3,1), SM(10)]",
    "[FC(32), SM(10)]",
    "[C(32,1,1), GAP(10)]",
    "[C(16,1,1), FC(16), SM(10)]",
    "[FC(8), SM(10)]",
]


def seed(store: Store, name: str = "dash", reason: str = "diverged: loss became NaN at epoch 3") -> int:
    """An experiment on digits with five finished trials (one failed), one running with two epochs
    recorded, Q-values, replay memory, an infrastructure failure and the strategy's state."""
    config = SearchConfig(dataset="digits", trials=10, schedule="1.0:5,0.5:5", epochs=3)
    experiment = store.create_experiment(name, config.to_dict())
    eid = experiment.id
    ids = []
    with store.transaction() as tx:
        for i, text in enumerate(ARCHS):
            arch = Architecture.parse(text)
            ids.append(tx.insert_trial(eid, str(arch), arch.digest, 1.0 if i < 5 else 0.5))
        for i, trial_id in enumerate(ids[:5]):
            failed = i == 3
            accuracy = 0.1 if failed else 0.5 + 0.1 * i
            tx.finish_trial(
                trial_id,
                "failed" if failed else "done",
                accuracy,
                1000 * (i + 1),
                reason if failed else None,
                2.0 + i,
                info={"input_shape": [1, 8, 8]},
            )
            tx.append_replay(eid, trial_id, ARCHS[i], accuracy)
        tx.append_replay(eid, ids[0], ARCHS[0], 0.5)  # a replay-dictionary hit
        tx.upsert_q(
            eid, {("0|start|8|0", "C(16,3,1)"): 0.6, ("1|conv|8|0", "P(2,2)"): 0.55, ("1|c|8|0", "SM(10)"): 0.7}
        )
        tx.save_agent_state(eid, "qlearning", {"summary": {"updates": 5}})
        tx.record_infra_failure(eid, ids[5], "killed", f"worker killed {HOSTILE}", "local-0")
    for epoch in (1, 2):
        store.record_epoch(EpochRow(eid, ids[5], 1, 1, epoch, 2.0 / epoch, 0.3 * epoch, 1e-3, 0, 1.5))
    return eid


@pytest.fixture
def server(store: Store, db_url: str) -> Iterator[DashboardServer]:
    """A dashboard on an ephemeral loopback port, serving from a thread."""
    pool = StorePool(db_url)
    running = serve(pool, "127.0.0.1", 0)
    thread = threading.Thread(target=running.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield running
    finally:
        running.shutdown()
        running.server_close()
        pool.close()


def request(
    server: DashboardServer, path: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


def get_json(server: DashboardServer, path: str) -> Any:
    status, _, body = request(server, path)
    assert status == 200, body
    return json.loads(body)


# -- what the pages show ------------------------------------------------------------------------------


def test_the_experiment_page_agrees_with_the_report(server: DashboardServer, store: Store) -> None:
    seed(store)
    page = get_json(server, "/api/experiment?name=dash")
    report = build_report(store, "dash")
    assert page["fig3"]["trial_ids"] == report.accuracy.trial_ids
    assert page["fig3"]["accuracies"] == [round(a, 4) for a in report.accuracy.accuracies]
    assert page["fig3"]["failed"] == [3] and page["fig3"]["window"] == report.accuracy.window
    assert page["fig3"]["rolling_mean"] == [round(m, 4) for m in report.accuracy.rolling_mean]
    assert [(g["epsilon"], g["count"]) for g in page["fig3"]["groups"]] == [(1.0, 5)]
    assert page["fig3"]["dictionary_hits"] == 1 and page["fig3"]["replay_samples"] == 6
    assert [c["label"] for c in page["q"]["by_type"]] == [c.label for c in report.q.by_type]
    assert page["q"]["entries"] == 3
    assert page["status"]["unique_trained"] == 5 and page["status"]["running"] == 1
    assert page["schedule"]["index"] == 1 and page["schedule"]["epsilon"] == 0.5 and page["schedule"]["in_step"] == 1
    assert page["failure_reasons"] == [{"failure": "diverged: loss became NaN at epoch 3", "count": 1}]
    assert page["infra_failures"][0]["fault"] == "killed"
    assert page["eta"]["trials_per_hour"] is not None and page["eta"]["seconds_left"] >= 0


def test_the_experiments_and_live_pages(server: DashboardServer, store: Store) -> None:
    seed(store)
    listed = get_json(server, "/api/experiments")["experiments"]
    assert [(e["name"], e["trained"], e["budget"], e["running"], e["state"]) for e in listed] == [
        ("dash", 5, 10, 1, "running")
    ]
    assert listed[0]["best_accuracy"] == 0.9 and listed[0]["strategy"] == "qlearning"
    live = get_json(server, "/api/live?name=dash")
    assert [t["arch"] for t in live["running"]] == [ARCHS[5]]
    assert [(e["epoch"], e["val_accuracy"]) for e in live["running"][0]["curve"]] == [(1, 0.3), (2, 0.6)]
    assert get_json(server, "/api/experiment?name=dash")["status"]["epochs_recorded"] == 2


def test_the_leaderboard_sorts_and_pages_on_the_server(server: DashboardServer, store: Store) -> None:
    seed(store)
    page = get_json(server, "/api/trials?name=dash&sort=accuracy&order=desc&limit=2")
    assert page["total"] == 6 and [t["accuracy"] for t in page["trials"]] == [0.9, 0.7]
    page = get_json(server, "/api/trials?name=dash&sort=accuracy&order=desc&limit=2&offset=2")
    assert [t["accuracy"] for t in page["trials"]] == [0.6, 0.5]
    by_params = get_json(server, "/api/trials?name=dash&sort=params&order=asc&status=done")
    assert by_params["total"] == 4 and [t["params"] for t in by_params["trials"]] == [1000, 2000, 3000, 5000]
    by_time = get_json(server, "/api/trials?name=dash&sort=time&order=desc&limit=1")
    assert by_time["trials"][0]["train_seconds"] == 6.0
    assert get_json(server, "/api/trials?name=dash&status=running")["trials"][0]["arch"] == ARCHS[5]
    for bad in ("sort=name", "order=up", "status=lost", "limit=0", "limit=abc", "offset=-1"):
        status, _, body = request(server, f"/api/trials?name=dash&{bad}")
        assert status == 400 and json.loads(body)["error"], bad
    assert request(server, "/api/trials?name=nope")[0] == 404


def test_the_trial_page_has_its_layers_curve_and_checkpoint(
    server: DashboardServer, store: Store, tmp_path: Path
) -> None:
    from nasagent.training.build import build_model, count_params
    from nasagent.training.checkpoints import checkpoint_key

    eid = seed(store)
    first = store.trials(eid)[0]
    detail = get_json(server, f"/api/trial?id={first.id}")
    arch = Architecture.parse(ARCHS[0])
    assert [row["layer"] for row in detail["layers"]["layers"]] == ["C(16,3,1)", "P(2,2)", "SM(10)"]
    assert [row["output"] for row in detail["layers"]["layers"]] == [[16, 8, 8], [16, 4, 4], [10, 1, 1]]
    assert detail["layers"]["total_params"] == count_params(build_model(arch, (1, 8, 8)))
    assert detail["trial"]["accuracy"] == 0.5 and detail["checkpoint"] is None
    running = store.trials(eid)[5]
    detail = get_json(server, f"/api/trial?id={running.id}")
    assert [len(r["epochs"]) for r in detail["runs"]] == [2] and detail["infra_failures"][0]["worker"] == "local-0"
    assert request(server, "/api/trial?id=999999")[0] == 404
    # With the search's artifact store: whether the weights are kept, and the download.
    artifacts = open_artifacts(f"file://{tmp_path}")
    artifacts.put_bytes(checkpoint_key("dash", first.id), b"weights")
    assert data.checkpoint_key("dash", first.id) == checkpoint_key("dash", first.id)
    server.app.artifacts = artifacts
    assert get_json(server, f"/api/trial?id={first.id}")["checkpoint"]["kept"] is True
    status, headers, body = request(server, f"/api/checkpoint?id={first.id}")
    assert status == 200 and body == b"weights" and "attachment" in headers["content-disposition"]
    assert request(server, f"/api/checkpoint?id={store.trials(eid)[1].id}")[0] == 404


def test_comparison_gives_best_so_far_of_each_experiment(server: DashboardServer, store: Store) -> None:
    seed(store, "a")
    seed(store, "b")
    series = get_json(server, "/api/compare?name=a&name=b")["series"]
    assert [s["experiment"] for s in series] == ["a", "b"]
    # Accuracies 0.5, 0.6, 0.7, failed, 0.9: improvements at 1, 2, 3 and 5.
    assert series[0]["best_so_far"] == [[1, 0.5], [2, 0.6], [3, 0.7], [5, 0.9]]
    assert data.best_so_far([0.5, None, 0.4]) == [[1, 0.5], [3, 0.5]]
    assert request(server, "/api/compare?name=a&name=missing")[0] == 404


# -- live updates -----------------------------------------------------------------------------------------


def test_etags_answer_not_modified_until_the_store_changes(server: DashboardServer, store: Store) -> None:
    eid = seed(store)
    running = store.trials(eid)[5].id
    etags = {}
    for path in ("/api/experiment?name=dash", "/api/live?name=dash", "/api/experiments", "/api/trials?name=dash"):
        status, headers, _ = request(server, path)
        etags[path] = headers["etag"]
        assert request(server, path, headers={"If-None-Match": etags[path]})[0] == 304, path
    store.record_epoch(EpochRow(eid, running, 1, 1, 3, 0.5, 0.8, 1e-3, 0, 1.5))
    assert request(server, "/api/live?name=dash", headers={"If-None-Match": etags["/api/live?name=dash"]})[0] == 200
    # An epoch changes neither the figures nor the leaderboard: they are not recomputed.
    for path in ("/api/experiment?name=dash", "/api/trials?name=dash"):
        assert request(server, path, headers={"If-None-Match": etags[path]})[0] == 304, path
    with store.transaction() as tx:
        tx.finish_trial(running, "done", 0.95, 500, None, 3.0)
    for path in ("/api/experiment?name=dash", "/api/trials?name=dash", "/api/experiments"):
        assert request(server, path, headers={"If-None-Match": etags[path]})[0] == 200, path


def test_answers_are_compressed_for_browsers_that_ask(server: DashboardServer, store: Store) -> None:
    seed(store)
    status, headers, body = request(server, "/static/app.js", headers={"Accept-Encoding": "gzip"})
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert gzip.decompress(body) == (STATIC / "app.js").read_bytes()


# -- safety -------------------------------------------------------------------------------------------------


def test_nothing_writes(server: DashboardServer, store: Store, db_url: str) -> None:
    seed(store)
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        status, _, body = request(server, "/api/experiments", method=method)
        assert status == 405 and b"read-only" in body, method
    readonly = ReadOnlyStore.open(db_url)
    try:
        for statement in ("DELETE FROM trials", "UPDATE experiments SET name = 'x'", "CREATE TABLE evil (x int)"):
            with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
                readonly._fetch(statement)
        with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
            with readonly.transaction() as tx:
                tx.append_replay(store.get_experiment("dash").id, None, "[SM(10)]", 0.1)
    finally:
        readonly.close()
    assert len(store.trials(store.get_experiment("dash").id)) == 6


def test_hostile_names_architectures_and_reasons_never_come_out_as_markup(
    server: DashboardServer, store: Store
) -> None:
    eid = seed(store, name=HOSTILE, reason=f"crashed: {HOSTILE}")
    name = urlencode({"name": HOSTILE})
    for path in (
        "/api/experiments",
        f"/api/experiment?{name}",
        f"/api/live?{name}",
        f"/api/trials?{name}&status=failed",
        f"/api/trial?id={store.trials(eid)[3].id}",
    ):
        status, headers, body = request(server, path)
        assert status == 200 and headers["content-type"] == "application/json", (path, body)
        assert b"<" not in body and b">" not in body and b"&" not in body, path
        assert headers["x-content-type-options"] == "nosniff"
        text = json.dumps(json.loads(body))
        assert "alert" in text or path.startswith("/api/live"), path  # the name is there, as data
    assert json.loads(to_json({"name": HOSTILE}))["name"] == HOSTILE


def test_the_page_loads_nothing_from_elsewhere(server: DashboardServer) -> None:
    status, headers, page = request(server, "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    policy = headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "unsafe" not in policy
    for path in STATIC.iterdir():
        text = path.read_text()
        # The only absolute URL is SVG's namespace name, which is never fetched.
        assert set(re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"'`)]*", text)) <= {"http://www.w3.org/2000/svg"}
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "eval(", "document.write", "new Function"):
            assert sink not in text, (path, sink)
        assert request(server, f"/static/{path.name}")[0] == 200
    assert request(server, "/static/../store.py")[0] == 404
    assert request(server, "/static/missing.js")[0] == 404


def test_requests_for_another_host_name_are_refused(server: DashboardServer) -> None:
    port = server.server_address[1]
    assert request(server, "/api/experiments", headers={"Host": "evil.example"})[0] == 421
    assert request(server, "/api/experiments", headers={"Host": f"localhost:{port}"})[0] == 200


# -- the command --------------------------------------------------------------------------------------------


def nasagent(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nasagent.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def assert_one_line(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nasagent: error:"), result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_a_bad_db_is_one_line(tmp_path: Path) -> None:
    assert_one_line(nasagent("dashboard", "--db", "mysql://x"), "postgresql://")
    assert_one_line(nasagent("dashboard", "--db", "postgresql://nobody@127.0.0.1:1/none"), "cannot reach database")
    assert_one_line(nasagent("dashboard", "--db-file", str(tmp_path / "missing")), "--db-file")


def test_a_port_in_use_is_one_line(db_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert_one_line(nasagent("dashboard", "--db", db_url, "--port", str(port)), f"127.0.0.1:{port}", "in use")
    assert_one_line(nasagent("dashboard", "--db", db_url, "--port", "70000"), "--port")


def test_the_command_serves_until_interrupted(db_url: str, store: Store) -> None:
    seed(store)
    process = subprocess.Popen(
        [sys.executable, "-m", "nasagent.cli", "dashboard", "--db", db_url, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert match, line
        conn = http.client.HTTPConnection("127.0.0.1", int(match.group(1)), timeout=30)
        conn.request("GET", "/api/experiments")
        assert [e["name"] for e in json.loads(conn.getresponse().read())["experiments"]] == ["dash"]
        conn.close()
    finally:
        process.send_signal(2)
        process.wait(timeout=30)
    assert process.returncode == 0


def test_an_unknown_experiment_or_a_lost_database_is_an_answer_not_a_crash(store: Store, db_url: str) -> None:
    pool = StorePool(db_url)
    try:
        with pool.store() as readonly, pytest.raises(StoreError, match="unknown experiment"):
            data.experiment_summary(readonly, "nope")
    finally:
        pool.close()
