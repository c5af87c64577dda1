"""Generator methods (cgan, dim, d2m): networks, the GeneratorSet artifact, sampling modes,
checkpoint / resume, loading a generator from a local file, and planning (shared cgan job)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ddbench.artifact import GeneratorSet, ImageSet, load_artifact
from ddbench.context import LocalContext
from ddbench.data import RealData, load_dataset
from ddbench.evals import EvalJob, get_eval
from ddbench.fit import Recipe, draw_generator, fit_artifact, train_model
from ddbench.generators import (
    GeneratorCheckpointError,
    build_discriminator,
    build_generator,
    generator_config,
    load_generator_checkpoint,
)
from ddbench.methods import get_method
from ddbench.methods.d2m import load_start
from tests.conftest import TINY_GENERATOR, tiny_generator_set


@pytest.fixture(scope="module")
def real() -> RealData:
    torch.set_num_threads(1)
    return load_dataset("digits")


class Payload:
    """An arbitrary pickled object: loading with weights_only=True must refuse it."""


def states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- networks


@pytest.mark.parametrize("size, channels", [(8, 1), (16, 3), (28, 1), (32, 3), (64, 3)])
def test_networks_at_every_size(size: int, channels: int) -> None:
    config = generator_config(channels, size, 10, **TINY_GENERATOR)
    gen, disc = build_generator(config), build_discriminator(config)
    x = gen(torch.randn(3, 8), torch.tensor([0, 4, 9]))
    assert x.shape == (3, channels, size, size)
    assert disc(x, torch.tensor([0, 4, 9])).shape == (3,)


def test_generator_output_is_normalised_like_the_data(real: RealData) -> None:
    art = tiny_generator_set(real)
    x, _ = art.materialise(2, real, torch.Generator().manual_seed(0))
    std, mean = torch.tensor(real.std).view(1, -1, 1, 1), torch.tensor(real.mean).view(1, -1, 1, 1)
    pixels = x * std + mean
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0  # tanh pixels, then the data's mean / std


# --------------------------------------------------------------------------- artifact


def test_generator_set_round_trip(real: RealData, tmp_path: Path) -> None:
    art = tiny_generator_set(real)
    art.meta["note"] = "kept"
    art.save(tmp_path / "g")
    back = load_artifact(tmp_path / "g")
    assert isinstance(back, GeneratorSet)
    assert back.config == art.config and back.meta["note"] == "kept"
    assert states_equal(back.state_dict, art.state_dict)
    assert back.artifact_bytes() == art.artifact_bytes() > 0
    meta = json.loads((tmp_path / "g" / "meta.json").read_text())
    assert meta["kind"] == "generator_set" and meta["artifact_bytes"] == art.artifact_bytes()
    x1, y1 = art.materialise(3, real, torch.Generator().manual_seed(7))
    x2, y2 = back.materialise(3, real, torch.Generator().manual_seed(7))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert y1.tolist() == [c for c in range(10) for _ in range(3)]
    images, labels = back.preview(real, torch.Generator().manual_seed(0))
    assert images.shape == (100, 1, 8, 8) and labels.bincount().tolist() == [10] * 10
    assert back.num_parameters() == sum(p.numel() for p in build_generator(art.config).parameters())


# --------------------------------------------------------------------------- sampling modes


def recording(art: GeneratorSet) -> list[torch.Tensor]:
    """Make `art.sample` remember every batch it returns."""
    draws: list[torch.Tensor] = []
    original = art.sample

    def sample(labels: torch.Tensor, generator: torch.Generator, device: str = "cpu"):
        out = original(labels, generator, device)
        draws.append(out)
        return out

    art.sample = sample  # type: ignore[method-assign]
    return draws


def test_fixed_is_one_draw_per_eval_seed(real: RealData) -> None:
    art = tiny_generator_set(real)
    draws = recording(art)
    recipe = Recipe(epochs=2)
    a, _ = fit_artifact("mlp", art, 2, real, recipe, eval_seed=0, sampling="fixed")
    b, _ = fit_artifact("mlp", art, 2, real, recipe, eval_seed=0, sampling="fixed")
    fit_artifact("convnet", art, 2, real, Recipe(epochs=1), eval_seed=0, sampling="fixed")
    fit_artifact("mlp", art, 2, real, recipe, eval_seed=1, sampling="fixed")
    assert len(draws) == 4  # one draw per training run, never per epoch
    assert a == b and torch.equal(draws[0], draws[1])
    assert torch.equal(draws[0], draws[2])  # every architecture of a seed sees the same draw
    assert not torch.equal(draws[0], draws[3])  # another eval seed, another draw


def test_fresh_draws_differ_per_epoch(real: RealData) -> None:
    art = tiny_generator_set(real)
    draws = recording(art)
    recipe = Recipe(epochs=3)
    first, _ = fit_artifact("mlp", art, 2, real, recipe, eval_seed=0, sampling="fresh")
    assert len(draws) == 3 and all(d.shape == (20, 1, 8, 8) for d in draws)
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])
    again, _ = fit_artifact("mlp", art, 2, real, recipe, eval_seed=0, sampling="fresh")
    assert first == again
    assert all(torch.equal(a, b) for a, b in zip(draws[:3], draws[3:], strict=True))


def test_non_generators_ignore_sampling(real: RealData) -> None:
    image_set = get_method("random_real").distill(real, 2, None, LocalContext(0))
    recipe = Recipe(epochs=2)
    fixed = fit_artifact("mlp", image_set, 2, real, recipe, eval_seed=0, sampling="fixed")
    assert fit_artifact("mlp", image_set, 2, real, recipe, 0, sampling="fresh") == fixed
    assert fit_artifact("mlp", image_set, 2, real, recipe, 0, sampling="time_matched") == fixed


def test_time_matched_stops_within_budget(real: RealData) -> None:
    art = tiny_generator_set(real)
    recipe = Recipe(epochs=20)
    top1, info = fit_artifact("mlp", art, 2, real, recipe, eval_seed=0, sampling="time_matched")
    assert 0.0 <= top1["test"] <= 1.0
    assert 1 <= info["time_matched_epochs"] <= recipe.epochs
    assert info["time_matched_images_per_class"] >= 1
    # the whole run (generation + training) ends within the budget, give or take one epoch
    per_epoch = info["time_matched_seconds"] / info["time_matched_epochs"]
    assert info["time_matched_seconds"] <= info["time_matched_budget_s"] + per_epoch + 0.05


def test_deadline_stops_training_at_an_epoch_boundary(real: RealData) -> None:
    x, y = real.train_x[:20], real.train_y[:20]
    stats: dict[str, float] = {}
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    train_model(net, x, y, Recipe(epochs=50), "digits", 0, deadline_s=0.0, stats=stats)
    assert stats["epochs"] == 1  # the first epoch always runs; the deadline is already past
    stats.clear()
    train_model(net, x, y, Recipe(epochs=5), "digits", 0, stats=stats)
    assert stats["epochs"] == 5


def test_cross_arch_rows_record_sampling_and_costs(real: RealData, path_rows: set[str]) -> None:
    evaluator = get_eval("cross_arch")
    params = evaluator.Params(epochs=1, seeds=1, archs=["mlp"], sampling="fresh")
    assert params.model_dump()["sampling"] == "fresh"
    assert evaluator.Params().sampling == "fixed"
    job = EvalJob(tiny_generator_set(real), real, 2, "digits")
    rows = evaluator.run({"arch": "mlp", "eval_seed": 0}, job, params, LocalContext(0))
    metrics = {(r["metric"], r["split"]): r for r in rows}
    assert {("top1", "val"), ("top1", "test")} <= set(metrics)
    for name in ("generator_params", "gen_ms_per_image", "gen_train_time_ratio"):
        row = metrics[(name, "test")]
        assert row["value"] > 0 and row["higher_is_better"] is False and row["arch"] == "mlp"
    image_set = get_method("random_real").distill(real, 1, None, LocalContext(0))
    rows = evaluator.run(
        {"arch": "mlp", "eval_seed": 0},
        EvalJob(image_set, real, 1, "digits"),
        params,
        LocalContext(0),
    )
    assert {"top1", "precision_bits"} <= {r["metric"] for r in rows} <= {"top1", *path_rows}


# --------------------------------------------------------------------------- resume


def run_twice(method: str, params: dict, real: RealData, dependencies: dict | None = None):
    """An uninterrupted run, and a run resumed from the first checkpoint of the same job."""
    m = get_method(method)
    p = m.Params(**params)
    ctx = LocalContext(11, dependencies=dependencies)
    full = m.distill(real, 0, p, ctx)
    assert len(ctx.checkpoints) >= 1
    saved = ctx.checkpoints[0]
    resumed_ctx = LocalContext(11, dependencies=dependencies)
    resumed_ctx.checkpoints.append(saved)  # what a restarted Ray Train worker would load
    resumed = m.distill(real, 0, p, resumed_ctx)
    return full, resumed, saved, resumed_ctx


@pytest.mark.parametrize(
    "method, params",
    [
        ("cgan", {**TINY_GENERATOR, "epochs": 3, "batch_size": 512, "checkpoint_every": 1}),
        (
            "dim",
            {
                **TINY_GENERATOR,
                "gan_epochs": 1,
                "match_epochs": 2,
                "batch_size": 512,
                "checkpoint_every": 2,
                "pool": ["mlp"],  # logits are all DiM matches; the MLP keeps the test fast
                "pool_train_steps": 1,
                "task_balance": 0.1,
            },
        ),
        (  # DiM's code: a lower lr while matching, which a resumed run must set again
            "dim",
            {
                **TINY_GENERATOR,
                "gan_epochs": 1,
                "match_epochs": 2,
                "batch_size": 512,
                "checkpoint_every": 2,
                "pool": ["mlp"],
                "pool_train_steps": 1,
                "task_balance": 0.1,
                "match_lr": 1e-5,
            },
        ),
    ],
    ids=["cgan", "dim", "dim_match_lr"],
)
def test_resume_continues_from_the_saved_epoch(method: str, params: dict, real: RealData) -> None:
    full, resumed, saved, resumed_ctx = run_twice(method, params, real)
    epochs = params.get("epochs", params.get("gan_epochs", 0) + params.get("match_epochs", 0))
    start = int(saved["epoch"])
    assert 0 < start < epochs
    # the resumed run saved only the checkpoints after the one it started from
    later = [int(c["epoch"]) for c in resumed_ctx.checkpoints[1:]]
    assert later == [e for e in range(start + 1, epochs) if e % params["checkpoint_every"] == 0]
    assert states_equal(full.state_dict, resumed.state_dict)  # identical to never stopping


def test_d2m_resumes_and_starts_from_the_cgan_dependency(real: RealData, tmp_path: Path) -> None:
    cgan = get_method("cgan").distill(
        real,
        0,
        get_method("cgan").Params(**TINY_GENERATOR, epochs=1, batch_size=512),
        LocalContext(0),
    )
    cgan.save(tmp_path / "cgan")
    params = {"epochs": 3, "batch_size": 512, "checkpoint_every": 1, "pool": ["mlp"]}
    full, resumed, saved, _ = run_twice("d2m", params, real, {"generator": str(tmp_path / "cgan")})
    assert int(saved["epoch"]) == 1
    assert states_equal(full.state_dict, resumed.state_dict)
    assert full.config == cgan.config  # the same architecture as the generator it refined
    assert not states_equal(full.state_dict, cgan.state_dict)  # and it did change it


# --------------------------------------------------------------------------- local checkpoints


def test_d2m_from_a_local_checkpoint(real: RealData, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    art = tiny_generator_set(real)
    arch_only = {k: art.config[k] for k in ("arch", "noise_dim", "width", "conv_blocks")}
    torch.save({"generator": art.state_dict}, tmp_path / "g.pt")
    (tmp_path / "g.json").write_text(json.dumps(arch_only))
    save_file(art.state_dict, str(tmp_path / "w.safetensors"))
    (tmp_path / "w.json").write_text(json.dumps(arch_only))
    art.save(tmp_path / "artifact")
    d2m = get_method("d2m")
    for source in ("g.pt", "w.safetensors", "artifact"):
        params = d2m.Params(
            epochs=1, batch_size=512, pool=["convnet"], generator=str(tmp_path / source)
        )
        assert d2m.dependencies(params) == {}  # no cgan job is planned
        out = d2m.distill(real, 0, params, LocalContext(0))
        assert out.config["noise_dim"] == 8 and out.config["mean"] == list(real.mean)
        assert out.meta["start"] == str(tmp_path / source)
    assert "generator" in d2m.dependencies(d2m.Params())


def test_bad_generator_checkpoints_give_clear_errors(real: RealData, tmp_path: Path) -> None:
    expected = {"channels": 1, "image_size": 8, "num_classes": 10}
    arch = json.dumps({"noise_dim": 8, "width": 8})
    with pytest.raises(GeneratorCheckpointError, match="does not exist"):
        load_generator_checkpoint(tmp_path / "nope.pt", expected)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    (tmp_path / "junk.json").write_text(arch)
    with pytest.raises(GeneratorCheckpointError, match="cannot read generator weights"):
        load_generator_checkpoint(tmp_path / "junk.pt", expected)

    torch.save({"generator": Payload()}, tmp_path / "evil.pt")
    (tmp_path / "evil.json").write_text(arch)
    with pytest.raises(GeneratorCheckpointError, match="weights_only"):
        load_generator_checkpoint(tmp_path / "evil.pt", expected)
    art = tiny_generator_set(real)
    torch.save(art.state_dict, tmp_path / "noconfig.pt")
    with pytest.raises(GeneratorCheckpointError, match="no config beside"):
        load_generator_checkpoint(tmp_path / "noconfig.pt", expected)
    (tmp_path / "wide.pt").write_bytes((tmp_path / "noconfig.pt").read_bytes())
    (tmp_path / "wide.json").write_text(json.dumps({"noise_dim": 8, "width": 16}))
    with pytest.raises(GeneratorCheckpointError, match="do not fit"):
        load_generator_checkpoint(tmp_path / "wide.pt", expected)
    (tmp_path / "rgb.json").write_text(json.dumps({"noise_dim": 8, "width": 8, "channels": 3}))
    (tmp_path / "rgb.pt").write_bytes((tmp_path / "noconfig.pt").read_bytes())
    with pytest.raises(GeneratorCheckpointError, match="channels=3"):
        load_generator_checkpoint(tmp_path / "rgb.pt", expected)
    d2m = get_method("d2m")
    with pytest.raises(GeneratorCheckpointError):
        d2m.distill(real, 0, d2m.Params(generator=str(tmp_path / "junk.pt")), LocalContext(0))
    (tmp_path / "empty").mkdir()
    with pytest.raises(GeneratorCheckpointError, match="not a ddbench generator artifact"):
        load_start(tmp_path / "empty", expected)
    ImageSet(torch.zeros(2, 1, 8, 8), torch.tensor([0, 1])).save(tmp_path / "images")
    assert json.loads((tmp_path / "images" / "meta.json").read_text())["kind"] == "image_set"
    with pytest.raises(GeneratorCheckpointError, match="'image_set' artifact, not a generator_set"):
        load_start(tmp_path / "images", expected)


# --------------------------------------------------------------------------- planning


def write_suite(path: Path, cgan_params: dict, d2m_params: dict) -> Path:
    suite = {
        "name": "gen_plan",
        "dataset": {"name": "digits"},
        "ipc": [1, 10, 50],
        "methods": [
            {"name": "cgan", "params": cgan_params},
            {"name": "dim", "params": {"gan_epochs": 2, "match_epochs": 1}},
            {"name": "d2m", "params": d2m_params},
        ],
        "evals": [{"name": "cross_arch", "params": {"seeds": 1}}],
    }
    path.write_text(json.dumps(suite))  # JSON is YAML
    return path


def test_plan_one_job_per_generator_method_and_a_shared_cgan(tmp_path: Path) -> None:
    from ddbench.plan import make_plan
    from ddbench.spec import load_suite

    cgan = {"epochs": 5, "width": 32, "lr": 0.001}
    plan = make_plan(load_suite(write_suite(tmp_path / "s.yaml", cgan, {"pretrain": cgan})))
    by_method = {j.method: j for j in plan.jobs}
    assert sorted(j.method for j in plan.jobs) == ["cgan", "d2m", "dim"]
    assert all(j.ipc is None and j.eval_ipcs == (1, 10, 50) for j in plan.jobs)
    assert dict(by_method["d2m"].depends) == {"generator": by_method["cgan"].job_id}
    assert [j.method for j in plan.jobs].index("cgan") < [j.method for j in plan.jobs].index("d2m")
    assert {c.ipc for c in plan.cells_of(by_method["d2m"])} == {1, 10, 50}

    # different pretraining: d2m gets its own (unevaluated) cgan job
    plan = make_plan(load_suite(write_suite(tmp_path / "t.yaml", cgan, {})))
    cgans = [j for j in plan.jobs if j.method == "cgan"]
    assert len(cgans) == 2 and sorted(len(j.eval_ipcs) for j in cgans) == [0, 3]
    d2m = next(j for j in plan.jobs if j.method == "d2m")
    assert dict(d2m.depends)["generator"] == next(j.job_id for j in cgans if not j.eval_ipcs)

    # a local generator: no cgan dependency at all
    plan = make_plan(
        load_suite(write_suite(tmp_path / "u.yaml", cgan, {"generator": "/weights/g.pt"}))
    )
    assert sorted(j.method for j in plan.jobs) == ["cgan", "d2m", "dim"]
    assert next(j for j in plan.jobs if j.method == "d2m").depends == ()


def test_smoke_params_share_the_cgan_job(tmp_path: Path) -> None:
    from ddbench.plan import make_plan
    from ddbench.spec import load_suite

    path = write_suite(tmp_path / "s.yaml", {}, {})
    data = json.loads(path.read_text())
    data["methods"][1]["params"] = {}
    data["profiles"] = {"smoke": {"ipc": [1]}}
    path.write_text(json.dumps(data))
    plan = make_plan(load_suite(path, ["profile=smoke"]))
    assert sorted(j.method for j in plan.jobs) == ["cgan", "d2m", "dim"]


def test_smoke_budgets_distil_generators(real: RealData) -> None:
    """The plugins' smoke budgets run and give generators (how long they take is a benchmark's
    business, not a timed test's)."""
    for name in ("cgan", "dim"):
        m = get_method(name)
        art = m.distill(real, 0, m.Params(**m.smoke), LocalContext(0))
        assert isinstance(art, GeneratorSet)
    assert draw_generator(0, 1, "x").initial_seed() != draw_generator(1, 1, "x").initial_seed()


