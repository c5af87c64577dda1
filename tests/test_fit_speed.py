"""Fast evaluation training: the calibrated execution path (`ddbench.fastpath`) and the
vectorised seeds (`ddbench.fit_vmap`) on tiny digits runs.

The full parity figure and the speed figures are in benchmarks/RESULTS.md; these tests check
that the decision follows the measurements, that measuring never changes a result, and that the
paths agree with fp32 / sequential training.
"""

from __future__ import annotations

import json
import shutil
import statistics

import pytest
import torch
import torch.nn.functional as F

from ddbench import fastpath
from ddbench.archs import build_arch
from ddbench.context import Context
from ddbench.fastpath import FP32_EAGER, TrainSetup, choose_setup, shape_key
from ddbench.fit import Recipe, fit_artifact, seeded_model, train_model, train_seed
from ddbench.fit_vmap import fit_and_test_seeds, train_vectorised, use_vectorised
from ddbench.methods import get_method


@pytest.fixture(scope="module")
def digits_ipc5(digits):
    artifact = get_method("random_real").distill(digits, 5, None, Context(0))
    return artifact.materialise(5, digits, torch.Generator().manual_seed(0))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh node-local cache for the calibration (and an empty in-process memo)."""
    monkeypatch.setenv("DDBENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(fastpath, "_MEMORY", {})
    return tmp_path


SHAPE, BATCH = (1, 8, 8), 100


def seed_measurements(arch: str, seconds: dict[str, float], augment: bool = True) -> None:
    """Write a calibration as if measured: seconds per step (and `<path>/compile`) by path.
    Micro-batched paths not given are as slow as 1 s a step (so the test says which win)."""
    key = shape_key(arch, SHAPE, BATCH, "cpu", augment=augment, micro=fastpath.MICRO_BATCH_ROWS)
    path = fastpath._cache_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = fastpath.MICRO_BATCH_ROWS
    slow = {f"{p}_mb{rows}": 1.0 for p in ("fp32", "bf16", "fp32_cl", "bf16_cl")}
    path.write_text(json.dumps({"key": key, "seconds": {**slow, **seconds}}))
    fastpath._MEMORY.clear()  # read the file anew


def decide(arch: str, steps: int, **recipe: object) -> TrainSetup:
    model = build_arch(arch, SHAPE[0], 10, SHAPE[1])
    choice = choose_setup(Recipe(**recipe), arch, model, SHAPE, 10, "digits", BATCH, steps)
    return choice.setup


def test_the_path_follows_the_measurements(cache):
    fp32, bf16 = "fp32", "bf16"
    seed_measurements("convnet", {fp32: 0.10, bf16: 0.05, "fp32_cl": 0.12, "bf16_cl": 0.06})
    assert decide("convnet", 100) == TrainSetup(bf16, channels_last=False, compile=False)
    seed_measurements("convnet", {fp32: 0.10, bf16: 0.30, "fp32_cl": 0.099, "bf16_cl": 0.4})
    assert decide("convnet", 100) == FP32_EAGER  # emulated bf16; channels-last within noise
    # compiling: a faster step, but 60 s to compile, repaid only by a long run
    compiled = {fp32: 0.10, bf16: 0.30, "fp32_cl": 0.2, "bf16_cl": 0.4, "fp32_compiled": 0.05}
    seed_measurements("convnet", {**compiled, "fp32_compiled/compile": 60.0})
    assert decide("convnet", 100) == FP32_EAGER  # 10 s of fp32 work: compiling not even tried
    long_run = decide("convnet", 100_000)  # 10,000 s of fp32 work
    assert long_run.compile == (shutil.which("g++") is not None)
    # bf16 only where the parity check passed; no channels-last without convolutions
    seed_measurements("mlp", {fp32: 0.10, bf16: 0.01})
    assert decide("mlp", 100) == FP32_EAGER


def test_compiling_is_tried_from_the_compile_time_this_node_measured(cache):
    """Before this node has measured compiling an architecture, compiled paths are timed only
    for runs of more than COMPILE_WORTH_TRYING_S of fp32 work; once it has (any shape), from
    twice its longest measured compile, never below COMPILE_MIN_WORK_S."""
    assert fastpath.measured_compile_s("convnet", "cpu") is None
    eager = {"fp32": 0.10, "bf16": 0.30, "fp32_cl": 0.2, "bf16_cl": 0.4}
    seed_measurements("convnet", eager)
    assert decide("convnet", 900) == FP32_EAGER  # 90 s of work, nothing known: not tried
    # a compile of 40 s measured on this node (here for this very shape, so it is also the
    # candidate's measurement): 90 s of work now repays it, and the compiled path wins
    seed_measurements("convnet", {**eager, "fp32_compiled": 0.02, "fp32_compiled/compile": 40.0})
    assert fastpath.measured_compile_s("convnet", "cpu") == 40.0
    assert decide("convnet", 900).compile == (shutil.which("g++") is not None)
    assert not fastpath.compile_worth_trying("convnet", "cpu", 79.0)
    assert fastpath.measured_compile_s("mlp", "cpu") is None  # evidence is per architecture
    # a compile measured on a warm inductor cache says little about a new shape's
    seed_measurements("convnet", {**eager, "fp32_compiled/compile": 1.0})
    assert not fastpath.compile_worth_trying("convnet", "cpu", fastpath.COMPILE_MIN_WORK_S)
    assert fastpath.compile_worth_trying("convnet", "cpu", fastpath.COMPILE_MIN_WORK_S + 1)
    # measurements of another device model or torch are no evidence for this node
    other = cache / fastpath.CACHE_DIR / "convnet-other.json"
    key = {**shape_key("convnet", SHAPE, BATCH, "cpu"), "torch": "0.0"}
    other.write_text(json.dumps({"key": key, "seconds": {"fp32_compiled/compile": 500.0}}))
    assert fastpath.measured_compile_s("convnet", "cpu") == 1.0


def test_short_runs_read_no_compile_evidence(cache, monkeypatch):
    """A run under COMPILE_MIN_WORK_S never compiles, so the node cache is not read for it (most
    cells are such runs)."""

    def no_reads(arch: str, device: str) -> float:
        raise AssertionError("the node cache was read")

    monkeypatch.setattr(fastpath, "measured_compile_s", no_reads)
    assert not fastpath.compile_worth_trying("convnet", "cpu", fastpath.COMPILE_MIN_WORK_S)
    with pytest.raises(AssertionError, match="read"):
        fastpath.compile_worth_trying("convnet", "cpu", fastpath.COMPILE_MIN_WORK_S + 1)


def test_micro_batches_follow_the_measurements(cache):
    """A micro-batched path is taken where it measures faster, and is no candidate for a
    BatchNorm network (its statistics would span a block, not the batch)."""
    rows = fastpath.MICRO_BATCH_ROWS
    times = {"fp32": 0.10, "bf16": 0.30, "fp32_cl": 0.12, "bf16_cl": 0.4}
    seed_measurements("convnet", {**times, f"fp32_mb{rows}": 0.07})
    assert decide("convnet", 100) == TrainSetup("fp32", False, compile=False, micro_batch=rows)
    seed_measurements("convnet", {**times, f"fp32_mb{rows}": 0.098})
    assert decide("convnet", 100) == FP32_EAGER  # within the margin
    seed_measurements("convnet_bn", {**times, f"fp32_mb{rows}": 0.01})
    assert decide("convnet_bn", 100) == FP32_EAGER

    def blocked(arch: str, batch: int, steps: int) -> list[TrainSetup]:
        model = build_arch(arch, SHAPE[0], 10, SHAPE[1])
        paths = fastpath.candidates(Recipe(), arch, model, batch, steps)
        return [path for path in paths if path.micro_batch]

    assert len(blocked("convnet", 100, 100)) == 4  # fp32 / bf16 x NCHW / channels-last
    assert not blocked("convnet_bn", 100, 100)
    assert not blocked("convnet", rows, 100)  # one block would be the whole batch
    # timing the 4 blocked candidates takes 4 x (warm-up + timed) steps: a run that short
    # could not repay it, one step longer could
    timing = 4 * (fastpath.WARMUP_STEPS + fastpath.TIMED_STEPS)
    assert not blocked("convnet", 100, timing) and blocked("convnet", 100, timing + 1)


def test_the_test_batch_follows_the_measurements(digits, cache):
    """A test pass runs in blocks where the calibration measured them faster, and the blocks
    give the one call's accuracy."""
    from ddbench.fit import accuracy

    whole, small = fastpath.TEST_BATCHES
    model = build_arch("convnet", SHAPE[0], 10, SHAPE[1]).eval()

    def seeded(seconds: dict[int, float]) -> int:
        key = shape_key("convnet", SHAPE, fastpath.TEST_PROBE, "cpu", test_pass="fp32")
        path = fastpath._cache_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        timings = {f"test_batch{b}": t for b, t in seconds.items()}
        path.write_text(json.dumps({"key": key, "seconds": timings}))
        fastpath._MEMORY.clear()
        return fastpath.choose_test_batch("convnet", model, SHAPE, "fp32")

    assert seeded({whole: 1.0, small: 0.5}) == small
    assert seeded({whole: 1.0, small: 0.97}) == whole  # within the margin
    fastpath._MEMORY.clear()
    for stale in cache.glob("fastpath/*.json"):
        stale.unlink()
    assert fastpath.choose_test_batch("convnet", model, SHAPE, "fp32") in (whole, small)
    assert list(cache.glob("fastpath/convnet-*.json"))  # measured for real, and cached
    x, y = digits.test_x, digits.test_y
    assert accuracy(model, x, y, batch=small) == accuracy(model, x, y, batch=whole)


