"""Shared pieces of the coreset baselines: per-class selection and the embedding they select in.

Herding and k-center select real images in the embedding space of a ConvNet, as the DC / DM
papers do: either randomly initialised (`embedding: random`) or briefly trained on the real train
split (`embedding: trained`, `embed_epochs` epochs of the shared recipe without augmentation).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from pydantic import Field

from ddbench.artifact import ImageSet
from ddbench.context import Context
from ddbench.data import RealData
from ddbench.methods import MethodParams


class EmbeddingParams(MethodParams):
    embedding: Literal["random", "trained"] = "trained"  # DM/DC select with a trained ConvNet
    embed_epochs: int = Field(10, ge=1)  # brief training; enough to separate classes on digits
    embed_batch: int = Field(512, ge=1)  # images per forward when embedding the train split


@torch.no_grad()
def embed_train(real: RealData, params: EmbeddingParams, ctx: Context) -> torch.Tensor:
    """Embeddings [N, D] of every train image under a (random or briefly trained) ConvNet."""
    from ddbench.archs import build_arch
    from ddbench.fit import Recipe, train_model

    torch.manual_seed(ctx.stream_seed("embedding_init"))
    net = build_arch("convnet", real.channels, real.num_classes, real.image_size)
    if params.embedding == "trained":
        with torch.enable_grad():
            recipe = Recipe(epochs=params.embed_epochs, augment=False)
            train_model(
                net,
                real.train_x,
                real.train_y,
                recipe,
                real.name,
                ctx.stream_seed("embedding_train"),
                ctx.device,
            )
    net.to(ctx.device).eval()
    chunks = [
        net.embed(real.train_x[i : i + params.embed_batch].to(ctx.device)).float().cpu()
        for i in range(0, len(real.train_x), params.embed_batch)
    ]
    return torch.cat(chunks)


Selector = Callable[[torch.Tensor, int], list[int]]


def select_per_class(
    real: RealData, ipc: int, features: torch.Tensor, select: Selector
) -> ImageSet:
    """Apply `select(class_features, ipc) -> positions` to every class; gather the images."""
    chosen = []
    for label in real.classes:
        idx = real.class_indices(label)
        if len(idx) < ipc:
            raise ValueError(f"class {label} has {len(idx)} train images, fewer than ipc={ipc}")
        chosen.append(idx[torch.tensor(select(features[idx], ipc), dtype=torch.long)])
    indices = torch.cat(chosen)
    return ImageSet(
        real.train_x[indices].clone(), real.train_y[indices].clone(), {"indices": indices.tolist()}
    )


def kcenter_greedy(features: torch.Tensor, k: int) -> list[int]:
    """Greedy k-center (Sener & Savarese 2018), started at the sample nearest the class mean.

    Starting at the mean-nearest sample (rather than a random one) makes the selection a pure
    function of the embedding; each next center is the point farthest from all chosen so far.
    """
    first = int(torch.cdist(features.mean(0, keepdim=True), features).argmin())
    chosen = [first]
    dist = torch.cdist(features[first : first + 1], features).squeeze(0)
    for _ in range(k - 1):
        nxt = int(dist.argmax())
        chosen.append(nxt)
        dist = torch.minimum(dist, torch.cdist(features[nxt : nxt + 1], features).squeeze(0))
    return chosen


def herding_greedy(features: torch.Tensor, k: int) -> list[int]:
    """Herding (Welling 2009; as in iCaRL / DC): pick samples whose running mean tracks the mean."""
    mu = features.mean(0)
    chosen: list[int] = []
    running = torch.zeros_like(mu)
    available = torch.ones(len(features), dtype=torch.bool)
    for step in range(1, k + 1):
        candidates = (running.unsqueeze(0) + features) / step
        dist = (candidates - mu).norm(dim=1)
        dist[~available] = float("inf")
        pick = int(dist.argmin())
        chosen.append(pick)
        available[pick] = False
        running += features[pick]
    return chosen
