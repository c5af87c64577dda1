"""Seconds per distillation iteration and peak memory of the pixel methods (dc, dsa, dm, datadam).

Data: CIFAR-shaped random tensors (3x32x32, 10 classes, `--per-class` train images per class) built
directly as a `RealData` (nothing is downloaded); ConvNet-3 (each method's default network), real
batch `--batch-real` per class (256 unless stated). Each (method, IPC) runs in its own child
process, so its peak memory (RSS from `getrusage`, or `torch.cuda.max_memory_allocated` on a GPU)
is its own. A child runs the method's real `distill` through the shared pixel loop and records the
time of every loop step through the Context's progress events (`report_every_s=0`); it stops the run
after `--warmup` + `--timed` steps and reports the median of the timed steps.

One loop step is one image update. For dm / datadam that is one iteration. For dc / dsa one DC
*iteration* is `outer_loop` image updates (DC's table: 1 / 10 / 50 at IPC 1 / 10 / 50, with
`inner_loop` epochs of network training between them); the figure per DC iteration is the mean
step time x outer_loop, an extrapolation (marked so), since timing whole DC iterations at IPC 50
would take far longer than this benchmark's budget.

`dm` and `datadam` are also timed with `per_class_loop: true` (the reference per-class forwards)
at `--compare-ipc`, each right after its batched run so both see the same machine load; the final
JSON line has `<method>_batched_vs_loop_ipc<N>` = loop seconds / batched seconds. With
`--amp-ipc N` they are timed with `amp: true` (bf16 autocast of the networks' forwards, an opt-in
that is part of the job id: it changes the result by more than rounding) at IPC N as well, right
after the fp32 run: `<method>_fp32_over_amp_ipc<N>` = fp32 seconds / amp seconds.

Side by side with the official code (`--official-dm DIR`, `--official-datadam DIR`: a checkout
of VICO-UoE/DatasetCondensation or DataDistillation/DataDAM; nothing of theirs is in this repo):
right after each ddbench configuration of dm / datadam, a child runs THEIR script's own
`main()` (`main_DM.py`, `main_DataDAM.py`) on the same random data, with only their dataset
loader (`get_dataset`) replaced by one serving these tensors, their evaluation
(`evaluate_synset`) by a no-op (evaluation is not distillation), and `torch.optim.SGD.step`
wrapped to stamp each image update (plus one shim for today's torch: their siamese DSA writes
`t[:] = t[0]`, which torch now refuses as an overlapping write, so such a write takes a copy of
the value; and on a machine without CUDA, DataDAM's `net.cuda()` leaves the net where it is);
every other line of their iteration runs as they wrote it
(per-class real batches with `np.random` picks, their DSA seeded from the clock, their networks
from their `utils.py` / `networks.py`). The JSON line then has `official_over_ddbench_<method>
_ipc<N>` = their seconds per iteration over ddbench's (above 1: ddbench is faster).

    python benchmarks/distill_speed.py                        # every registered pixel method
    python benchmarks/distill_speed.py --methods dm datadam --ipcs 1 10 --timed 5
    python benchmarks/distill_speed.py --methods dm datadam --ipcs 10 \
        --official-dm /tmp/DatasetCondensation --official-datadam /tmp/DataDAM
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Any

PIXEL_METHODS = ("dc", "dsa", "dm", "datadam")  # timed when registered
LOOP_METHODS = ("dm", "datadam")  # have a per_class_loop reference path
NO_CHECKPOINTS = 10**6  # checkpoint_every: keep checkpoint copies out of the timings


class _Stop(Exception):
    """Raised from the progress hook once enough steps are timed."""


def _random_cifar(per_class: int, seed: int = 0) -> Any:
    import torch

    from ddbench.data import RealData

    gen = torch.Generator().manual_seed(seed)
    n = 10 * per_class
    x = torch.randn(n, 3, 32, 32, generator=gen)
    y = torch.arange(10).repeat_interleave(per_class)
    names = [f"class_{i}" for i in range(10)]
    return RealData(
        "random_cifar", x, y, x[:10], y[:10], x[:10], y[:10], names, (0.0,) * 3, (1.0,) * 3
    )


def _rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Time one (method, ipc, per_class_loop, amp) configuration in this process."""
    import torch

    from ddbench.context import Context, pick_device
    from ddbench.methods import get_method

    torch.set_num_threads(spec["threads"])
    device = pick_device(spec["device"])
    real = _random_cifar(spec["per_class"])
    method = get_method(spec["method"])
    overrides: dict[str, Any] = {
        "batch_real": spec["batch_real"],
        "checkpoint_every": NO_CHECKPOINTS,
        "iterations": 10**6,  # the progress hook stops the run
    }
    if spec["loop"]:
        overrides["per_class_loop"] = True
    if spec.get("amp"):
        overrides["amp"] = True
    params = method.Params.model_validate(overrides)
    steps_per_iteration = 1
    if "outer_loop" in method.Params.model_fields:
        from ddbench.methods.dc import resolve_loops

        steps_per_iteration = resolve_loops(spec["ipc"], params)[0]
    need = spec["warmup"] + spec["timed"]
    stamps: list[float] = []

    class StepClock(Context):
        """Stamps every progress event (one per loop step) and stops the run when done."""

        def _emit(self, metrics: dict[str, float], checkpoint: dict[str, Any] | None) -> None:
            stamps.append(time.perf_counter())
            if len(stamps) >= need:
                raise _Stop

    ctx = StepClock(seed=0, device=device, report_every_s=0.0)
    baseline = _rss_mib()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        method.distill(real, spec["ipc"], params, ctx)
    except _Stop:
        pass
    steps = [b - a for a, b in zip([start, *stamps], stamps, strict=False)][spec["warmup"] :]
    result = {
        **{k: spec[k] for k in ("method", "ipc", "loop", "batch_real", "threads")},
        "amp": bool(spec.get("amp")),
        "device": device,
        "s_per_step": statistics.median(steps),
        "s_per_step_all": [round(s, 3) for s in steps],
        "steps_per_iteration": steps_per_iteration,
        "s_per_iteration": statistics.mean(steps) * steps_per_iteration,
        "s_per_iteration_extrapolated": steps_per_iteration > 1,
        "baseline_rss_mib": baseline,
        "peak_rss_mib": _peak_rss_mib(),
    }
    if device.startswith("cuda"):
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


