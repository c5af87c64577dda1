"""Worker-count invariance: 2 data-parallel workers (2 processes, gloo) give the 1-worker artifact.

Each method runs on digits at smoke size once in this process with a 1-worker `LocalContext` and
once in 2 spawned processes (`Context(seed, rank=r, world_size=2)` on a gloo process group). The
ranks must hold bit-identical artifacts (the runner checks that), and the 2-worker artifact must
equal the 1-worker one up to floating-point summation order. So that equal-because-untouched
cannot pass, the artifact must also have moved from its initialisation by far more than the
tolerance.

Tolerances, and the max abs differences 1 vs 2 workers measured on a 2-core CPU (torch 2.14,
1 thread per process):

- pixel methods (dm, datadam, dc): measured 0 (bit-exact). A class's matching loss has gradient
  only in its own synthetic rows, so summing the ranks' gradients adds zeros. The tolerance,
  1e-5 in normalised pixel units (the images move by 0.03-11), only allows for kernels that
  might round differently in another process. dm and datadam run under `auto` paths: their
  forward's layout and compilation are calibrated for the one-worker forward's shape whatever
  the shard (`MatchingForward`), so both runs read one cache entry (a module-wide
  DDBENCH_CACHE, warmed by the one-worker run, which goes first as on a node that ran the job
  before). When each rank calibrated its own shard, an AMD EPYC with AVX2 only (2026-12-01) took
  channels-last for the 2-worker run and NCHW for the 1-worker run; oneDNN's channels-last
  convolutions round differently there (ConvNet embeddings 2.4e-5 apart, relative), and DM's
  loss, a difference of nearly equal class means, turned that into images 5.3e-4 apart after
  2 iterations (1.5 % of the distance moved).
- generator methods (cgan, dim, d2m), Adam at lr 1e-4: weights measured 2.2e-4 (dim), 2.7e-4
  (cgan), 2.8e-4 (d2m). The bias of a layer feeding a BatchNorm has a gradient that is exactly 0
  in exact arithmetic, i.e. rounding noise in floating point, and Adam's normalised step turns
  that noise into a random walk of about lr per step (the running means track those biases).
  The one-worker run does the same by itself: with 2 threads instead of 1 (another summation
  order) cgan's weights move apart by 4.6e-4 and d2m's by 4.5e-4 (5 steps each). So the weight
  tolerance is Adam's bound, 3 x lr per generator step (two walks apart by up to ~1.06 lr each
  per step, with betas (0.5, 0.999)). What the generator computes does not depend on those
  biases: its images (eval mode, fixed noise) agree to 1.6e-4 / 2.0e-4 / 9.4e-5 while training
  moved them by 0.15 / 0.15 / 0.019, i.e. to 0.1-0.5 % of the distance moved; the test allows
  2 %. Broken invariance fails by far: with rank-keyed draws the weights differed by 9e-3 to
  1.2e-2 (and the pixel methods' images by 0.04 to 11), with BatchNorm statistics of the rank's
  rows only by 1.0e-2 to 1.6e-2.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from ddbench.artifact import GeneratorSet, ImageSet, load_artifact
from ddbench.context import Context, LocalContext
from ddbench.data import RealData, load_dataset
from ddbench.methods import get_method
from ddbench.methods._gan import data_config, new_generator
from ddbench.methods._pixel import SyntheticSet
from ddbench.storage import CACHE_ENV
from tests.conftest import TINY_GENERATOR, free_port

pytestmark = pytest.mark.slow  # spawns 2-process gloo groups per method

SEED = 5
IPC = 2
PIXEL_TOL = 1e-5  # normalised pixel units; measured 0 (see the module docstring)
MIN_MOVED = 50  # distilled images must move from their initialisation by >= 50 x PIXEL_TOL
ADAM_WALK = 3.0  # generator weight tolerance per step, in units of lr (module docstring)
IMAGE_SHARE = 0.02  # generated images: 1 vs 2 workers within 2 % of the distance trained
MIN_TRAINED = 0.01  # normalised pixel units generated images must move at least
# seconds each on digits; the generators take 2 steps per epoch (batch 512 of 1,295 images)
PARAMS: dict[str, dict[str, Any]] = {
    "dm": {"iterations": 2, "batch_real": 8},
    "datadam": {"iterations": 2, "batch_real": 8},
    "dc": {"iterations": 1, "outer_loop": 2, "inner_loop": 1, "batch_real": 8},
    "cgan": {**TINY_GENERATOR, "epochs": 2, "batch_size": 512},
    "dim": {
        **TINY_GENERATOR,
        "gan_epochs": 1,
        "match_epochs": 1,
        "batch_size": 512,
        "pool": ["convnet"],
        "pool_train_steps": 1,
        "dsa": True,  # also covers the siamese draw on split rows
    },
    # a BatchNorm pool network (global batch statistics) and DSA on split rows
    "d2m": {"epochs": 1, "batch_size": 512, "pool": ["convnet_bn"], "dsa": True},
}
CGAN_START = {**TINY_GENERATOR, "epochs": 1, "batch_size": 512}  # d2m's pre-trained generator


def tensors(artifact: ImageSet | GeneratorSet) -> dict[str, torch.Tensor]:
    """What the artifact stores: the images of an ImageSet, the state of a GeneratorSet."""
    if isinstance(artifact, ImageSet):
        return {"images": artifact.images}
    return dict(artifact.state_dict)


def distil(name: str, real: RealData, ctx: Context) -> ImageSet | GeneratorSet:
    method = get_method(name)
    return method.distill(real, IPC, method.Params(**PARAMS[name]), ctx)


def context(dependencies: str, rank: int = 0, world_size: int = 1) -> Context:
    """A context of seed SEED whose d2m starts from the cgan artifact in `dependencies`."""
    deps = {"generator": dependencies}
    if world_size == 1:
        return LocalContext(SEED, dependencies=deps)
    return Context(SEED, rank=rank, world_size=world_size, dependencies=deps)


@pytest.fixture(scope="module")
def cgan_start(digits: RealData, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The generator d2m refines (one for both runs, as the plan shares the cgan job)."""
    path = tmp_path_factory.mktemp("cgan_start")
    cgan = get_method("cgan")
    cgan.distill(digits, 0, cgan.Params(**CGAN_START), LocalContext(0)).save(path)
    return str(path)


