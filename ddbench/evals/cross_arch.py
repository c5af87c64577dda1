"""`cross_arch`: train each architecture from scratch on the distillate, report top1.

Cells are (arch, eval_seed). Each trains one network with the shared recipe of `fit.py` and
writes top1 on the val and test splits. The whole-dataset reference (`whole_dataset` method,
ipc 0) is trained for `whole_set_epochs` instead of `epochs`, since a full split needs far
fewer passes than a ten-image set.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from ddbench.context import Context
from ddbench.evals import EvalJob, EvalParams, Evaluator, register_eval
from ddbench.fit import Recipe, fit_and_test


class CrossArchParams(EvalParams, Recipe):
    archs: list[str] = Field(default_factory=lambda: ["convnet"], min_length=1)  # registry names
    seeds: int = Field(5, ge=1)  # models per (method, ipc, arch): DC protocol uses >= 5
    whole_set_epochs: int = Field(100, ge=1)  # full-split training (NAS protocol: 100 epochs)

    @field_validator("archs")
    @classmethod
    def _known_archs(cls, archs: list[str]) -> list[str]:
        from ddbench.archs import ARCHS

        for name in archs:
            ARCHS.get(name)  # raises with a did-you-mean suggestion
        return archs


@register_eval
class CrossArch(Evaluator):
    name = "cross_arch"
    version = 1
    Params = CrossArchParams
    smoke = {"epochs": 20, "seeds": 2, "whole_set_epochs": 3}  # seconds per cell on digits

    def cells(self, params: CrossArchParams) -> list[dict[str, Any]]:
        return [{"arch": a, "eval_seed": s} for a in params.archs for s in range(params.seeds)]

    def run(
        self, cell: dict[str, Any], job: EvalJob, params: CrossArchParams, ctx: Context
    ) -> list[dict[str, Any]]:
        recipe = Recipe(**{k: getattr(params, k) for k in Recipe.model_fields})
        if job.ipc == 0:
            recipe = recipe.model_copy(update={"epochs": params.whole_set_epochs})
        x, y = job.artifact.materialise(job.ipc, job.real, ctx.rng("materialise"))
        top1 = fit_and_test(cell["arch"], job.real, x, y, recipe, cell["eval_seed"], ctx.device)
        return [
            {
                "arch": cell["arch"],
                "eval_seed": cell["eval_seed"],
                "split": split,
                "metric": "top1",
                "value": value,
                "higher_is_better": True,
            }
            for split, value in top1.items()
        ]
