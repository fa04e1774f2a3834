"""Experiment configuration: what defines a search, stored with the experiment so a resume repeats it.

Validated once, at the edge (the CLI, a KFP component); below it, the strategy gets a
``StrategyContext`` and the trial worker ``TrialSettings``, never the config itself.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from nasagent.core.limits import Limits
from nasagent.core.objective import Objective
from nasagent.errors import ConfigError
from nasagent.persistence.embedded import nasagent_home
from nasagent.spaces.metaqnn import MetaQNNSpace, SpaceConfig, load_space
from nasagent.stopping.settings import EarlyStopConfig
from nasagent.strategies.base import Strategy, StrategyContext
from nasagent.strategies.qlearning import QLearningConfig
from nasagent.strategies.registry import ACTS_IN_NAS_ENV, STRATEGIES, make_strategy
from nasagent.strategies.schedule import EpsilonSchedule
from nasagent.training.settings import BuildOptions, TrainConfig, TrialSettings

EXPERIMENT_NAME_MAX = 63
"""Experiment names become Kubernetes label values, which are at most 63 characters."""
_EXPERIMENT_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")

METAQNN_EPOCHS, NAS_ENV_EPOCHS = 20, 12
"""Default ``--epochs``: MetaQNN's §5, and the NAS environment paper's §6.1 (``nasagent.envs.nas_env.EPOCHS``)."""

SEARCHES_METAQNN_SPACE = frozenset({"qlearning", "random"})
"""Strategies that propose exactly the architectures of ``MetaQNNSpace``, so the space's size bounds the search."""


def check_experiment_name(name: str) -> str:
    """``name`` if it may name a new experiment, else a one-line ConfigError.

    An experiment's name becomes a folder name, an S3 key segment and a Kubernetes label value, so
    it is 1 to 63 characters of letters, digits, ``.``, ``_`` and ``-``, starting and ending with a
    letter or digit (exactly what a label value allows; no ``/``, spaces, quotes or newlines).
    """
    if not isinstance(name, str) or len(name) > EXPERIMENT_NAME_MAX or not _EXPERIMENT_NAME.fullmatch(name):
        shown = repr(name) if len(name) <= 70 else repr(name[:60]) + f"... ({len(name)} characters)"
        raise ConfigError(
            f"experiment name {shown} is not allowed: use 1 to {EXPERIMENT_NAME_MAX} letters, digits, '.', '_' "
            "or '-', starting and ending with a letter or digit"
        )
    return name