def test_micro_batches_give_the_whole_batch_gradient():
    """Blocks of at most MICRO_BATCH_ROWS images (spied: 100 images -> 7 blocks of 14-15) whose
    mean losses are weighted by their share sum to the one-pass gradient."""
    torch.manual_seed(0)
    model = build_arch("convnet", SHAPE[0], 10, SHAPE[1])
    x, y = torch.randn(100, *SHAPE), torch.randint(10, (100,))
    seen = []

    def forward(xb):
        seen.append(len(xb))
        return model(xb)

    grads = {}
    for rows in (0, fastpath.MICRO_BATCH_ROWS):
        model.zero_grad()
        setup = TrainSetup("fp32", channels_last=False, compile=False, micro_batch=rows)
        fastpath.accumulate_gradients(forward, F.cross_entropy, x, y, setup, "cpu")
        grads[rows] = [p.grad.clone() for p in model.parameters()]
    assert seen == [100, 15, 15, 14, 14, 14, 14, 14]
    for whole, blocked in zip(grads[0], grads[fastpath.MICRO_BATCH_ROWS], strict=True):
        assert torch.allclose(whole, blocked, rtol=1e-4, atol=1e-6)


def test_the_reference_path_is_never_calibrated(cache):
    assert decide("convnet", 10**6, precision="fp32", compile="off") == FP32_EAGER
    # one step: too short for micro-batches, so bf16 eager is the only path
    assert decide("mlp", 1, precision="bf16", compile="off").precision == "bf16"
    assert not list(cache.glob("**/*.json"))  # nothing measured


