"""`herding`: per class, greedily pick real images whose running mean embedding tracks the class
mean (Welling 2009), in a ConvNet embedding space — the coreset baseline of DC / DM."""

from __future__ import annotations

from ddbench.artifact import ImageSet
from ddbench.context import Context
from ddbench.data import RealData
from ddbench.methods import Method, register_method
from ddbench.methods._coreset import EmbeddingParams, embed_train, herding_greedy, select_per_class
from ddbench.protocols import DATADAM_TABLE_1, DIM_TABLE_2, published_table


@register_method
class Herding(Method):
    name = "herding"
    paper = "Welling, Herding dynamical weights, ICML 2009 (baseline in Zhao et al., ICLR 2021)"
    version = 1
    Params = EmbeddingParams
    published = (
        *published_table(
            DATADAM_TABLE_1, "cifar10", {1: (21.5, 1.2), 10: (31.6, 0.7), 50: (40.4, 0.6)}
        ),
        *published_table(
            DATADAM_TABLE_1, "cifar100", {1: (8.3, 0.3), 10: (17.3, 0.3), 50: (33.7, 0.5)}
        ),
        *published_table(
            DATADAM_TABLE_1, "tiny_imagenet", {1: (2.8, 0.2), 10: (6.3, 0.2), 50: (16.7, 0.3)}
        ),
        *published_table(DIM_TABLE_2, "svhn", {1: (20.9, 1.3), 10: (50.5, 3.3), 50: (72.6, 0.8)}),
        *published_table(DIM_TABLE_2, "mnist", {1: (89.2, 1.6), 10: (93.7, 0.3), 50: (94.8, 0.2)}),
        *published_table(
            DIM_TABLE_2, "fashion_mnist", {1: (67.0, 1.9), 10: (71.1, 0.7), 50: (71.9, 0.8)}
        ),
    )
    smoke = {"embed_epochs": 2}

    def distill(self, real: RealData, ipc: int, params: EmbeddingParams, ctx: Context) -> ImageSet:
        return select_per_class(real, ipc, embed_train(real, params, ctx), herding_greedy)
