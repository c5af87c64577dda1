"""Evaluation-training throughput of ConvNet-3 against this machine's matmul peaks.

Measures, side by side in one run (so ratios share the machine's load), the training step of the
shared recipe (`ddbench.fit.train_step_fn`: per-sample DSA, forward, loss, backward, SGD with
momentum and weight decay) of DC's ConvNet-3 (width 128, instance norm) on 3x32x32 batches of
10, 100 and 256 images, for these paths:

- `fp32`: fp32 eager (the reference); `bf16`: bf16 autocast;
- `fp32_cl` / `bf16_cl`: the same in channels-last memory format;
- `fp32_mb` / `bf16_mb`: the same in micro-batches of `ddbench.fastpath.MICRO_BATCH_ROWS`
  images, gradients accumulated (at batches larger than that);
- `compiled`: `torch.compile` of the model at the default precision (its first step, which
  compiles, is reported as `compile_s`);
- `default`: what `precision: auto, compile: auto` resolve to on this device for 1000 epochs
  of one such batch (`ddbench.fastpath.choose_setup`, which calibrates the step on this device
  and caches its measurements; timed once more here, with the others, if equal to another
  path);
- `vmap_k8` against `seq_k8`: K = 8 seeds (`--k`) trained at once
  (`ddbench.fit_vmap.train_vectorised`) against 8 sequential `ddbench.fit.train_model` runs,
  both through the real loops, at the default precision (figures per model step: K x steps).

The configurations are timed in interleaved rounds (every round times each path once; the median
over rounds is reported), so a change of machine load hits them all alike. FLOPs per step are
counted with `torch.utils.flop_counter.FlopCounterMode` (forward + backward of the network;
DSA and SGD are not counted), achieved GFLOP/s = counted FLOPs / step time. The fp32 and bf16
peaks are measured in the same run (square `torch.mm`, best of `--rounds` x 3), and each path's
GFLOP/s is given as a fraction of both; the reference peaks of
docs/architecture.md#measured-on-one-machine (230 / 1,080 GFLOP/s on 2 threads) are in the JSON
line. On a GPU (`--device cuda`, the default when one is present) it runs as is.

    python benchmarks/eval_throughput.py                           # everything, ~10 min on 2 CPUs
    python benchmarks/eval_throughput.py --batches 256 --rounds 3 --compile-batches --no-vmap

The final JSON line holds every figure, with `default_speedup_vs_fp32` (default path over fp32
eager at batch 256; `default_speedup_vs_fp32_by_batch` at every batch) and
`bf16_peak_fraction` (the default path's GFLOP/s at batch 256 over the measured bf16 matmul
peak). Extending: add a path as one more `TrainSetup` in `step_setups`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

# GFLOP/s, torch.mm, 2 threads, docs/architecture.md#measured-on-one-machine
REFERENCE_PEAKS = {"fp32": 230.0, "bf16": 1080.0}
SHAPE = (3, 32, 32)  # CIFAR-shaped images: ConvNet-3 at its native resolution
CLASSES = 10  # CIFAR-10's classes (the classifier's output size)
DATASET = "cifar10"  # names the DSA strategy (the full default strategy, with flips)
DEFAULT_EPOCHS = 1000  # the recipe's epochs, for what `compile: auto` decides


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _seconds(fn: Callable[[], object], device: str, repeat: int = 1) -> float:
    """Wall seconds of `repeat` calls of `fn`, divided by `repeat`."""
    _sync(device)
    tic = time.perf_counter()
    for _ in range(repeat):
        fn()
    _sync(device)
    return (time.perf_counter() - tic) / repeat


def matmul_peak(dtype_name: str, device: str, size: int, rounds: int) -> float:
    """GFLOP/s of a square `torch.mm` of side `size`: the best of `rounds` after a warm-up (a
    peak, so the least disturbed call on a shared machine)."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device, dtype)
    b = torch.randn(size, size, generator=gen).to(device, dtype)
    _seconds(lambda: torch.mm(a, b), device)
    times = [_seconds(lambda: torch.mm(a, b), device) for _ in range(rounds)]
    return 2 * size**3 / min(times) / 1e9


