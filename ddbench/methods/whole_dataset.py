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


@register_method
class WholeDataset(Method):
    name = "whole_dataset"
    paper = "Upper bound: training on the whole real train split"
    version = 1
    Params = MethodParams
    ipc_independent = True

    def eval_ipcs(self, suite_ipcs: list[int]) -> list[int]:
        return [0]  # ipc 0 marks the whole split in result rows

    def distill(self, real: RealData, ipc: int, params: MethodParams, ctx: Context) -> RealSubset:
        indices = torch.arange(len(real.train_y))
        return RealSubset(indices, real.channels * real.image_size**2)
