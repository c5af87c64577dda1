"""How a training run executes, chosen by measuring this device: precision, memory format,
micro-batches, compilation.

A `TrainSetup` is one execution path of the shared recipe's training step: `precision` (fp32,
or bf16 autocast of the forward pass and loss; parameters, optimiser state and DSA stay fp32),
`channels_last` (NHWC activations), `micro_batch` (the batch's forward and backward in blocks of
at most that many images, gradients accumulated: `accumulate_gradients`) and `compile`
(`torch.compile` of the model). They compute the same function (bf16 and compiled kernels round
differently, and micro-batches sum the gradient in another order), so the choice is a matter of
speed, and speed depends on the device: bf16 is several times faster than fp32 where the device
has bf16 arithmetic (AMX or AVX512-BF16 CPUs, Ampere+ GPUs) and several times slower where it is
emulated (AVX-512 without BF16, AVX2); channels-last helps cuDNN and some oneDNN kernels and hurts
others; on a CPU, micro-batches keep a block's activations in cache (1.4-1.7x for a ConvNet-3
fp32 step on 28-32 px images, measured on one CPU) and lose on 8 px images; compiling costs
seconds to minutes before it saves anything. No rule written down on one machine holds on the
next, so `choose_setup` measures.

`choose_setup(recipe, arch, model, batch_shape, steps, ...)` resolves the recipe's `auto`
fields by a short calibration of the actual step (the model, the batch shape, the device):

1. candidates: fp32 eager, always (the reference); bf16 where `precision: auto` and the
   architecture passed the fp32 accuracy parity check (`BF16_ARCHS`, benchmarks/RESULTS.md);
   channels-last where the model has convolutions; each of those in micro-batches of
   `MICRO_BATCH_ROWS` images where the model has no batch statistics (BatchNorm would see other
   batches), the batch is larger than that and the run has more steps than timing those
   blocked candidates takes (a shorter run could not repay it); compiled variants of the best
   eager path where `compile: auto` and the run's fp32 work is long enough that compiling could pay
   (`compile_worth_trying`: twice the longest compile of the architecture this node has
   measured, at least `COMPILE_MIN_WORK_S`, or `COMPILE_WORTH_TRYING_S` before any) and, on a
   CPU, a C++ compiler exists;
2. each candidate runs `WARMUP_STEPS` steps, then the candidates are timed in `TIMED_STEPS`
   interleaved rounds (one step of each per round; the median per candidate), so a change of
   the machine's load (other cells share it) hits them all alike; a compiled candidate's first
   step is its compile time;
3. the decision: the candidate with the least `step_s x steps + compile_s`, taken only when that
   beats fp32 eager's `step_s x steps` by `MARGIN` (measurement noise must not pick a path);
   otherwise fp32 eager. So the chosen path is never slower than fp32 eager by the calibration's
   own measurement, and a path that pays only over long runs is chosen only for long runs.

Measurements are cached per (device model, torch version, architecture, shape class: channels,
height, width, batch rounded up to a power of two) as JSON under `<DDBENCH_CACHE>/fastpath/`
(the node-local cache; `ddbench.storage.CACHE_ENV`) and in memory, so a node calibrates a shape
once; each run's decision is still its own (it depends on the run's number of steps). The
decision and its timings travel with the run (`Choice.metrics`) into result rows:
`precision_bits`, `channels_last`, `micro_batch`, `compiled`, `step_ms`, `fp32_step_ms`.

The test pass after training is measured the same way (`choose_test_batch`: one large forward
against blocks of 32 images, cached alike; the cell's `test_batch` row).

Extending: a new execution choice is one more field of `TrainSetup`, applied in `train_step_fn`
and `fit.train_model`, with its candidates in `candidates` and its name in `TrainSetup.name`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import hashlib
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BeforeValidator

if TYPE_CHECKING:
    from ddbench.fit import Recipe

Precision = Literal["fp32", "bf16"]


def _switch(value: Any) -> Any:
    """YAML reads `on` / `off` as true / false: take those as the switch's `on` / `off`."""
    return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


