"""Search callbacks: what runs beside the search loop without being part of it.

The loop calls every callback of its ``callbacks`` list, in order, from its own thread:

* ``on_step(search)`` after every pass of the loop (launches, rewards or an idle wait), so a
  live display can refresh; it must be cheap.
* ``on_trial_finished(search, outcome)`` after a trained (or failed) trial's outcome has been
  committed with the strategy's update: the store already shows it, so a callback may read the
  new leaderboard from there. Replay-dictionary hits train nothing and do not call it.
* ``on_search_end(search)`` once, when the budget is trained or the space is exhausted (not
  when the search is interrupted: a resume carries on and calls it then).

``search`` is the running loop seen through :class:`SearchView`: its store, its experiment and
its progress (as Optuna hands a study to its callbacks).

A callback never changes what the search does; a failing side effect (an artifact store that is
down) is logged by the callback, not raised, so that it cannot stop a days-long search.

A working callback, e.g. one that prints each finished trial::

    class PrintFinished(SearchCallback):
        def on_trial_finished(self, search: SearchView, outcome: TrialOutcome) -> None:
            print(search.experiment.name, outcome.trial_id, outcome.status, outcome.accuracy)

    SearchLoop(store, experiment, strategy, runner, budget, seed, callbacks=[PrintFinished()]).run()
"""

from __future__ import annotations

from typing import Protocol

from nasagent.core.trial import TrialOutcome
from nasagent.persistence.postgres import Experiment, Store
from nasagent.search.progress import Progress


class SearchView(Protocol):
    """What a callback may read of the running search (``SearchLoop`` provides it)."""

    store: Store
    experiment: Experiment
    progress: Progress


class SearchCallback:
    """Base class of search callbacks: override the hooks you need; the others do nothing."""

    def on_step(self, search: SearchView) -> None:
        """After every pass of the loop."""

    def on_trial_finished(self, search: SearchView, outcome: TrialOutcome) -> None:
        """After a trial's outcome and the strategy's update are committed."""

    def on_search_end(self, search: SearchView) -> None:
        """Once, when the search has trained its budget (or exhausted the space)."""
