"""`whole_dataset`: the reference — the full real train split, evaluated once (ipc 0).

Every suite can show it beside the methods (docs/architecture.md#fairness-rules). It stores only
indices; its `artifact_bytes` counts the float32 images they stand for.
"""

from __future__ import annotations

import torch

from ddbench.artifact import RealSubset
from ddbench.context import Context
from ddbench.data import RealData
from ddbench.methods import Method, MethodParams, register_method
from ddbench.protocols import DATADAM_TABLE_1, DIM_TABLE_2, published_table
from ddbench.schema import WHOLE_SPLIT_IPC


@register_method
class WholeDataset(Method):
    name = "whole_dataset"
    paper = "Upper bound: training on the whole real train split"
    version = 1
    Params = MethodParams
    published = (  # ipc 0: the whole train split
        *published_table(DATADAM_TABLE_1, "cifar10", {0: (84.8, 0.1)}),
        *published_table(DATADAM_TABLE_1, "cifar100", {0: (56.2, 0.3)}),
        *published_table(DATADAM_TABLE_1, "tiny_imagenet", {0: (37.6, 0.4)}),
        *published_table(DIM_TABLE_2, "svhn", {0: (95.4, 0.1)}),
        *published_table(DIM_TABLE_2, "mnist", {0: (99.6, 0.0)}),
        *published_table(DIM_TABLE_2, "fashion_mnist", {0: (93.5, 0.1)}),
    )
    ipc_independent = True

    def eval_ipcs(self, suite_ipcs: list[int]) -> list[int]:
        return [WHOLE_SPLIT_IPC]

    def distill(
        self, real: RealData, ipc: int | None, params: MethodParams, ctx: Context
    ) -> RealSubset:
        indices = torch.arange(len(real.train_y))
        return RealSubset(indices, real.channels * real.image_size**2)
