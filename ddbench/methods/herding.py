"""`herding`: per class, greedily pick real images whose running mean embedding tracks the class
mean (Welling 2009), in a ConvNet embedding space — the coreset baseline of DC / DM."""

from __future__ import annotations

from ddbench.artifact import ImageSet
from ddbench.context import Context
from ddbench.data import RealData
from ddbench.methods import Method, register_method
from ddbench.methods._coreset import EmbeddingParams, embed_train, herding_greedy, select_per_class


@register_method
class Herding(Method):
    name = "herding"
    paper = "Welling, Herding dynamical weights, ICML 2009 (baseline in Zhao et al., ICLR 2021)"
    version = 1
    Params = EmbeddingParams
    smoke = {"embed_epochs": 2}

    def distill(self, real: RealData, ipc: int, params: EmbeddingParams, ctx: Context) -> ImageSet:
        return select_per_class(real, ipc, embed_train(real, params, ctx), herding_greedy)
