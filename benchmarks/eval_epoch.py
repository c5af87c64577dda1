"""The evaluation epoch against the official code's: seconds per epoch and final accuracy.

What is timed is the training of an evaluation model on a distilled set: DC's ConvNet-3 (width
128, instance norm) on IPC x 10 images with DSA, SGD lr 0.01 / momentum 0.9 / weight decay 5e-4,
batch 256, the lr cut x0.1 at half the epochs. Each run is a fresh child process:

- `ddbench`, in each `--precisions` setting: `ddbench.fit.train_model` with the shared recipe:
  `auto` = `precision: auto, compile: auto`, resolved by the run's own calibration (included in
  the time); `fp32_auto` = `precision: fp32, compile: auto`, the fp32 paths calibrated (layout,
  micro-batches, compiling: what `auto` resolves to on a device whose bf16 is emulated, less
  the time of measuring bf16 there); `fp32` = fp32 eager forced, the reference path;
- `official` (`--official-dc DIR`, a checkout of VICO-UoE/DatasetCondensation; nothing of theirs
  is in this repo): their `utils.evaluate_synset` as written (their `get_network('ConvNet')`,
  `epoch`, `DiffAugment` with `ParamDiffAug()`), with the shim `distill_speed.py` describes for
  their siamese DSA's overlapping write on today's torch.

Two data sets, `--data`:
- `cifar` (the speed figure): CIFAR-shaped random tensors (3x32x32, `distill_speed._random_cifar`),
  DSA strategy `color_crop_cutout_flip_scale_rotate` (DC's for CIFAR-10); seconds per epoch =
  the whole training call's wall time / epochs (ddbench's calibration and any compile
  included; the process's one-time imports are done before the clock starts, on both sides);
- `digits` (the accuracy figure): 10 real training images per class of scikit-learn's digits
  (drawn with a named seed), each model scored on the **val split**; strategy
  `color_crop_cutout_scale_rotate` (ddbench's for digits) on both sides. The two ConvNets differ
  on 1-channel 8 px input: DC's pads the first convolution by 3 for any 1-channel input (8 ->
  12 -> 6 -> 3 -> 1), ddbench's only at 28 px, MNIST's size, where DC's code means it (8 -> 4 ->
  2 -> 1; `ddbench.archs.dc`). `digits_rgb` (the same images on 3 channels) gives both sides
  the same network, so it compares the training loops alone.

Each configuration runs `--seeds` times (ddbench's eval seeds 0..n-1; the official code seeds
its network and DSA from the clock), interleaved round by round so machine load hits all alike.
After training, each run also times a test pass over `--test-images` CIFAR-shaped random images
(the trained model's forward without gradient; ddbench: `fit.accuracy` at the batch
`fastpath.choose_test_batch` measures, its calibration included on a cold cache; official: their
`epoch('test', ...)` over a loader of batch 256, as their scripts build it).
The last line printed is JSON: per configuration the median seconds per epoch and of the test
pass, mean val top-1, and `official_over_<precision>` (`_test`) = official seconds per epoch
(test pass) / ddbench's (above 1: ddbench is faster).

    python benchmarks/eval_epoch.py --official-dc /tmp/DatasetCondensation --data cifar
    python benchmarks/eval_epoch.py --official-dc /tmp/DatasetCondensation --data digits --seeds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

IPC = 10  # images per class of the evaluated set: the IPC the speed goal names
# the dataset each `--data` stands for: its DSA strategy (`ddbench.augment.default_strategy`,
# DC's for CIFAR-10, no flips for digits) is given to both sides
DATASET = {"cifar": "cifar10", "digits": "digits", "digits_rgb": "digits"}


def _strategy(data: str) -> str:
    from ddbench.augment import default_strategy

    return default_strategy(DATASET[data])


def _data(name: str) -> tuple[Any, Any, Any, Any]:
    """(x, y) of the evaluated set and (x, y) of the split models are scored on."""
    import torch

    if name == "cifar":
        from distill_speed import _random_cifar

        real = _random_cifar(IPC)
        return real.train_x, real.train_y, real.test_x, real.test_y
    from ddbench.data import load_dataset
    from ddbench.seeding import derive_seed

    real = load_dataset("digits")
    gen = torch.Generator().manual_seed(derive_seed(0, "eval_epoch", "digits"))
    picks = []
    for label in real.classes:
        idx = real.class_indices(label)
        picks.append(idx[torch.randperm(len(idx), generator=gen)[:IPC]])
    pick = torch.cat(picks)
    x, score_x = real.train_x[pick], real.val_x
    if name == "digits_rgb":  # 3 channels: the same network on both sides (module docstring)
        x, score_x = (t.expand(-1, 3, -1, -1).contiguous() for t in (x, score_x))
    return x, real.train_y[pick], score_x, real.val_y


def _warm_imports() -> None:
    """Import what the first optimiser imports (torch._dynamo, seconds) before any timer starts:
    a once-per-process cost of both sides, not a cost of an epoch."""
    import torch

    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.01)


def _test_images(n: int) -> tuple[Any, Any]:
    """`n` CIFAR-shaped random images and labels: what the test pass is timed on."""
    import torch

    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 32, 32, generator=gen), torch.randint(10, (n,), generator=gen)


def run_ddbench(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from ddbench.archs import build_arch
    from ddbench.fastpath import choose_test_batch
    from ddbench.fit import Recipe, accuracy, train_model

    torch.set_num_threads(spec["threads"])
    x, y, score_x, score_y = _data(spec["data"])
    _warm_imports()
    torch.manual_seed(spec["seed"])
    model = build_arch("convnet", x.shape[1], 10, x.shape[2])
    recipe = Recipe(
        epochs=spec["epochs"],
        precision=spec["precision"].removesuffix("_auto"),
        compile="off" if spec["precision"] == "fp32" else "auto",
        dsa_strategy=_strategy(spec["data"]),
    )
    start = time.perf_counter()
    choice = train_model(model, x, y, recipe, DATASET[spec["data"]], spec["seed"], arch="convnet")
    seconds = time.perf_counter() - start
    top1 = accuracy(model, score_x, score_y, precision=choice.setup.precision)
    test_x, test_y = _test_images(spec["test_images"])
    test_model = build_arch("convnet", 3, 10, 32)  # the test pass is timed at CIFAR's shape
    tic = time.perf_counter()
    batch = choose_test_batch("convnet", test_model, (3, 32, 32), choice.setup.precision)
    accuracy(test_model, test_x, test_y, batch=batch, precision=choice.setup.precision)
    test_s = time.perf_counter() - tic
    path = {**choice.metrics, "test_batch": batch}
    return {"s_per_epoch": seconds / spec["epochs"], "top1": top1, "test_s": test_s, "path": path}


def run_official(spec: dict[str, Any]) -> dict[str, Any]:
    import os
    import tempfile
    import types

    import torch
    from distill_speed import overlapping_write_shim

    from ddbench.fit import Recipe

    torch.set_num_threads(spec["threads"])
    os.chdir(tempfile.mkdtemp(prefix="ddbench-official-"))
    sys.path.insert(0, spec["official"])
    import utils  # their utils.py

    overlapping_write_shim()
    x, y, score_x, score_y = _data(spec["data"])
    _warm_imports()
    net = utils.get_network("ConvNet", x.shape[1], 10, (x.shape[2], x.shape[3]))
    recipe = Recipe()  # the lr and batch the ddbench side trains with (DC's)
    args = types.SimpleNamespace(
        device="cpu",
        lr_net=recipe.lr,
        epoch_eval_train=spec["epochs"],
        batch_train=recipe.batch_size,
        dsa=True,
        dsa_strategy=_strategy(spec["data"]),
        dsa_param=utils.ParamDiffAug(),
        dc_aug_param=None,
    )
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(score_x, score_y), batch_size=256
    )
    start = time.perf_counter()
    # their loop runs epochs 0..Epoch inclusive: one more than asked, counted as such
    _, _, top1 = utils.evaluate_synset(0, net, x, y, loader, args)
    seconds = time.perf_counter() - start
    test_x, test_y = _test_images(spec["test_images"])
    test_net = utils.get_network("ConvNet", 3, 10, (32, 32))
    test_loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(test_x, test_y), batch_size=256
    )
    tic = time.perf_counter()
    utils.epoch("test", test_loader, test_net, None, torch.nn.CrossEntropyLoss(), args, aug=False)
    test_s = time.perf_counter() - tic
    return {"s_per_epoch": seconds / (spec["epochs"] + 1), "top1": float(top1), "test_s": test_s}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", choices=sorted(DATASET), default="cifar")
    parser.add_argument("--epochs", type=int, default=300, help="DC's evaluation without ZCA")
    parser.add_argument("--seeds", type=int, default=1, help="runs per configuration")
    parser.add_argument(
        "--precisions", nargs="+", choices=["auto", "fp32_auto", "fp32"], default=["auto", "fp32"]
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads; default all")
    parser.add_argument("--test-images", type=int, default=2000, help="images of the test pass")
    parser.add_argument("--official-dc", help="a checkout of VICO-UoE/DatasetCondensation")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(run_official(spec) if spec.get("official") else run_ddbench(spec)))
        return 0

    import os

    from distill_speed import spawn

    base = {
        "data": args.data,
        "epochs": args.epochs,
        "threads": args.threads or os.cpu_count(),
        "test_images": args.test_images,
    }
    configs = {f"ddbench_{p}": {"precision": p} for p in args.precisions}
    if args.official_dc:
        configs["official"] = {"official": args.official_dc}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in configs}
    tic = time.perf_counter()
    for seed in range(args.seeds):
        for name, extra in configs.items():
            run = spawn({**base, **extra, "seed": seed}, __file__)
            runs[name].append(run)
            print(
                f"{name:14s} seed {seed}: {run['s_per_epoch'] * 1000:8.1f} ms/epoch  "
                f"top1 {run['top1']:.3f}  test pass {run['test_s']:.2f} s  {run.get('path', '')}",
                flush=True,
            )
    summary: dict[str, Any] = {"data": args.data, "epochs": args.epochs, "seeds": args.seeds}
    for name, done in runs.items():
        top1 = [r["top1"] for r in done]
        summary[name] = {
            "s_per_epoch": round(statistics.median(r["s_per_epoch"] for r in done), 4),
            "test_s": round(statistics.median(r["test_s"] for r in done), 3),
            "top1_mean": round(statistics.mean(top1), 4),
            "top1_std": round(statistics.stdev(top1), 4) if len(top1) > 1 else None,
        }
    if "official" in runs:
        for p in args.precisions:
            ratio = summary["official"]["s_per_epoch"] / summary[f"ddbench_{p}"]["s_per_epoch"]
            summary[f"official_over_{p}"] = round(ratio, 3)
            test_ratio = summary["official"]["test_s"] / summary[f"ddbench_{p}"]["test_s"]
            summary[f"official_over_{p}_test"] = round(test_ratio, 3)
    summary["wall_s"] = round(time.perf_counter() - tic, 1)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
