"""Performance prediction for early stopping: Baker, Gupta, Raskar & Naik, "Accelerating Neural
Architecture Search using Performance Prediction" (ICLR 2018 workshop; arXiv 1705.10823).

What the paper does, and what this module does with it:

1. **Features** (paper): a partially trained network is described by ``x_f = (x_A, x_HP, y_1..t,
   Δy, Δ²y)``: architecture features (for MetaQNN's CNNs the total number of weights and the number
   of layers), the training hyperparameters, the validation accuracies of its first t epochs and
   their first- and second-order differences. Here: ``architecture_features`` (log10 of the number
   of weights, the number of layers in all and of convolutions, poolings and FC layers; the log and
   the per-kind counts are our choice, to give an RBF kernel comparable scales); the one
   hyperparameter that differs between our trials, how many times the trainer restarted the
   network (each restart multiplies the learning rate by 0.4; the schedule is otherwise the same
   for every trial, so the paper's other x_HP are constants and are left out); y_1..y_t of the
   trial's surviving attempt, their t-1 first and t-2 second differences. Inputs are standardised
   on the training set (our choice; an RBF kernel needs it).
2. **Model** (paper): of the frequentist regressors they compare (ordinary least squares, random
   forests, ν-SVR with linear and RBF kernels), ν-SVR with an RBF kernel predicted best; its
   hyperparameters found by random search with cross-validation. Here: scikit-learn's ``NuSVR``
   (RBF), C, ν and γ chosen by ``SEARCH`` random draws (plus sklearn's defaults) scored by 3-fold
   cross-validated mean squared error on at most ``SEARCH_SAMPLES`` of the training trials; the
   search runs at the first fit and again whenever the training set has doubled since (our choice,
   so that refitting stays cheap inside the agent's loop); refits in between reuse the settings.
3. **Sequential regression models** (paper): one model per epoch t = 1 .. T-1, model t
   predicting the final performance from the first t epochs. Here: the same; the target is the
   trial's reward, the best validation accuracy of its surviving attempt (MetaQNN's reward, §5),
   which is the paper's "final performance" for MetaQNN.
4. **Online training** (paper): the models are trained on the configurations fully trained so far
   and only used once enough of them exist (their experiments train on n = 100 configurations);
   they are retrained as more finish. Here: ``--early-stop-min-trials`` (default 100) fully trained
   trials before the first fit, a refit after every ``--early-stop-retrain-every`` (default 10,
   our choice) more, on every fully trained trial so far (stopped and failed trials have no final
   accuracy and are not used).
5. **Uncertainty and the stopping rule** (paper): the prediction is treated as Gaussian, its mean
   and standard deviation taken from a small ensemble of models, and a network is terminated when
   the probability that its final performance exceeds the best performance y_BEST observed so far
   is small: it is stopped at epoch t when P(y_T <= y_BEST) >= Δ. Here: an ensemble of
   ``ENSEMBLE`` (5) ν-SVRs per epoch, each fitted on a bootstrap resample of the training set
   with the chosen settings (bootstrap resampling is our choice of how to vary the members); the
   mean of their predictions, and as standard deviation the root of their variance plus the chosen
   setting's cross-validated mean squared error (our choice: the members' spread alone measures
   how much they disagree, not how far off they are, and on synthetic curves it was several times
   smaller than the actual error, which stops promising networks); y_BEST the best reward of the
   fully trained trials; Δ = ``--early-stop-delta`` (default 0.99, i.e. stop when the chance of
   beating the best is 1% or less).
6. **Reward of a stopped network in MetaQNN** (paper): the predicted final performance is used as
   the reward of an early-stopped network when the Q-values are updated, so the agent learns from
   every sampled network. Here: the ensemble's mean prediction, clipped to [0, 1], is the stopped
   trial's reward (``trials.accuracy``, the replay memory, ``strategy.tell``); its observed best
   accuracy is kept in ``info["observed_accuracy"]``.

Caveat on sources: the full text of the paper could not be opened from the machine this was
written on (only its abstract and introduction, which confirm the features, the frequentist
regressors, training on a small set of fully trained curves, and "uncertainty estimates obtained
from small model ensembles"); items 2-6 follow our reading of the paper and are marked "our
choice" wherever we had to choose. Check Δ, n and the retrain interval against §4-5 of the paper
before quoting them as the paper's.

Everything here is deterministic for a given seed and training set, so a resumed agent that fits
the same trials with the same settings (``PredictorState``) has the very same models.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.model_selection import KFold, cross_val_score
from sklearn.preprocessing import StandardScaler
from sklearn.svm import NuSVR

from nasagent.stopping.features import Verdict

ENSEMBLE = 5
"""ν-SVRs per epoch whose spread is the prediction's uncertainty."""
SEARCH = 20
"""Random hyperparameter settings tried by cross-validation (besides sklearn's defaults)."""
SEARCH_SAMPLES = 200
"""At most this many (the latest) training trials are used to score the settings."""
MIN_SAMPLES = 5
"""An epoch's model needs at least this many training curves reaching that epoch."""
MIN_STD = 1e-4
"""Floor of the ensemble's standard deviation (identical members would make it 0)."""


