"""The live leaderboard of a search, kept in the artifact store and refreshed as trials finish.

When a search has an artifact store (``--artifacts`` or ``$NASAGENT_ARTIFACTS``), the search
loop calls its ``LeaderboardPublisher`` callback after every step; whenever a trial has finished
since the last call (a new model trained or failed; replay-dictionary hits change nothing here)
it writes

* ``<experiment>/reports/leaderboard.json``:
  ``{"status": <nasagent status --json>, "top": <nasagent top --json>, "updated_at": ...}``, each
  row of ``top`` with its ``accuracy_source``: ``trained``, or for a trial stopped early
  (``--early-stop``, status ``stopped``) ``predicted`` or ``partial``
* ``<experiment>/reports/leaderboard.md``: the same table as ``nasagent report``'s ``leaderboard.md``
  (a stopped trial's status is ``stopped@t`` and its accuracy says ``(predicted)`` or ``(partial)``)

so that a long search on a cluster can be followed from the object store (``mc cat``, the MinIO
console) while it runs. A failing store is logged, never raised: the leaderboard must not stop
a search.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timezone
from typing import Any

from nasagent.core.trial import TrialStatus
from nasagent.errors import ArtifactError
from nasagent.persistence.artifacts import ENV_URL, ArtifactStore, experiment_key, open_artifacts
from nasagent.persistence.postgres import Store
from nasagent.search.callbacks import SearchCallback, SearchView
from nasagent.search.progress import Progress
from nasagent.search.status import accuracy_source, experiment_status, objective_line, shows_reward, top_trials

log = logging.getLogger(__name__)

LEADERBOARD_SIZE = 25


def leaderboard_keys(experiment: str) -> tuple[str, str]:
    """The keys of the live leaderboard: (``.../reports/leaderboard.json``, ``.../reports/leaderboard.md``)."""
    return experiment_key(experiment, "reports", "leaderboard.json"), experiment_key(
        experiment, "reports", "leaderboard.md"
    )


STOPPED_NOTE = (
    "A trial with status stopped@t was stopped early after epoch t (--early-stop) and never trained to the end: "
    "its accuracy is the predicted final accuracy (predicted) or the best it reached before it stopped "
    "(partial), and it is ranked by that reward."
)
"""What every leaderboard with a stopped trial says under (or over) its table."""


def shows_stops(rows: list[dict[str, Any]]) -> bool:
    """Whether a leaderboard needs its status column: some row is a trial stopped early."""
    return any(accuracy_source(row) != "trained" for row in rows)


def leaderboard_columns(rows: list[dict[str, Any]]) -> list[str]:
    """The columns of a leaderboard table of ``rows`` before the architecture: a reward column only
    when some reward differs from its accuracy, a status column only when a trial was stopped early."""
    return [
        "rank",
        "accuracy",
        *(["reward"] if shows_reward(rows) else []),
        *(["status"] if shows_stops(rows) else []),
        "params",
        "MACs",
        "latency ms",
        "ε",
    ]


def status_text(row: dict[str, Any]) -> str:
    """The status column of a leaderboard: ``done``, or ``stopped@t`` for a trial stopped early after epoch t."""
    if accuracy_source(row) == "trained":
        return str(row.get("status") or TrialStatus.DONE.value)
    epoch = row.get("stopped_epoch")
    return f"stopped@{'?' if epoch is None else epoch}"


def accuracy_text(row: dict[str, Any]) -> str:
    """The accuracy of a leaderboard row, followed by ``(predicted)`` or ``(partial)`` when the
    network was not trained to the end, so that nobody takes it for a trained accuracy."""
    source = accuracy_source(row)
    value = "-" if row.get("accuracy") is None else f"{row['accuracy']:.4f}"
    return value if source == "trained" else f"{value} ({source})"


def leaderboard_markdown(experiment: str, status: dict[str, Any], top: list[dict[str, Any]]) -> str:
    """The leaderboard table in Markdown (the columns of ``nasagent report``'s ``leaderboard.md``),
    with a status column (``done``, ``stopped@t``) when a trial of it was stopped early."""
    best = status.get("best_accuracy")
    stopped = f", {status['stopped']} stopped early" if status.get("stopped") else ""
    lines = [
        f"# {experiment}: top {len(top)}",
        "",
        f"{status.get('unique_trained')} of {status.get('budget')} models trained, {status.get('failed')} failed"
        f"{stopped}, {status.get('running')} running, best accuracy {'-' if best is None else f'{best:.4f}'}.",
        "",
    ]
    objective = objective_line(status)
    if objective:
        lines += [f"{objective[0].upper()}{objective[1:]}.", ""]
    rewarded, stops = shows_reward(top), shows_stops(top)
    if stops:
        lines += [STOPPED_NOTE, ""]
    lines += [
        "| rank | accuracy |"
        + (" reward |" if rewarded else "")
        + (" status |" if stops else "")
        + " params | MACs | latency ms | ε | architecture |",
        "|---:|---:|" + ("---:|" if rewarded else "") + ("---|" if stops else "") + "---:|---:|---:|---:|---|",
    ]
    for row in top:
        eps = "-" if row.get("epsilon") is None else f"{row['epsilon']:.2f}"
        params = "-" if row.get("params") is None else f"{row['params']:,}"
        macs = "-" if row.get("macs") is None else f"{row['macs']:,}"
        latency = "-" if row.get("latency_ms") is None else f"{row['latency_ms']:.3f}"
        reward = f" {row['reward']:.4f} |" if rewarded else ""
        state = f" {status_text(row)} |" if stops else ""
        measures = f"{params} | {macs} | {latency}"
        lines.append(f"| {row['rank']} | {accuracy_text(row)} |{reward}{state} {measures} | {eps} | `{row['arch']}` |")
    return "\n".join(lines) + "\n"


class LeaderboardPublisher(SearchCallback):
    """A search callback writing the experiment's leaderboard to ``store`` whenever a trial finished."""

    def __init__(self, db: Store, store: ArtifactStore, experiment: str, k: int = LEADERBOARD_SIZE) -> None:
        leaderboard_keys(experiment)  # the name must be usable in keys: fail before the search starts
        self.db = db
        self.store = store
        self.experiment = experiment
        self.k = k
        self._seen: tuple[int, int] | None = None

    def __call__(self, progress: Progress) -> None:
        """Publish if a model finished (trained or failed) since the last call, or on the first call."""
        seen = (progress.unique_finished, progress.failed)
        if seen != self._seen:
            self._seen = seen
            self.publish()

    def publish(self) -> bool:
        """Write both files now; False (and a logged warning) if the store failed."""
        status = experiment_status(self.db, self.experiment)
        top = top_trials(self.db, self.experiment, self.k)
        document = {
            "status": status,
            "top": top,
            "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        json_key, md_key = leaderboard_keys(self.experiment)
        try:
            self.store.put_bytes(json_key, json.dumps(document, indent=2, default=str).encode())
            self.store.put_bytes(md_key, leaderboard_markdown(self.experiment, status, top).encode())
        except ArtifactError as exc:
            log.warning("could not publish the leaderboard of %s: %s", self.experiment, exc)
            return False
        return True

    def on_step(self, search: SearchView) -> None:
        self(search.progress)


def search_leaderboard(url: str | None, db: Store, experiment: str) -> LeaderboardPublisher | None:
    """The publisher of a search given ``--artifacts URL`` (else ``$NASAGENT_ARTIFACTS``); None without either."""
    url = url or os.environ.get(ENV_URL)
    if not url:
        return None
    return LeaderboardPublisher(db, open_artifacts(url), experiment)
