"""`kcenter`: per class, greedy k-center selection of real images in a ConvNet embedding space
(Sener & Savarese, ICLR 2018) — a coreset baseline and DataDAM's initialisation ablation."""

from __future__ import annotations

from ddbench.artifact import ImageSet
from ddbench.context import Context
from ddbench.data import RealData
from ddbench.methods import Method, register_method
from ddbench.methods._coreset import EmbeddingParams, embed_train, kcenter_greedy, select_per_class


@register_method
class KCenter(Method):
    name = "kcenter"
    paper = "Sener & Savarese, Active learning for CNNs: a core-set approach, ICLR 2018"
    version = 1
    Params = EmbeddingParams
    smoke = {"embed_epochs": 2}

    def distill(self, real: RealData, ipc: int, params: EmbeddingParams, ctx: Context) -> ImageSet:
        return select_per_class(real, ipc, embed_train(real, params, ctx), kcenter_greedy)
