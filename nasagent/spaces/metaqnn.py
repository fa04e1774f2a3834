"""The MetaQNN state-action space (Baker et al. 2017, §4.1-4.2, Table 1, appendices B and C).

A *state* is the layer just chosen (type and parameters), its depth, the binned representation
size and, for FC layers, how many FC layers precede it in a row. An *action* is the next layer,
never including the size it leads to: the walk carries the true size along, so a pooling action
from one binned state can land in two different bins (the paper's stochastic transitions).

Legal actions depend only on the binned state, so that ``max_u Q(s', u)`` is well defined:
the receptive-field rule "no larger than the current size" is checked against the smallest true
size the bin can hold (its lower edge), which makes every legal action valid for every true size
that lands in the bin.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from nasagent.core.arch import (
    CONV_PADDINGS,
    FC,
    GAP,
    POOLING_MODES,
    Architecture,
    Conv,
    Layer,
    Pool,
    Softmax,
    output_size,
)
from nasagent.errors import ConfigError

PRESET_DIR = Path(__file__).parent / "presets"


def _range_rule(n: int, low: int, rounding: str) -> list[int]:
    """Every integer from ``low`` to ``n / 2`` (rounded down for receptive fields, up for strides): the
    ``range`` reconstruction of appendix C (see ``presets/metaqnn-mnist.yaml``)."""
    high = n // 2 if rounding == "down" else -(-n // 2)
    return list(range(low, high + 1))


def _log_rule(n: int, start_m: int) -> list[int]:
    """Appendix C's ``{n / 2^m : m in {start_m, ..., log2 n}}``, rounded half up, distinct, >= 1."""
    if n < 2:
        return []
    values = {int(n / 2**m + 0.5) for m in range(start_m, int(math.log2(n)) + 1)}
    return sorted(v for v in values if v >= 1)


