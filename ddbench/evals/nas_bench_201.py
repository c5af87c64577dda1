"""`nas_bench_201`: rank NAS-Bench-201 cells with a distillate (docs/protocols.md#nas-bench-201).

`samples` cells (default 100) are drawn from the 15,625 of the space with the named stream
`derive_seed(sample_seed, "nas_bench_201", "samples")`, de-duplicated up to dead edges
(`ddbench.archs.nb201.canonical`), so no two candidates compute the same function. Each is the
benchmark's macro skeleton (`ddbench.archs.nb201.NB201Net`, the architecture `nb201`: C = `width`,
N = `cells_per_stage`) around the cell; one eval cell per candidate, the rows' `arch` is the cell
string (`|nor_conv_3x3~0|+|...|`). The proxy trains `seeds` models (default 5) and ranks by their
mean val top1.

Ground truth (`whole_top1`):
- with `benchmark_file`, the benchmark's own 200-epoch results for the cell: val top1 from its
  `cifar10-valid` split (`cifar100`: its x-valid split), test top1 from `cifar10` (`cifar100`:
  x-test), read with the NATS-Bench API (`pip install nats_bench`, topology space `tss`; the older
  `nas-bench-201` package's `NASBench201API` is used when only that one is installed). Only for
  datasets the benchmark covers (`cifar10`, `cifar100`); looked-up numbers are cached like
  trained ones, so the file is opened once per node and run;
- otherwise ddbench trains every candidate on the whole train split itself (cached and shared by
  every method, `ddbench.evals._nas`).
Rows, the early-stopping baseline and `reduce`'s metrics are those of `ddbench.evals._nas`.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from pydantic import Field, PositiveInt

from ddbench.archs.nb201 import SPACE_SIZE, sample_archs
from ddbench.context import Context
from ddbench.errors import UserError
from ddbench.evals import EvalJob, register_eval
from ddbench.evals._nas import NasEvaluator, NasParams, Result, cached_result

# ddbench dataset -> (benchmark dataset of the val top1, of the test top1)
BENCHMARK_DATASETS = {"cifar10": ("cifar10-valid", "cifar10"), "cifar100": ("cifar100", "cifar100")}
BENCHMARK_EPOCHS = "200"  # the benchmark's full-training results (its `hp`)


class NasBench201Params(NasParams):
    seeds: int = Field(5, ge=1)  # proxy models per cell (protocol: 5), ranked by mean val top1
    samples: int = Field(100, ge=1, le=SPACE_SIZE)  # cells ranked (protocol: 100)
    sample_seed: int = 0  # names the sampling stream, so every method ranks the same cells
    width: PositiveInt = 16  # C, channels of the first stage (NAS-Bench-201: 16)
    cells_per_stage: PositiveInt = 5  # N, cells in each of the 3 stages (NAS-Bench-201: 5)
    # a local NAS-Bench-201 / NATS-Bench (tss) file or directory: ground truth from it instead of
    # ddbench's own whole-set training (needs `pip install nats_bench`)
    benchmark_file: str | None = None


@functools.lru_cache(maxsize=2)
def load_benchmark(path: str) -> Any:
    """The benchmark API over `path` (opened once per process: the file is large)."""
    if not Path(path).exists():
        raise UserError(f"benchmark_file {path!r} does not exist")
    try:
        from nats_bench import create
    except ImportError:
        try:
            from nas_201_api import NASBench201API
        except ImportError:
            raise UserError(
                "benchmark_file needs the NATS-Bench API: `pip install nats_bench` "
                "(or the older `pip install nas-bench-201`)"
            ) from None
        return NASBench201API(path, verbose=False)
    return create(path, "tss", fast_mode=True, verbose=False)


def benchmark_result(path: str, arch: str, dataset: str) -> Result:
    """The benchmark's 200-epoch val / test top1 of cell `arch` on `dataset`, as fractions."""
    if dataset not in BENCHMARK_DATASETS:
        raise UserError(
            f"NAS-Bench-201 has no results for dataset {dataset!r} "
            f"(it covers {', '.join(BENCHMARK_DATASETS)}); drop benchmark_file to train instead"
        )
    api = load_benchmark(path)
    index = api.query_index_by_arch(arch)
    if index is None or index < 0:
        raise UserError(f"cell {arch!r} is not in the benchmark file {path!r}")
    val_set, test_set = BENCHMARK_DATASETS[dataset]

    def info(split_set: str) -> dict[str, float]:
        return api.get_more_info(index, split_set, hp=BENCHMARK_EPOCHS, is_random=False)

    return {
        "val": info(val_set)["valid-accuracy"] / 100.0,
        "test": info(test_set)["test-accuracy"] / 100.0,
    }


@register_eval
class NasBench201(NasEvaluator):
    """Rank sampled NAS-Bench-201 cells: proxy vs whole-set (or benchmark) val accuracy."""

    name = "nas_bench_201"
    version = 1
    Params = NasBench201Params
    # seconds on digits: a few tiny networks (C = 4, one cell per stage), one proxy seed
    smoke = {
        "epochs": 5,
        "whole_set_epochs": 1,
        "seeds": 1,
        "samples": 4,
        "width": 4,
        "cells_per_stage": 1,
    }

    def cells(self, device: str, params: NasBench201Params) -> list[dict[str, Any]]:
        return [{"arch": arch} for arch in sample_archs(params.samples, params.sample_seed)]

    def candidate(
        self, cell: dict[str, Any], params: NasBench201Params
    ) -> tuple[str, dict[str, Any]]:
        options = {
            "genotype": cell["arch"],
            "width": params.width,
            "cells_per_stage": params.cells_per_stage,
        }
        return "nb201", options

    def reference(
        self, cell: dict[str, Any], job: EvalJob, params: NasBench201Params, ctx: Context
    ) -> Result:
        if params.benchmark_file is None:
            return super().reference(cell, job, params, ctx)
        path = str(Path(params.benchmark_file).expanduser().resolve())
        payload = {"kind": "benchmark", "file": path, "arch": cell["arch"], "dataset": job.dataset}
        return cached_result(
            ctx.cache_dir, payload, lambda: benchmark_result(path, cell["arch"], job.dataset)
        )