@dataclass(frozen=True)
class TrainedTrial:
    """A fully trained trial, as the predictor learns from it: its features (architecture and
    hyperparameters), the validation accuracies of its surviving attempt, and its reward."""

    trial_id: int
    features: tuple[float, ...]
    curve: tuple[float, ...]
    final: float


def srm_inputs(features: Sequence[float], curve: Sequence[float], t: int) -> list[float]:
    """The input of epoch t's model: features, y_1..y_t, their first and second differences."""
    y = [float(v) for v in curve[:t]]
    d1 = [b - a for a, b in zip(y, y[1:])]
    d2 = [b - a for a, b in zip(d1, d1[1:])]
    return [*map(float, features), *y, *d1, *d2]


@dataclass
class PredictorState:
    """What a resumed agent needs to rebuild the very same models: the ν-SVR settings (C, ν, γ)
    chosen per epoch with their cross-validated squared error, the training-set size at the last
    search, the trials of the last fit, and the fits so far."""

    hypers: dict[int, tuple[float, float, float, float]] = field(default_factory=dict)
    searched_at: int = 0
    trained_on: list[int] = field(default_factory=list)
    fits: int = 0

    def to_json(self) -> dict[str, Any]:
        """The JSON stored in ``stopping_state``."""
        return {
            "hypers": {str(t): list(h) for t, h in sorted(self.hypers.items())},
            "searched_at": self.searched_at,
            "trained_on": list(self.trained_on),
            "fits": self.fits,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PredictorState:
        """Read back ``to_json``."""
        hypers = {int(t): (float(h[0]), float(h[1]), float(h[2]), float(h[3])) for t, h in data["hypers"].items()}
        trained_on = [int(i) for i in data.get("trained_on", [])]
        return cls(hypers, int(data.get("searched_at", 0)), trained_on, int(data.get("fits", 0)))


@dataclass
class _EpochModel:
    scaler: StandardScaler
    members: list[NuSVR]
    cv_mse: float


class SequentialRegression:
    """The sequential regression models: for each epoch t < ``epochs``, an ensemble of ν-SVRs
    predicting a trial's reward from its first t epochs (see the module docstring)."""

    def __init__(self, epochs: int, seed: int = 0) -> None:
        self.epochs = epochs
        self.seed = seed
        self.state = PredictorState()
        self._models: dict[int, _EpochModel] = {}

    @property
    def fitted(self) -> bool:
        """Whether any epoch has a model."""
        return bool(self._models)

    def fit(self, trials: Sequence[TrainedTrial], search: bool | None = None) -> None:
        """(Re)fit every epoch's ensemble on ``trials``, called by the judge when enough trials are
        trained. ``search``: run the hyperparameter search (default: at the first fit, and when the
        training set has doubled since the last search); otherwise reuse ``state.hypers``."""
        ordered = sorted(trials, key=lambda trial: trial.trial_id)
        if search is None:
            search = not self.state.hypers or len(ordered) >= 2 * max(self.state.searched_at, 1)
        models: dict[int, _EpochModel] = {}
        for t in range(1, self.epochs):
            usable = [trial for trial in ordered if len(trial.curve) >= t]
            if len(usable) < MIN_SAMPLES:
                continue
            x = np.array([srm_inputs(trial.features, trial.curve, t) for trial in usable])
            y = np.array([trial.final for trial in usable])
            scaler = StandardScaler().fit(x)
            xs = scaler.transform(x)
            if search or t not in self.state.hypers:
                self.state.hypers[t] = _search(xs, y, self.seed + t)
            c, nu, gamma, cv_mse = self.state.hypers[t]
            rng = np.random.RandomState((self.seed * 1_000 + t) % 2**31)
            members = []
            for _ in range(ENSEMBLE):
                pick = rng.randint(0, len(y), len(y))
                members.append(NuSVR(C=c, nu=nu, gamma=gamma, kernel="rbf").fit(xs[pick], y[pick]))
            models[t] = _EpochModel(scaler, members, cv_mse)
        if search:
            self.state.searched_at = len(ordered)
        self.state.trained_on = [trial.trial_id for trial in ordered]
        self.state.fits += 1
        self._models = models

    def restore(self, state: PredictorState, trials: Sequence[TrainedTrial]) -> None:
        """Rebuild the models a previous agent had: fit ``trials`` (those of ``state.trained_on``)
        with the stored settings, no search. Called once when a judge resumes an experiment."""
        self.state = PredictorState(dict(state.hypers), state.searched_at, [], state.fits - 1)
        wanted = set(state.trained_on)
        self.fit([trial for trial in trials if trial.trial_id in wanted], search=False)

    def predict(self, features: Sequence[float], curve: Sequence[float]) -> tuple[float, float] | None:
        """(mean, standard deviation) of the predicted reward of a trial whose first ``len(curve)``
        epochs are ``curve``; None when that epoch has no model (too few curves reached it)."""
        model = self._models.get(len(curve))
        if model is None:
            return None
        x = model.scaler.transform(np.array([srm_inputs(features, curve, len(curve))]))
        predictions = np.array([member.predict(x)[0] for member in model.members])
        return float(predictions.mean()), max(math.sqrt(float(predictions.var()) + model.cv_mse), MIN_STD)


def _search(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[float, float, float, float]:
    """The (C, ν, γ) with the lowest 3-fold cross-validated squared error among sklearn's defaults
    and ``SEARCH`` random draws (C, γ log-uniform, ν uniform), on the latest ``SEARCH_SAMPLES``;
    and that error."""
    x, y = x[-SEARCH_SAMPLES:], y[-SEARCH_SAMPLES:]
    rng = np.random.RandomState(seed % 2**31)
    candidates = [(1.0, 0.5, 1.0 / x.shape[1])]
    for _ in range(SEARCH):
        candidates.append((10 ** rng.uniform(-2, 2), rng.uniform(0.1, 0.9), 10 ** rng.uniform(-4, 0)))
    folds = KFold(n_splits=min(3, len(y)), shuffle=True, random_state=seed % 2**31)
    best, best_error = candidates[0], math.inf
    for c, nu, gamma in candidates:
        model = NuSVR(C=c, nu=nu, gamma=gamma, kernel="rbf")
        error = -float(np.mean(cross_val_score(model, x, y, cv=folds, scoring="neg_mean_squared_error")))
        if error < best_error:
            best, best_error = (c, nu, gamma), error
    return (*best, best_error)


def probability_not_better(mean: float, std: float, best: float) -> float:
    """P(y <= best) for y ~ N(mean, std²): the chance a network ends no better than the best so far."""
    return 0.5 * (1.0 + math.erf((best - mean) / (max(std, MIN_STD) * math.sqrt(2.0))))


@dataclass(frozen=True)
class PredictRule:
    """Baker et al.'s stopping rule over a fitted ``SequentialRegression`` (module docstring, item 5)."""

    epochs: int
    delta: float = 0.99
    start_epoch: int = 1

    def decide(
        self,
        model: SequentialRegression | None,
        features: Sequence[float],
        curve: Sequence[float],
        best: float | None,
        warm_up: str = "",
    ) -> Verdict:
        """Called by the judge for each new epoch of a running trial: ``curve`` is its surviving
        attempt's accuracies up to now, ``best`` the best reward of the fully trained trials, and
        ``warm_up`` why there is no model yet (when ``model`` is None)."""
        t = len(curve)
        if t < self.start_epoch:
            return Verdict(False, f"warm-up: epoch {t} is before --early-stop-start-epoch {self.start_epoch}")
        if t >= self.epochs:
            return Verdict(False, f"epoch {t} is the last: nothing left to save")
        if model is None or best is None:
            return Verdict(False, warm_up or "warm-up: no predictor yet")
        predicted = model.predict(features, curve)
        if predicted is None:
            return Verdict(False, f"no model for epoch {t}: too few trained curves reach it")
        mean, std = predicted
        p = probability_not_better(mean, std, best)
        reward = min(max(mean, 0.0), 1.0)
        reason = (
            f"predicted final accuracy {reward:.4f} ± {std:.4f} at epoch {t}: P(no better than the best "
            f"{best:.4f}) = {p:.3f} {'>=' if p >= self.delta else '<'} Δ {self.delta:g}"
        )
        return Verdict(p >= self.delta, reason, reward)
