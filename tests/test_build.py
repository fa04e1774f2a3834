"""build_model: shapes, SAME/Caffe size arithmetic, dropout, init, parameter counts, normalisation."""

from __future__ import annotations

import math
import random

import pytest
import torch
from torch import nn

from nasagent.core.arch import FC, GAP, Architecture, Conv, Pool, Softmax, output_size, same_padding
from nasagent.errors import ConfigError
from nasagent.training.build import build_model, count_params
from nasagent.training.normalize import Normalize
from nasagent.training.settings import BuildOptions


def arch(text: str) -> Architecture:
    return Architecture.parse(text)


def logits(model: nn.Module, shape: tuple[int, int, int], n: int = 2) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(torch.rand(n, *shape))


@pytest.mark.parametrize(
    "text, shape",
    [
        ("[C(8,3,1), P(2,2), FC(16), SM(10)]", (1, 8, 8)),
        ("[C(8,3,2), P(3,2), C(4,2,1), FC(10), FC(5), SM(3)]", (3, 13, 7)),  # non-square, stride 2
        ("[C(4,5,1), C(4,3,2), GAP(7)]", (3, 32, 20)),
        ("[FC(32), FC(16), SM(4)]", (1, 5, 9)),
        ("[SM(2)]", (3, 4, 4)),
        ("[GAP(5)]", (2, 6, 3)),
        ("[P(5,3), C(2,4,3), SM(6)]", (1, 11, 17)),
    ],
)
def test_output_shape(text: str, shape: tuple[int, int, int]) -> None:
    a = arch(text)
    out = logits(build_model(a, shape), shape, n=3)
    assert out.shape == (3, a.terminal.classes)


def test_output_size_arithmetic() -> None:
    assert [output_size(n, Conv(4, 3, 1)) for n in (1, 7, 8)] == [1, 7, 8]
    assert [output_size(n, Conv(4, 3, 2)) for n in (1, 7, 8)] == [1, 4, 4]  # ceil(n / s)
    # Pooling rounds down by default, as the authors' code tracks sizes: floor((n - k) / s) + 1.
    assert output_size(7, Pool(2, 2)) == 3
    assert output_size(8, Pool(3, 2)) == 3
    assert output_size(8, Pool(5, 3)) == 2
    assert output_size(5, Pool(5, 3)) == 1
    # Caffe, which ran the networks, rounds up: ceil((n - k) / s) + 1.
    assert output_size(7, Pool(2, 2), "ceil") == 4
    assert output_size(8, Pool(3, 2), "ceil") == 4
    assert output_size(9, FC(10)) == output_size(9, GAP(3)) == output_size(9, Softmax(3)) == 9


def test_output_size_agrees_with_built_model() -> None:
    """For random conv/pool stacks, the size output_size tracks is what the model really produces."""
    rng = random.Random(0)
    for _ in range(150):
        height, width = rng.randint(1, 20), rng.randint(1, 20)
        h, w = height, width
        layers: list = []
        for _ in range(rng.randint(1, 4)):
            if rng.random() < 0.6:
                layers.append(Conv(rng.randint(1, 4), rng.randint(1, 5), rng.randint(1, 4)))
            else:
                kernel = rng.randint(1, min(h, w))  # the search space never pools past the input
                layers.append(Pool(kernel, rng.randint(1, kernel)))
            h, w = output_size(h, layers[-1]), output_size(w, layers[-1])
        model = build_model(Architecture((*layers, Softmax(3))), (2, height, width))
        spatial = nn.Sequential(*[m for m in model if not isinstance(m, (nn.Flatten, nn.Linear))])
        out = logits(spatial, (2, height, width))
        assert out.shape[2:] == (h, w), (layers, height, width)
        assert logits(model, (2, height, width)).shape == (2, 3)


def test_same_padding_matches_tensorflow() -> None:
    """Stride-2 SAME pads the odd pixel after (right/bottom), as TensorFlow does."""
    assert same_padding(8, 3, 2) == (0, 1)
    assert same_padding(7, 3, 2) == (1, 1)
    assert same_padding(8, 2, 1) == (0, 1)
    assert same_padding(5, 1, 3) == (0, 0)
    model = build_model(arch("[C(2,3,2), GAP(2)]"), (1, 8, 6))
    conv = next(m for m in model if isinstance(m, nn.Conv2d))
    x = torch.rand(1, 1, 8, 6)
    expected = nn.functional.conv2d(nn.functional.pad(x, (0, 1, 0, 1)), conv.weight, conv.bias, stride=2)
    spatial = model[: list(model).index(conv) + 1]
    torch.testing.assert_close(spatial(x), expected)
    assert expected.shape[2:] == (4, 3)


def test_pool_rounds_down_unless_asked_for_caffe_ceil_mode() -> None:
    model = build_model(arch("[P(2,2), SM(2)]"), (1, 7, 7))
    assert model[-1].in_features == 3 * 3
    model = build_model(arch("[P(2,2), SM(2)]"), (1, 7, 7), options=BuildOptions(pooling="ceil"))
    assert model[-1].in_features == 4 * 4


