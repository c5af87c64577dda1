"""`continual`: class-incremental learning with a distilled memory (DM's protocol,
docs/protocols.md#continual-learning).

The classes arrive in `steps` equal increments, in the order of an order seed s:
`np.random.seed(s); np.random.permutation(num_classes)` (the papers' literal permutation, for
comparability; `class_order` draws the same numbers from a private `RandomState`). At each step
the method distils only that step's new classes; the memory is the union of the distillates of
every step so far; a fresh network with the full output head is trained from scratch on the
memory with the shared recipe of `ddbench.fit` (DC recipe, DSA per sample) and tested on the
classes seen so far. `orders` order seeds x `models` networks per step (DM: 5 x 3).

Each step's distillate is a class-subset job of the method (`inputs`, see `ddbench.plan`): the
same method, params, IPC and seeds, run on `real.subset(step classes)`, cached by content hash
like any job, so a rerun or another suite with the same subset reuses it. Its labels keep their
global class ids, and the memory is checked to hold only the step's classes.

Cells are (order_seed, step, model): one network each, the unit of work the eval resources are
sized for, so every step of every order trains in parallel. A cell hangs off the method's
normal job at the IPC (rows carry its job id and label) and lists the subset jobs of its steps
so far; it runs once they are all distilled. Rows: top1 on val and test (the seen classes'
images of each split) and the execution path's rows (`precision_bits`: 16 = bf16, 32 = fp32;
`channels_last`, `micro_batch`, `compiled`, `test_batch`, `step_ms`, `fp32_step_ms`;
`ddbench.fastpath`) with
`step` = the 0-based increment and `eval_seed` = order_seed x models + model (a unique run
id; the order seed is eval_seed // models). `reduce` writes, per run
(eval_seed) and split, `avg_inc_top1` (mean top1 over the steps) and the final `top1` (after the
last step), with `step` empty.

Generators (dim, d2m) give a fixed draw of IPC images per class per step and run; their
prerequisites (d2m's cgan, d4m's diffusion model) are pre-trained on the step's classes only.
Two step counts (5 and 10) are two entries of this evaluator in a suite; their rows differ in
`eval_params`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import Field, model_validator

from ddbench.archs import ArchName
from ddbench.context import Context
from ddbench.evals import EvalJob, EvalParams, Evaluator, register_eval
from ddbench.fit import (
    Recipe,
    artifact_recipe,
    draw_generator,
    fit_and_test,
    path_metrics,
    select_labels,
)


class ContinualParams(EvalParams, Recipe):
    arch: ArchName = "convnet"  # registry name of the network trained on the memory (DM: ConvNet)
    # length of the class order = the dataset's number of classes (CIFAR-100: 100); the plan
    # needs it before any data is loaded, and a cell checks it against the dataset
    num_classes: int = Field(100, ge=2)
    steps: int = Field(5, ge=1)  # class increments (DM protocol: 5 or 10); divides num_classes
    orders: int = Field(5, ge=1)  # class orders, seeds 0 .. orders-1 (DM protocol: 5)
    models: int = Field(3, ge=1)  # networks trained per (order, step) (DM protocol: 3)

    @model_validator(mode="after")
    def _equal_steps(self) -> ContinualParams:
        if self.num_classes % self.steps:
            raise ValueError(
                f"steps={self.steps} must divide num_classes={self.num_classes} "
                "(every step brings the same number of new classes)"
            )
        return self


def class_order(seed: int, num_classes: int) -> list[int]:
    """The protocol's order: the numbers of `np.random.seed(seed); np.random.permutation(n)`."""
    return np.random.RandomState(seed).permutation(num_classes).tolist()


def step_classes(order: list[int], steps: int, step: int) -> tuple[int, ...]:
    """The classes new at `step` (0-based), sorted."""
    per_step = len(order) // steps
    return tuple(sorted(order[step * per_step : (step + 1) * per_step]))


