"""The NAS-Bench-201 search space: cell strings, their parser, sampling, and the network ``nb201``.

What lives here
---------------
* The cell space of NAS-Bench-201 (Dong & Yang, ICLR 2020): a DAG of 4 nodes (node 0 = the cell
  input, node 3 = its output), one edge from every earlier node to every later one (6 edges), each
  edge one of ``OPS``; 5^6 = 15,625 cells. A cell is written in the benchmark's own string format,
  one ``|op~source|`` group per input of nodes 1, 2 and 3, the nodes joined by ``+``::

      |nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|none~1|nor_conv_1x1~2|

  ``parse_arch`` turns a string into the 6 ops in that edge order (``EDGES``) and raises
  ``ArchStringError`` naming the first problem; ``format_arch`` is its inverse.
* ``canonical(ops)``: the cell with every edge that cannot matter set to ``none`` (an edge whose
  source never receives the input, or whose target never reaches the output), so functionally
  equal cells compare equal; ``sample_archs`` draws distinct canonical cells from a named seed.
* ``NB201Net``: the benchmark's macro skeleton, written here from the paper's description: stem
  Conv3x3(C) -> BN; N cells at C; a residual reduction block (C -> 2C, stride 2); N cells at 2C;
  a reduction (2C -> 4C); N cells at 4C; BN -> ReLU -> global average pool -> Linear. Every cell
  of the network is the same cell. ``NB201Arch`` registers it as the architecture ``nb201``
  (``build_arch("nb201", ..., genotype=..., width=C, cells_per_stage=N)``).

Operations: ``none`` outputs zeros, ``skip_connect`` is the identity, ``nor_conv_kxk`` is
ReLU -> Conv(k x k, no bias) -> BatchNorm, ``avg_pool_3x3`` is a 3x3 stride-1 average pool (padding
not counted). To add an operation, add its name to ``OPS`` and a branch to ``make_op``.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from ddbench.archs import ARCHS, Arch
from ddbench.archs._base import ArchConfigError, FeatureModel, run_blocks
from ddbench.registry import did_you_mean
from ddbench.seeding import derive_seed

OPS: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
NODES = 4  # node 0 is the cell's input, node NODES - 1 its output
# (target, source) of the 6 edges, in the order they appear in a cell string
EDGES: tuple[tuple[int, int], ...] = tuple((j, i) for j in range(1, NODES) for i in range(j))
SPACE_SIZE = len(OPS) ** len(EDGES)  # 15,625 cells
# a residual cell of 3x3 convs: the default of the registered `nb201` architecture
DEFAULT_ARCH = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"  # noqa: E501

Ops = tuple[str, ...]


class ArchStringError(ArchConfigError):
    """A malformed NAS-Bench-201 cell string; the message says what is wrong and where."""


def parse_arch(text: str) -> Ops:
    """The 6 ops of a cell string, in ``EDGES`` order; ``ArchStringError`` if it is malformed."""
    if not isinstance(text, str) or not text.strip():
        raise ArchStringError(f"a NAS-Bench-201 cell string must be a non-empty str, got {text!r}")
    groups = text.strip().split("+")
    if len(groups) != NODES - 1:
        raise ArchStringError(
            f"{text!r}: expected {NODES - 1} node groups joined by '+', found {len(groups)}"
        )
    ops: list[str] = []
    for node, group in enumerate(groups, start=1):
        if len(group) < 2 or group[0] != "|" or group[-1] != "|":
            raise ArchStringError(f"{text!r}: node {node} group {group!r} must be '|...|'")
        items = group[1:-1].split("|")
        if len(items) != node:
            raise ArchStringError(
                f"{text!r}: node {node} needs {node} inputs (~0..~{node - 1}), found {len(items)}"
            )
        for source, item in enumerate(items):
            op, sep, src = item.partition("~")
            if not sep:
                raise ArchStringError(f"{text!r}: node {node} input {item!r} must be 'op~source'")
            if op not in OPS:
                raise ArchStringError(
                    f"{text!r}: unknown operation {op!r}{did_you_mean(op, list(OPS))}; "
                    f"allowed: {', '.join(OPS)}"
                )
            if src != str(source):
                raise ArchStringError(
                    f"{text!r}: node {node} input {source + 1} must read node ~{source}, "
                    f"found ~{src}"
                )
            ops.append(op)
    return tuple(ops)


def format_arch(ops: Sequence[str]) -> str:
    """The cell string of 6 ops in ``EDGES`` order (the inverse of ``parse_arch``)."""
    if len(ops) != len(EDGES) or any(op not in OPS for op in ops):
        raise ArchStringError(f"a cell has {len(EDGES)} ops out of {OPS}, got {tuple(ops)}")
    groups: list[list[str]] = [[] for _ in range(NODES - 1)]
    for (target, source), op in zip(EDGES, ops, strict=True):
        groups[target - 1].append(f"{op}~{source}")
    return "+".join("|" + "|".join(group) + "|" for group in groups)


def canonical(ops: Sequence[str]) -> Ops:
    """``ops`` with every dead edge set to ``none``: an edge is live when its op is not ``none``,
    its source node is reached from the input and its target node reaches the output through
    live edges. Dead edges carry only zeros (or, for a conv, a constant: BN's bias), so cells
    with equal canonical forms compute the same function up to such constants."""
    edge_op = dict(zip(EDGES, ops, strict=True))
    reached = [True] + [False] * (NODES - 1)
    for target in range(1, NODES):
        reached[target] = any(reached[s] and edge_op[(target, s)] != "none" for s in range(target))
    useful = [False] * (NODES - 1) + [True]
    for source in range(NODES - 2, -1, -1):
        useful[source] = any(
            useful[t] and edge_op[(t, source)] != "none" for t in range(source + 1, NODES)
        )
    return tuple(
        op if op != "none" and reached[s] and useful[t] else "none"
        for (t, s), op in edge_op.items()
    )


def sample_archs(count: int, seed: int) -> list[str]:
    """``count`` cell strings with distinct canonical forms, drawn without replacement in a
    seeded order (stream ``derive_seed(seed, "nas_bench_201", "samples")``); each kept cell is
    the first of its canonical class in that order."""
    order = list(itertools.product(OPS, repeat=len(EDGES)))
    random.Random(derive_seed(seed, "nas_bench_201", "samples")).shuffle(order)
    chosen: list[str] = []
    seen: set[Ops] = set()
    for ops in order:
        form = canonical(ops)
        if form not in seen:
            seen.add(form)
            chosen.append(format_arch(ops))
            if len(chosen) == count:
                return chosen
    raise ArchStringError(f"the space has only {len(seen)} distinct cells, asked for {count}")


# --------------------------------------------------------------------------- the network


class _Zero(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.mul(0.0)


def _relu_conv_bn(c_in: int, c_out: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ReLU(),
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out, affine=True),
    )


def make_op(name: str, channels: int) -> nn.Module:
    """One edge operation on ``channels`` channels (shape-preserving)."""
    if name == "none":
        return _Zero()
    if name == "skip_connect":
        return nn.Identity()
    if name == "nor_conv_1x1":
        return _relu_conv_bn(channels, channels, 1, 1)
    if name == "nor_conv_3x3":
        return _relu_conv_bn(channels, channels, 3, 1)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    raise ArchStringError(f"unknown operation {name!r}; allowed: {', '.join(OPS)}")


class Cell(nn.Module):
    """Node j = sum over i < j of edge (j, i) applied to node i; the output is node 3."""

    def __init__(self, ops: Ops, channels: int) -> None:
        super().__init__()
        self.edges = nn.ModuleList(make_op(op, channels) for op in ops)

    def forward(self, x: Tensor) -> Tensor:
        nodes = [x]
        edge = iter(self.edges)
        for target in range(1, NODES):
            nodes.append(sum(next(edge)(nodes[source]) for source in range(target)))
        return nodes[-1]


class ResidualReduction(nn.Module):
    """NAS-Bench-201's reduction: ReLUConvBN(3x3, stride 2) -> ReLUConvBN(3x3) plus a shortcut
    AvgPool(2x2) -> Conv1x1; halves the map (rounding up, so odd sizes agree) and sets the width."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.main = nn.Sequential(
            _relu_conv_bn(c_in, c_out, 3, 2), _relu_conv_bn(c_out, c_out, 3, 1)
        )
        self.shortcut = nn.Sequential(
            nn.AvgPool2d(2, stride=2, ceil_mode=True), nn.Conv2d(c_in, c_out, 1, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x) + self.shortcut(x)


class NB201Net(FeatureModel):
    """The NAS-Bench-201 macro skeleton around one cell (see the module docstring).

    ``forward_features`` maps are the outputs of the 3 stages (the last after BN -> ReLU); the
    embedding is the globally average-pooled last map (``4 * width`` features).
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        image_size: int,
        genotype: str = DEFAULT_ARCH,  # the cell, in the benchmark's string format
        width: int = 16,  # C: channels of the first stage (NAS-Bench-201: 16)
        cells_per_stage: int = 5,  # N: cells per stage (NAS-Bench-201: 5)
    ) -> None:
        super().__init__()
        if width < 1 or cells_per_stage < 1:
            raise ArchConfigError(
                f"nb201 needs width >= 1 and cells_per_stage >= 1, got {width}, {cells_per_stage}"
            )
        if image_size < 4:
            raise ArchConfigError(f"nb201 halves the map twice: image_size >= 4, got {image_size}")
        ops = parse_arch(genotype)
        self.genotype = format_arch(ops)
        self.stem = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        )
        stages: list[nn.Module] = []
        c_in = width
        for stage, c in enumerate((width, 2 * width, 4 * width)):
            layers: list[nn.Module] = [ResidualReduction(c_in, c)] if stage else []
            layers += [Cell(ops, c) for _ in range(cells_per_stage)]
            if stage == 2:
                layers += [nn.BatchNorm2d(c), nn.ReLU()]
            stages.append(nn.Sequential(*layers))
            c_in = c
        self.stages = nn.Sequential(*stages)
        self.feature_dim = 4 * width
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def _trunk(self, x: Tensor, collect: bool) -> tuple[list[Tensor], Tensor]:
        maps, x = run_blocks(self.stages, self.stem(x), collect)
        return maps, x.mean(dim=(2, 3))


@ARCHS.register
class NB201Arch(Arch):
    """NAS-Bench-201's skeleton (C = 16, N = 5) around one cell, by default a residual cell of
    3x3 convs; ``genotype``, ``width`` and ``cells_per_stage`` override."""

    name = "nb201"

    def build(
        self, channels: int, num_classes: int, image_size: int, **overrides: Any
    ) -> FeatureModel:
        return NB201Net(channels, num_classes, image_size, **overrides)