OFFICIAL_SCRIPTS = {"dm": "main_DM", "datadam": "main_DataDAM"}  # their entry modules


def overlapping_write_shim() -> None:
    """Let the official siamese DSA run on today's torch: it writes `t[:] = t[0]`, an
    overlapping write torch now refuses; such a write takes the same values from a copy (a few
    integers per call). Patches `torch.Tensor.__setitem__` for the rest of this process."""
    import torch

    setitem = torch.Tensor.__setitem__

    def setitem_on_a_copy(self: Any, key: Any, value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.data_ptr() == self.data_ptr():
            value = value.clone()
        return setitem(self, key, value)

    torch.Tensor.__setitem__ = setitem_on_a_copy


def run_official_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Time the official script of `spec["method"]` (checkout `spec["official"]`) in this
    process: their `main()`, on `_random_cifar` data (module docstring)."""
    import importlib
    import importlib.util
    import os
    import tempfile

    import torch

    torch.set_num_threads(spec["threads"])
    os.chdir(tempfile.mkdtemp(prefix="ddbench-official-"))  # they write data/ and result/ here
    sys.path.insert(0, spec["official"])
    if importlib.util.find_spec("einops") is None:  # DataDAM's networks import it for a ViT
        import types  # that the timed loop never builds: an empty stand-in will do

        for name in ("einops", "einops.layers", "einops.layers.torch"):
            sys.modules[name] = types.ModuleType(name)
        sys.modules["einops"].rearrange = sys.modules["einops"].repeat = None
        sys.modules["einops.layers.torch"].Rearrange = None
    script = importlib.import_module(OFFICIAL_SCRIPTS[spec["method"]])
    real = _random_cifar(spec["per_class"])

    class Split(torch.utils.data.Dataset):
        def __init__(self, x: Any, y: Any) -> None:
            self.x, self.y = x, y

        def __getitem__(self, i: int) -> tuple[Any, int]:
            return self.x[i], int(self.y[i])

        def __len__(self) -> int:
            return len(self.y)

    def get_dataset(*args: Any, **kwargs: Any) -> tuple[Any, ...]:
        train, test = Split(real.train_x, real.train_y), Split(real.test_x, real.test_y)
        loader = torch.utils.data.DataLoader(test, batch_size=256)
        out = (3, (32, 32), 10, real.class_names, real.mean, real.std, train, test, loader)
        return (*out, None) if spec["method"] == "datadam" else out  # DataDAM's adds `zca`

    def evaluate_synset(it_eval: int, net: Any, *args: Any, **kwargs: Any) -> tuple:
        return net, 0.0, 0.0

    script.get_dataset, script.evaluate_synset = get_dataset, evaluate_synset
    need = spec["warmup"] + spec["timed"]
    stamps: list[float] = []
    step = torch.optim.SGD.step

    def stamped_step(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = step(self, *args, **kwargs)
        stamps.append(time.perf_counter())
        if len(stamps) >= need:
            raise _Stop
        return out

    torch.optim.SGD.step = stamped_step
    overlapping_write_shim()
    if not torch.cuda.is_available():  # DataDAM's get_network calls `net.cuda()` unconditionally
        torch.nn.Module.cuda = lambda self, device=None: self
    sys.argv = [
        f"{OFFICIAL_SCRIPTS[spec['method']]}.py",
        *("--dataset", "CIFAR10", "--ipc", str(spec["ipc"]), "--num_exp", "1"),
        *("--num_eval", "1", "--batch_real", str(spec["batch_real"]), "--init", "real"),
        *("--data_path", "data", "--save_path", "result"),
    ]
    start = time.perf_counter()
    try:
        script.main()
    except _Stop:
        pass
    steps = [b - a for a, b in zip([start, *stamps], stamps, strict=False)][spec["warmup"] :]
    return {
        **{k: spec[k] for k in ("method", "ipc", "batch_real", "threads")},
        "implementation": "official",
        "s_per_step": statistics.median(steps),
        "s_per_step_all": [round(s, 3) for s in steps],
        "s_per_iteration": statistics.median(steps),
        "peak_rss_mib": _peak_rss_mib(),
    }


def spawn(spec: dict[str, Any], script: str = __file__) -> dict[str, Any]:
    """Run `script --child SPEC` in a fresh process; its last stdout line, as JSON."""
    out = subprocess.run(
        [sys.executable, script, "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"child {spec} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--methods", nargs="+", default=None, help="default: registered dc/dsa/dm/datadam"
    )
    parser.add_argument("--ipcs", nargs="+", type=int, default=[1, 10, 50])
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--timed", type=int, default=3, help="timed steps per configuration")
    parser.add_argument("--batch-real", type=int, default=256, help="real images per class")
    parser.add_argument("--per-class", type=int, default=300, help="train images per class")
    parser.add_argument("--compare-ipc", type=int, default=10, help="batched vs loop at this IPC")
    parser.add_argument("--amp-ipc", type=int, default=None, help="dm/datadam with amp at this IPC")
    parser.add_argument("--threads", type=int, default=None, help="torch threads; default all")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--official-dm", help="a checkout of VICO-UoE/DatasetCondensation")
    parser.add_argument("--official-datadam", help="a checkout of DataDistillation/DataDAM")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        child = run_official_child if spec.get("official") else run_child
        print(json.dumps(child(spec)))
        return 0

    import os

    from ddbench.methods import METHODS

    registered = set(METHODS.names())
    methods = args.methods or [m for m in PIXEL_METHODS if m in registered]
    threads = args.threads or os.cpu_count() or 1
    base = {
        "batch_real": args.batch_real,
        "per_class": args.per_class,
        "warmup": args.warmup,
        "timed": args.timed,
        "threads": threads,
        "device": args.device,
    }
    rows = []
    summary_ratios: dict[str, float] = {}
    tic = time.perf_counter()
    for method in methods:
        for ipc in args.ipcs:
            configs = [(False, False)]  # (per_class_loop, amp)
            if method in LOOP_METHODS and ipc == args.compare_ipc:
                configs.append((True, False))  # right after the batched run: same machine load
            if method in LOOP_METHODS and ipc == args.amp_ipc:
                configs.append((False, True))
            for loop, amp in configs:
                row = spawn({**base, "method": method, "ipc": ipc, "loop": loop, "amp": amp})
                rows.append(row)
                name = "loop   " if loop else "amp    " if amp else "batched"
                print(
                    f"{method:8s} ipc {ipc:3d} {name} "
                    f"{row['s_per_step']:8.3f} s/step  {row['s_per_iteration']:9.3f} s/iteration"
                    f"{' (extrapolated)' if row['s_per_iteration_extrapolated'] else ''}  "
                    f"peak RSS {row['peak_rss_mib']:7.0f} MiB  steps {row['s_per_step_all']}",
                    flush=True,
                )
            official = {"dm": args.official_dm, "datadam": args.official_datadam}.get(method)
            if official:  # right after ddbench's run of the same configuration
                spec = {**base, "method": method, "ipc": ipc, "official": official}
                theirs = spawn(spec)
                rows.append(theirs)
                ours = next(
                    r
                    for r in rows
                    if r["method"] == method
                    and r["ipc"] == ipc
                    and r.get("loop") is False
                    and not r["amp"]
                )
                ratio = theirs["s_per_iteration"] / ours["s_per_iteration"]
                summary_ratios[f"official_over_ddbench_{method}_ipc{ipc}"] = round(ratio, 3)
                print(
                    f"{method:8s} ipc {ipc:3d} official {theirs['s_per_step']:8.3f} s/iteration "
                    f"(x{ratio:.2f} ddbench's)  steps {theirs['s_per_step_all']}",
                    flush=True,
                )
    summary: dict[str, Any] = {
        "rows": rows,
        "wall_s": round(time.perf_counter() - tic, 1),
        **summary_ratios,
    }
    for method in LOOP_METHODS:
        pair = {
            r["loop"]: r["s_per_step"]
            for r in rows
            if r["method"] == method
            and r["ipc"] == args.compare_ipc
            and "loop" in r
            and not r["amp"]
        }
        if len(pair) == 2:
            summary[f"{method}_batched_vs_loop_ipc{args.compare_ipc}"] = pair[True] / pair[False]
        amp_pair = {
            r["amp"]: r["s_per_step"]
            for r in rows
            if r["method"] == method and r["ipc"] == args.amp_ipc and r.get("loop") is False
        }
        if len(amp_pair) == 2:
            summary[f"{method}_fp32_over_amp_ipc{args.amp_ipc}"] = amp_pair[False] / amp_pair[True]
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
