"""`dsa`: Dataset Condensation with Differentiable Siamese Augmentation (Zhao & Bilen, ICML 2021).

DSA is DC's gradient matching (`ddbench.methods.dc`, which documents the algorithm and every
paper-vs-code choice) with one change: before the gradients of class c are computed, ONE random
differentiable transform is drawn and applied to both the real batch and the synthetic images of c
(siamese: same family, same parameters), so the synthetic images learn to match the real gradients
under augmentation and the gradient flows back through the transform into the pixels. As in DSA's
official code, the network's inner-loop training on the synthetic set also uses DSA, drawn per
sample. The strategy defaults to the dataset's (`color_crop_cutout_flip_scale_rotate`, without
`flip` for digit datasets); `dsa_strategy` overrides it.

The class is DC with different defaults: nothing else differs, so the two rows of a table
compare exactly the effect of the augmentation. Workers split the classes as in DC; a class's
siamese draw comes from its own stream, so it is the same whichever rank owns the class.
"""

from __future__ import annotations

from ddbench.methods import register_method
from ddbench.methods.dc import DC, DCParams
from ddbench.protocols import DATADAM_TABLE_1, published_table


class DSAMethodParams(DCParams):
    """DC's parameters with siamese augmentation switched on."""

    dsa: bool = True  # siamese DSA on each class's real and synthetic batch (DSA's contribution)


@register_method
class DSA(DC):
    name = "dsa"
    paper = "Zhao & Bilen, Dataset Condensation with Differentiable Siamese Augmentation, ICML 2021"
    version = 2  # 2: class-split data parallelism, per-class draws (new random streams)
    Params = DSAMethodParams
    # Tiny ImageNet IPC 50 is left out: the extracted table prints 5.1, below its IPC-10 number
    published = (
        *published_table(
            DATADAM_TABLE_1, "cifar10", {1: (28.8, 0.7), 10: (52.1, 0.5), 50: (60.6, 0.5)}
        ),
        *published_table(
            DATADAM_TABLE_1, "cifar100", {1: (13.9, 0.3), 10: (32.3, 0.3), 50: (42.8, 0.4)}
        ),
        *published_table(DATADAM_TABLE_1, "tiny_imagenet", {1: (5.7, 0.1), 10: (16.3, 0.2)}),
    )