def test_calibration_measures_once_and_changes_no_result(digits, cache):
    """A real calibration of the ConvNet step on digits: measured once (cached on disk), and a
    cell's numbers are the same whether the calibration ran or came from the cache."""
    artifact = get_method("random_real").distill(digits, 2, None, Context(0))
    recipe = Recipe(epochs=3)
    cold = fit_artifact("convnet", artifact, 2, digits, recipe, 0)
    files = sorted(cache.glob("fastpath/convnet-*.json"))
    timings = [json.loads(f.read_text())["seconds"] for f in files]
    assert len(files) == 2  # the training step and the test pass
    assert any(t.get("fp32", 0) > 0 for t in timings)
    assert any(t.get(f"test_batch{fastpath.TEST_BATCHES[1]}", 0) > 0 for t in timings)
    stamps = [f.stat().st_mtime_ns for f in files]
    warm = fit_artifact("convnet", artifact, 2, digits, recipe, 0)
    assert [f.stat().st_mtime_ns for f in files] == stamps  # looked up, not measured again
    assert cold[0] == warm[0]
    path = cold[1]
    assert path["precision_bits"] in (16.0, 32.0) and path["step_ms"] > 0
    assert path["fp32_step_ms"] > 0 and path["compiled"] == 0.0  # 3 epochs never pay a compile


