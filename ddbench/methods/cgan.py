"""`cgan`: a class-conditional GAN trained on the real data — no matching at all.

The "no matching" baseline of the generator methods (DiM's Tab. 2 "Conditional GAN" row and
Tab. 8), and the pre-trained generator `d2m` starts from (its `pretrain` parameters name this
job, so the plan shares one cgan job between the suite's own `cgan` entry and `d2m`). DiM's
generator architecture (`ddbench.generators.ConditionalGenerator`, noise dimension 100), a
conditional projection discriminator, the non-saturating GAN loss, Adam (lr 1e-4, DiM's value),
batch 64 (DiM's B). One artifact serves every IPC.

Workers: each step's global batch (the one-worker batch, noise and DiffAugment values) is split by
rows across ranks, the losses are the ranks' shares of the batch means, gradients are summed and
the generator's BatchNorm uses the global batch's statistics (`_gan.gan_step`): W workers train
the one-worker generator up to floating-point summation order.
"""

from __future__ import annotations

from ddbench.artifact import GeneratorSet
from ddbench.context import Context
from ddbench.data import RealData
from ddbench.methods import Method, register_method
from ddbench.methods._gan import (
    CGANParams,
    adam,
    data_config,
    gan_epoch,
    generator_set,
    new_discriminator,
    new_generator,
    run_epochs,
)
from ddbench.protocols import DIM_TABLE_2, published_table

# seconds on digits: a narrow generator, two passes over the 1,295 images in 5 steps each
CGAN_SMOKE = {"epochs": 2, "width": 8, "batch_size": 256}


@register_method
class CGAN(Method):
    name = "cgan"
    paper = "Mirza & Osindero, arXiv 2014 (conditional GAN; as used by DiM, ICCV 2023)"
    version = 2  # 2: row-split data parallelism, no per-rank streams (new random streams)
    Params = CGANParams
    # evaluated as DiM's "Conditional GAN" row: images generated per epoch (INPC)
    paper_protocol = {"sampling": "fresh"}
    published = (
        *published_table(DIM_TABLE_2, "svhn", {1: (78.3, 0.9), 10: (83.8, 0.6), 50: (86.6, 0.5)}),
        *published_table(
            DIM_TABLE_2, "cifar10", {1: (46.4, 1.2), 10: (62.7, 0.9), 50: (68.1, 0.8)}
        ),
        *published_table(DIM_TABLE_2, "mnist", {1: (96.1, 0.7), 10: (97.8, 0.3), 50: (98.4, 0.3)}),
        *published_table(
            DIM_TABLE_2, "fashion_mnist", {1: (81.5, 0.5), 10: (84.0, 0.2), 50: (86.3, 0.3)}
        ),
    )
    smoke = CGAN_SMOKE
    ipc_independent = True

    def distill(
        self, real: RealData, ipc: int | None, params: CGANParams, ctx: Context
    ) -> GeneratorSet:
        config = data_config(real, params.noise_dim, params.width)
        generator, discriminator = new_generator(config, ctx), new_discriminator(config, ctx)
        opt_g, opt_d = adam(generator, params.lr), adam(discriminator, params.lr)

        def epoch_fn(epoch: int) -> dict[str, float]:
            return gan_epoch(generator, discriminator, opt_g, opt_d, real, params, ctx, epoch)

        losses = run_epochs(
            ctx,
            {"generator": generator, "discriminator": discriminator},
            {"generator": opt_g, "discriminator": opt_d},
            params.epochs,
            epoch_fn,
            params.checkpoint_every,
            self.name,
            images_per_epoch=len(real.train_y),
        )
        return generator_set(generator, config, {**losses, "epochs": params.epochs})
