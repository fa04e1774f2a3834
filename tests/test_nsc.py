"""NSC networks: the value object, its string form, the §4.1 builder, and the real training path."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nasagent.core.networks import parse_network
from nasagent.core.nsc import ADD, AVG_POOL, CONCAT, CONV, HEAD_DROPOUT, HEAD_UNITS, MAX_POOL, NSCLayer, NSCNetwork
from nasagent.core.trial import TrialSpec
from nasagent.errors import ConfigError
from nasagent.execution.worker import TrialSettings, run_trial
from nasagent.training.build import build_model
from nasagent.training.nsc_build import build_nsc_model
from nasagent.training.settings import TrainConfig

CHAIN = NSCNetwork((NSCLayer(1, CONV, 3, 0), NSCLayer(2, MAX_POOL, 2, 1), NSCLayer(3, CONV, 5, 2)), 10)
# Two branches from the input merged by concatenation, pooled, then added to the pooled branch:
# every layer but the last is read by a later one, so layer 5 is the only leaf.
BRANCHY = NSCNetwork(
    (
        NSCLayer(1, CONV, 3, 0),
        NSCLayer(2, AVG_POOL, 2, 0),
        NSCLayer(3, CONCAT, 0, 1, 2),
        NSCLayer(4, MAX_POOL, 3, 3),
        NSCLayer(5, ADD, 0, 4, 2),
    ),
    7,
)


def test_string_form_starts_with_nsc_and_parses_back() -> None:
    assert str(CHAIN) == "NSC[(1,1,3,0,0), (2,2,2,1,0), (3,1,5,2,0); HEAD(10)]"
    for net in (CHAIN, BRANCHY, NSCNetwork((), 3)):
        text = str(net)
        assert text.startswith("NSC[")
        assert NSCNetwork.parse(text) == net
        assert parse_network(text) == net  # the store, agent and trial worker read it back this way
    assert str(NSCNetwork((), 3)) == "NSC[HEAD(3)]"
    assert NSCNetwork.parse(" NSC[ (1,1,3,0,0) ,(2,2,2,1,0);HEAD(10) ] ").layers == CHAIN.layers[:2]


def test_digest_is_a_stable_hash_of_the_string_form() -> None:
    assert CHAIN.digest == NSCNetwork.parse(str(CHAIN)).digest
    assert len(CHAIN.digest) == 16
    assert CHAIN.digest != NSCNetwork(CHAIN.layers, 9).digest  # the class count is part of the value
    assert CHAIN.terminal.classes == 10


@pytest.mark.parametrize(
    "text",
    [
        "NSC[(1,1,3,0,0)]",  # no head
        "NSC[(1,1,3,0,0) (2,1,3,1,0); HEAD(3)]",  # missing comma
        "NSC[(2,1,3,0,0); HEAD(3)]",  # indices must run 1..n
        "NSC[(1,1,4,0,0); HEAD(3)]",  # kernel 4 is not in Table 1
        "NSC[(1,2,5,0,0); HEAD(3)]",  # pooling kernels are 2 and 3
        "NSC[(1,4,0,0,0); HEAD(3)]",  # identity (type 4) is not in the space
        "NSC[(1,7,0,0,0); HEAD(3)]",  # the terminal is the head, not a layer
        "NSC[(1,1,3,1,0); HEAD(3)]",  # a layer reads only earlier ones
        "NSC[(1,1,3,0,0), (2,5,0,1,2); HEAD(3)]",  # second predecessor out of range
        "NSC[(1,1,3,0,1); HEAD(3)]",  # convolutions have one predecessor
        "NSC[(1,5,3,0,0); HEAD(3)]",  # merges have no kernel
        "NSC[HEAD(0)]",
        "[C(64,3,1), SM(10)]x",
    ],
)
def test_malformed_networks_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        NSCNetwork.parse(text) if text.startswith("NSC") else parse_network(text)


def test_leaves_and_chain_detection() -> None:
    assert CHAIN.leaves == (3,) and CHAIN.is_chain
    assert BRANCHY.leaves == (5,) and not BRANCHY.is_chain
    two_leaves = NSCNetwork((NSCLayer(1, CONV, 1, 0), NSCLayer(2, CONV, 3, 0)), 2)
    assert two_leaves.leaves == (1, 2)
    assert NSCNetwork((), 2).leaves == (0,)


def test_shapes_follow_same_max_pooling_valid_average_pooling_and_padded_merges() -> None:
    # padding="same" (the option); the default, the authors' VALID, is tested in test_fidelity.
    shapes = BRANCHY.shapes((3, 9, 9), "same")
    assert shapes[0] == (3, 9, 9)
    assert shapes[1] == (32, 9, 9)  # convolutions: 32 filters, SAME
    assert shapes[2] == (3, 4, 4)  # average pooling 2: VALID, floor(9 / 2)
    assert shapes[3] == (35, 9, 9)  # concatenation pads 4x4 to 9x9 and stacks channels
    assert shapes[4] == (35, 3, 3)  # max pooling 3: SAME, ceil(9 / 3)
    assert shapes[5] == (35, 4, 4)  # addition pads to the larger size and channel count
    assert shapes[-1] == shapes[5]  # one leaf feeds the head
    assert NSCNetwork((NSCLayer(1, MAX_POOL, 3, 0),), 2).shapes((1, 2, 2), "same")[1] == (1, 1, 1)  # never fails
    too_small = NSCNetwork((NSCLayer(1, AVG_POOL, 3, 0),), 2)
    assert not too_small.is_valid((1, 2, 2), "same")
    with pytest.raises(ConfigError, match="average pooling"):
        build_nsc_model(too_small, (1, 2, 2), padding="same")


def test_builder_realises_pcc_cells_and_the_prediction_head() -> None:
    model = build_nsc_model(CHAIN, (1, 8, 8), mean=[0.5], std=[0.25], padding="same")
    cell = model.ops["1"]
    assert [type(m) for m in cell] == [nn.ReLU, nn.Conv2d, nn.BatchNorm2d]  # ReLU-conv-BN (footnote 2)
    assert cell[1].out_channels == 32 and cell[1].kernel_size == (3, 3)
    head = list(model.head)
    assert [type(m) for m in head] == [nn.Flatten, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert head[1].in_features == 32 * 4 * 4 and head[1].out_features == HEAD_UNITS
    assert head[3].p == HEAD_DROPOUT and head[4].out_features == 10
    out = model(torch.rand(5, 1, 8, 8))
    assert out.shape == (5, 10) and torch.isfinite(out).all()


def test_builder_runs_multi_branch_networks_with_several_leaves() -> None:
    net = NSCNetwork(
        (NSCLayer(1, CONV, 1, 0), NSCLayer(2, MAX_POOL, 2, 0), NSCLayer(3, CONV, 5, 2), NSCLayer(4, ADD, 0, 1, 3)),
        4,
    )
    model = build_nsc_model(net, (3, 7, 5), padding="same")
    c, h, w = net.shapes((3, 7, 5), "same")[-1]
    assert model.head[1].in_features == c * h * w
    assert model(torch.rand(2, 3, 7, 5)).shape == (2, 4)
    two_leaves = NSCNetwork((NSCLayer(1, CONV, 1, 0), NSCLayer(2, AVG_POOL, 2, 0)), 3)
    model = build_nsc_model(two_leaves, (1, 6, 6), padding="same")
    assert two_leaves.shapes((1, 6, 6), "same")[-1] == (33, 6, 6)  # leaves concatenated, the pooled one padded
    assert model(torch.rand(2, 1, 6, 6)).shape == (2, 3)


def test_build_model_dispatches_nsc_networks_to_their_builder() -> None:
    model = build_model(CHAIN, (1, 16, 16), [0.0], [1.0])  # VALID, the default: 16 -> 14 -> 7 -> 3
    assert model(torch.rand(2, 1, 16, 16)).shape == (2, 10)
    with pytest.raises(ConfigError):
        build_nsc_model(CHAIN, (1, 8, 8), mean=[0.0, 0.0], std=[1.0, 1.0])


def test_an_nsc_network_trains_on_digits_through_the_normal_trial_path(tmp_path) -> None:
    settings = TrialSettings(
        dataset="digits", data_dir=str(tmp_path), train=TrainConfig(epochs=1, device="cpu", threads=1)
    )
    data = settings.load_data()
    net = NSCNetwork((NSCLayer(1, CONV, 3, 0), NSCLayer(2, MAX_POOL, 2, 1)), data.num_classes)
    outcome = run_trial(TrialSpec(1, str(net), seed=0), data, settings)
    assert outcome.status == "done" and outcome.failure is None
    assert outcome.accuracy > 0.5  # 10 classes: chance is 0.1; one epoch of this net learns digits
    assert outcome.params == sum(p.numel() for p in build_nsc_model(net, data.input_shape).parameters())