def test_vmap_is_a_layout_rule_on_cpus():
    assert not use_vectorised("auto", "convnet", "cpu", 8)  # CPUs: one Ray task per seed
    with pytest.raises(ValueError, match="vectorised training supports"):
        use_vectorised("on", "mlp", "cpu", 2)


@pytest.mark.slow
def test_bf16_matches_fp32_on_digits(digits):
    """Same seeds, fp32 vs bf16: mean test top1 within a few points (full figure: RESULTS.md).
    IPC 5 keeps it short where bf16 is emulated (slow) on the CPU."""
    artifact = get_method("random_real").distill(digits, 5, None, Context(0))
    means = {}
    for precision in ("fp32", "bf16"):
        recipe = Recipe(epochs=20, precision=precision, compile="off")
        top1 = [
            fit_artifact("convnet", artifact, 5, digits, recipe, seed)[0]["test"] for seed in (0, 1)
        ]
        assert all(t > 0.3 for t in top1)  # learnt something (chance 0.1)
        means[precision] = statistics.mean(top1)
    assert abs(means["bf16"] - means["fp32"]) < 0.08


def test_vectorised_matches_sequential(digits, digits_ipc5):
    x, y = digits_ipc5
    recipe = Recipe(epochs=4, batch_size=32, precision="fp32", compile="off")  # 2 steps / epoch
    seeds = [0, 1, 2]
    data = [(x, y)] * len(seeds)
    sequential = [
        top1
        for top1, _ in fit_and_test_seeds("convnet", digits, data, recipe, seeds, vectorise="off")
    ]
    vectorised = [
        top1
        for top1, _ in fit_and_test_seeds("convnet", digits, data, recipe, seeds, vectorise="on")
    ]
    one_image = 1.0 / len(digits.test_y)
    for seq, vec in zip(sequential, vectorised, strict=True):
        assert seq["test"] == pytest.approx(vec["test"], abs=one_image + 1e-9)
        assert seq["val"] == pytest.approx(vec["val"], abs=1.0 / len(digits.val_y) + 1e-9)
    assert len({round(r["test"], 6) for r in sequential}) > 1  # seeds differ from each other


def test_cross_arch_records_resolved_precision(digits, path_rows):
    from ddbench.evals import EvalJob, get_eval

    evaluator = get_eval("cross_arch")
    params = evaluator.Params(archs=["mlp"], seeds=1, epochs=1)
    assert params.model_dump()["precision"] == "auto"  # in eval_params as asked
    artifact = get_method("random_real").distill(digits, 1, None, Context(0))
    job = EvalJob(artifact, digits, 1, "digits")
    rows = evaluator.run({"arch": "mlp", "eval_seed": 0}, job, params, Context(1))
    bits = [r["value"] for r in rows if r["metric"] == "precision_bits"]
    assert bits == [32.0]  # mlp: bf16 is no candidate (not parity-checked)
    assert {r["metric"] for r in rows} >= path_rows


def test_cross_arch_groups_seeds_only_where_vectorised():
    from ddbench.evals import get_eval

    evaluator = get_eval("cross_arch")
    params = evaluator.Params(archs=["convnet", "mlp"], seeds=3)
    per_seed = [{"arch": a, "eval_seed": s} for a in ("convnet", "mlp") for s in range(3)]
    assert evaluator.cells("cpu", params) == per_seed  # CPUs: one Ray task per seed
    assert evaluator.cells("cuda", params) == [
        {"arch": "convnet", "eval_seeds": [0, 1, 2]},
        *per_seed[3:],  # mlp is not a ConvNet: never vectorised
    ]
    teacher = evaluator.Params(archs=["convnet"], seeds=3, labels="teacher")
    assert len(evaluator.cells("cuda", teacher)) == 3  # teacher labels are per run
    off = evaluator.Params(archs=["convnet"], seeds=3, vectorise="off")
    assert len(evaluator.cells("cuda", off)) == 3
    with pytest.raises(ValueError, match="vectorise: on needs sampling: fixed"):
        evaluator.Params(vectorise="on", sampling="fresh")