@dataclass
class SearchConfig:
    """Everything that defines an experiment's search (how many workers run it does not)."""

    dataset: str = "digits"
    """``digits``, ``npz:PATH``, ``mnist``, ``fashion_mnist``, ``cifar10`` or ``svhn``."""
    space: str = "metaqnn-small"
    """A preset name or a YAML file; resolved into ``space_spec`` when the experiment is created."""
    strategy: str = "qlearning"
    """The searcher."""
    trials: int | None = None
    """Unique architectures to train; None: the whole schedule (2,700 for ``paper``)."""
    schedule: str = "paper"
    """``paper`` (Table 2, scaled to ``trials``) or explicit ``EPS:COUNT,...`` steps."""
    epochs: int | None = None
    """Training epochs per trial; None: the strategy's paper, 20 for MetaQNN's space (§5), 12 for the
    NAS environment's (its §6.1). Set when the experiment is created, so the stored config holds a number."""
    seed: int = 0
    """Seeds the strategy, the data split and every trial."""
    val_size: float | None = None
    """Validation split: a count, a fraction, or None for min(5000, 20% of the training set)."""
    data_dir: str = ""
    """Where torchvision datasets are downloaded; default ``$NASAGENT_HOME/data``."""
    qlearning: QLearningConfig = field(default_factory=QLearningConfig)
    """MetaQNN's α, γ, Q₀ and K."""
    options: dict[str, Any] = field(default_factory=dict)
    """Settings of the chosen strategy (``--option KEY=VALUE``), checked by its factory."""
    space_spec: dict[str, Any] = field(default_factory=dict)
    """The resolved space, stored so a resume uses it even if the preset file changes."""
    extensions: list[dict[str, Any]] = field(default_factory=list)
    """Each ``nasagent extend`` of the budget: ``{"trials": before, "schedule": before, "added": n, "epsilon": ε}``."""
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    """``--early-stop`` and its ``--early-stop-*`` settings (``nasagent.stopping.settings``); a dict
    (or a rule name) is accepted and turned into an ``EarlyStopConfig``."""
    max_params: int | None = None
    """``--max-params``: no network with more trainable parameters is proposed (``nasagent.core.limits``)."""
    max_macs: int | None = None
    """``--max-macs``: no network with more MACs per image is proposed."""
    max_latency_ms: float | None = None
    """``--max-latency-ms``: a network slower than this (batch 1, trial's device) has its reward penalised."""
    objective: str = "accuracy"
    """``--objective``: ``accuracy`` (the paper's reward) or ``mnas`` (``nasagent.core.objective``)."""
    objective_metric: str | None = None
    """mnas: ``latency`` (default), ``params`` or ``macs``; resolved when the experiment is created."""
    objective_target: float | None = None
    """mnas: the metric's target T; default the limit of the metric's kind."""
    objective_weight: float | None = None
    """mnas: the exponent w (default -0.07, MnasNet's)."""

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.epochs is None:
            self.epochs = NAS_ENV_EPOCHS if self.strategy in ACTS_IN_NAS_ENV else METAQNN_EPOCHS
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be at least 1, got {self.epochs}")
        if self.trials is not None and self.trials < 1:
            raise ConfigError(f"--trials must be at least 1, got {self.trials}")
        if self.val_size is not None and (
            self.val_size <= 0 or (self.val_size >= 1 and self.val_size != int(self.val_size))
        ):
            raise ConfigError(f"--val-size must be a fraction in (0, 1) or a whole count, got {self.val_size}")
        if not self.data_dir:
            self.data_dir = str(nasagent_home() / "data")
        if not self.space_spec:
            self.space_spec = load_space(self.space).to_dict()
        self.epsilon_schedule()  # validates --schedule against --trials
        self.early_stop = EarlyStopConfig.from_value(self.early_stop)  # flags and stored configs give a dict
        self.early_stop.check_epochs(int(self.epochs))
        resolved = self.objective_rule()  # validates the limits and the objective; stored resolved
        self.objective_metric, self.objective_target, self.objective_weight = (
            resolved.metric,
            resolved.target,
            resolved.weight,
        )

    def limits(self) -> Limits:
        """``--max-params``, ``--max-macs`` and ``--max-latency-ms`` (ConfigError for a bad value)."""
        return Limits(self.max_params, self.max_macs, self.max_latency_ms)

    def objective_rule(self) -> Objective:
        """What the search maximises: the reward rule of ``--objective`` and ``--max-latency-ms``."""
        limits = self.limits()
        return Objective.resolve(
            self.objective, self.objective_metric, self.objective_target, self.objective_weight, limits.to_json()
        )

    def space_config(self) -> SpaceConfig:
        return SpaceConfig.from_dict(self.space_spec, source=self.space)

    def epsilon_schedule(self) -> EpsilonSchedule:
        return EpsilonSchedule.parse(self.schedule, self.trials)

    @property
    def budget(self) -> int:
        """Unique architectures to train."""
        return self.epsilon_schedule().total

    def space_size(self, input_shape: tuple[int, int, int], num_classes: int) -> int | None:
        """How many distinct architectures the strategy can propose for this data, when that is
        known (strategies walking the MetaQNN space); None otherwise."""
        if self.strategy not in SEARCHES_METAQNN_SPACE or self.limits().sized:
            return None  # under size limits only a part of the space is proposed, of a size not counted
        return MetaQNNSpace(self.space_config(), min(input_shape[1:]), num_classes).count()

    def extended(self, trials: int, epsilon: float | None = None) -> SearchConfig:
        """This config with its budget raised to ``trials`` unique architectures.

        The schedule so far is kept step by step (the architectures already trained were trained
        at those ε) and one step is appended for the new trials, at ``epsilon`` or, by default,
        the ε the schedule ended with: the agent has already explored and annealed, its Q-values
        hold what it learnt, and the last ε exploits that as the schedule's last step did;
        starting over at ε = 1 would spend the new budget on random walks.
        """
        schedule = self.epsilon_schedule()
        if trials <= schedule.total:
            raise ConfigError(f"--trials {trials} must be more than the experiment's {schedule.total} trials")
        eps = schedule.steps[-1][0] if epsilon is None else float(epsilon)
        if not 0.0 <= eps <= 1.0:
            raise ConfigError(f"--epsilon must be in [0, 1], got {epsilon}")
        added = trials - schedule.total
        steps = ",".join(f"{e:g}:{n}" for e, n in (*schedule.steps, (eps, added)))
        record = {"trials": self.trials, "schedule": self.schedule, "added": added, "epsilon": eps}
        return replace(self, trials=trials, schedule=steps, extensions=[*self.extensions, record])

    def trial_settings(self, device: str = "auto") -> TrialSettings:
        """How every trial of the experiment loads its data and trains."""
        space = self.space_config()
        val_size = self.val_size
        train = TrainConfig(epochs=int(self.epochs or METAQNN_EPOCHS), seed=self.seed, device=device)
        build = BuildOptions(
            activation=space.activation,
            dropout=space.dropout,
            pooling=space.pooling,  # type: ignore[arg-type]
            conv_padding=space.conv_padding,  # type: ignore[arg-type]
        )
        if self.strategy in ACTS_IN_NAS_ENV:
            train, build = self._nas_env_training(train, build)
        return TrialSettings(
            dataset=self.dataset,
            data_dir=self.data_dir,
            data_seed=self.seed,
            val_size=int(val_size) if val_size is not None and val_size >= 1 else val_size,
            train=train,
            build=build,
        )

    def _nas_env_training(self, train: TrainConfig, build: BuildOptions) -> tuple[TrainConfig, BuildOptions]:
        """How the NAS environment's networks are trained (``nasagent.envs.nas_env``, "Evaluation"): the
        final epoch's accuracy, no restarts, VALID padding, unless the strategy's options say otherwise."""
        from dataclasses import fields as dataclass_fields

        from nasagent.strategies.env_driver import EnvOptions
        from nasagent.strategies.options import options_from

        names = {f.name for f in dataclass_fields(EnvOptions)}
        env = options_from(EnvOptions, {k: v for k, v in self.options.items() if k in names}, self.strategy)
        if env.score not in ("final", "best"):
            raise ConfigError(f"--option score must be final or best, got {env.score!r}")
        restarts = TrainConfig.max_restarts if env.restarts else 0
        return replace(train, score=env.score, max_restarts=restarts), replace(build, nsc_padding=env.padding)

    def strategy_context(self, input_shape: tuple[int, int, int], num_classes: int) -> StrategyContext:
        """What the strategy factory of ``self.strategy`` is given."""
        options = dict(self.options)
        if self.strategy == "qlearning":  # --q-init, --alpha, --replay-k are MetaQNN's options too
            options = {**asdict(self.qlearning), **options}
        return StrategyContext(
            seed=self.seed,
            options=options,
            budget=self.budget,
            input_shape=input_shape,
            num_classes=num_classes,
            space=self.space_config(),
            schedule=self.epsilon_schedule(),
            limits=self.limits(),
        )

    def make_strategy(self, input_shape: tuple[int, int, int], num_classes: int) -> Strategy:
        """The experiment's searcher for data of this shape and class count (options checked here)."""
        return make_strategy(self.strategy, self.strategy_context(input_shape, num_classes))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["qlearning"] = QLearningConfig(**values.get("qlearning", {}))
        return cls(**values)


