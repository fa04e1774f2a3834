"""Dashboard at scale: the first page of an experiment with 10,000 trials, its time and its bytes.

Seeds an experiment of 10,000 finished Q-learning trials (the paper's ε schedule scaled to them,
20 recorded epochs each: 200,000 epoch rows, a replay memory of 10,000 rows and 3,000 Q-values)
on the embedded PostgreSQL, starts ``nasagent dashboard``'s server on it and measures, for a
browser's first visit of the experiment's page (``index.html``, ``app.js``, ``app.css``, then
``/api/experiment``, ``/api/live`` and the leaderboard's first page), cold (nothing cached):

- the bytes transferred, compressed as a browser asks (gzip), and uncompressed;
- the server's time for those requests, sequential and cold (median of ``--repeats`` runs, each
  after a change to the experiment, so that nothing is served from the dashboard's cache);
- with Chromium installed, the time a real headless browser takes from navigating to the page
  until Figure 3 and the leaderboard are drawn (median of ``--repeats`` cold page loads).

Targets (issue 10): the first page renders within 1 s and transfers at most 2 MB.

    python bench/bench_dashboard.py [--trials 10000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from _report import machine, write_section  # noqa: E402

from nasagent.config import SearchConfig  # noqa: E402
from nasagent.dashboard.server import serve  # noqa: E402
from nasagent.dashboard.store import StorePool  # noqa: E402
from nasagent.persistence import Store, embedded_url, stop_embedded  # noqa: E402

EXPERIMENT = "dashboard-scale"
EPOCHS = 20
TARGET_SECONDS = 1.0
TARGET_BYTES = 2_000_000
CHROMIUM = Path("/usr/bin/chromium")
FIRST_PAGE = ("/", "/static/app.js", "/static/app.css")


def seed(url: str, trials: int) -> None:
    """The experiment, written in a few set-based statements (a real search would take days)."""
    with Store.connect(url) as store:
        experiment = store.create_experiment(EXPERIMENT, SearchConfig(trials=trials, epochs=EPOCHS).to_dict())
        eid = experiment.id
        store._write(  # bulk: one INSERT ... SELECT per table
            "INSERT INTO trials (experiment_id, arch, digest, status, accuracy, epsilon, params, worker, failure,"
            " attempts, info, started_at, finished_at, train_seconds)"
            " SELECT %(e)s, format('[C(%%s,3,1), P(2,2), FC(%%s), SM(10)]', 8 + i %% 500, 16 + i / 500),"
            "  lpad(to_hex(i), 16, '0'), CASE WHEN i %% 37 = 0 THEN 'failed' ELSE 'done' END,"
            "  CASE WHEN i %% 37 = 0 THEN 0.1 ELSE 0.5 + 0.4 * (i::float / %(n)s) * random() END,"
            "  greatest(0.1, 1.0 - 0.1 * floor(i * 10.0 / %(n)s)), 10000 + i * 7, 'local-' || (i %% 4),"
            "  CASE WHEN i %% 37 = 0 THEN 'diverged: loss became NaN at epoch ' || (1 + i %% 20) END, 1,"
            "  '{\"input_shape\": [1, 28, 28]}'::jsonb, now() - (%(n)s - i) * interval '60 s',"
            "  now() - (%(n)s - i) * interval '60 s' + interval '55 s', 55"
            " FROM generate_series(1, %(n)s) AS i",
            {"e": eid, "n": trials},
        )
        store._write(
            "INSERT INTO replay_memory (experiment_id, trial_id, arch, reward)"
            " SELECT experiment_id, id, arch, accuracy FROM trials WHERE experiment_id = %s ORDER BY id",
            (eid,),
        )
        store._write(
            "INSERT INTO trial_epochs (experiment_id, trial_id, attempt, run, epoch, train_loss, val_accuracy, lr,"
            " restarts, seconds)"
            " SELECT t.experiment_id, t.id, 1, 1, e, 2.3 / e, t.accuracy * e / %s, 1e-3, 0, 2.7"
            " FROM trials t, generate_series(1, %s) AS e WHERE t.experiment_id = %s",
            (EPOCHS, EPOCHS, eid),
        )
        store._write(
            "INSERT INTO q_values (experiment_id, state, action, value)"
            " SELECT %s, format('%%s|conv|%%s|0', d, s), format('C(%%s,%%s,1)', f, k), 0.5 + random() * 0.3"
            " FROM generate_series(0, 9) d, generate_series(1, 10) s, generate_series(1, 10) f,"
            "      (VALUES (1), (3), (5)) AS ks(k)",
            (eid,),
        )
        with store.transaction() as tx:
            tx.save_agent_state(eid, "qlearning", {"summary": {"updates": trials}})


def touch(url: str) -> None:
    """Change the experiment (the strategy's state, a trial's finish time) so that the next page load
    is computed afresh rather than served from the dashboard's cache."""
    with Store.connect(url) as store:
        experiment = store.get_experiment(EXPERIMENT)
        store._write("UPDATE agent_state SET updated_at = clock_timestamp() WHERE experiment_id = %s", (experiment.id,))
        store._write(
            "UPDATE trials SET finished_at = clock_timestamp() WHERE id ="
            " (SELECT max(id) FROM trials WHERE experiment_id = %s)",
            (experiment.id,),
        )