def _worker(rank: int, port: int, deps: str, out: str) -> None:
    """Rank `rank` of 2: distil every method of PARAMS; save its artifacts' tensors in `out`."""
    import torch.distributed as dist

    torch.set_num_threads(1)  # 2 processes on 2 cores
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        real = load_dataset("digits")
        results = {
            name: tensors(distil(name, real, context(deps, rank, world_size=2))) for name in PARAMS
        }
        torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


PIXEL_METHODS = ["dm", "datadam", "dc"]


@pytest.fixture(scope="module")
def fastpath_cache(tmp_path_factory: pytest.TempPathFactory):
    """One calibration cache for this module's runs, in-process and spawned (as on one node)."""
    before = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("fastpath_cache"))
    yield
    if before is None:
        del os.environ[CACHE_ENV]
    else:
        os.environ[CACHE_ENV] = before


@pytest.fixture(scope="module")
def one_worker_pixels(
    digits: RealData, cgan_start: str, fastpath_cache: None
) -> dict[str, dict[str, torch.Tensor]]:
    """The pixel methods distilled by 1 worker (first: it calibrates the forward paths)."""
    return {name: tensors(distil(name, digits, context(cgan_start))) for name in PIXEL_METHODS}


@pytest.fixture(scope="module")
def two_workers(
    cgan_start: str, one_worker_pixels: dict, tmp_path_factory: pytest.TempPathFactory
) -> list[dict[str, dict]]:
    """Every method distilled by 2 workers: [rank 0's tensors, rank 1's tensors]."""
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("two_workers")
    mp.spawn(_worker, args=(free_port(), cgan_start, str(out)), nprocs=2, join=True)
    return [torch.load(Path(out) / f"rank{r}.pt") for r in range(2)]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers
    yield
    torch.set_num_threads(before)


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def ranks_agree(name: str, two_workers: list[dict[str, dict]]) -> dict[str, torch.Tensor]:
    rank0, rank1 = two_workers[0][name], two_workers[1][name]
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), f"{name}/{key}: the ranks disagree"
    return rank0