# Fields a resume may not change: they define what the experiment's numbers mean.
IDENTITY = (
    "dataset",
    "space",
    "strategy",
    "trials",
    "schedule",
    "epochs",
    "seed",
    "val_size",
    "qlearning",
    "options",
    "early_stop",
    "max_params",
    "max_macs",
    "max_latency_ms",
    "objective",
    "objective_metric",
    "objective_target",
    "objective_weight",
)


def resume_config(stored: dict[str, Any], given: dict[str, Any], name: str) -> SearchConfig:
    """The stored config of experiment ``name``, checked against the flags the user gave again.

    After ``nasagent extend`` the ``--trials`` and ``--schedule`` the search was started with are
    still accepted (the same command line resumes the extended search)."""
    config = SearchConfig.from_dict(stored)
    for key, value in given.items():
        if value is None or key not in IDENTITY:
            continue
        if key == "qlearning":
            value = QLearningConfig(**{**asdict(config.qlearning), **value})
        if key == "early_stop":  # only the settings given again are compared: the others keep their values
            changed = config.early_stop.differences(value if isinstance(value, dict) else {"rule": value})
            if changed:
                raise ConfigError(
                    f"experiment {name!r} exists with {_show(config.early_stop)}, not {', '.join(changed)}; "
                    "resume with the same values or start a new --experiment"
                )
            continue
        current = getattr(config, key)
        earlier = [extension.get(key) for extension in config.extensions] if key in ("trials", "schedule") else []
        if value != current and value not in earlier:
            hint = "resume with the same value or start a new --experiment"
            if key == "trials" and isinstance(value, int) and value > config.budget:
                hint = f"to train more, run: nasagent extend --experiment {name} --trials {value}"
            raise ConfigError(f"experiment {name!r} exists with --{key.replace('_', '-')} {_show(current)}; {hint}")
    return config


def _show(value: Any) -> str:
    if isinstance(value, EarlyStopConfig):
        return value.describe()
    return str(asdict(value)) if isinstance(value, QLearningConfig) else str(value)
