"""What a person sees: the live progress line of a search and the leaderboard."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from nasagent.core.trial import TrialStatus
from nasagent.search.callbacks import SearchCallback, SearchView
from nasagent.search.leaderboard import STOPPED_NOTE, accuracy_text, leaderboard_columns, shows_stops, status_text
from nasagent.search.progress import Progress
from nasagent.search.status import shows_reward
from nasagent.strategies.schedule import EpsilonSchedule


class SearchDisplay(SearchCallback):
    """A live status line on a terminal; one log line per finished trial otherwise (CI, kubectl logs)."""

    def __init__(self, schedule: EpsilonSchedule | None, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.schedule = schedule
        self.started = time.monotonic()
        self.start_finished: int | None = None
        self.live: Live | None = None
        self._last_logged: Any = None
        self._notes_shown = 0

    def __enter__(self) -> SearchDisplay:
        if self.console.is_terminal:
            self.live = Live(Text("starting search..."), console=self.console, refresh_per_second=4, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)

    def line(self, p: Progress) -> str:
        """ε step, trials done/total, best accuracy, ETA."""
        if self.start_finished is None:
            self.start_finished = p.unique_finished
        parts = []
        if self.schedule is not None and p.epsilon is not None:
            step, eps = self.schedule.position(max(p.unique_launched - 1, 0))
            parts.append(f"ε {eps:.1f} (step {step + 1}/{len(self.schedule.steps)})")
        parts.append(f"trained {p.unique_finished}/{p.budget}")
        parts.append(f"in flight {p.in_flight}")
        parts.append(f"rewarded {p.trials_done}")
        if p.failed:
            parts.append(f"failed {p.failed}")
        if p.stopped:
            parts.append(f"stopped early {p.stopped}")
        if p.infra_failures:
            parts.append(f"requeued {p.infra_failures}")  # infrastructure failures, never rewarded
        parts.append("best " + ("-" if p.best_accuracy is None else f"{p.best_accuracy:.4f}"))
        done_here = p.unique_finished - self.start_finished
        if done_here > 0:
            per_trial = (time.monotonic() - self.started) / done_here
            parts.append(f"ETA {_duration(per_trial * (p.budget - p.unique_finished))}")
        return " | ".join(parts)

    def on_step(self, search: SearchView) -> None:
        self.show(search.progress)

    def show(self, p: Progress) -> None:
        """Print new notes, then refresh the status line (or log the trial that just finished)."""
        for note in p.notes[self._notes_shown :]:
            self.console.print(f"[yellow]{note}[/]")
        self._notes_shown = len(p.notes)
        line = self.line(p)
        if self.live is not None:
            self.live.update(Text(line))
        elif p.last is not None and p.last is not self._last_logged:
            self._last_logged = p.last
            outcome = p.last
            what = f"{outcome.accuracy:.4f}" if outcome.status == TrialStatus.DONE else f"failed ({outcome.failure})"
            if outcome.status == TrialStatus.STOPPED:
                what = f"{outcome.accuracy:.4f}, stopped early ({outcome.failure})"
            self.console.print(f"trial {outcome.trial_id} {p.last_arch} -> {what}", highlight=False)
            self.console.print(line, highlight=False)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def leaderboard(rows: list[dict[str, Any]], title: str) -> Table:
    """The top architectures, best first: accuracy, the reward when the objective is not the accuracy
    itself (``--objective mnas``, ``--max-latency-ms``), parameters, MACs and batch-1 latency. A trial
    stopped early (``--early-stop``) shows ``stopped@t`` in a status column and its accuracy marked
    ``(predicted)`` or ``(partial)``, explained under the table: it was never trained to the end."""
    stops = shows_stops(rows)
    table = Table(title=title, caption=STOPPED_NOTE if stops else None, caption_justify="left")
    rewarded = shows_reward(rows)
    columns = leaderboard_columns(rows)
    for column in [*columns, "architecture"]:
        table.add_column(column, justify="left" if column in ("status", "architecture") else "right")
    for row in rows:
        eps = "-" if row.get("epsilon") is None else f"{row['epsilon']:.1f}"
        reward = [_number(row.get("reward"), ".4f")] if rewarded else []
        table.add_row(
            str(row["rank"]),
            accuracy_text(row),
            *reward,
            *([status_text(row)] if stops else []),
            _number(row.get("params"), ","),
            _number(row.get("macs"), ","),
            _number(row.get("latency_ms"), ".3f"),
            eps,
            row["arch"],
        )
    return table


def _number(value: float | None, spec: str) -> str:
    """``value`` formatted with ``spec``, or ``-`` when unknown."""
    return "-" if value is None else format(value, spec)


def print_table(table: Table) -> None:
    Console(file=sys.stdout).print(table)
