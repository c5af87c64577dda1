"""THE train-from-scratch-and-test recipe every evaluator shares (DC protocol, PROTOCOLS.md).

SGD (lr 0.01, momentum 0.9, weight decay 5e-4), batch 256, lr x0.1 at half the epochs, DSA
augmentation drawn per sample, final-epoch accuracy (never a checkpoint picked on test).
A given `eval_seed` fixes the initialisation, the data order and the augmentation, so the same
cell always gives the same number on the same machine.

Labels may be hard ([N] int64) or soft ([N, K] probabilities: cross-entropy against them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from ddbench.seeding import derive_seed

if TYPE_CHECKING:
    from ddbench.data import RealData


class Recipe(BaseModel):
    """Training hyper-parameters; evaluators embed these fields in their Params."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(1000, ge=1)  # DC protocol with augmentation (300 without)
    lr: float = Field(0.01, gt=0)  # SGD learning rate of the DC protocol
    momentum: float = 0.9  # DC protocol
    weight_decay: float = 5e-4  # DC protocol
    batch_size: int = Field(256, ge=1)  # DC protocol; an IPC-1 set is a single batch
    augment: bool = True  # DSA per sample at training time (DC/DSA evaluation)
    dsa_strategy: str | None = None  # None = the dataset's default (no flip for digits / SVHN)


def set_threads(cpus: float) -> None:
    """Ray sets OMP_NUM_THREADS=1 and reuses workers: give torch the cores the task reserved."""
    torch.set_num_threads(max(1, int(cpus)))


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def train_model(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    recipe: Recipe,
    dataset: str,
    seed: int,
    device: str = "cpu",
) -> torch.nn.Module:
    """Train `model` in place on (x, y) with the recipe; data order and DSA seeded by `seed`."""
    from ddbench.augment import default_strategy, dsa

    strategy = recipe.dsa_strategy or default_strategy(dataset)
    order_gen = torch.Generator().manual_seed(derive_seed(seed, "data_order"))
    aug_gen = torch.Generator().manual_seed(derive_seed(seed, "augment"))
    model.to(device).train()
    x, y = x.to(device), y.to(device)
    loss_fn = soft_cross_entropy if y.dim() == 2 else F.cross_entropy
    opt = torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
    )
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[recipe.epochs // 2], gamma=0.1)
    n = len(x)
    for _ in range(recipe.epochs):
        perm = torch.randperm(n, generator=order_gen).to(device)
        for start in range(0, n, recipe.batch_size):
            idx = perm[start : start + recipe.batch_size]
            xb, yb = x[idx], y[idx]
            if recipe.augment:
                xb = dsa(xb, strategy, aug_gen)
            loss = loss_fn(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
    return model


@torch.no_grad()
def accuracy(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: str = "cpu", batch: int = 1024
) -> float:
    """Top-1 accuracy as a fraction in [0, 1]."""
    model.to(device).eval()
    correct = 0
    for start in range(0, len(x), batch):
        logits = model(x[start : start + batch].to(device))
        correct += int((logits.argmax(dim=1).cpu() == y[start : start + batch]).sum())
    return correct / max(1, len(x))


def fit_and_test(
    arch: str,
    real: RealData,
    x: torch.Tensor,
    y: torch.Tensor,
    recipe: Recipe,
    eval_seed: int,
    device: str = "cpu",
    arch_kwargs: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Build `arch` from the eval seed, train it on (x, y), return top1 on val and test."""
    from ddbench.archs import build_arch

    torch.manual_seed(derive_seed(eval_seed, "init", arch))
    model = build_arch(
        arch, real.channels, real.num_classes, real.image_size, **(arch_kwargs or {})
    )
    train_model(model, x, y, recipe, real.name, derive_seed(eval_seed, arch), device)
    return {
        "val": accuracy(model, real.val_x, real.val_y, device),
        "test": accuracy(model, real.test_x, real.test_y, device),
    }
