"""The agent's side of early stopping: the judge that decides, epoch by epoch, whether a trial trains on.

The decision protocol (migration 007), the same for local workers and cluster trial pods:

1. after each epoch a trial writes its row to ``trial_epochs`` and waits, a few seconds at most,
   for the row of that epoch in ``trial_decisions`` (:class:`nasagent.execution.epochs.EpochRecorder`);
2. on every pass of the search loop (a ``SearchCallback``: ``on_step``, about once a second) the
   judge reads the epochs of running trials that have no decision yet, applies the experiment's
   rule (:mod:`nasagent.stopping`) and writes one decision per epoch: stop or go on, why, and for
   ``predict`` the predicted final accuracy;
3. a trial told to stop ends with status ``stopped`` and the rule's reward; its outcome comes back
   the usual way (the runner), counts towards the budget and is told to the strategy;
4. a trial that hears nothing in time trains on: a busy, restarting or dead agent never hangs one.

Resume after ``kill -9``: decisions are rows, never rewritten (a trial may have acted on one), and
the judge holds nothing the store does not: on start it reads the experiment's trained trials and
its saved state (``stopping_state``; for ``predict`` the ν-SVR settings and the trials the
predictor was last fitted on, saved in the same transaction as the decisions that followed the
fit) and rebuilds the very same predictor. Epochs recorded while no agent ran are decided late (the
trials trained on meanwhile); decisions already written are kept.

A failing store is logged, not raised: trials then train on, which is what ``--early-stop none`` does.
"""

from __future__ import annotations

import logging
from collections import defaultdict

from nasagent.core.trial import TrialOutcome, TrialStatus
from nasagent.errors import StoreError
from nasagent.persistence.postgres import DecisionRow, EpochRow, Experiment, Store, TrialRow
from nasagent.search.callbacks import SearchCallback, SearchView
from nasagent.stopping.features import Verdict, architecture_features, finite_prefix, surviving_curve
from nasagent.stopping.median import MedianRule
from nasagent.stopping.predict import PredictorState, PredictRule, SequentialRegression, TrainedTrial
from nasagent.stopping.settings import EarlyStopConfig

log = logging.getLogger(__name__)


