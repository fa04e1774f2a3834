"""``nasagent arch check --space PRESET --input HxWxC --classes K "[...]" [--json]``: is an architecture a
legal walk of a MetaQNN space, and what does each layer cost?

A legal architecture prints one row per layer (output shape C x H x W, trainable parameters,
multiply-accumulates of one forward pass of one image) and the totals, exactly as the trainer would
build it in that space (its pooling and padding rules; ``nasagent.core.cost``). An architecture the
space cannot produce is a one-line error naming the first layer that leaves it and the rule it
breaks (exit 2): e.g. ``layer 3 P(2,2): a pooling layer may not follow a pooling layer``.
"""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

from nasagent.errors import ConfigError


def register(subparsers: Any) -> None:
    """Add ``arch check`` (called by ``nasagent.cli`` when it builds its parser)."""
    parser = subparsers.add_parser("arch", help="check an architecture against a space: legality, sizes, cost")
    actions = parser.add_subparsers(dest="arch_command", required=True)
    check = actions.add_parser("check", help="whether an architecture is a legal walk, and its per-layer cost")
    check.add_argument("architecture", help='the paper\'s form, e.g. "[C(64,3,1), P(2,2), SM(10)]"')
    check.add_argument(
        "--space", required=True, help="preset (metaqnn, metaqnn-cifar, metaqnn-mnist, ...) or FILE.yaml"
    )
    check.add_argument("--input", required=True, help="input images as HxWxC, e.g. 32x32x3")
    check.add_argument("--classes", type=int, required=True, help="number of classes K")
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    check.set_defaults(handler=cmd_check)


def parse_input(text: str) -> tuple[int, int, int]:
    """``HxWxC`` -> (C, H, W); ConfigError unless three positive integers."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or min(int(v) for v in match.groups()) < 1:
        raise ConfigError(f"--input must be HxWxC with positive integers, e.g. 32x32x3; got {text!r}")
    h, w, c = (int(v) for v in match.groups())
    return c, h, w


def check_architecture(
    arch_text: str, space_name: str, input_shape: tuple[int, int, int], classes: int
) -> dict[str, Any]:
    """The check's result as a dict (what ``--json`` prints); ConfigError if the architecture is malformed
    or not a legal walk of the space for this input and class count."""
    from nasagent.core.arch import Architecture
    from nasagent.core.cost import layer_costs, total_macs, total_params
    from nasagent.spaces.metaqnn import MetaQNNSpace, load_space

    if classes < 2:
        raise ConfigError(f"--classes must be at least 2, got {classes}")
    arch = Architecture.parse(arch_text)
    config = load_space(space_name)
    c, h, w = input_shape
    MetaQNNSpace(config, min(h, w), classes).walk(arch)
    costs = layer_costs(arch, input_shape, config.pooling, config.conv_padding)
    return {
        "architecture": str(arch),
        "space": config.name,
        "input": [h, w, c],
        "classes": classes,
        "legal": True,
        "pooling": config.pooling,
        "conv_padding": config.conv_padding,
        "layers": [
            {"layer": row.layer, "output": list(row.output), "params": row.params, "macs": row.macs} for row in costs
        ],
        "total_params": total_params(costs),
        "total_macs": total_macs(costs),
    }


def cmd_check(args: argparse.Namespace) -> int:
    """Print the per-layer table (or JSON); a user error (exit 2) if the architecture is not legal."""
    result = check_architecture(args.architecture, args.space, parse_input(args.input), args.classes)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    from rich.table import Table

    from nasagent.search.display import print_table

    h, w, c = result["input"]
    table = Table(
        title=f"{result['architecture']}: a legal walk of {result['space']} for {h}x{w}x{c} inputs, "
        f"{result['classes']} classes (pooling {result['pooling']}, convolutions {result['conv_padding']})"
    )
    for column in ("#", "layer", "output C x H x W", "params", "MACs"):
        table.add_column(column, justify="left" if column == "layer" else "right")
    for position, row in enumerate(result["layers"], start=1):
        table.add_row(
            str(position), row["layer"], " x ".join(map(str, row["output"])), f"{row['params']:,}", f"{row['macs']:,}"
        )
    table.add_row("", "total", "", f"{result['total_params']:,}", f"{result['total_macs']:,}")
    print_table(table)
    return 0