def test_dim_match_lr_applies_to_the_matching_epochs_only(real: RealData) -> None:
    """`match_lr` changes the generator only through the matching epochs: with no matching
    epoch it is the same run, with one it is a different one."""
    dim = get_method("dim")
    base = {**TINY_GENERATOR, "batch_size": 512, "pool": ["mlp"], "pool_train_steps": 1}

    def state(**changes: object) -> dict:
        params = dim.Params(**base, **changes)
        return dim.distill(real, 0, params, LocalContext(3)).state_dict

    gan_only = {"gan_epochs": 2, "match_epochs": 0}
    assert states_equal(state(**gan_only), state(**gan_only, match_lr=1e-6))
    matching = {"gan_epochs": 1, "match_epochs": 1}
    assert not states_equal(state(**matching), state(**matching, match_lr=1e-6))


def test_d2m_optimiser_and_pool_training_are_choices(real: RealData, tmp_path: Path) -> None:
    """The paper's text (SGD) and a trained pool each give another generator than the default
    (Adam, random pool networks); the default run is unchanged by spelling the defaults out."""
    cgan = get_method("cgan")
    cgan.distill(
        real, 0, cgan.Params(**TINY_GENERATOR, epochs=1, batch_size=512), LocalContext(0)
    ).save(tmp_path / "cgan")
    d2m = get_method("d2m")

    def state(**changes: object) -> dict:
        params = d2m.Params(epochs=1, batch_size=512, pool=["mlp"], **changes)
        ctx = LocalContext(2, dependencies={"generator": str(tmp_path / "cgan")})
        return d2m.distill(real, 0, params, ctx).state_dict

    default = state()
    assert states_equal(default, state(optimizer="adam", pool_train_steps=0))
    assert not states_equal(default, state(optimizer="sgd"))
    assert not states_equal(default, state(pool_train_steps=2))
