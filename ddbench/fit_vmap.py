"""Multi-seed vectorised training of the ConvNet family with `torch.func` (K seeds per step).

What lives here
---------------
* `fit_artifact_seeds(arch, artifact, ipc, real, recipe, eval_seeds, ...)`: for each eval seed
  the `{"val", "test"}` top1 that `ddbench.fit.fit_artifact` gives under `fixed` sampling (each
  seed trains on its own draw of a generator, the same images of an image set), trained either
  one model after the other or all K models at once (`vectorise: auto | on | off`).
* `fit_and_test_seeds(arch, real, data, recipe, eval_seeds, ...)`: the same for given per-seed
  (images, labels), as `ddbench.fit.fit_and_test` would give for each.
* `train_vectorised(models, data, recipe, dataset, seeds, device, arch)`: the vectorised loop.

How the vectorised path keeps every seed's run its own
------------------------------------------------------
The K models are built exactly as `fit_and_test` builds them (`ddbench.fit.seeded_model`, so
per-seed initialisation), then stacked (`torch.func.stack_module_state`: parameters and buffers
become [K, ...] leaves) and called through `functional_call` on a meta-device copy, `vmap`-ed
over K. Each seed keeps its own data-order and DSA generators (`ddbench.fit.seeded_streams`, the
seeds `train_model` uses) and its own training data (same shapes for all seeds), so batch k of
a step is the batch seed k's sequential run would see; DSA runs per seed (each draws its own
family), and the K batches are stacked [K, B, C, H, W].
The loss is the sum of the per-seed mean losses, so each seed's gradient is its own. The
recipe's optimisers (SGD with momentum and weight decay, AdamW) are element-wise, so the
optimiser over the stacked leaves *is* the vectorised step (every slice gets the update it would
get alone), under the recipe's schedule (`Recipe.optimiser`). Precision is what the calibration
of one model's step chooses (`ddbench.fit.run_choice`); the vectorised step is never compiled
nor channels-last. Afterwards the stacked weights are
copied back into the K models, which are tested with `ddbench.fit.val_test_top1`. The two paths
agree within floating-point tolerance (tests/test_fit_speed.py).

When it is used
---------------
`auto` groups the seeds of a cell only on CUDA, for an architecture of
`ddbench.fit.CONVNET_ARCHS`, with more than one seed (`use_vectorised`: the cell layout, decided
when the plan is made): small networks leave a GPU idle, and K of them in one kernel may fill
it; on CPUs each seed is its own Ray task, the parallelism there. Inside such a cell, `auto`
then trains the K models at once only when a calibration says it pays (`vmap_pays`: one epoch of
the K models vectorised against one epoch of each in turn, cached per device model and shape
like `ddbench.fastpath`'s measurements); otherwise the seeds train one after the other.
Teacher labels, fresh generator draws and wall-clock budgets are per-run features
of `train_model` and are not vectorised (callers use the sequential path for them).

How evaluators use it
---------------------
`cross_arch` asks `use_vectorised` at plan time with the eval cells' device class (the suite's
`resources.eval.gpus`): where it says yes, an arch's seeds form one cell, which calls
`fit_artifact_seeds` and writes one row per seed (`eval_seed` as usual); elsewhere each (arch,
eval seed) is its own cell, since on CPUs one Ray task per seed is the faster fan-out.

Extending: another architecture family can join `CONVNET_ARCHS` when its forward has no
data-dependent Python control flow and no RNG (vmap needs both), and the equivalence test
passes for it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F

from ddbench.fastpath import MARGIN, Choice, TrainSetup, autocast, calibrated, shape_key
from ddbench.fit import (
    CONVNET_ARCHS,
    LabelMode,
    Recipe,
    artifact_recipe,
    fit_and_test,
    fixed_data,
    path_metrics,
    run_choice,
    seeded_model,
    seeded_streams,
    soft_cross_entropy,
    train_model,
    train_seed,
    val_test_top1,
)

if TYPE_CHECKING:
    from ddbench.artifact import Artifact
    from ddbench.data import RealData

Vectorise = Literal["auto", "on", "off"]


def use_vectorised(vectorise: Vectorise, arch: str, device: str, n_seeds: int) -> bool:
    """The selection rule of the module docstring; `on` for a non-ConvNet arch is an error."""
    if vectorise == "on" and arch not in CONVNET_ARCHS:
        raise ValueError(f"vectorised training supports {sorted(CONVNET_ARCHS)}, not {arch!r}")
    if vectorise == "auto":
        return torch.device(device).type == "cuda" and arch in CONVNET_ARCHS and n_seeds > 1
    return vectorise == "on"


def train_vectorised(
    models: Sequence[torch.nn.Module],
    data: Sequence[tuple[torch.Tensor, torch.Tensor]],
    recipe: Recipe,
    dataset: str,
    seeds: Sequence[int],
    device: str = "cpu",
    arch: str | None = None,
) -> Choice:
    """Train K same-shaped `models` at once, model k as `train_model(models[k], *data[k], ...,
    seeds[k])` would (module docstring); the trained weights are written back into `models`.
    Every seed's (images, labels) must have the same shapes. Returns the path (precision)."""
    from torch.func import functional_call, stack_module_state

    from ddbench.augment import default_strategy, dsa

    strategy = recipe.dsa_strategy or default_strategy(dataset)
    streams = [seeded_streams(seed) for seed in seeds]
    for model in models:
        model.to(device).train()
    params, buffers = stack_module_state(list(models))
    skeleton = copy.deepcopy(models[0]).to("meta")

    def forward(
        p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], xb: torch.Tensor
    ) -> torch.Tensor:
        return functional_call(skeleton, (p, b), (xb,))

    batched_forward = torch.vmap(forward)
    data = [(x.to(device), y.to(device)) for x, y in data]
    if len({(x.shape, y.shape) for x, y in data}) != 1:
        raise ValueError("vectorised training needs the same data shapes for every seed")
    loss_fn = soft_cross_entropy if data[0][1].dim() == 2 else F.cross_entropy
    n, k = len(data[0][0]), len(models)
    eager = recipe.model_copy(update={"compile": "off"})
    one = run_choice(eager, arch, models[0], data[0][0], data[0][1], dataset, device)
    precision = one.setup.precision
    choice = Choice(TrainSetup(precision, channels_last=False, compile=False), one.step_s)
    opt, sched = recipe.optimiser(list(params.values()))
    for _ in range(recipe.epochs):
        perms = [torch.randperm(n, generator=order).to(device) for order, _ in streams]
        for start in range(0, n, recipe.batch_size):
            xs, ys = [], []
            for perm, (_, aug_gen), (x, y) in zip(perms, streams, data, strict=True):
                idx = perm[start : start + recipe.batch_size]
                xs.append(dsa(x[idx], strategy, aug_gen) if recipe.augment else x[idx])
                ys.append(y[idx])
            with autocast(device, precision):
                logits = batched_forward(params, buffers, torch.stack(xs))
                # mean over K x B samples, times K = the sum of the K per-seed mean losses
                loss = k * loss_fn(logits.flatten(0, 1), torch.stack(ys).flatten(0, 1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
    with torch.no_grad():
        for i, model in enumerate(models):
            for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
                tensor.copy_((params | buffers)[name][i])
    return choice


def vmap_pays(
    arch: str,
    real: RealData,
    data: Sequence[tuple[torch.Tensor, torch.Tensor]],
    recipe: Recipe,
    device: str,
) -> bool:
    """Does training the K models of `data` at once beat training them one after the other?
    One epoch of each way on throwaway models, measured once per device model and shape (the
    module docstring); taken only when faster by the calibration's margin."""
    k, x = len(data), data[0][0]
    one_epoch = recipe.model_copy(update={"epochs": 1, "compile": "off"})
    shape = (x.shape[1], x.shape[2], x.shape[3])
    key = shape_key(arch, shape, min(len(x), recipe.batch_size), device, vmap_k=k)

    def measure() -> dict[str, float]:
        with torch.random.fork_rng(devices=[]):
            models = [seeded_model(arch, real, seed) for seed in range(k)]
            tic = time.perf_counter()
            train_vectorised(
                [copy.deepcopy(m) for m in models],
                data,
                one_epoch,
                real.name,
                range(k),
                device,
                arch,
            )
            vectorised = time.perf_counter() - tic
            tic = time.perf_counter()
            for seed, (model, (xs, ys)) in enumerate(zip(models, data, strict=True)):
                train_model(model, xs, ys, one_epoch, real.name, seed, device, arch=arch)
            return {"vmap_epoch": vectorised, "sequential_epoch": time.perf_counter() - tic}

    seconds = calibrated(key, ["vmap_epoch", "sequential_epoch"], measure)
    return seconds["vmap_epoch"] < seconds["sequential_epoch"] * (1 - MARGIN)


def fit_and_test_seeds(
    arch: str,
    real: RealData,
    data: Sequence[tuple[torch.Tensor, torch.Tensor]],
    recipe: Recipe,
    eval_seeds: Sequence[int],
    device: str = "cpu",
    arch_kwargs: dict[str, Any] | None = None,
    vectorise: Vectorise = "auto",  # auto: vectorised on GPUs, where it pays (module docstring)
) -> list[tuple[dict[str, float], dict[str, float]]]:
    """`fit_and_test(arch, real, *data[k], recipe, eval_seeds[k], ...)` for each k (same numbers
    within floating-point tolerance), vectorised over the seeds when `use_vectorised` (and, for
    `auto`, `vmap_pays`) say so; each with its execution path's metrics."""
    vectorised = use_vectorised(vectorise, arch, device, len(eval_seeds))
    if vectorised and vectorise == "auto":
        vectorised = vmap_pays(arch, real, data, recipe, device)
    if not vectorised:
        out = []
        for (x, y), seed in zip(data, eval_seeds, strict=True):
            stats: dict[str, float] = {}
            top1 = fit_and_test(arch, real, x, y, recipe, seed, device, arch_kwargs, stats=stats)
            out.append((top1, path_metrics(stats)))
        return out
    models = [seeded_model(arch, real, seed, arch_kwargs) for seed in eval_seeds]
    seeds = [train_seed(seed, arch) for seed in eval_seeds]
    choice = train_vectorised(models, data, recipe, real.name, seeds, device, arch)
    precision = choice.setup.precision
    out = []
    for model in models:
        metrics = choice.metrics  # a new dict per model: `val_test_top1` adds its `test_batch`
        out.append((val_test_top1(model, real, device, precision, arch, metrics), metrics))
    return out


def fit_artifact_seeds(
    arch: str,
    artifact: Artifact,
    ipc: int,
    real: RealData,
    recipe: Recipe,
    eval_seeds: Sequence[int],
    device: str = "cpu",
    arch_kwargs: dict[str, Any] | None = None,
    label_mode: LabelMode = "hard",  # hard or soft; teacher labels are per-run (sequential)
    vectorise: Vectorise = "auto",  # auto: vectorised on GPUs, where it pays (module docstring)
) -> list[tuple[dict[str, float], dict[str, float]]]:
    """`fit_artifact(arch, artifact, ipc, real, recipe, seed, "fixed", ...)` for each of
    `eval_seeds` (top1 and path metrics), every seed on its own fixed draw, vectorised as
    `fit_and_test_seeds` decides."""
    if label_mode == "teacher":
        raise ValueError("teacher labels are regenerated per run: train those seeds one by one")
    data = [fixed_data(artifact, ipc, real, seed, label_mode) for seed in eval_seeds]
    recipe = artifact_recipe(recipe, artifact)  # a learned lr replaces the recipe's
    return fit_and_test_seeds(
        arch, real, data, recipe, eval_seeds, device, arch_kwargs, vectorise=vectorise
    )
