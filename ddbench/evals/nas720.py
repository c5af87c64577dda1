"""`nas720`: rank the 720-ConvNet search space with a distillate
(docs/protocols.md#720-convnet-space).

The space is DC's ConvNet (`ddbench.archs.dc.ConvNet`) over width {32, 64, 128, 256} x depth
{1, 2, 3, 4} x activation {relu, sigmoid, leakyrelu} x normalisation {none, batchnorm, layernorm,
instancenorm, groupnorm} x pooling {none, maxpooling, avgpooling} = 720 candidates. Each list is
a parameter, so a suite can shrink the grid (small widths on a CPU); `subset: k` ranks k
candidates sampled from the grid with the named stream `derive_seed(subset_seed, "nas720",
"subset")`, the same k for every method of a suite.

One cell per candidate, named `convnet_w{width}_d{depth}_{activation}_{norm}_{pooling}` (the
rows' `arch`). What a cell measures (`proxy_top1`, `whole_top1`, `early_stop_top1`), how the
whole-set reference is cached and shared, and what `reduce` writes (`spearman_rho`,
`kendall_tau`, `top20_spearman_rho`, `selected_test_top1`, the early-stopping baseline's own
correlations, search seconds) is in `ddbench.evals._nas`.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

from pydantic import Field, PositiveInt, ValidationInfo, field_validator, model_validator

from ddbench.archs import ACTIVATIONS, NORMS, POOLINGS
from ddbench.evals import register_eval
from ddbench.evals._nas import NasEvaluator, NasParams
from ddbench.seeding import derive_seed

OPTIONS = ("width", "depth", "activation", "norm", "pooling")  # ConvNet's arguments, name order


class Nas720Params(NasParams):
    # conv channels of every block (protocol: 32..256; groupnorm needs multiples of 4)
    widths: list[PositiveInt] = Field(default_factory=lambda: [32, 64, 128, 256], min_length=1)
    depths: list[PositiveInt] = Field(default_factory=lambda: [1, 2, 3, 4], min_length=1)  # blocks
    activations: list[str] = Field(default_factory=lambda: list(ACTIVATIONS), min_length=1)
    norms: list[str] = Field(default_factory=lambda: list(NORMS), min_length=1)  # DC's five
    poolings: list[str] = Field(default_factory=lambda: list(POOLINGS), min_length=1)  # 2x2
    # rank k candidates sampled from the grid (seeded), None = all of it; for CPU budgets
    subset: PositiveInt | None = None
    subset_seed: int = 0  # names the subset stream, so every method ranks the same candidates

    @field_validator("activations", "norms", "poolings")
    @classmethod
    def _known(cls, values: list[str], info: ValidationInfo) -> list[str]:
        choices = {"activations": ACTIVATIONS, "norms": NORMS, "poolings": POOLINGS}
        allowed = choices[str(info.field_name)]
        unknown = [v for v in values if v not in allowed]
        if unknown:
            raise ValueError(f"unknown {info.field_name} {unknown}; allowed: {', '.join(allowed)}")
        return values

    @model_validator(mode="after")
    def _consistent(self) -> Nas720Params:
        if "groupnorm" in self.norms and any(w % 4 for w in self.widths):
            raise ValueError(f"groupnorm (4 groups) needs widths divisible by 4: {self.widths}")
        size = len(grid(self))
        if self.subset is not None and self.subset > size:
            raise ValueError(f"subset {self.subset} is larger than the grid ({size} candidates)")
        return self


def grid(params: Nas720Params) -> list[dict[str, Any]]:
    """Every candidate of the grid, in product order (repeated list entries count once)."""
    axes = [
        dict.fromkeys(values)
        for values in (
            params.widths,
            params.depths,
            params.activations,
            params.norms,
            params.poolings,
        )
    ]
    return [dict(zip(OPTIONS, combo, strict=True)) for combo in itertools.product(*axes)]


def candidate_name(options: dict[str, Any]) -> str:
    return "convnet_w{width}_d{depth}_{activation}_{norm}_{pooling}".format(**options)


@register_eval
class Nas720(NasEvaluator):
    """Rank the 720-ConvNet space: proxy (distillate) vs whole-set val accuracy."""

    name = "nas720"
    version = 1
    Params = Nas720Params
    # seconds on digits: a few small candidates, a few epochs (the contract tests' budget)
    smoke = {"epochs": 5, "whole_set_epochs": 1, "widths": [8], "depths": [1, 2], "subset": 4}

    def cells(self, device: str, params: Nas720Params) -> list[dict[str, Any]]:
        candidates = grid(params)
        if params.subset is not None:
            stream = random.Random(derive_seed(params.subset_seed, "nas720", "subset"))
            picked = sorted(stream.sample(range(len(candidates)), params.subset))
            candidates = [candidates[i] for i in picked]
        return [{"arch": candidate_name(c), **c} for c in candidates]

    def candidate(self, cell: dict[str, Any], params: Nas720Params) -> tuple[str, dict[str, Any]]:
        return "convnet", {key: cell[key] for key in OPTIONS}
