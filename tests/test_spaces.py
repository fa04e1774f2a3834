"""The MetaQNN space: every constraint of §4.2, stochastic transitions, presets, and that every
action from every reachable state builds a network that runs."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch

from nasagent.core.arch import FC, GAP, Architecture, Conv, Pool, Softmax, output_size
from nasagent.errors import ConfigError
from nasagent.spaces.metaqnn import MetaQNNSpace, SpaceConfig, State, load_space, preset_names
from nasagent.training.build import build_model

TINY = {
    "name": "tiny",
    "max_depth": 4,
    "size_bins": [8, 4, 1],
    "conv": {"filters": [2, 4], "kernels": [1, 3, 5], "strides": [1]},
    "pool": {"shapes": [[5, 3], [3, 2], [2, 2]]},
    "fc": {"units": [8, 4], "max_consecutive": 2, "max_size": 7},
    "terminals": ["gap", "softmax"],
}


def reachable(space: MetaQNNSpace) -> dict[tuple[State, int], tuple]:
    """Every reachable (state, true size), with one path of layers leading to it."""
    start = (space.start, space.input_size)
    paths: dict[tuple[State, int], tuple] = {start: ()}
    todo = deque([start])
    while todo:
        state, size = todo.popleft()
        for action in space.actions(state):
            nxt = space.step(state, size, action)
            if nxt not in paths:
                paths[nxt] = paths[(state, size)] + (action,)
                todo.append(nxt)
    return paths


@pytest.mark.parametrize(
    "preset,input_size", [("metaqnn", 32), ("metaqnn-small", 8), ("metaqnn-small", 28), ("metaqnn-cifar", 32)]
)
def test_every_constraint_of_section_4_2_holds_in_every_reachable_state(preset: str, input_size: int) -> None:
    space = MetaQNNSpace(load_space(preset), input_size, 10)
    cfg = space.config
    states = reachable(space)
    assert len(states) > 50
    for (state, size), _ in states.items():
        actions = space.actions(state)
        if state.terminal:
            assert actions == ()
            continue
        kinds = {type(a) for a in actions}
        assert Softmax in kinds  # termination from any state
        if state.depth >= cfg.max_depth:
            assert kinds <= {GAP, Softmax}  # at the depth limit only terminate
        if isinstance(state.layer, Pool):
            assert Pool not in kinds  # no pool after pool
        if isinstance(state.layer, FC):
            assert kinds <= {FC, Softmax}  # nothing but FC or termination after FC
            fcs = [a for a in actions if isinstance(a, FC)]
            assert all(a.units <= state.layer.units for a in fcs)  # non-increasing width
            if state.fc_run >= 2:
                assert not fcs  # at most two consecutive FC
        elif FC in kinds:
            assert state.size in (4, 1)  # FC only from bins (8,4] and (4,1]
        for action in actions:
            if isinstance(action, (Conv, Pool)):
                assert action.kernel <= size  # receptive field no larger than the true size
            nxt, new_size = space.step(state, size, action)
            assert nxt.depth == state.depth + 1  # depth i to i+1 only
            assert new_size == output_size(size, action)
    assert max(s.depth for s, _ in states) == cfg.max_depth + 1


def test_pooling_from_one_binned_state_lands_in_two_bins() -> None:
    space = MetaQNNSpace(load_space("metaqnn"), 32, 10)
    conv = Conv(64, 3, 1)
    a, size_a = space.step(*space.step(space.start, 32, Pool(5, 3)), conv)  # true size 10
    b, size_b = space.step(*space.step(space.start, 32, Pool(2, 2)), conv)  # true size 16
    assert a == b and a.key == b.key and (size_a, size_b) == (10, 16)
    after_a, _ = space.step(a, size_a, Pool(2, 2))
    after_b, _ = space.step(b, size_b, Pool(2, 2))
    assert (after_a.size, after_b.size) == (4, 8)  # same state, same action, two next states


def test_state_key_carries_type_parameters_depth_and_bin_not_true_size() -> None:
    space = MetaQNNSpace(load_space("metaqnn"), 32, 10)
    s, _ = space.step(space.start, 32, Conv(128, 5, 1))
    assert s.key == "1|C(128,5,1)|8|0"
    assert space.start.key == "0|start|8|0"


def test_actions_never_include_the_resulting_size() -> None:
    space = MetaQNNSpace(load_space("metaqnn"), 32, 10)
    assert all("|" not in str(a) for a in space.actions(space.start))


def test_walk_rejects_architectures_outside_the_space() -> None:
    space = MetaQNNSpace(load_space("metaqnn-small"), 8, 10)
    space.walk(Architecture.parse("[C(8,3,1), P(2,2), FC(64), FC(32), SM(10)]"))
    for bad in [
        "[C(8,3,1), P(2,2), P(2,2), SM(10)]",
        "[FC(64), SM(10)]",
        "[C(8,3,1), P(2,2), FC(32), FC(64), SM(10)]",
        "[C(7,3,1), SM(10)]",
        "[C(8,3,1), SM(3)]",
        "[C(8,3,1), P(3,2), FC(64), FC(64), FC(64), SM(10)]",
    ]:
        with pytest.raises(ConfigError):
            space.walk(Architecture.parse(bad))


def test_presets_ship_and_load() -> None:
    assert {"metaqnn", "metaqnn-cifar", "metaqnn-mnist", "metaqnn-small"} <= set(preset_names())
    assert load_space("metaqnn").max_depth == 12
    assert load_space("metaqnn-cifar").max_depth == 18
    small = load_space("metaqnn-small")
    assert small.conv_filters == (8, 16, 32, 64) and small.fc_units == (128, 64, 32)
    mnist = load_space("metaqnn-mnist")
    assert mnist.size_bins is None and mnist.fc_max_consecutive is None and mnist.activation == "elu"


def test_mnist_space_uses_appendix_c_rules() -> None:
    # The reconstruction (README, "The MNIST space"): receptive fields 2..n/2, strides 1..ceil(f/2).
    space = MetaQNNSpace(load_space("metaqnn-mnist"), 28, 10)
    convs = {(a.kernel, a.stride) for a in space.actions(space.start) if isinstance(a, Conv)}
    assert {k for k, _ in convs} == set(range(2, 15))
    assert (7, 1) in convs and (7, 4) in convs and (7, 5) not in convs and (2, 2) not in convs
    # Unbinned: the state carries the exact size, FC allowed at any size.
    assert any(isinstance(a, FC) for a in space.actions(space.start))
    s, _ = space.step(space.start, 28, Pool(7, 4))
    assert s.size == 6  # floor((28 - 7) / 4) + 1
    s, _ = space.step(space.start, 28, Conv(60, 4, 1))
    assert s.size == 25  # no padding
    # Table A1 read literally is still available as "log".
    literal = MetaQNNSpace(
        SpaceConfig.from_dict(
            {**load_space("metaqnn-mnist").to_dict(), "conv": {"filters": [60], "kernels": "log", "strides": "log"}}
        ),
        28,
        10,
    )
    assert {a.kernel for a in literal.actions(literal.start) if isinstance(a, Conv)} == {7, 4, 2}


def test_user_yaml_space(tmp_path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(
        "name: mine\nmax_depth: 3\nsize_bins: [8, 4, 1]\nconv: {filters: [4]}\n"
        "pool: {shapes: [[2, 2]]}\nfc: {units: [16]}\n"
    )
    space = load_space(str(path))
    assert space.name == "mine" and space.conv_kernels == (1, 3, 5)


@pytest.mark.parametrize(
    "text,message",
    [
        ("max_depth: 0\n", "positive"),
        ("max_depth: 3\nbogus: 1\n", "unknown keys"),
        ("conv: {}\n", "max_depth"),
        ("max_depth: 3\nterminals: [maybe]\n", "terminals"),
        ("max_depth: 3\nsize_bins: [8, 4]\n", "end with 1"),
        ("max_depth: [\n", "cannot read"),
        ("- 1\n", "mapping"),
    ],
)
def test_bad_space_files_are_one_line_config_errors(tmp_path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        load_space(str(path))
    assert "\n" not in str(err.value)


def test_unknown_preset_and_missing_file() -> None:
    with pytest.raises(ConfigError, match="unknown space"):
        load_space("nope")
    with pytest.raises(ConfigError, match="not found"):
        load_space("/nonexistent/space.yaml")


@pytest.mark.parametrize("input_size", [8, 13])
def test_every_action_from_every_reachable_state_builds_and_runs(input_size: int) -> None:
    space = MetaQNNSpace(SpaceConfig.from_dict(TINY), input_size, 3)
    checked = 0
    for (state, _size), path in reachable(space).items():
        for action in space.actions(state):
            layers = path + (action,)
            if not isinstance(action, (GAP, Softmax)):
                layers += (Softmax(3),)
            arch = Architecture(layers)
            space.walk(arch)
            model = build_model(arch, (1, input_size, input_size)).eval()
            with torch.no_grad():
                out = model(torch.rand(2, 1, input_size, input_size))
            assert out.shape == (2, 3)
            checked += 1
    assert checked > 400


@pytest.mark.parametrize(
    "preset,shape",
    [
        ("metaqnn", (3, 32, 32)),
        ("metaqnn-cifar", (3, 32, 32)),
        ("metaqnn-mnist", (1, 28, 28)),
        ("metaqnn-small", (1, 8, 8)),
    ],
)
def test_sampled_architectures_of_the_big_spaces_build_and_run(preset: str, shape: tuple[int, int, int]) -> None:
    space = MetaQNNSpace(load_space(preset), shape[1], 10)
    rng = np.random.default_rng(0)
    for _ in range(12):
        arch = space.sample(lambda _s, actions: actions[int(rng.integers(len(actions)))])
        model = build_model(arch, shape).eval()
        with torch.no_grad():
            assert model(torch.rand(2, *shape)).shape == (2, 10)