class StopJudge(SearchCallback):
    """Decides each new epoch of the experiment's running trials with its ``--early-stop`` rule.

    ``epochs``: the schedule's length (T); ``input_shape``, ``pooling`` and ``padding``: how the
    trials' networks are sized (the predictor's architecture features); ``seed``: the experiment's
    (the predictor's hyperparameter search and bootstrap resamples follow it).
    """

    def __init__(
        self,
        store: Store,
        experiment: Experiment,
        config: EarlyStopConfig,
        epochs: int,
        input_shape: tuple[int, int, int],
        pooling: str = "floor",
        padding: str = "same",
        seed: int = 0,
    ) -> None:
        if not config.enabled:
            raise ValueError("a StopJudge needs an early-stopping rule")
        self.store = store
        self.experiment = experiment
        self.config = config
        self.epochs = epochs
        self.input_shape = input_shape
        self.pooling = pooling
        self.padding = padding
        self.seed = seed
        self.median = MedianRule(int(config.min_trials or 1), int(config.start_epoch or 1))
        self.predict = PredictRule(epochs, float(config.delta or 0.99), int(config.start_epoch or 1))
        self.model: SequentialRegression | None = None
        self.trained: dict[int, TrainedTrial] = {}  # fully trained trials with a learning curve
        self.stopped = 0
        """Trials this judge told to stop."""
        self._features: dict[int, tuple[float, ...]] = {}  # trial id -> architecture features
        self._finished: set[int] = set()  # trained trials not yet read
        self._loaded = False

    # -- SearchCallback -----------------------------------------------------------------------------
    def on_step(self, search: SearchView) -> None:
        """Every pass of the loop: decide the epochs recorded since the last one."""
        self.step()

    def on_trial_finished(self, search: SearchView, outcome: TrialOutcome) -> None:
        """A fully trained trial joins what the rules compare against (read at the next step)."""
        if outcome.status == TrialStatus.DONE:
            self._finished.add(outcome.trial_id)

    # -- the work ---------------------------------------------------------------------------------
    def step(self) -> list[DecisionRow]:
        """Decide every undecided epoch of the running trials and commit the decisions (with the
        predictor's state after a refit) in one transaction; return them. Logs a failing store."""
        try:
            return self._step()
        except StoreError as exc:
            log.warning("early stopping: cannot read or write the store (%s); trials train on meanwhile", exc)
            return []

    def _step(self) -> list[DecisionRow]:
        eid = self.experiment.id
        if not self._loaded:
            self._load()
        if self._finished:
            self._read_trained(sorted(self._finished))
            self._finished.clear()
        refitted = self._maybe_refit()
        runs: dict[tuple[int, int, int], list[EpochRow]] = defaultdict(list)
        for row in self.store.undecided_epochs(eid):
            runs[(row.trial_id, row.attempt, row.run)].append(row)
        decisions = []
        for (trial_id, attempt, run), new in runs.items():
            recorded = self.store.run_epochs(trial_id, attempt, run)
            for row in new:
                verdict = self._verdict(trial_id, [e for e in recorded if e.epoch <= row.epoch], row)
                decisions.append(
                    DecisionRow(
                        eid,
                        trial_id,
                        attempt,
                        run,
                        row.epoch,
                        verdict.stop,
                        self.config.rule,
                        verdict.predicted,
                        verdict.reason,
                    )  # fmt: skip
                )
                if verdict.stop:
                    self.stopped += 1
                    log.info("stopping trial %s after epoch %s: %s", trial_id, row.epoch, verdict.reason)
        if decisions or refitted:
            with self.store.transaction() as tx:
                for decision in decisions:
                    tx.record_decision(decision)
                if refitted and self.model is not None:
                    tx.save_stopping_state(eid, self.config.rule, self.model.state.to_json())
        return decisions

    def _verdict(self, trial_id: int, rows: list[EpochRow], row: EpochRow) -> Verdict:
        """The rule's verdict on ``row``, the last of ``rows`` (its run's epochs so far)."""
        if row.val_accuracy is None:
            return Verdict(False, f"epoch {row.epoch} diverged: the trainer ends or restarts the attempt itself")
        curve = surviving_curve(rows)
        values = finite_prefix(curve)
        t = len(curve)
        if len(values) < t:
            return Verdict(False, f"the attempt has a diverged epoch before epoch {row.epoch}")
        if t >= self.epochs:
            return Verdict(False, f"epoch {t} is the last: nothing left to save")
        if self.config.rule == "median":
            return self.median.decide(values, [trained.curve for trained in self.trained.values()])
        features = (*self._arch_features(trial_id), float(row.restarts))
        best = max((trained.final for trained in self.trained.values()), default=None)
        warm_up = f"warm-up: {len(self.trained)} of {self.config.min_trials} trained trials"
        return self.predict.decide(self.model, features, values, best, warm_up)

    def _load(self) -> None:
        """On the first step: the trained trials so far and the saved predictor (a resume)."""
        eid = self.experiment.id
        done = self.store.trials(eid, TrialStatus.DONE)
        curves = self.store.experiment_curves(eid, [trial.id for trial in done]) if done else {}
        for trial in done:
            self._add_trained(trial, curves.get(trial.id, []))
        saved = self.store.load_stopping_state(eid)
        if self.config.rule == "predict" and saved is not None and saved[0] == "predict":
            state = PredictorState.from_json(saved[1])
            model = SequentialRegression(self.epochs, self.seed)
            model.restore(state, [self.trained[i] for i in state.trained_on if i in self.trained])
            self.model = model
            log.info("early stopping: resumed the predictor fitted on %s trained trials", len(state.trained_on))
        self._loaded = True

    def _read_trained(self, trial_ids: list[int]) -> None:
        curves = self.store.experiment_curves(self.experiment.id, trial_ids)
        for trial_id in trial_ids:
            trial = self.store.trial(trial_id)
            if trial is not None and trial.status == TrialStatus.DONE:
                self._add_trained(trial, curves.get(trial_id, []))

    def _add_trained(self, trial: TrialRow, epochs: list[EpochRow]) -> None:
        """A trained trial with a learning curve joins the training set (one without, e.g. trained
        before its curves were recorded, cannot be learnt from)."""
        curve = finite_prefix(surviving_curve(epochs))
        if not curve or trial.accuracy is None:
            return
        self._features.setdefault(trial.id, self._features_of(trial.arch))
        features = (*self._features[trial.id], float(epochs[-1].restarts))
        self.trained[trial.id] = TrainedTrial(trial.id, features, tuple(curve), float(trial.accuracy))

    def _maybe_refit(self) -> bool:
        """predict: fit the predictor once ``min_trials`` trials are trained, and again after every
        ``retrain_every`` more; True when it was (re)fitted."""
        if self.config.rule != "predict" or len(self.trained) < int(self.config.min_trials or 0):
            return False
        if self.model is not None and len(self.trained) - len(self.model.state.trained_on) < int(
            self.config.retrain_every or 1
        ):
            return False
        model = self.model or SequentialRegression(self.epochs, self.seed)
        model.fit(list(self.trained.values()))
        self.model = model
        log.info("early stopping: predictor fitted on %s trained trials (fit %s)", len(self.trained), model.state.fits)
        return True

    def _arch_features(self, trial_id: int) -> tuple[float, ...]:
        if trial_id not in self._features:
            trial = self.store.trial(trial_id)
            self._features[trial_id] = self._features_of(trial.arch) if trial is not None else (0.0,) * 5
        return self._features[trial_id]

    def _features_of(self, arch: str) -> tuple[float, ...]:
        return architecture_features(arch, self.input_shape, self.pooling, self.padding)
