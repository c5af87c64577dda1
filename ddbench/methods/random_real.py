"""`random_real`: IPC real images drawn at random per class — the baseline every table needs."""

from __future__ import annotations

import torch

from ddbench.artifact import ImageSet
from ddbench.context import Context
from ddbench.data import RealData
from ddbench.methods import Method, MethodParams, register_method
from ddbench.methods._coreset import select_per_class


@register_method
class RandomReal(Method):
    name = "random_real"
    paper = "Random subset baseline (Wang et al. 2018; Zhao et al., ICLR 2021)"
    version = 1
    Params = MethodParams

    def distill(self, real: RealData, ipc: int, params: MethodParams, ctx: Context) -> ImageSet:
        gen = ctx.rng("random_real")

        def pick(features: torch.Tensor, k: int) -> list[int]:
            return torch.randperm(len(features), generator=gen)[:k].tolist()

        return select_per_class(real, ipc, real.train_y.unsqueeze(1).float(), pick)
