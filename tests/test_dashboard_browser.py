"""The dashboard in a real headless Chromium, watching a real search on the embedded PostgreSQL.

A ``nasagent search`` (local worker processes training small networks on the bundled digits)
runs while the page is open: the experiment appears in the list, and on its page new trials (Fig
3's dots) and the running trial's learning-curve points appear without a reload, each within 2 s
of the store changing (measured against the rows' own timestamps). The page requests nothing but
the dashboard's own address, shows no script error, and shows hostile names as text.

Chromium is Debian's package at /usr/bin/chromium (``make test`` installs it), driven by playwright;
the test skips, saying so, only where it is missing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nasagent.dashboard.server import DashboardServer, serve
from nasagent.dashboard.store import StorePool
from nasagent.persistence.postgres import Store

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
LATENCY_LIMIT_S = 2.0
HOSTILE = "<img src=x onerror=alert(1)>\"'&<script>alert(2)</script>"

if not CHROMIUM.exists():
    pytest.skip(
        "chromium is not installed at /usr/bin/chromium (make test installs it: apt-get install chromium)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")


@pytest.fixture
def dashboard(db_url: str, store: Store) -> Iterator[DashboardServer]:
    pool = StorePool(db_url)
    server = serve(pool, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        pool.close()


@pytest.fixture
def page(dashboard: DashboardServer) -> Iterator[Any]:
    """A Chromium page on the dashboard that may reach nothing else; records errors and dialogs."""
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page(viewport={"width": 1300, "height": 1000})
            tab.problems = []  # type: ignore[attr-defined]
            tab.on("pageerror", lambda exc: tab.problems.append(f"page error: {exc}"))
            tab.on("console", lambda m: m.type == "error" and tab.problems.append(f"console: {m.text}"))
            tab.on("dialog", lambda d: (tab.problems.append(f"dialog: {d.message}"), d.dismiss()))

            def only_the_dashboard(route: Any) -> None:
                if route.request.url.startswith(dashboard.url) or route.request.url.startswith("data:"):
                    route.continue_()
                else:
                    tab.problems.append(f"request elsewhere: {route.request.url}")
                    route.abort()

            tab.route("**/*", only_the_dashboard)
            yield tab
        finally:
            browser.close()


def start_search(db_url: str, home: Path, name: str) -> subprocess.Popen:
    """``nasagent search`` in a process of its own: 4 models of 8 epochs each, one worker."""
    env = {**os.environ, "NASAGENT_DB": db_url, "NASAGENT_HOME": str(home)}
    args = ["--dataset", "digits", "--space", "metaqnn-small", "--trials", "4", "--epochs", "8", "--workers", "1"]
    return subprocess.Popen(
        [sys.executable, "-m", "nasagent.cli", "search", "--experiment", name, *args, "--device", "cpu", "--seed", "3"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def epoch_written(store: Store, trial_id: int, epoch: int) -> float:
    """When the store took epoch ``epoch`` of ``trial_id`` (its row's timestamp, as a Unix time)."""
    for row in store.trial_epochs(trial_id):
        if row.epoch == epoch:
            return row.created_at.timestamp()
    raise AssertionError(f"the page shows epoch {epoch} of trial {trial_id}, which the store does not hold")


def test_a_running_search_shows_up_live_without_a_reload(
    page: Any, dashboard: DashboardServer, store: Store, db_url: str, tmp_path: Path
) -> None:
    page.goto(dashboard.url)
    page.wait_for_selector("#experiments")
    page.evaluate("window.__loadedOnce = true")  # a reload would forget it
    search = start_search(db_url, tmp_path, "live-search")
    latencies: list[float] = []
    try:
        # The new experiment appears in the list by itself.
        page.wait_for_selector("table.experiments a:text('live-search')", timeout=120_000)
        page.click("table.experiments a:text('live-search')")  # a hash link: no reload
        page.wait_for_selector("#fig3")

        # Learning-curve points appear on the running trial, epoch by epoch.
        seen: dict[int, int] = {}
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and sum(n - 1 for n in seen.values() if n > 1) < 3:
            handle = page.wait_for_function(
                """(seen) => {
                    for (const panel of document.querySelectorAll('.running-trial')) {
                        const id = panel.dataset.trial, n = +panel.dataset.epochs;
                        if (n > 0 && n > (seen[id] || 0)) return [+id, n];
                    }
                    return null;
                }""",
                arg={str(k): v for k, v in seen.items()},
                polling=50,
                timeout=120_000,
            )
            shown_at = time.time()
            trial_id, epochs = handle.json_value()
            latencies.append(shown_at - epoch_written(store, trial_id, epochs))
            seen[trial_id] = epochs
        assert any(n > 1 for n in seen.values()), f"no running trial's curve grew on the page: {seen}"

        # New models appear in Figure 3 as they finish.
        page.wait_for_function(
            """() => {
                const g = document.querySelector("#fig3 g.series[data-name='model accuracy']");
                const bad = document.querySelector("#fig3 g.series[data-name='failed (chance reward)']");
                return g && (+g.dataset.count + (bad ? +bad.dataset.count : 0)) >= 2;
            }""",
            polling=50,
            timeout=240_000,
        )
        shown_at = time.time()
        experiment = store.get_experiment("live-search")
        finished = sorted(t.finished_at for t in store.trials(experiment.id) if t.finished_at is not None)
        latencies.append(shown_at - finished[1].timestamp())
        trained = page.text_content("#trained")
        assert trained is not None and trained.split("/")[0].strip() != "0"
        assert page.evaluate("window.__loadedOnce") is True, "the page was reloaded"
    finally:
        search.terminate()
        search.wait(timeout=60)
    assert max(latencies) < LATENCY_LIMIT_S, latencies
    print(f"update latency in the browser: max {max(latencies):.2f} s over {len(latencies)} updates")
    assert page.problems == []  # type: ignore[attr-defined]


def test_hostile_names_show_as_text(page: Any, dashboard: DashboardServer, store: Store) -> None:
    from test_dashboard import seed

    seed(store, name=HOSTILE, reason=f"crashed: {HOSTILE}")
    page.goto(dashboard.url)
    page.wait_for_selector("table.experiments a")
    assert page.text_content("table.experiments a") == HOSTILE
    page.click("table.experiments a")
    page.wait_for_selector("#fig3 svg")
    page.wait_for_selector("table.failure-reasons")
    assert page.text_content("#experiment-name") == HOSTILE
    assert HOSTILE in page.text_content("table.failure-reasons")
    assert page.query_selector("main img") is None and page.query_selector("main script") is None
    time.sleep(1.5)  # a few polls: nothing may run
    assert page.problems == []  # type: ignore[attr-defined]
