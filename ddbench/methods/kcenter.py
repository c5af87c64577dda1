"""`kcenter`: per class, greedy k-center selection of real images in a ConvNet embedding space
(Sener & Savarese, ICLR 2018) — a coreset baseline and DataDAM's initialisation ablation."""

from __future__ import annotations

from ddbench.artifact import ImageSet
from ddbench.context import Context
from ddbench.data import RealData
from ddbench.methods import Method, register_method
from ddbench.methods._coreset import EmbeddingParams, embed_train, kcenter_greedy, select_per_class
from ddbench.protocols import DATADAM_TABLE_1, DIM_TABLE_2, published_table


@register_method
class KCenter(Method):
    name = "kcenter"
    paper = "Sener & Savarese, Active learning for CNNs: a core-set approach, ICLR 2018"
    version = 1
    Params = EmbeddingParams
    published = (
        *published_table(
            DATADAM_TABLE_1, "cifar10", {1: (21.5, 1.3), 10: (14.7, 0.9), 50: (27.0, 1.4)}
        ),
        *published_table(
            DATADAM_TABLE_1, "cifar100", {1: (8.4, 0.3), 10: (17.3, 0.3), 50: (30.5, 0.3)}
        ),
        *published_table(DIM_TABLE_2, "svhn", {1: (21.0, 1.5), 10: (14.0, 1.3), 50: (20.1, 1.4)}),
        *published_table(DIM_TABLE_2, "mnist", {1: (89.3, 1.5), 10: (84.4, 1.7), 50: (97.4, 0.3)}),
        *published_table(
            DIM_TABLE_2, "fashion_mnist", {1: (66.9, 1.8), 10: (54.7, 1.5), 50: (68.3, 0.8)}
        ),
    )
    smoke = {"embed_epochs": 2}

    def distill(self, real: RealData, ipc: int, params: EmbeddingParams, ctx: Context) -> ImageSet:
        return select_per_class(real, ipc, embed_train(real, params, ctx), kcenter_greedy)