# an execution choice: auto (decided by measurement), on or off
Switch = Annotated[Literal["auto", "on", "off"], BeforeValidator(_switch)]
# architectures whose bf16 training was measured at fp32 accuracy (benchmarks/RESULTS.md,
# "bf16 parity"): bf16 is a candidate only for these
BF16_ARCHS = frozenset({"convnet"})
WARMUP_STEPS = 2  # untimed steps first: allocator, oneDNN primitive caches, lazy init
TIMED_STEPS = 3  # timed steps per candidate (the median is used)
MARGIN = 0.05  # another path must beat fp32 eager by 5 % of the run's time to be chosen
# compiling takes 10-70 s on a CPU (benchmarks/RESULTS.md): below this much fp32 work it is not
# even measured, until this node has measured compiling the architecture (`compile_worth_trying`)
COMPILE_WORTH_TRYING_S = 120.0
# ... after which the bar is this many times the longest compile measured: compiled steps ran at
# 0.2-0.6 of the eager ones (benchmarks/RESULTS.md), so a run twice as long as the compile repays it
COMPILE_REPAY_FACTOR = 2.0
# but never below this much work: a compile measured on a warm inductor cache (0.05-2.6 s) says
# little about a new shape's, and the compiles recorded in benchmarks/RESULTS.md took 12-67 s
# (25-42 s of them from a cold inductor cache)
COMPILE_MIN_WORK_S = 30.0
# images per block of a micro-batched step: a ConvNet-3 fp32 step on 256 images of 3x32x32 took
# 1.20 s whole, 0.87 s in blocks of 8, 0.75 s of 16 and 0.81 s of 32 (Xeon-AMX, 2 threads,
# benchmarks/RESULTS.md); on 8 px digits blocks were slower, which the calibration measures
MICRO_BATCH_ROWS = 16
# images per forward pass of a test pass, the candidates `choose_test_batch` times: one large
# call (bounded for memory) or small blocks whose activations stay in cache on a CPU (2,000 CIFAR
# images in fp32 on 2 threads: 4.33 s in batches of 1,024, 2.33 s of 32; benchmarks/RESULTS.md)
TEST_BATCHES = (1024, 32)
TEST_PROBE = 128  # images the test-pass candidates are timed on (4 blocks of 32)
CACHE_DIR = "fastpath"  # under the node-local cache


@dataclass(frozen=True)
class TrainSetup:
    """One execution path of a training step."""

    precision: Precision
    channels_last: bool
    compile: bool
    micro_batch: int = 0  # images per gradient-accumulation block; 0 = the whole batch at once

    @property
    def name(self) -> str:
        parts = [
            self.precision,
            "cl" if self.channels_last else "",
            f"mb{self.micro_batch}" if self.micro_batch else "",
            "compiled" if self.compile else "",
        ]
        return "_".join(p for p in parts if p)


FP32_EAGER = TrainSetup("fp32", channels_last=False, compile=False)


@dataclass
class Choice:
    """The path a run takes and the calibration it rests on (seconds per step by path name,
    compile seconds by path name, the fp32 eager reference)."""

    setup: TrainSetup
    step_s: dict[str, float] = field(default_factory=dict)
    compile_s: dict[str, float] = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, float]:
        """The decision and its timings as result-row metrics."""
        metrics = {
            "precision_bits": 16.0 if self.setup.precision == "bf16" else 32.0,
            "channels_last": float(self.setup.channels_last),
            "micro_batch": float(self.setup.micro_batch),
            "compiled": float(self.setup.compile),
        }
        if self.setup.name in self.step_s:  # calibrated: the timings the choice rests on
            metrics["step_ms"] = 1000 * self.step_s[self.setup.name]
        if FP32_EAGER.name in self.step_s:
            metrics["fp32_step_ms"] = 1000 * self.step_s[FP32_EAGER.name]
        return metrics