def step_flops(model: Any, batch: int) -> int:
    """FLOPs of one forward + backward of `model` on a batch of `batch` images."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(batch, *SHAPE)
    y = torch.zeros(batch, dtype=torch.long)
    counter = FlopCounterMode(display=False)
    with counter:
        F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def default_setup(device: str, batch: int) -> Any:
    """What the recipe's `auto` choices resolve to for 1000 epochs of `batch` images."""
    import torch

    from ddbench.archs import build_arch
    from ddbench.fastpath import choose_setup
    from ddbench.fit import Recipe

    recipe = Recipe(epochs=DEFAULT_EPOCHS)
    torch.manual_seed(0)
    model = build_arch("convnet", SHAPE[0], CLASSES, SHAPE[1])
    choice = choose_setup(recipe, "convnet", model, SHAPE, CLASSES, DATASET, batch, 1000, device)
    return choice.setup


def step_setups(device: str, batch: int) -> dict[str, Any]:
    """The single-model paths timed at `batch`, by name (module docstring)."""
    import dataclasses

    from ddbench.fastpath import MICRO_BATCH_ROWS, TrainSetup

    default = default_setup(device, batch)
    setups = {
        "fp32": TrainSetup("fp32", channels_last=False, compile=False),
        "bf16": TrainSetup("bf16", channels_last=False, compile=False),
        "fp32_cl": TrainSetup("fp32", channels_last=True, compile=False),
        "bf16_cl": TrainSetup("bf16", channels_last=True, compile=False),
    }
    if batch > MICRO_BATCH_ROWS:
        for precision in ("fp32", "bf16"):
            setups[f"{precision}_mb"] = TrainSetup(precision, False, False, MICRO_BATCH_ROWS)
    setups["compiled"] = dataclasses.replace(default, compile=True)
    return {**setups, "default": default}


def time_steps(
    batch: int, device: str, rounds: int, steps: int, names: list[str]
) -> tuple[dict[str, float], float | None]:
    """Median seconds per step of each named path at `batch`, interleaved; compile seconds."""
    import torch

    from ddbench.archs import build_arch
    from ddbench.fastpath import train_step_fn
    from ddbench.fit import Recipe

    torch.manual_seed(0)
    model = build_arch("convnet", SHAPE[0], CLASSES, SHAPE[1])
    setups = step_setups(device, batch)
    same = {name: next(n for n in names if setups[n] == setups[name]) for name in names}
    fns = {
        name: train_step_fn(model, SHAPE, CLASSES, DATASET, Recipe(), batch, device, setups[name])
        for name in names
        if same[name] == name  # a path identical to an earlier one is timed once
    }
    compile_s = None
    for name, fn in fns.items():  # warm-up; the compiled path compiles here
        seconds = _seconds(fn, device)
        if setups[name].compile:
            compile_s = seconds
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(_seconds(fn, device, steps))
    return {name: statistics.median(times[same[name]]) for name in names}, compile_s