@pytest.mark.parametrize("artifact_kind", ["image_set", "generator"])
def test_vectorised_cell_writes_the_per_seed_rows(digits, artifact_kind):
    """A grouped cell (forced on the CPU) writes the rows of its per-seed cells; a generator's
    seeds each train on their own fixed draw."""
    from ddbench.evals import EvalJob, get_eval
    from tests.conftest import tiny_generator_set

    if artifact_kind == "generator":
        artifact = tiny_generator_set(digits)
    else:
        artifact = get_method("random_real").distill(digits, 3, None, Context(0))
    evaluator = get_eval("cross_arch")
    common = {"archs": ["convnet"], "seeds": 2, "epochs": 3, "precision": "fp32"}
    grouped = evaluator.Params(**common, vectorise="on")
    (cell,) = evaluator.cells("cpu", grouped)
    job = EvalJob(artifact, digits, 3, "digits")
    vectorised = evaluator.run(cell, job, grouped, Context(1))
    sequential_params = evaluator.Params(**common, vectorise="off")
    sequential = [
        row
        for seed_cell in evaluator.cells("cpu", sequential_params)
        for row in evaluator.run(seed_cell, job, sequential_params, Context(1))
    ]

    def keyed(rows):
        return {(r["eval_seed"], r["split"], r["metric"]): r["value"] for r in rows}

    vec, seq = keyed(vectorised), keyed(sequential)
    top1 = {k for k in seq if k[2] == "top1"}
    assert {k for k in vec if k[2] == "top1"} == top1 and len(top1) == 4  # 2 seeds x val/test
    for key in top1:
        assert vec[key] == pytest.approx(seq[key], abs=1.0 / len(digits.test_y) + 1e-9)
    assert vec[(0, "test", "precision_bits")] == vec[(1, "test", "precision_bits")] == 32.0
    if artifact_kind == "generator":  # costs: measured once per grouped cell, per seed otherwise
        assert (0, "test", "gen_ms_per_image") in vec and (1, "test", "gen_ms_per_image") not in vec


# Adam divides each element's gradient by its own running magnitude, so rounding noise on a
# weight whose exact gradient is zero (a conv bias under instance norm) becomes a step of about
# lr, and the two paths part by up to lr per step in such weights. Measured on digits after 8
# steps: logits apart by at most 0.011 with AdamW (their largest magnitude 0.5) and 1e-5 with
# SGD; the bounds are in units of max(largest logit, 1) and leave about 5x room.
@pytest.mark.parametrize(
    ("optimiser", "tolerance"),
    [({}, 1e-4), ({"optimizer": "adamw", "schedule": "cosine", "lr": 1e-3}, 0.05)],
    ids=["sgd_step", "adamw_cosine"],
)
def test_vectorised_training_matches_sequential_logits(digits, digits_ipc5, optimiser, tolerance):
    """Every optimiser of the recipe is element-wise, so training K stacked models takes the
    same steps as training each alone: the logits agree up to the optimiser's noise."""
    x, y = digits_ipc5
    recipe = Recipe(epochs=4, batch_size=32, precision="fp32", compile="off", **optimiser)
    seeds = [0, 1]
    alone = [seeded_model("convnet", digits, seed) for seed in seeds]
    for model, seed in zip(alone, seeds, strict=True):
        train_model(model, x, y, recipe, "digits", train_seed(seed, "convnet"))
    stacked = [seeded_model("convnet", digits, seed) for seed in seeds]
    train_vectorised(
        stacked, [(x, y)] * len(seeds), recipe, "digits", [train_seed(s, "convnet") for s in seeds]
    )
    with torch.no_grad():
        for a, b in zip(alone, stacked, strict=True):
            expected, got = a.eval()(digits.test_x), b.eval()(digits.test_x)
            scale = expected.abs().max().item()
            assert (expected - got).abs().max().item() <= tolerance * max(scale, 1.0)