@dataclass(frozen=True)
class SpaceConfig:
    """A MetaQNN space as written in a preset YAML file (see ``presets/metaqnn.yaml``).

    ``conv_kernels``/``conv_strides``/``pool_shapes`` set to ``"log"`` use appendix C's rules as
    Table A1 prints them, where the choices depend on the representation size; ``"range"`` is the
    reconstruction under which the authors' MNIST networks (Table A4) are legal: every receptive
    field from 2 to half the representation size, every stride from 1 to half the receptive field
    (rounded up). ``pooling`` (``floor``/``ceil``) and ``conv_padding`` (``same``/``valid``) fix how
    sizes shrink (:func:`nasagent.core.arch.output_size`); the builder gets the same two.
    """

    name: str
    max_depth: int
    conv_filters: tuple[int, ...]
    conv_kernels: tuple[int, ...] | str
    conv_strides: tuple[int, ...] | str
    pool_shapes: tuple[tuple[int, int], ...] | str
    fc_units: tuple[int, ...]
    fc_max_consecutive: int | None
    fc_max_size: int | None
    size_bins: tuple[int, ...] | None
    terminals: tuple[str, ...]
    activation: str = "relu"
    dropout: str = "paper"
    pooling: str = "floor"
    conv_padding: str = "same"
    description: str = ""
    raw: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "space") -> SpaceConfig:
        """Validate a parsed YAML mapping; every problem is a one-line ConfigError."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: a space must be a YAML mapping")
        known = {"name", "description", "max_depth", "size_bins", "conv", "pool", "fc", "terminals", "build"}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"{source}: unknown keys {sorted(unknown)} (known: {sorted(known)})")
        try:
            conv, pool, fc, build = (data.get(k) or {} for k in ("conv", "pool", "fc", "build"))
            bins = data.get("size_bins")
            space = cls(
                name=str(data.get("name", source)),
                description=str(data.get("description", "")),
                max_depth=_positive(data["max_depth"], "max_depth"),
                conv_filters=tuple(_positive(v, "conv.filters") for v in conv.get("filters", [])),
                conv_kernels=_ints_or_log(conv.get("kernels", [1, 3, 5]), "conv.kernels"),
                conv_strides=_ints_or_log(conv.get("strides", [1]), "conv.strides"),
                pool_shapes=_pool_shapes(pool.get("shapes", [])),
                fc_units=tuple(_positive(v, "fc.units") for v in fc.get("units", [])),
                fc_max_consecutive=_optional_positive(fc.get("max_consecutive", 2), "fc.max_consecutive"),
                fc_max_size=_optional_positive(fc.get("max_size"), "fc.max_size"),
                size_bins=None
                if bins is None
                else tuple(sorted((_positive(b, "size_bins") for b in bins), reverse=True)),
                terminals=tuple(str(t) for t in data.get("terminals", ["gap", "softmax"])),
                activation=str(build.get("activation", "relu")),
                dropout=str(build.get("dropout", "paper")),
                pooling=str(build.get("pooling", "floor")),
                conv_padding=str(build.get("conv_padding", "same")),
                raw=data,
            )
        except KeyError as exc:
            raise ConfigError(f"{source}: missing key {exc.args[0]!r}") from None
        except (TypeError, AttributeError, ValueError) as exc:
            raise ConfigError(f"{source}: malformed space ({exc})") from None
        if space.size_bins is not None and space.size_bins[-1] != 1:
            raise ConfigError(f"{source}: size_bins must end with 1 (the lower edge of the smallest bin)")
        if not space.terminals or set(space.terminals) - {"gap", "softmax"}:
            raise ConfigError(f"{source}: terminals must be a non-empty subset of [gap, softmax]")
        if "softmax" not in space.terminals and space.fc_units:
            raise ConfigError(f"{source}: FC layers need the softmax terminal (GAP cannot follow FC)")
        if space.activation not in ("relu", "elu") or space.dropout not in ("paper", "fc"):
            raise ConfigError(f"{source}: build.activation must be relu|elu and build.dropout paper|fc")
        if space.pooling not in POOLING_MODES or space.conv_padding not in CONV_PADDINGS:
            raise ConfigError(f"{source}: build.pooling must be floor|ceil and build.conv_padding same|valid")
        return space

    def to_dict(self) -> dict[str, Any]:
        """The mapping this space was read from: stored with the experiment so resumes use the same space."""
        return dict(self.raw)


def _positive(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what}: expected a positive integer, got {value!r}")
    return value


def _optional_positive(value: Any, what: str) -> int | None:
    return None if value is None else _positive(value, what)


def _ints_or_log(value: Any, what: str) -> tuple[int, ...] | str:
    if value in ("log", "range"):
        return value
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{what}: expected a non-empty list of integers, 'log' or 'range'")
    return tuple(_positive(v, what) for v in value)


def _pool_shapes(value: Any) -> tuple[tuple[int, int], ...] | str:
    if value in ("log", "range"):
        return value
    shapes = []
    for item in value:
        if not isinstance(item, list) or len(item) != 2:
            raise ConfigError(f"pool.shapes: expected [kernel, stride] pairs, got {item!r}")
        shapes.append((_positive(item[0], "pool.shapes"), _positive(item[1], "pool.shapes")))
    return tuple(shapes)


MAX_SPACE_BYTES = 1 << 20
"""A space file is a few hundred bytes; anything past 1 MiB is not one."""
MAX_SPACE_DEPTH = 16
MAX_SPACE_NODES = 100_000


def load_space(name_or_path: str) -> SpaceConfig:
    """A preset name (``metaqnn``, ``metaqnn-cifar``, ``metaqnn-mnist``, ``metaqnn-small``) or a YAML path.

    Every problem is a one-line ConfigError, including files too large (over 1 MiB), nested too
    deeply (over 16 levels) or expanding to too many values through YAML aliases (over 100,000).
    """
    path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        path = Path(name_or_path)
        if path.suffix not in (".yaml", ".yml"):
            presets = ", ".join(preset_names())
            raise ConfigError(f"unknown space {name_or_path!r}: use a preset ({presets}) or a .yaml file")
        if not path.is_file():
            raise ConfigError(f"space file not found: {path}")
    try:
        size = path.stat().st_size
        if size > MAX_SPACE_BYTES:
            raise ConfigError(f"space {path} is {size:,} bytes; a space file must be under {MAX_SPACE_BYTES:,}")
        data = yaml.safe_load(path.read_text())
    except RecursionError:
        raise ConfigError(f"space {path} is nested too deeply to be a space") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read space {path}: {str(exc).splitlines()[0]}") from None
    _check_shape(data, str(path))
    return SpaceConfig.from_dict(data, source=str(path.name))


def _check_shape(data: Any, source: str) -> None:
    """ConfigError if parsed YAML nests deeper than ``MAX_SPACE_DEPTH`` or holds more than
    ``MAX_SPACE_NODES`` values (aliases repeat values without repeating text: a small file may
    stand for billions of them). Walks iteratively and stops at the first excess."""
    pending: list[tuple[Any, int]] = [(data, 1)]
    seen = 0
    while pending:
        value, depth = pending.pop()
        seen += 1
        if depth > MAX_SPACE_DEPTH:
            raise ConfigError(f"space {source} nests deeper than {MAX_SPACE_DEPTH} levels")
        if seen > MAX_SPACE_NODES:
            raise ConfigError(f"space {source} holds more than {MAX_SPACE_NODES:,} values")
        if isinstance(value, dict):
            pending.extend((item, depth + 1) for pair in value.items() for item in pair)
        elif isinstance(value, (list, tuple)):
            pending.extend((item, depth + 1) for item in value)


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


@dataclass(frozen=True)
class State:
    """A node of the MetaQNN graph. ``layer`` is None for the start state; ``size`` is the binned size."""

    depth: int
    layer: Layer | None
    size: int
    fc_run: int = 0

    @property
    def terminal(self) -> bool:
        return isinstance(self.layer, (GAP, Softmax))

    @property
    def key(self) -> str:
        """The Q-table key: type, parameters, depth and representation-size bin (never the true size)."""
        layer = "start" if self.layer is None else str(self.layer)
        return f"{self.depth}|{layer}|{self.size}|{self.fc_run}"


class MetaQNNSpace:
    """Legal actions and transitions of one space for one dataset (input size and number of classes)."""

    def __init__(self, config: SpaceConfig, input_size: int, num_classes: int) -> None:
        if input_size < 1 or num_classes < 2:
            raise ConfigError("the input must be at least 1 pixel wide and have at least two classes")
        self.config = config
        self.input_size = input_size
        self.num_classes = num_classes
        # Actions depend only on the state, and states repeat across walks: cache them per instance.
        self.actions = lru_cache(maxsize=None)(self._actions)

    def bin(self, size: int) -> int:
        """The representation-size bin of a true size: the bin's lower edge, or the size if unbinned."""
        if self.config.size_bins is None:
            return size
        return next(edge for edge in self.config.size_bins if size >= edge)

    @property
    def start(self) -> State:
        return State(depth=0, layer=None, size=self.bin(self.input_size))

    def _terminals(self, state: State) -> list[Layer]:
        after_fc = isinstance(state.layer, FC)
        out: list[Layer] = []
        if "gap" in self.config.terminals and not after_fc:
            out.append(GAP(self.num_classes))
        if "softmax" in self.config.terminals:
            out.append(Softmax(self.num_classes))
        return out

    def _conv_kernels(self, size: int) -> list[int]:
        kernels = self.config.conv_kernels
        if kernels == "log":
            return _log_rule(size, 2)
        if kernels == "range":
            return _range_rule(size, 2, "down")
        return list(kernels)  # type: ignore[arg-type]

    def _strides(self, kernel: int) -> list[int]:
        strides = self.config.conv_strides
        if strides == "log":
            return _log_rule(kernel, 1) or [1]
        if strides == "range":
            return _range_rule(kernel, 1, "up")
        return list(strides)  # type: ignore[arg-type]

    def _pool_shapes(self, size: int) -> list[tuple[int, int]]:
        if self.config.pool_shapes == "log":
            return [(k, s) for k in _log_rule(size, 2) if k >= 2 for s in _log_rule(k, 1)]
        if self.config.pool_shapes == "range":
            return [(k, s) for k in _range_rule(size, 2, "down") for s in _range_rule(k, 1, "up")]
        return list(self.config.pool_shapes)  # type: ignore[arg-type]

    def _actions(self, state: State) -> tuple[Layer, ...]:
        """U(s): every layer the agent may pick next from ``state`` (terminals first)."""
        if state.terminal:
            return ()
        actions = self._terminals(state)
        cfg = self.config
        if state.depth >= cfg.max_depth:
            return tuple(actions)
        if isinstance(state.layer, FC):
            if cfg.fc_max_consecutive is None or state.fc_run < cfg.fc_max_consecutive:
                actions += [FC(u) for u in cfg.fc_units if u <= state.layer.units]
            return tuple(actions)
        size = state.size  # lower edge of the bin: the smallest true size this state can have
        for kernel in self._conv_kernels(size):
            if kernel <= size:
                actions += [Conv(f, kernel, s) for f in cfg.conv_filters for s in self._strides(kernel)]
        if not isinstance(state.layer, Pool):
            actions += [Pool(k, s) for k, s in self._pool_shapes(size) if k <= size]
        if cfg.fc_max_size is None or size <= cfg.fc_max_size:
            actions += [FC(u) for u in cfg.fc_units]
        return tuple(actions)

    def step(self, state: State, true_size: int, action: Layer) -> tuple[State, int]:
        """TRANSITION: the next state and true size after taking ``action``."""
        new_size = output_size(true_size, action, self.config.pooling, self.config.conv_padding)
        fc_run = state.fc_run + 1 if isinstance(action, FC) else 0
        return State(depth=state.depth + 1, layer=action, size=self.bin(new_size), fc_run=fc_run), new_size

    def sample(self, choose: Callable[[State, tuple[Layer, ...]], Layer]) -> Architecture:
        """Walk from the start state to a terminal state, ``choose`` picking each action."""
        state, size = self.start, self.input_size
        layers: list[Layer] = []
        while not state.terminal:
            action = choose(state, self.actions(state))
            layers.append(action)
            state, size = self.step(state, size, action)
        return Architecture(tuple(layers))

    def count(self) -> int:
        """How many distinct architectures ``sample`` can return: the number of walks from the start
        state to a terminal one (each walk is its own layer sequence, so its own architecture).

        Counted exactly by dynamic programming: the walks left from a state depend only on its
        depth, the kind of its layer (and an FC layer's width), its FC run and the true size, so
        the count is shared by every state alike in those. Used to end a search whose budget is
        larger than its space when the space runs out, rather than proposing known networks forever.
        """
        memo: dict[tuple[Any, ...], int] = {}

        def walks(state: State, size: int) -> int:
            if state.terminal:
                return 1
            layer = state.layer
            kind = "start" if layer is None else type(layer).__name__
            key = (state.depth, kind, layer.units if isinstance(layer, FC) else 0, state.fc_run, size)
            if key not in memo:
                memo[key] = sum(walks(*self.step(state, size, action)) for action in self.actions(state))
            return memo[key]

        return walks(self.start, self.input_size)

    def walk(self, arch: Architecture) -> list[State]:
        """The state sequence [s0, ..., sT] an architecture visits; ConfigError naming the first layer
        that leaves the space and the rule it breaks (:meth:`explain`)."""
        state, size = self.start, self.input_size
        states = [state]
        for position, layer in enumerate(arch.layers, start=1):
            if layer not in self.actions(state):
                raise ConfigError(
                    f"{arch} is not in space {self.config.name!r}: layer {position} {layer}: "
                    f"{self.explain(state, size, layer)}"
                )
            state, size = self.step(state, size, layer)
            states.append(state)
        return states

    def explain(self, state: State, size: int, layer: Layer) -> str:
        """Which rule of the space forbids ``layer`` after ``state`` (true representation size ``size``)."""
        cfg = self.config
        where = f"representation size {size}" + ("" if cfg.size_bins is None else f" (bin {state.size})")
        if state.terminal:
            return "the walk already ended at its terminal layer"
        if isinstance(layer, (GAP, Softmax)):
            if layer.classes != self.num_classes:
                return f"the terminal must predict the data's {self.num_classes} classes"
            if isinstance(layer, GAP) and isinstance(state.layer, FC):
                return "GAP cannot follow an FC layer"
            return f"terminals are {', '.join(cfg.terminals)} only"
        if state.depth >= cfg.max_depth:
            return f"depth limit: after {cfg.max_depth} hidden layers only a terminal may follow"
        if isinstance(state.layer, FC):
            if not isinstance(layer, FC):
                return "only an FC layer or the terminal may follow an FC layer"
            if cfg.fc_max_consecutive is not None and state.fc_run >= cfg.fc_max_consecutive:
                return f"at most {cfg.fc_max_consecutive} consecutive FC layers"
            if layer.units in cfg.fc_units:
                return f"an FC layer may not be wider than the FC layer before it ({state.layer.units})"
        if isinstance(layer, Conv):
            kernels = self._conv_kernels(state.size)
            if layer.filters not in cfg.conv_filters:
                return f"convolutions have {_listed(cfg.conv_filters)} filters"
            if layer.kernel not in kernels:
                return f"receptive fields at {where} are {_listed(kernels)}"
            if layer.kernel > state.size:
                return f"receptive field {layer.kernel} is larger than {where}"
            return f"strides of a {layer.kernel}x{layer.kernel} convolution are {_listed(self._strides(layer.kernel))}"
        if isinstance(layer, Pool):
            if isinstance(state.layer, Pool):
                return "a pooling layer may not follow a pooling layer"
            shapes = self._pool_shapes(state.size)
            if (layer.kernel, layer.stride) not in shapes:
                return f"pooling (receptive field, stride) at {where} is one of {_listed(shapes)}"
            return f"pooling window {layer.kernel} is larger than {where}"
        if isinstance(layer, FC):
            if layer.units not in cfg.fc_units:
                return f"FC layers have {_listed(cfg.fc_units)} units"
            if cfg.fc_max_size is not None and state.size > cfg.fc_max_size:
                return f"an FC layer needs a representation size of at most {cfg.fc_max_size}, here {where}"
        return "not a legal action from this state"


def _listed(values: Any) -> str:
    """Values for a one-line message, long lists shortened."""
    items = [str(v).replace(" ", "") for v in values]
    return "{" + ", ".join(items if len(items) <= 12 else [*items[:10], "...", items[-1]]) + "}" if items else "none"