def api_paths() -> list[str]:
    name = f"name={EXPERIMENT}"
    return [
        f"/api/experiment?{name}",
        f"/api/live?{name}",
        f"/api/trials?{name}&sort=accuracy&order=desc&offset=0&limit=25",
    ]


def fetch_all(port: int) -> tuple[float, int, int, dict[str, float]]:
    """(seconds, gzip bytes, plain bytes, seconds per path) of one sequential cold first visit; only
    the gzip requests (what a browser sends) are timed and counted, plain ones only for their size."""
    gz = plain = 0
    per_path: dict[str, float] = {}
    for path in (*FIRST_PAGE, *api_paths()):
        for encoding in ("gzip", "identity"):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            started = time.perf_counter()
            conn.request("GET", path, headers={"Accept-Encoding": encoding})
            response = conn.getresponse()
            body = response.read()
            took = time.perf_counter() - started
            conn.close()
            assert response.status == 200, (path, response.status, body[:200])
            if encoding == "gzip":
                gz += len(body) + sum(len(k) + len(v) + 4 for k, v in response.getheaders())
                per_path[path] = took
            else:
                plain += len(body)
    return sum(per_path.values()), gz, plain, per_path


def browser_first_render(base: str) -> float | None:
    """Seconds from navigating to the experiment's page until Figure 3 and the leaderboard are drawn."""
    if not CHROMIUM.exists():
        return None
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1000})
            started = time.perf_counter()
            page.goto(f"{base}#/experiment/{EXPERIMENT}")
            page.wait_for_selector("#fig3 g.series[data-name='model accuracy']", timeout=60_000)
            page.wait_for_selector("table.leaderboard tbody tr", timeout=60_000)
            return time.perf_counter() - started
        finally:
            browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="nasd", dir="/tmp"))
    try:
        url = embedded_url(home)
        started = time.perf_counter()
        seed(url, args.trials)
        seeded = time.perf_counter() - started
        pool = StorePool(url)
        server = serve(pool, "127.0.0.1", 0)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        thread.start()
        port = server.server_address[1]
        try:
            fetch_all(port)  # warm-up: the interpreter's and the database's caches, not the dashboard's
            runs = []
            for _ in range(args.repeats):
                touch(url)
                runs.append(fetch_all(port))
            renders = []
            for _ in range(args.repeats if CHROMIUM.exists() else 0):
                touch(url)
                renders.append(browser_first_render(server.url))
        finally:
            server.shutdown()
            server.server_close()
            pool.close()
        load = os.getloadavg()
    finally:
        stop_embedded(home)

    seconds = statistics.median(r[0] for r in runs)
    gz_bytes, plain_bytes = runs[-1][1], runs[-1][2]
    per_path = {p: statistics.median(r[3][p] for r in runs) for p in runs[0][3]}
    render = statistics.median(renders) if renders else None
    shown = render if render is not None else seconds
    verdict_time = "met" if shown <= TARGET_SECONDS else "MISSED"
    verdict_bytes = "met" if gz_bytes <= TARGET_BYTES else "MISSED"
    print(f"server, cold, sequential: {seconds:.3f} s; browser first render: {render}; {gz_bytes:,} bytes gzip")
    rows = "\n".join(f"| `{path}` | {t * 1000:.0f} ms |" for path, t in per_path.items())
    browser = (
        f"{render:.2f} s (median of {len(renders)} cold loads in headless Chromium, from navigation until Figure 3 "
        "and the leaderboard are drawn)"
        if render is not None
        else "not measured (no Chromium at /usr/bin/chromium)"
    )
    body = f"""## Dashboard at scale (`bench/bench_dashboard.py`)

Machine: {machine()}; load average at the end {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min).
An experiment of {args.trials:,} finished trials with {EPOCHS} recorded epochs each ({args.trials * EPOCHS:,} epoch
rows), {args.trials:,} replay rows and 3,000 Q-values on the embedded PostgreSQL (seeded in {seeded:.1f} s). A
browser's first visit of the experiment's page: the page, its script and style, then the experiment's figures and
numbers, its running trials and the first leaderboard page, each computed cold (the experiment changed just before,
so the dashboard's cache cannot answer). Median of {args.repeats} visits.

| | measured | target |
|---|---:|---|
| first page rendered in a browser | {browser} | {TARGET_SECONDS} s: {verdict_time} |
| server time for all its requests, one after another | {seconds:.2f} s | |
| bytes transferred (gzip, headers included) | {gz_bytes:,} | {TARGET_BYTES:,}: {verdict_bytes} |
| bytes uncompressed | {plain_bytes:,} | |

| request (gzip, cold) | server time |
|---|---:|
{rows}
"""
    write_section("dashboard-scale", body)
    return 0 if verdict_time == "met" and verdict_bytes == "met" else 1


if __name__ == "__main__":
    sys.exit(main())