@pytest.mark.parametrize("name", PIXEL_METHODS)
def test_pixel_methods(name: str, digits: RealData, two_workers, one_worker_pixels) -> None:
    two = ranks_agree(name, two_workers)
    one = one_worker_pixels[name]
    init = SyntheticSet.initialise(digits, IPC, "real", LocalContext(SEED)).images.detach()
    diff, moved = max_diff(one, two), max_diff(one, {"images": init})
    print(f"{name}: 1 vs 2 workers {diff:.3g}, moved from init {moved:.3g}")  # shown with -s
    assert diff <= PIXEL_TOL, f"{name}: 1 vs 2 workers differ by {diff:.3g}"
    assert moved >= MIN_MOVED * PIXEL_TOL, f"{name}: the images moved by {moved:.3g} only"


@pytest.mark.parametrize("name", ["cgan", "dim", "d2m"])
def test_generator_methods(name: str, digits: RealData, two_workers, cgan_start: str) -> None:
    two = ranks_agree(name, two_workers)
    params = get_method(name).Params(**PARAMS[name])
    art = distil(name, digits, context(cgan_start))
    one = tensors(art)
    assert one.keys() == two.keys()
    epochs = params.epochs if hasattr(params, "epochs") else params.gan_epochs + params.match_epochs
    steps = epochs * max(1, len(digits.train_y) // params.batch_size)  # generator updates
    weight_tol = ADAM_WALK * params.lr * steps  # Adam's walk of null-gradient biases (docstring)
    weights = max_diff(one, two)
    assert weights <= weight_tol, f"{name}: weights differ by {weights:.3g} > {weight_tol:.3g}"

    def images(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        noise = torch.Generator().manual_seed(0)
        x, _ = GeneratorSet(state, art.config).materialise(10, digits, noise)
        return {"images": x}

    if name == "d2m":  # it refines the cgan generator
        init = load_artifact(cgan_start).state_dict
    else:
        config = data_config(digits, params.noise_dim, params.width)
        init = new_generator(config, LocalContext(SEED)).state_dict()
    diff, moved = max_diff(images(one), images(two)), max_diff(images(one), images(init))
    print(f"{name}: weights 1 vs 2 {weights:.3g}; images 1 vs 2 {diff:.3g}, moved {moved:.3g}")
    assert moved >= MIN_TRAINED, f"{name}: training moved the images by {moved:.3g} only"
    assert diff <= IMAGE_SHARE * moved, f"{name}: images differ by {diff:.3g} of {moved:.3g}"


class _RankWithoutClasses(LocalContext):
    """Rank 0 of 11 on the 10 digit classes (`shard` gives it none); collectives are no-ops, as
    if every other rank contributed zeros."""

    def __init__(self) -> None:
        super().__init__(SEED)
        self.world_size = 11

    def all_reduce_sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def broadcast_(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor


@pytest.mark.parametrize("name", PIXEL_METHODS)
def test_a_rank_without_classes_takes_part(name: str, digits: RealData) -> None:
    ctx = _RankWithoutClasses()
    assert len(ctx.shard(len(digits.classes))) == 0
    images = tensors(distil(name, digits, ctx))["images"]
    init = SyntheticSet.initialise(digits, IPC, "real", LocalContext(SEED)).images.detach()
    assert torch.equal(images, init)  # its gradient is zero: it adds nothing to the sum