def autocast(device: str, precision: Precision) -> contextlib.AbstractContextManager:
    """bf16 autocast on the device's type, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def sync(device: str) -> None:
    """Wait for the device's queued work (CUDA is asynchronous; timings need this)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def has_batch_statistics(model: torch.nn.Module) -> bool:
    """Whether a layer of `model` normalises with statistics over the batch (BatchNorm), so an
    image's result depends on which images share its batch."""
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def accumulate_gradients(
    forward: Callable[[torch.Tensor], torch.Tensor],
    loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    targets: torch.Tensor,
    setup: TrainSetup,
    device: str,
) -> None:
    """Backpropagate the batch loss `loss_of(forward(x), targets)` (a mean over the batch's
    images) under `setup`: in one pass, or in blocks of at most `setup.micro_batch` images whose
    mean losses are weighted by their share of the batch, which sums to the same gradient (up to
    summation order) for a model without batch statistics. One block is the plain step (its
    weight is 1.0, which multiplies exactly)."""
    blocks = -(-len(x) // setup.micro_batch) if setup.micro_batch else 1
    parts = zip(torch.tensor_split(x, blocks), torch.tensor_split(targets, blocks), strict=True)
    for xs, ts in parts:
        with autocast(device, setup.precision):
            loss = loss_of(forward(xs), ts)
        (loss * (len(xs) / len(x))).backward()


def median_seconds(
    fn: Callable[[], object], device: str, repeats: int = 3, warmup: int = 1
) -> float:
    """Median wall time of `fn` over `repeats` calls after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        tic = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def train_step_fn(
    model: torch.nn.Module,
    shape: tuple[int, int, int],
    num_classes: int,
    dataset: str,
    recipe: Recipe,
    batch: int,
    device: str = "cpu",
    setup: TrainSetup = FP32_EAGER,
) -> Callable[[], None]:
    """One training step (augmentation, forward, backward, optimiser step) of the recipe under
    `setup` on a fixed random batch of `batch` images shaped `shape` (C, H, W), as a closure to
    call (and time) repeatedly; it trains a copy of `model` (the model itself is untouched)."""
    from ddbench.augment import default_strategy, dsa

    net = copy.deepcopy(model).to(device).train()
    if setup.channels_last:
        net.to(memory_format=torch.channels_last)
    forward = torch.compile(net) if setup.compile else net
    opt, _ = recipe.optimiser(net.parameters())
    gen = torch.Generator().manual_seed(0)
    strategy = recipe.dsa_strategy or default_strategy(dataset)
    xb = torch.randn((batch, *shape), generator=gen).to(device)
    yb = torch.randint(num_classes, (batch,), generator=gen).to(device)

    def step() -> None:
        xa = dsa(xb, strategy, gen) if recipe.augment else xb
        if setup.channels_last:  # after the augmentation, as `fit.train_model` does
            xa = xa.contiguous(memory_format=torch.channels_last)
        opt.zero_grad(set_to_none=True)
        accumulate_gradients(forward, F.cross_entropy, xa, yb, setup, device)
        opt.step()

    return step


# --------------------------------------------------------------------------- calibration


def interleaved_seconds(
    fns: dict[str, Callable[[], object]], device: str, rounds: int = TIMED_STEPS
) -> dict[str, float]:
    """Median wall seconds of each named function over `rounds` rounds that call every one of
    them once in turn, so a change of the machine's load hits them all alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(median_seconds(fn, device, repeats=1, warmup=0))
    return {name: statistics.median(t) for name, t in times.items()}


def device_model(device: str) -> str:
    """What the device is, for the cache key: the GPU's name, or the CPU's model name and the
    instruction-set flags that decide its kernels (AVX-512, BF16, AMX)."""
    if torch.device(device).type == "cuda":
        return "cuda:" + torch.cuda.get_device_name(torch.device(device))
    return f"{_cpu_model()} x{torch.get_num_threads()}"


@functools.cache
def _cpu_model() -> str:
    """The CPU's model name and kernel-deciding flags, from /proc/cpuinfo (read once)."""
    name, flags = platform.processor() or platform.machine(), ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not name.startswith("cpu:"):
                name = "cpu:" + value.strip()
            elif key.strip() == "flags":
                wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
                flags = ",".join(f for f in value.split() if f in wanted)
                break
    return f"{name} [{flags}]"


def _bucket(batch: int) -> int:
    """The shape class of a batch size: the next power of two."""
    return 1 << max(0, batch - 1).bit_length()


def shape_key(
    arch: str, shape: tuple[int, int, int], batch: int, device: str, **extra: Any
) -> dict[str, Any]:
    """The cache key of measurements of `arch` on batches of `batch` images shaped `shape` on
    `device` (and `extra`, e.g. whether augmentation is part of the step)."""
    return {
        "device": device_model(device),
        "torch": torch.__version__,
        "arch": arch,
        "shape": list(shape),
        "batch_class": _bucket(batch),
        **extra,
    }


_MEMORY: dict[str, dict[str, float]] = {}  # cache file -> its measurements, this process


def _cache_dir() -> Path:
    """Where this node keeps its calibrations."""
    from ddbench.storage import CACHE_ENV

    root = Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "ddbench-cache")
    return root / CACHE_DIR