def test_param_count_by_hand() -> None:
    # conv 8*1*3*3 + 8 = 80; pool 8 -> 4; FC (8*4*4)*16 + 16 = 2064; SM 16*10 + 10 = 170.
    assert count_params(build_model(arch("[C(8,3,1), P(2,2), FC(16), SM(10)]"), (1, 8, 8))) == 80 + 2064 + 170
    # conv 4*3*3*3 + 4 = 112; GAP's 1x1 conv 3*4 + 3 = 15.
    assert count_params(build_model(arch("[C(4,3,2), GAP(3)]"), (3, 9, 9))) == 112 + 15


def dropouts(model: nn.Module) -> list[tuple[int, float]]:
    """(index in the Sequential, p) of each dropout layer."""
    return [(i, m.p) for i, m in enumerate(model) if isinstance(m, nn.Dropout)]


def hidden_index(model: nn.Module) -> list[int]:
    """Index of the last module of each hidden layer (activation after conv/FC, the pool itself)."""
    return [i for i, m in enumerate(model) if isinstance(m, (nn.MaxPool2d, nn.ReLU, nn.ELU))]


@pytest.mark.parametrize(
    "text, probs",
    [
        ("[C(4,3,1), SM(2)]", []),
        ("[C(4,3,1), P(2,2), SM(2)]", [0.5]),
        ("[C(4,3,1), P(2,2), C(4,3,1), SM(2)]", [0.5]),
        ("[C(4,3,1), C(4,3,1), P(2,2), C(4,3,1), SM(2)]", [0.25, 0.5]),
        ("[C(4,3,1), C(4,3,1), P(2,2), C(4,3,1), FC(8), FC(8), SM(2)]", [1 / 6, 2 / 6, 3 / 6]),
    ],
)
def test_paper_dropout_after_every_two_layers(text: str, probs: list[float]) -> None:
    model = build_model(arch(text), (1, 8, 8))
    found = dropouts(model)
    assert [p for _, p in found] == pytest.approx(probs)
    # The i-th dropout follows the (2i)-th hidden layer directly.
    ends = hidden_index(model)
    assert [i for i, _ in found] == [ends[2 * k + 1] + 1 for k in range(len(probs))]


def test_fc_dropout_mode_and_elu() -> None:
    options = BuildOptions(activation="elu", dropout="fc", fc_dropout=0.3)
    model = build_model(arch("[C(4,3,1), P(2,2), C(4,3,1), FC(8), FC(8), SM(2)]"), (1, 8, 8), options=options)
    modules = list(model)
    assert [p for _, p in dropouts(model)] == pytest.approx([0.3, 0.3])
    for i, _ in dropouts(model):
        assert isinstance(modules[i - 1], nn.ELU) and isinstance(modules[i - 2], nn.Linear)
    assert not any(isinstance(m, nn.ReLU) for m in modules)


def test_bad_options_rejected() -> None:
    with pytest.raises(ConfigError):
        BuildOptions(activation="tanh")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        BuildOptions(dropout="always")  # type: ignore[arg-type]


def test_xavier_uniform_init_and_zero_bias() -> None:
    torch.manual_seed(0)
    model = build_model(arch("[C(64,3,1), FC(256), SM(10)]"), (3, 8, 8))
    layers = [m for m in model if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(layers) == 3
    for layer in layers:
        fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(layer.weight)
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert layer.weight.abs().max() <= bound
        # Uniform on [-b, b] has standard deviation b / sqrt(3); PyTorch's default init is far narrower.
        assert layer.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)
        assert torch.count_nonzero(layer.bias) == 0


def test_normalisation_is_inside_the_model() -> None:
    mean, std = [0.2, 0.5, 0.7], [0.1, 0.2, 0.4]
    model = build_model(arch("[C(4,3,1), SM(3)]"), (3, 5, 5), mean=mean, std=std)
    first = model[0]
    assert isinstance(first, Normalize)
    x = torch.rand(2, 3, 5, 5)
    expected = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(first(x), expected)
    # The statistics travel with the weights, and are not trainable parameters.
    state = model.state_dict()
    torch.testing.assert_close(state["0.mean"].flatten(), torch.tensor(mean))
    torch.testing.assert_close(state["0.std"].flatten(), torch.tensor(std))
    assert count_params(model) == 4 * 3 * 9 + 4 + 4 * 25 * 3 + 3
    # Feeding raw [0, 1] images through the model equals normalising first and skipping Normalize.
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model[1:](expected))


def test_default_statistics_are_identity() -> None:
    model = build_model(arch("[SM(2)]"), (2, 3, 3))
    x = torch.rand(1, 2, 3, 3)
    torch.testing.assert_close(model[0](x), x)


def test_errors_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="larger window"):
        build_model(arch("[P(5,2), SM(2)]"), (1, 4, 8))
    with pytest.raises(ConfigError, match="one per channel"):
        build_model(arch("[SM(2)]"), (3, 4, 4), mean=[0.5], std=[0.2])
    with pytest.raises(ConfigError, match="positive"):
        build_model(arch("[SM(2)]"), (1, 4, 4), mean=[0.5], std=[0.0])
    with pytest.raises(ConfigError, match="input shape"):
        build_model(arch("[SM(2)]"), (4, 4))  # type: ignore[arg-type]
