"""The median stopping rule of Katib (``medianstop``) and NNI (``Medianstop`` assessor).

The rule, as both describe it (and as Golovin et al., "Google Vizier", 2017, introduced it): a
trial is stopped at step t if its best objective value by step t is strictly worse than the median
of the running averages, up to step t, of the objective values the completed trials reported.

Here a step is an epoch of the trial's surviving attempt (a trainer restart discards the epochs
before it, as it discards them for the reward), the objective is the validation accuracy, and the
completed trials are the experiment's fully trained ones (status ``done``: neither failed nor
stopped, as NNI counts only successful trials). Completed trials whose curve is shorter than t
(a late divergence ended them) are left out of the median at t, as NNI leaves them out.

Warm-up, with Katib's names and defaults: ``min_trials`` (``min_trials_required``, 3) completed
trials with a curve reaching t must exist, and t must be at least ``start_epoch`` (``start_step``,
4); until then every trial continues.

A trial it stops is rewarded with the best validation accuracy it reached (its reward had it
ended there: neither Katib nor NNI define a reward, they report the last objective value).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from nasagent.stopping.features import Verdict


@dataclass(frozen=True)
class MedianRule:
    """Katib's/NNI's median stopping rule with its warm-up (see the module docstring)."""

    min_trials: int = 3
    start_epoch: int = 4

    def decide(self, curve: Sequence[float], completed: Sequence[Sequence[float]]) -> Verdict:
        """Called by the judge for each new epoch of a running trial: ``curve`` holds the trial's
        validation accuracies of its surviving attempt up to this epoch (t = ``len(curve)``),
        ``completed`` the curves of the fully trained trials."""
        t = len(curve)
        if t < self.start_epoch:
            return Verdict(False, f"warm-up: epoch {t} is before --early-stop-start-epoch {self.start_epoch}")
        averages = [sum(c[:t]) / t for c in completed if len(c) >= t]
        if len(averages) < self.min_trials:
            return Verdict(False, f"warm-up: {len(averages)} of {self.min_trials} trained trials reached epoch {t}")
        median = statistics.median(averages)
        best = max(curve)
        verdict = "below" if best < median else "not below"
        reason = (
            f"median rule at epoch {t}: best accuracy {best:.4f} is {verdict} the median {median:.4f} "
            f"of {len(averages)} trained trials' running averages"
        )
        return Verdict(best < median, reason)