def _cache_path(key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return _cache_dir() / f"{key['arch']}-{digest}.json"


def calibrated(
    key: dict[str, Any], names: list[str], measure: Callable[[], dict[str, float]]
) -> dict[str, float]:
    """Seconds of the measurements `names` under `key`: from this node's cache, else from
    `measure()` (which returns at least those names), cached (a JSON file per key; concurrent
    writers each write a whole file atomically, the last one wins)."""
    from ddbench.storage import atomic_write

    path = _cache_path(key)
    if str(path) not in _MEMORY:
        try:
            _MEMORY[str(path)] = json.loads(path.read_text())["seconds"]
        except (OSError, ValueError, KeyError):  # none yet, or unreadable: measure again
            _MEMORY[str(path)] = {}
    seconds = _MEMORY[str(path)]
    if not all(name in seconds for name in names):
        seconds.update(measure())
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"key": key, "seconds": seconds}, indent=2, sort_keys=True)
        atomic_write(path, lambda tmp: tmp.write_text(text))
    return {name: seconds[name] for name in names}


def measured_compile_s(arch: str, device: str) -> float | None:
    """The longest compile of `arch` this node has measured (any shape, any calibration: the
    `<path>/compile` entries of its cache files for this device model and torch), or None."""
    node = {"arch": arch, "device": device_model(device), "torch": torch.__version__}
    compiles: list[float] = []
    for file in _cache_dir().glob(f"{arch}-*.json"):
        try:
            measured = json.loads(file.read_text())
            key, seconds = measured["key"], measured["seconds"]
        except (OSError, ValueError, KeyError):  # unreadable or not a calibration: no evidence
            continue
        if all(key.get(k) == v for k, v in node.items()):
            compiles += [v for name, v in seconds.items() if name.endswith("/compile")]
    return max(compiles, default=None)


def compile_worth_trying(arch: str, device: str, work_s: float) -> bool:
    """Whether a run whose eager work is `work_s` seconds should time compiled paths at all (a
    compile is a cost paid before its timing can say whether it pays): when that work exceeds
    `COMPILE_REPAY_FACTOR` x the longest compile of `arch` measured on this node (and
    `COMPILE_MIN_WORK_S`), or `COMPILE_WORTH_TRYING_S` before this node has compiled it."""
    if work_s <= COMPILE_MIN_WORK_S:  # never enough, whatever the node knows: no cache reads
        return False
    measured = measured_compile_s(arch, device)
    if measured is None:
        return work_s > COMPILE_WORTH_TRYING_S
    return work_s > max(COMPILE_MIN_WORK_S, COMPILE_REPAY_FACTOR * measured)


def candidates(
    recipe: Recipe, arch: str | None, model: torch.nn.Module, batch: int, steps: int
) -> list[TrainSetup]:
    """The eager paths (or compiled, under `compile: on`) the recipe allows for `model` in a
    run of `steps` steps on batches of `batch` images; fp32 eager first when allowed."""
    if recipe.precision == "auto":
        precisions: list[Precision] = ["fp32", "bf16"] if arch in BF16_ARCHS else ["fp32"]
    else:
        precisions = [recipe.precision]
    has_conv = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    layouts = [False, True] if has_conv else [False]
    splits = [0]
    # timing the blocked candidates takes this many steps: a shorter run could not repay it
    timing_steps = len(precisions) * len(layouts) * (WARMUP_STEPS + TIMED_STEPS)
    if batch > MICRO_BATCH_ROWS and steps > timing_steps and not has_batch_statistics(model):
        splits.append(MICRO_BATCH_ROWS)
    compiled = recipe.compile == "on"
    return [
        TrainSetup(p, cl, compiled, micro_batch)
        for micro_batch in splits
        for p in precisions
        for cl in layouts
    ]


def compile_allowed(device: str) -> bool:
    """Inductor generates C++ on a CPU: no compiler, no compiled path."""
    return torch.device(device).type != "cpu" or shutil.which("g++") is not None


