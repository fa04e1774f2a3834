"""Experiment configuration: what defines a search, stored with the experiment so a resume repeats it.

Validated once, at the edge (the CLI, a KFP component); below it, the strategy gets a
``StrategyContext`` and the trial worker ``TrialSettings``, never the config itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from nasagent.errors import ConfigError
from nasagent.persistence.embedded import nasagent_home
from nasagent.spaces.metaqnn import SpaceConfig, load_space
from nasagent.strategies.base import Strategy, StrategyContext
from nasagent.strategies.qlearning import QLearningConfig
from nasagent.strategies.registry import STRATEGIES, make_strategy
from nasagent.strategies.schedule import EpsilonSchedule
from nasagent.training.settings import BuildOptions, TrainConfig, TrialSettings


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
    epochs: int = 20
    """Training epochs per trial (§5: 20)."""
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

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
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

    def space_config(self) -> SpaceConfig:
        return SpaceConfig.from_dict(self.space_spec, source=self.space)

    def epsilon_schedule(self) -> EpsilonSchedule:
        return EpsilonSchedule.parse(self.schedule, self.trials)

    @property
    def budget(self) -> int:
        """Unique architectures to train."""
        return self.epsilon_schedule().total

    def trial_settings(self, device: str = "auto") -> TrialSettings:
        """How every trial of the experiment loads its data and trains."""
        space = self.space_config()
        val_size = self.val_size
        return TrialSettings(
            dataset=self.dataset,
            data_dir=self.data_dir,
            data_seed=self.seed,
            val_size=int(val_size) if val_size is not None and val_size >= 1 else val_size,
            train=TrainConfig(epochs=self.epochs, seed=self.seed, device=device),
            build=BuildOptions(activation=space.activation, dropout=space.dropout),
        )

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
IDENTITY = ("dataset", "space", "strategy", "trials", "schedule", "epochs", "seed", "val_size", "qlearning", "options")


def resume_config(stored: dict[str, Any], given: dict[str, Any], name: str) -> SearchConfig:
    """The stored config of experiment ``name``, checked against the flags the user gave again."""
    config = SearchConfig.from_dict(stored)
    for key, value in given.items():
        if value is None or key not in IDENTITY:
            continue
        if key == "qlearning":
            value = QLearningConfig(**{**asdict(config.qlearning), **value})
        current = getattr(config, key)
        if value != current:
            raise ConfigError(
                f"experiment {name!r} exists with --{key.replace('_', '-')} {_show(current)}; "
                f"resume with the same value or start a new --experiment"
            )
    return config


def _show(value: Any) -> str:
    return str(asdict(value)) if isinstance(value, QLearningConfig) else str(value)
