"""Shared machinery of the NAS evaluators (`nas720`, `nas_bench_201`): rank architectures with a
distillate and compare the ranking with the one training on the whole train split gives.

A NAS evaluator's cells are candidate architectures (`{"arch": name, ...}`). Each cell
1. trains the candidate on the distillate (the *proxy*) `seeds` times for `epochs` epochs with the
   shared recipe (`ddbench.fit`; image sets as they are, generators one fixed draw per eval seed)
   -> rows `proxy_top1` (val and test, one per eval seed), `proxy_seconds` and the execution
   path's rows (`precision_bits`: 16 = bf16, 32 = fp32, and the rest of `ddbench.fastpath`'s);
2. reads or computes the candidate's *whole-set reference*: the candidate trained on the whole
   train split for `whole_set_epochs` (eval seed `whole_set_seed`) -> rows `whole_top1` (val,
   test) and `whole_seconds`. It is a reference result shared by every method: cached as
   `<ctx.cache_dir>/nas/<key>.json`, the key a content hash of (kind, dataset name, train-split
   digest, architecture and options, recipe, seed, `CACHE_VERSION`), written atomically; two
   racing cells both compute it and one file wins (with the same numbers). Without a cache dir
   (unit tests) it is computed every time;
3. with `early_stop`, the *early-stopping baseline*: the candidate trained on the whole train
   split with the proxy's iteration budget, `epochs x ceil(ipc x classes / batch_size)` SGD steps
   of `batch_size` whole-set images (seeded reshuffled passes, lr x0.1 at half the steps), ->
   rows `early_stop_top1` (val, test) and `early_stop_seconds`. It depends on the IPC but not on
   the method, so it is cached like 2 and shared by every method at that IPC.

`reduce` ranks the candidates on `val` only (proxy: mean over eval seeds) and writes job rows:
- `spearman_rho`, `kendall_tau` (split `val`): rank correlation between proxy and whole-set val
  top1 over all candidates (scipy; ties get average ranks / tau-b);
- `top20_spearman_rho` (`val`): the same over the best 20 % of the candidates by whole-set val
  top1 (ceil(0.2 n), at least 2): whether the proxy orders the architectures a search is after,
  where a correlation over all of them is dominated by telling good from broken ones;
- `selected_test_top1` (`test`): whole-set test top1 of the candidate with the best proxy val
  top1 (ties: the alphabetically first name) — what the search delivers;
- `oracle_test_top1` (`test`): the same for the best whole-set val candidate (the ceiling);
- `early_stop_spearman_rho`, `early_stop_kendall_tau`, `early_stop_top20_spearman_rho`,
  `early_stop_selected_test_top1`: the same with the early-stopping baseline as the proxy;
- `num_candidates` (`val`): how many candidates were ranked;
- `proxy_search_seconds`, `whole_search_seconds`, `early_stop_search_seconds` (`test`, lower is
  better): training time summed over the candidates (cached results keep the seconds measured
  when they were computed). Storage: every row carries the distillate's `artifact_bytes`.
A metric that is undefined (fewer than 2 candidates, a constant ranking) is left out.

Adding a search space: subclass `NasEvaluator` with a `Params` deriving from `NasParams`,
`cells(params)` returning `{"arch": name, ...}` dicts and `candidate(cell, params)` returning the
`ddbench.archs` name and its options; override `reference` to take the whole-set numbers from
elsewhere (`nas_bench_201` reads a benchmark file).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import Field

from ddbench.context import Context
from ddbench.data import RealData
from ddbench.evals import EvalJob, EvalParams, Evaluator
from ddbench.fit import Recipe, fit_and_test, fit_artifact
from ddbench.schema import WHOLE_SPLIT_IPC, to_json
from ddbench.seeding import content_hash, derive_seed
from ddbench.storage import atomic_write
from ddbench.teacher import data_digest

PROXY, WHOLE, EARLY_STOP = "proxy_top1", "whole_top1", "early_stop_top1"
CACHE_VERSION = 1  # bump when a cached reference computed by this code would differ
TOP_FRACTION = 0.2  # `top20_spearman_rho` ranks the best 20 % by whole-set val top1
Result = dict[str, float]  # {"val": top1, "test": top1, "seconds": training time}


class NasParams(EvalParams, Recipe):
    epochs: int = Field(200, ge=1)  # proxy epochs on the distillate (NAS protocol: 200)
    whole_set_epochs: int = Field(100, ge=1)  # epochs of the whole-set reference (protocol: 100)
    seeds: int = Field(1, ge=1)  # proxy models per candidate; ranking uses their mean val top1
    # eval seed of the whole-set and early-stopping models: one model per candidate, as in the
    # protocol (whole-set training varies far less with the seed than a 10-image proxy does)
    whole_set_seed: int = 0
    # also train the early-stopping baseline (whole set, the proxy's number of SGD steps)
    early_stop: bool = True


def cached_result(
    cache_dir: str | None, payload: dict[str, Any], compute: Callable[[], Result]
) -> Result:
    """`compute()`, stored under `cache_dir/nas/` by the content hash of `payload` and read
    back from there when present (see the module docstring)."""
    if cache_dir is None:
        return compute()
    key = content_hash(to_json({"version": CACHE_VERSION, **payload}))
    path = Path(cache_dir) / "nas" / f"{key}.json"
    if path.is_file():
        return json.loads(path.read_text())["result"]
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: p.write_text(to_json({"payload": payload, "result": result})))
    return result


def train_whole_set(
    arch: str,
    options: dict[str, Any],
    real: RealData,
    recipe: Recipe,
    seed: int,
    device: str,
    steps: int | None = None,
) -> Result:
    """Train `arch` on the whole train split: `recipe.epochs` epochs, or, with `steps`, that many
    SGD steps of `recipe.batch_size` images drawn in seeded reshuffled passes (the lr drops at
    half the steps). Returns val / test top1 and the seconds it took."""
    tic = time.perf_counter()
    if steps is None:
        top1 = fit_and_test(arch, real, real.train_x, real.train_y, recipe, seed, device, options)
    else:
        n = len(real.train_y)
        batch = min(recipe.batch_size, n)
        gen = torch.Generator().manual_seed(derive_seed(seed, "early_stop_order"))
        passes = math.ceil(steps * batch / n)
        order = torch.cat([torch.randperm(n, generator=gen) for _ in range(passes)])

        def one_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
            idx = order[step * batch : (step + 1) * batch]
            return real.train_x[idx], real.train_y[idx]

        unused = torch.empty(0)  # train_model takes each step's batch from `one_batch`
        steps_recipe = recipe.model_copy(update={"epochs": steps})  # one step per "epoch"
        top1 = fit_and_test(
            arch, real, unused, unused, steps_recipe, seed, device, options, data_source=one_batch
        )
    return {**top1, "seconds": time.perf_counter() - tic}


def _row(
    arch: str | None,
    seed: int | None,
    split: str,
    metric: str,
    value: float,
    higher_is_better: bool = True,
) -> dict[str, Any]:
    return {
        "arch": arch,
        "eval_seed": seed,
        "split": split,
        "metric": metric,
        "value": float(value),
        "higher_is_better": higher_is_better,
    }


def _accuracy_rows(arch: str, seed: int, metric: str, result: Result) -> list[dict[str, Any]]:
    return [_row(arch, seed, split, metric, result[split]) for split in ("val", "test")]


def ranking_rows(
    prefix: str, proxy: dict[str, float], whole_val: dict[str, float], whole_test: dict[str, float]
) -> list[dict[str, Any]]:
    """Correlations of `proxy` with `whole_val` and the selected candidate's whole-set test top1
    (metric names get `prefix`); candidates are the keys of `proxy`."""
    from scipy.stats import ConstantInputWarning, kendalltau, spearmanr

    names = sorted(proxy)
    if len(names) < 2:
        return []
    best = sorted(names, key=lambda n: (-whole_val[n], n))
    top = best[: max(2, math.ceil(TOP_FRACTION * len(names)))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantInputWarning)
        values = {
            "spearman_rho": spearmanr([proxy[n] for n in names], [whole_val[n] for n in names]),
            "kendall_tau": kendalltau([proxy[n] for n in names], [whole_val[n] for n in names]),
            "top20_spearman_rho": spearmanr([proxy[n] for n in top], [whole_val[n] for n in top]),
        }
    rows = [
        _row(None, None, "val", prefix + metric, result.statistic)
        for metric, result in values.items()
        if math.isfinite(result.statistic)
    ]
    selected = min(names, key=lambda n: (-proxy[n], n))
    rows.append(_row(None, None, "test", prefix + "selected_test_top1", whole_test[selected]))
    return rows


class NasEvaluator(Evaluator):
    """Cells = candidate architectures; see the module docstring."""

    Params: ClassVar[type[EvalParams]] = NasParams
    primary_metric: ClassVar[str] = PROXY  # the metric of a failed cell's row (ddbench.runner)

    def candidate(self, cell: dict[str, Any], params: Any) -> tuple[str, dict[str, Any]]:
        """The `ddbench.archs` name and builder options of a cell's candidate."""
        raise NotImplementedError

    def _cached_training(
        self,
        kind: str,
        cell: dict[str, Any],
        job: EvalJob,
        params: NasParams,
        ctx: Context,
        recipe: Recipe,
        steps: int | None = None,
    ) -> Result:
        arch, options = self.candidate(cell, params)
        payload = {
            "kind": kind,
            "dataset": job.real.name,
            "data": data_digest(job.real),
            "arch": arch,
            "options": options,
            "recipe": recipe.model_dump(mode="json"),
            "seed": params.whole_set_seed,
            "steps": steps,
        }
        return cached_result(
            ctx.cache_dir,
            payload,
            lambda: train_whole_set(
                arch, options, job.real, recipe, params.whole_set_seed, ctx.device, steps
            ),
        )

    def reference(
        self, cell: dict[str, Any], job: EvalJob, params: NasParams, ctx: Context
    ) -> Result:
        """The candidate's whole-set val / test top1 (and seconds, when measured here)."""
        recipe = Recipe.of(params, epochs=params.whole_set_epochs)
        return self._cached_training("whole_set", cell, job, params, ctx, recipe)

    def run(
        self, cell: dict[str, Any], job: EvalJob, params: NasParams, ctx: Context
    ) -> list[dict[str, Any]]:
        name = cell["arch"]
        arch, options = self.candidate(cell, params)
        # the whole_dataset method (ipc 0) trains as the reference does, as in cross_arch
        epochs = params.whole_set_epochs if job.ipc == WHOLE_SPLIT_IPC else params.epochs
        recipe = Recipe.of(params, epochs=epochs)
        rows: list[dict[str, Any]] = []
        tic = time.perf_counter()
        path: dict[str, float] = {}
        for seed in range(params.seeds):
            top1, path = fit_artifact(
                arch, job.artifact, job.ipc, job.real, recipe, seed, "fixed", ctx.device, options
            )
            rows += _accuracy_rows(name, seed, PROXY, top1)
        seconds = time.perf_counter() - tic
        rows.append(_row(name, None, "test", "proxy_seconds", seconds, higher_is_better=False))
        for metric, value in path.items():  # the proxy runs' execution path (the last seed's)
            rows.append(_row(name, None, "test", metric, value, higher_is_better=False))
        whole = self.reference(cell, job, params, ctx)
        rows += _accuracy_rows(name, params.whole_set_seed, WHOLE, whole)
        if "seconds" in whole:
            rows.append(_row(name, None, "test", "whole_seconds", whole["seconds"], False))
        if params.early_stop:
            size = job.ipc * len(job.real.classes) if job.ipc > 0 else len(job.real.train_y)
            steps = epochs * math.ceil(size / params.batch_size)
            early = self._cached_training("early_stop", cell, job, params, ctx, recipe, steps)
            rows += _accuracy_rows(name, params.whole_set_seed, EARLY_STOP, early)
            rows.append(_row(name, None, "test", "early_stop_seconds", early["seconds"], False))
        return rows

    def reduce(self, rows: list[dict[str, Any]], params: NasParams) -> list[dict[str, Any]]:
        sums: dict[tuple[str, str, str], list[float]] = {}
        for row in rows:
            if row.get("arch") is not None:
                key = (row["arch"], row["metric"], row["split"])
                sums.setdefault(key, []).append(row["value"])
        mean = {key: sum(v) / len(v) for key, v in sums.items()}

        def by_arch(metric: str, split: str) -> dict[str, float]:
            return {a: v for (a, m, s), v in mean.items() if m == metric and s == split}

        whole_val, whole_test = by_arch(WHOLE, "val"), by_arch(WHOLE, "test")
        ranked = {a: v for a, v in by_arch(PROXY, "val").items() if a in whole_val}
        if not ranked:
            return []
        out = ranking_rows("", ranked, whole_val, whole_test)
        early = {a: v for a, v in by_arch(EARLY_STOP, "val").items() if a in whole_val}
        out += ranking_rows("early_stop_", early, whole_val, whole_test)
        oracle = min(whole_val, key=lambda n: (-whole_val[n], n))
        out.append(_row(None, None, "test", "oracle_test_top1", whole_test[oracle]))
        out.append(_row(None, None, "val", "num_candidates", len(ranked)))
        for kind in ("proxy", "whole", "early_stop"):
            seconds = by_arch(f"{kind}_seconds", "test")
            if seconds:
                total = sum(seconds.values())
                out.append(_row(None, None, "test", f"{kind}_search_seconds", total, False))
        return out
