"""`random_real`: IPC real images drawn at random per class — the baseline every table needs."""

from __future__ import annotations

import torch

from ddbench.artifact import ImageSet
from ddbench.context import Context
from ddbench.data import RealData
from ddbench.methods import Method, MethodParams, register_method
from ddbench.methods._coreset import select_per_class
from ddbench.protocols import DATADAM_TABLE_1, DIM_TABLE_2, published_table


@register_method
class RandomReal(Method):
    name = "random_real"
    paper = "Random subset baseline (Wang et al. 2018; Zhao et al., ICLR 2021)"
    version = 1
    Params = MethodParams
    published = (
        *published_table(
            DATADAM_TABLE_1, "cifar10", {1: (14.4, 2.0), 10: (26.0, 1.2), 50: (43.4, 1.0)}
        ),
        *published_table(
            DATADAM_TABLE_1, "cifar100", {1: (4.2, 0.3), 10: (14.6, 0.5), 50: (30.0, 0.4)}
        ),
        *published_table(
            DATADAM_TABLE_1, "tiny_imagenet", {1: (1.4, 0.1), 10: (5.0, 0.2), 50: (15.0, 0.4)}
        ),
        *published_table(DIM_TABLE_2, "svhn", {1: (14.6, 1.6), 10: (35.1, 4.1), 50: (70.9, 0.9)}),
        *published_table(DIM_TABLE_2, "mnist", {1: (64.9, 3.5), 10: (95.1, 0.9), 50: (97.9, 0.2)}),
        *published_table(
            DIM_TABLE_2, "fashion_mnist", {1: (51.4, 3.8), 10: (73.8, 0.7), 50: (82.5, 0.7)}
        ),
    )

    def distill(self, real: RealData, ipc: int, params: MethodParams, ctx: Context) -> ImageSet:
        gen = ctx.rng("random_real")

        def pick(features: torch.Tensor, k: int) -> list[int]:
            return torch.randperm(len(features), generator=gen)[:k].tolist()

        return select_per_class(real, ipc, real.train_y.unsqueeze(1).float(), pick)