def time_vmap(batch: int, device: str, rounds: int, steps: int, k: int) -> dict[str, float]:
    """Seconds per step of K models: sequential `train_model` runs vs one vectorised run."""
    import torch

    from ddbench.archs import build_arch
    from ddbench.fit import Recipe, train_model
    from ddbench.fit_vmap import train_vectorised

    gen = torch.Generator().manual_seed(0)
    x = torch.randn((batch, *SHAPE), generator=gen)
    y = torch.randint(CLASSES, (batch,), generator=gen)
    recipe = Recipe(epochs=steps, batch_size=batch, compile="off")  # one step per epoch

    def models() -> list[Any]:
        torch.manual_seed(0)
        return [build_arch("convnet", SHAPE[0], CLASSES, SHAPE[1]) for _ in range(k)]

    def sequential() -> None:
        for seed, model in enumerate(models()):
            train_model(model, x, y, recipe, DATASET, seed, device, arch="convnet")

    def vectorised() -> None:
        train_vectorised(models(), [(x, y)] * k, recipe, DATASET, list(range(k)), device, "convnet")

    warm = recipe.model_copy(update={"epochs": 1})
    train_vectorised(models()[:2], [(x, y)] * 2, warm, DATASET, [0, 1], device, "convnet")
    times: dict[str, list[float]] = {f"seq_k{k}": [], f"vmap_k{k}": []}
    for _ in range(rounds):
        times[f"seq_k{k}"].append(_seconds(sequential, device) / steps)
        times[f"vmap_k{k}"].append(_seconds(vectorised, device) / steps)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cuda = torch.cuda.is_available()
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count())  # torch CPU threads
    parser.add_argument("--batches", type=int, nargs="+", default=[10, 100, 256])  # images/step
    parser.add_argument("--rounds", type=int, default=5)  # interleaved rounds (median taken)
    parser.add_argument("--steps", type=int, default=3)  # steps per path per round
    # batches at which the compiled path is timed (each compiles anew: ~1 min on this CPU)
    parser.add_argument("--compile-batches", type=int, nargs="*", default=[10, 100, 256])
    parser.add_argument("--no-vmap", action="store_true")  # skip the K-seed comparison
    # vmap batches: K=8 at batch 256 needs 10-17 GB here
    # (docs/architecture.md#measured-on-one-machine), too much on a shared 24 GB machine, so it
    # is left out unless asked
    parser.add_argument("--vmap-batches", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--k", type=int, default=8)  # seeds vectorised together
    parser.add_argument("--peak-size", type=int, default=2048)  # side of the peak matmul
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from ddbench.archs import build_arch

    device = args.device
    load_before = os.getloadavg()
    peaks = {p: matmul_peak(p, device, args.peak_size, 3 * args.rounds) for p in ("fp32", "bf16")}
    torch.manual_seed(0)
    counting_model = build_arch("convnet", SHAPE[0], CLASSES, SHAPE[1])
    results: list[dict[str, Any]] = []
    compile_s: dict[int, float | None] = {}
    for batch in args.batches:
        flops = step_flops(counting_model, batch)
        setups = step_setups(device, batch)
        names = [n for n in setups if n != "compiled" or batch in args.compile_batches]
        seconds, compile_s[batch] = time_steps(batch, device, args.rounds, args.steps, names)
        if not args.no_vmap and batch in args.vmap_batches:
            seconds |= time_vmap(batch, device, args.rounds, args.steps, args.k)
        for name, sec in seconds.items():
            models = args.k if name.startswith(("seq_k", "vmap_k")) else 1
            gflops = models * flops / sec / 1e9
            results.append(
                {
                    "batch": batch,
                    "path": name,
                    "ms_per_step": round(1000 * sec, 2),
                    "model_steps_per_s": round(models / sec, 3),
                    "gflops": round(gflops, 1),
                    "fp32_peak_fraction": round(gflops / peaks["fp32"], 3),
                    "bf16_peak_fraction": round(gflops / peaks["bf16"], 3),
                    "vs_fp32": round(seconds["fp32"] * models / sec, 2),
                }
            )
    defaults = {batch: default_setup(device, batch).__dict__ for batch in args.batches}
    print(f"device {device}, {args.threads} threads, load average {load_before} at start")
    print(f"matmul peaks (GFLOP/s): fp32 {peaks['fp32']:.0f}, bf16 {peaks['bf16']:.0f}")
    print(f"default path per batch (1000 epochs of one batch): {defaults}")
    print(
        "| batch | path | ms/step | model steps/s | GFLOP/s | of fp32 peak | of bf16 peak | ×fp32 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['batch']} | {r['path']} | {r['ms_per_step']} | {r['model_steps_per_s']} "
            f"| {r['gflops']} | {r['fp32_peak_fraction']} | {r['bf16_peak_fraction']} "
            f"| {r['vs_fp32']} |"
        )
    at_256 = {r["path"]: r for r in results if r["batch"] == max(args.batches)}
    summary = {
        "device": device,
        "threads": args.threads,
        "load_average_start": load_before,
        "load_average_end": os.getloadavg(),
        "peaks_gflops": {k: round(v, 1) for k, v in peaks.items()},
        "reference_peaks_gflops": REFERENCE_PEAKS,
        "default_setup": defaults,
        "compile_s": compile_s,
        "results": results,
        "vmap_vs_sequential": {
            r["batch"]: round(r["model_steps_per_s"] / seq["model_steps_per_s"], 2)
            for r in results
            for seq in results
            if r["path"] == f"vmap_k{args.k}"
            and seq["path"] == f"seq_k{args.k}"
            and seq["batch"] == r["batch"]
        },
        "default_speedup_vs_fp32": at_256["default"]["vs_fp32"],
        "default_speedup_vs_fp32_by_batch": {
            r["batch"]: r["vs_fp32"] for r in results if r["path"] == "default"
        },
        "bf16_peak_fraction": at_256["default"]["bf16_peak_fraction"],
        "bf16_reference_peak_fraction": round(at_256["default"]["gflops"] / 1080.0, 3),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