@register_eval
class Continual(Evaluator):
    """Class-incremental learning on a memory distilled step by step (DM protocol)."""

    name = "continual"
    version = 1
    Params = ContinualParams
    # seconds per cell on digits: 5 steps of 2 classes, one order, one model, a short recipe
    smoke = {"num_classes": 10, "steps": 5, "orders": 1, "models": 1, "epochs": 20}

    def cells(self, device: str, params: ContinualParams) -> list[dict[str, Any]]:
        return [
            {
                "arch": params.arch,
                "order_seed": order,
                "step": step,
                "eval_seed": order * params.models + model,
            }
            for order in range(params.orders)
            for step in range(params.steps)
            for model in range(params.models)
        ]

    def inputs(self, cell: dict[str, Any], params: ContinualParams) -> dict[str, tuple[int, ...]]:
        order = class_order(cell["order_seed"], params.num_classes)
        return {f"step{t}": step_classes(order, params.steps, t) for t in range(cell["step"] + 1)}

    def run(
        self, cell: dict[str, Any], job: EvalJob, params: ContinualParams, ctx: Context
    ) -> list[dict[str, Any]]:
        real = job.real
        if real.num_classes != params.num_classes:
            raise ValueError(
                f"continual: num_classes={params.num_classes} but {job.dataset} has "
                f"{real.num_classes} classes; set evals.continual.params.num_classes"
            )
        memory = self.inputs(cell, params)
        xs, ys = [], []
        for key, classes in memory.items():
            if key not in job.inputs:
                raise ValueError(
                    f"continual: the cell's input {key!r} (classes {classes}) is missing"
                )
            step_real = real.subset(classes)
            draw = draw_generator(cell["eval_seed"], job.ipc, "continual", key)
            x, y = job.inputs[key].materialise(job.ipc, step_real, draw)
            y = select_labels(y, "hard")
            if not set(y.tolist()) <= set(classes):
                raise ValueError(f"continual: the memory of {key} holds classes beyond {classes}")
            xs.append(x)
            ys.append(y)
        seen = tuple(c for classes in memory.values() for c in classes)
        # a learned lr of the step distillates (from_files with MTT's syn_lr) replaces the recipe's
        recipe = artifact_recipe(Recipe.of(params), *(job.inputs[key] for key in memory))
        stats: dict[str, float] = {}
        top1 = fit_and_test(
            params.arch,
            real.subset(seen),
            torch.cat(xs),
            torch.cat(ys),
            recipe,
            cell["eval_seed"],
            ctx.device,
            stats=stats,
        )
        return [
            {
                "arch": params.arch,
                "eval_seed": cell["eval_seed"],
                "step": cell["step"],
                "split": split,
                "metric": metric,
                "value": value,
                "higher_is_better": metric == "top1",
            }
            for split, metric, value in [
                *[(split, "top1", value) for split, value in top1.items()],
                *[("test", metric, value) for metric, value in path_metrics(stats).items()],
            ]
        ]

    def reduce(self, rows: list[dict[str, Any]], params: ContinualParams) -> list[dict[str, Any]]:
        """Per run and split: mean top1 over the steps and top1 after the last step (runs
        missing a step are left out)."""
        curves: dict[tuple[int, str], dict[int, float]] = {}
        for row in rows:
            if row["metric"] == "top1" and row["step"] is not None:
                curves.setdefault((row["eval_seed"], row["split"]), {})[row["step"]] = row["value"]
        out = []
        for (eval_seed, split), curve in sorted(curves.items()):
            if len(curve) < params.steps:
                continue
            for metric, value in (
                ("avg_inc_top1", sum(curve.values()) / len(curve)),
                ("top1", curve[params.steps - 1]),
            ):
                out.append(
                    {
                        "eval_seed": eval_seed,
                        "split": split,
                        "metric": metric,
                        "value": value,
                        "higher_is_better": True,
                    }
                )
        return out