def choose_setup(
    recipe: Recipe,
    arch: str | None,
    model: torch.nn.Module,
    shape: tuple[int, int, int],
    num_classes: int,
    dataset: str,
    batch: int,
    steps: int,
    device: str = "cpu",
) -> Choice:
    """The execution path of a run of `steps` training steps of `model` (registry name `arch`)
    on batches of `batch` images shaped `shape`, resolved as the module docstring says.

    Not calibrated, fp32 eager: a model built elsewhere (`arch` None), and the reference recipe
    `precision: fp32, compile: off` (what a user asks for to rule every fast path out). Not
    measured either: a recipe that leaves a single path (no timings then in the rows)."""
    if arch is None or (recipe.precision == "fp32" and recipe.compile == "off"):
        precision: Precision = "bf16" if recipe.precision == "bf16" else "fp32"
        return Choice(TrainSetup(precision, channels_last=False, compile=recipe.compile == "on"))
    # the block size is in the key: measurements taken without (or with other) blocks are not
    # mixed with these, which must be timed in the same interleaved rounds
    key = shape_key(arch, shape, batch, device, augment=recipe.augment, micro=MICRO_BATCH_ROWS)
    timed = min(_bucket(batch), batch)  # the batch the shape class is measured at
    step_s: dict[str, float] = {}
    compile_s: dict[str, float] = {}

    def measure(*setups: TrainSetup) -> None:
        """Seconds per step of `setups` (and the compile seconds of compiled ones), timed in
        interleaved rounds so a change of the machine's load hits every path alike."""
        todo = [setup for setup in setups if setup.name not in step_s]
        if not todo:
            return
        names = [s.name for s in todo] + [f"{s.name}/compile" for s in todo if s.compile]

        def run() -> dict[str, float]:
            out: dict[str, float] = {}
            steps_of = {}
            for setup in todo:
                step = train_step_fn(
                    model, shape, num_classes, dataset, recipe, timed, device, setup
                )
                if setup.compile:  # the first compiled step compiles
                    out[f"{setup.name}/compile"] = median_seconds(step, device, 1, warmup=0)
                for _ in range(WARMUP_STEPS):
                    step()
                steps_of[setup.name] = step
            return {**out, **interleaved_seconds(steps_of, device)}

        got = calibrated(key, names, run)
        for setup in todo:
            step_s[setup.name] = got[setup.name]
            if setup.compile:
                compile_s[setup.name] = got[f"{setup.name}/compile"]

    def cost(setup: TrainSetup) -> float:
        measure(setup)
        return step_s[setup.name] * steps + compile_s.get(setup.name, 0.0)

    paths = candidates(recipe, arch, model, timed, steps)
    if len(paths) == 1 and recipe.compile != "auto":
        return Choice(paths[0])  # nothing to choose between: nothing to measure
    with torch.random.fork_rng(devices=[device] if torch.device(device).type == "cuda" else []):
        # calibrating draws no number the run would see: results never depend on a cache hit
        measure(*paths)
        best = min(paths, key=cost)
        if recipe.compile == "auto" and compile_allowed(device):
            fp32_work = cost(FP32_EAGER) if FP32_EAGER in paths else cost(best)
            if compile_worth_trying(arch, device, fp32_work):
                compiled = dataclasses.replace(best, compile=True)
                best = min([best, compiled], key=cost)
    if FP32_EAGER in paths and cost(best) > cost(FP32_EAGER) * (1 - MARGIN):
        best = FP32_EAGER  # not faster by more than the noise of the measurement
    return Choice(best, step_s, compile_s)


def choose_test_batch(
    arch: str,
    model: torch.nn.Module,
    shape: tuple[int, int, int],
    precision: Precision,
    device: str = "cpu",
) -> int:
    """Images per forward pass for testing `model` (registry name `arch`) on images shaped
    `shape` under `precision`: `TEST_PROBE` images are evaluated in one call and in blocks of
    the smaller `TEST_BATCHES` entry, in interleaved rounds (cached like the training
    calibration), and the blocks are taken when faster by `MARGIN`. A model in eval mode gives
    each image the same result whatever shares its batch (up to rounding)."""
    whole, small = TEST_BATCHES
    names = [f"test_batch{whole}", f"test_batch{small}"]
    key = shape_key(arch, shape, TEST_PROBE, device, test_pass=precision)

    def measure() -> dict[str, float]:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn((TEST_PROBE, *shape), generator=gen).to(device)
        net = copy.deepcopy(model).to(device).eval()

        def run(batch: int) -> None:
            with torch.no_grad(), autocast(device, precision):
                for start in range(0, TEST_PROBE, batch):
                    net(x[start : start + batch])

        passes = {f"test_batch{b}": functools.partial(run, b) for b in TEST_BATCHES}
        for one_pass in passes.values():
            one_pass()  # warm-up
        return interleaved_seconds(passes, device)

    seconds = calibrated(key, names, measure)
    return small if seconds[names[1]] < seconds[names[0]] * (1 - MARGIN) else whole
