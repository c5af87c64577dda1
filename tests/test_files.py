"""Distillates as files: self-describing meta.json, `ddbench export`, `from_files` and
`ddbench eval` (a DM job exported and re-evaluated gives its own rows back), soft labels and a
learned lr honoured, the image-folder round trip, and `from_files`' validation errors.

Everything runs in-process with `--local` on digits at smoke size (seconds per command)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import torch
from pydantic import ValidationError

from ddbench.cli import main
from ddbench.errors import UserError
from ddbench.methods.from_files import FromFilesParams, read_distillate
from tests.conftest import write_distillate

SUITE = """\
name: roundtrip
dataset: {name: digits}
ipc: [2]
methods:
  - name: dm
evals:
  - name: cross_arch
    params: {archs: [convnet], seeds: 1, epochs: 20}
profiles:
  smoke: {}
"""
# the same cross_arch config for `ddbench eval` (one arch, one seed, few epochs)
CROSS = [
    "--set",
    "evals.cross_arch.params.archs=[convnet]",
    "--set",
    "evals.cross_arch.params.seeds=1",
    "--set",
    "evals.cross_arch.params.epochs=20",
]


def rows(out: Path, suite: str) -> pl.DataFrame:
    return pl.read_parquet(str(out / suite / "results" / "**" / "*.parquet"))


def top1(df: pl.DataFrame) -> dict[tuple[str, int, str], float]:
    ok = df.filter((pl.col("metric") == "top1") & (pl.col("status") == "ok"))
    return {(r["arch"], r["eval_seed"], r["split"]): r["value"] for r in ok.iter_rows(named=True)}


def eval_files(out: Path, name: str, *args: str) -> int:
    return main(
        ["eval", "--dataset", "digits", "--ipc", "2", "--name", name, *CROSS, *args]
        + ["--local", "--out", str(out)]
    )


@pytest.fixture(scope="module")
def distilled(tmp_path_factory) -> tuple[Path, Path, str]:
    """A DM job distilled and evaluated with `ddbench run --local`: (root, out, job id)."""
    root = tmp_path_factory.mktemp("files")
    (root / "rt.yaml").write_text(SUITE)
    out = root / "runs"
    argv = ["run", str(root / "rt.yaml"), "--set", "profile=smoke", "--local", "--out", str(out)]
    assert main(argv) == 0
    (job_id,) = [p.name for p in (out / "roundtrip" / "artifacts").iterdir()]
    return root, out, job_id


def test_meta_json_describes_the_artifact(distilled, digits):
    _, out, job_id = distilled
    meta = json.loads((out / "roundtrip" / "artifacts" / job_id / "meta.json").read_text())
    assert meta["dataset"] == "digits" and meta["dataset_params"]["image_size"] == 8
    assert meta["class_names"] == [str(d) for d in range(10)] and meta["num_classes"] == 10
    assert meta["mean"] == list(digits.mean) and meta["std"] == list(digits.std)
    assert meta["zca"] == {"applied": False, "file": None}
    assert meta["image_shape"] == [1, 8, 8] and meta["value_space"] == "normalised"
    assert meta["method"] == "dm" and meta["method_params"]["iterations"] == 5  # DM's smoke
    assert (meta["ipc"], meta["distill_seed"], meta["suite_seed"]) == (2, 0, 0)
    assert meta["job_id"] == job_id and meta["ddbench_version"]
    assert meta["kind"] == "image_set" and meta["last_loss"] > 0  # existing keys stay


def test_exported_files_reevaluate_to_the_same_rows(distilled, digits, capsys):
    from ddbench.artifact import load_artifact

    root, out, job_id = distilled
    assert (
        main(
            ["export", "roundtrip", "dm", "--format", "pt", "--out", str(root / "pt")]
            + ["--runs", str(out)]
        )
        == 0
    )
    (folder,) = (root / "pt").iterdir()
    assert folder.name == f"dm-ipc2-seed0-{job_id}"
    stored = load_artifact(out / "roundtrip" / "artifacts" / job_id)
    images = torch.load(folder / "images.pt", weights_only=True)
    labels = torch.load(folder / "labels.pt", weights_only=True)
    assert torch.equal(images, stored.images) and torch.equal(labels, stored.labels)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["value_space"] == "normalised" and meta["export"]["job_id"] == job_id

    files = ["--images", str(folder / "images.pt"), "--labels", str(folder / "labels.pt")]
    assert eval_files(out, "reeval", *files) == 0
    original, again = top1(rows(out, "roundtrip")), top1(rows(out, "reeval"))
    one_image = 1 / len(digits.test_y)
    print(f"round trip: original {original} re-evaluated {again}")
    assert original.keys() == again.keys() == {("convnet", 0, "val"), ("convnet", 0, "test")}
    for key, value in original.items():
        assert abs(again[key] - value) <= one_image, (key, value, again[key])
    new = rows(out, "reeval")
    assert set(new["method"]) == {"from_files"} and set(new["job_id"]) != {job_id}
    assert "learned_lr" not in set(new["metric"])


def test_imagefolder_export_reports_clamping_and_reimports(distilled, digits, capsys):
    from ddbench.artifact import load_artifact

    root, out, job_id = distilled
    capsys.readouterr()
    argv = ["export", str(out / "roundtrip"), job_id, "--format", "imagefolder"]
    assert main([*argv, "--out", str(root / "png")]) == 0
    printed = capsys.readouterr().out
    (folder,) = (root / "png").iterdir()
    meta = json.loads((folder / "meta.json").read_text())
    clamped = meta["export"]["clamped_fraction"]
    assert 0 <= clamped <= 1 and f"clamped {100 * clamped:.3f}%" in printed
    assert meta["value_space"] == "pixels"
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == [str(d) for d in range(10)]
    assert len(list(folder.glob("*/*.png"))) == 20

    # re-imported pixels are the stored images clamped and rounded to 8 bits, nothing else
    params = FromFilesParams.model_validate({"image_folder": str(folder)})
    imported = read_distillate(params, digits, 2)
    artifact = load_artifact(out / "roundtrip" / "artifacts" / job_id)
    stored, labels = artifact.images, artifact.labels
    order = torch.argsort(labels, stable=True)
    expected = (digits.to_pixels(stored[order]) * 255).round() / 255
    assert torch.allclose(digits.to_pixels(imported.images), expected, atol=1e-5)
    assert torch.equal(imported.labels, labels[order])

    assert eval_files(out, "reimport", "--image-folder", str(folder)) == 0
    assert rows(out, "reimport").filter(pl.col("metric") == "top1")["status"].to_list() == [
        "ok",
        "ok",
    ]


def test_soft_labels_and_a_learned_lr_are_honoured(tmp_path, digits):
    from ddbench.artifact import load_artifact
    from ddbench.evals.cross_arch import CrossArchParams
    from ddbench.fit import Recipe, fit_and_test

    files = write_distillate(digits, 2, tmp_path / "files", soft=True, lr=0.05)
    out = tmp_path / "runs"
    argv = ["--images", files["images"], "--labels", files["labels"], "--lr", files["lr"]]
    assert eval_files(out, "soft", *argv, "--set", "evals.cross_arch.params.labels=soft") == 0
    df = rows(out, "soft")
    assert {json.loads(p)["labels"] for p in df["eval_params"]} == {"soft"}
    lr = float(torch.tensor(0.05))  # stored as a float32 scalar
    assert df.filter(pl.col("metric") == "learned_lr")["value"].to_list() == [lr]
    (job_id,) = set(df["job_id"])
    artifact = load_artifact(out / "soft" / "artifacts" / job_id)
    assert artifact.labels.shape == (20, 10) and artifact.learned_lr() == pytest.approx(0.05)
    assert artifact.meta["label_kind"] == "soft"

    # the row is what training on the soft labels with lr 0.05 gives, directly
    params = CrossArchParams.model_validate(json.loads(df["eval_params"][0]))
    recipe = Recipe.of(params).model_copy(update={"lr": lr})
    x = torch.load(files["images"], weights_only=True)
    y = torch.load(files["labels"], weights_only=True)
    direct = fit_and_test("convnet", digits, x, y, recipe, 0)
    assert top1(df)[("convnet", 0, "test")] == pytest.approx(direct["test"], abs=1 / 359)
    assert top1(df)[("convnet", 0, "val")] == pytest.approx(direct["val"], abs=1 / 143)


def test_new_file_contents_make_a_new_job(tmp_path, digits):
    from ddbench.plan import make_plan
    from ddbench.spec import SuiteError, build_suite

    files = write_distillate(digits, 1, tmp_path)

    def job_id(params: dict) -> str:
        raw = {
            "name": "x",
            "ipc": [1],
            "methods": [{"name": "from_files", "params": params}],
            "evals": [{"name": "cross_arch"}],
        }
        return make_plan(build_suite(raw, "test")).jobs[0].job_id

    before = job_id(files)
    images = torch.load(files["images"], weights_only=True)
    torch.save(images + 0.01, files["images"])  # same shape and size, other bytes
    after = job_id(files)
    assert after != before
    pinned = {**files, "content_sha256": "0" * 64}
    with pytest.raises(SuiteError, match="the files changed"):
        job_id(pinned)


def write(path: Path, tensor: object) -> str:
    torch.save(tensor, path)
    return str(path)


def bad_inputs(case: str, tmp: Path, real) -> tuple[dict, int]:
    """from_files params (and the IPC) of one broken distillate."""
    good = write_distillate(real, 1, tmp)
    x = torch.load(good["images"], weights_only=True)
    y = torch.load(good["labels"], weights_only=True)
    soft = torch.nn.functional.one_hot(y, 10).float()
    bad_images = {
        "rank": x[:, 0],
        "channels": x.repeat(1, 3, 1, 1),
        "size": x.repeat(1, 1, 2, 2),
        "looks_like_pixels": real.to_pixels(x),
    }
    bad_labels = {
        "count": y[:-1],
        "label_range": y + 1,
        "float_hard": y.float(),
        "soft_sum": soft * 2,
        "soft_k": soft[:, :9],
        "pickle": {"labels": y, "note": object()},  # not loadable with weights_only=True
    }
    if case in bad_images:
        return {**good, "images": write(tmp / "bad_images.pt", bad_images[case])}, 1
    if case in bad_labels:
        return {**good, "labels": write(tmp / "bad_labels.pt", bad_labels[case])}, 1
    if case == "pixels_range":  # normalised images declared as pixels
        return {**good, "value_space": "pixels"}, 1
    assert case == "ipc"
    return good, 3


ERRORS = {
    "rank": r"images .*bad_images\.pt: expected a 4-D tensor N x C x H x W",
    "channels": r"channels do not match the dataset: images are 3x8x8, digits has 1x8x8",
    "size": r"size do not match the dataset: images are 1x16x16",
    "count": r"labels .*bad_labels\.pt: 9 labels for 10 images",
    "label_range": r"class ids in \[0, 10\) for digits, found \[10\]",
    "float_hard": r"hard labels must be an integer tensor",
    "soft_sum": r"rows must sum to 1 .* row 0 sums to 2",
    "soft_k": r"soft labels have K=9 columns but digits has 10 classes",
    "pixels_range": r"value_space is pixels but values span .* outside \[0, 1\]",
    "looks_like_pixels": r"every value lies in \[0, 1\] .* looks like pixels",
    "ipc": r"holds 10 images = 1 per class x 10 classes, but the job evaluates it at ipc=3",
    "pickle": r"bad_labels\.pt: cannot be read by torch\.load\(weights_only=True\)",
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_bad_files_are_clear_user_errors(case, tmp_path, digits):
    params, ipc = bad_inputs(case, tmp_path, digits)
    with pytest.raises(UserError, match=ERRORS[case]):
        read_distillate(FromFilesParams.model_validate(params), digits, ipc)


def test_unknown_class_folders_and_missing_files(tmp_path, digits):
    from PIL import Image

    (tmp_path / "seven").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "seven" / "0.png")
    params = FromFilesParams.model_validate({"image_folder": str(tmp_path)})
    with pytest.raises(UserError, match=r"unknown class folder\(s\) \['seven'\]"):
        read_distillate(params, digits, 1)
    with pytest.raises(ValidationError, match="no_such.pt: no such file"):
        FromFilesParams.model_validate({"images": str(tmp_path / "no_such.pt"), "labels": "x"})
    with pytest.raises(ValidationError, match="exactly one of"):
        FromFilesParams.model_validate({})


def test_eval_stops_on_bad_files_with_exit_code_2(tmp_path, digits, capsys):
    files = write_distillate(digits, 1, tmp_path)
    argv = ["--images", files["images"], "--labels", files["labels"]]
    assert eval_files(tmp_path / "runs", "bad", *argv) == 2  # 1 image per class, --ipc 2
    assert "evaluates it at ipc=2" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "bad").exists()


def test_a_generator_is_exported_as_the_fixed_draw_of_an_eval_seed(tmp_path, digits, capsys):
    from ddbench.fit import fixed_data
    from tests.conftest import tiny_generator_set

    generator = tiny_generator_set(digits)
    meta = {"label": "gen", "ipc": None, "distill_seed": 0, "job_id": "0123456789abcdef"}
    generator.meta = {**meta, "dataset": "digits", "dataset_params": {}}
    generator.save(tmp_path / "run" / "artifacts" / "0123456789abcdef")
    argv = ["export", str(tmp_path / "run"), "gen", "--out", str(tmp_path / "out")]
    assert main(argv) == 2  # no result rows say which IPCs it was evaluated at
    assert "give --ipc" in capsys.readouterr().err
    assert main([*argv, "--ipc", "2", "--seed", "1"]) == 0
    folder = tmp_path / "out" / "gen-ipc2-seed0-0123456789abcdef"
    x, y = fixed_data(generator, 2, digits, 1, "hard")  # what cross_arch's seed 1 trains on
    assert torch.equal(torch.load(folder / "images.pt", weights_only=True), x)
    assert torch.equal(torch.load(folder / "labels.pt", weights_only=True), y)
    exported = json.loads((folder / "meta.json").read_text())
    assert exported["kind"] == "image_set" and exported["ipc"] == 2
    assert exported["export"]["source_kind"] == "generator_set"
    assert exported["export"]["materialised"]["seed"] == 1


def test_a_zca_artifact_carries_its_matrices_and_reimports_as_pixels(tmp_path, capsys):
    from ddbench.artifact import load_artifact, zca_state
    from ddbench.data import load_dataset, normalised_to_pixels

    suite = SUITE.replace("name: roundtrip", "name: zca").replace(
        "{name: digits}", "{name: digits, params: {zca: true}}"
    )
    suite = suite.replace("name: dm", "name: random_real").replace("epochs: 20", "epochs: 2")
    (tmp_path / "zca.yaml").write_text(suite)
    out = tmp_path / "runs"
    assert main(["run", str(tmp_path / "zca.yaml"), "--local", "--out", str(out)]) == 0
    (adir,) = (out / "zca" / "artifacts").iterdir()
    meta = json.loads((adir / "meta.json").read_text())
    assert meta["zca"] == {"applied": True, "file": "zca.safetensors"}
    real = load_dataset("digits", meta["dataset_params"])
    images = load_artifact(adir).images
    on_their_own = normalised_to_pixels(images, meta["mean"], meta["std"], zca_state(adir))
    assert torch.allclose(on_their_own, real.to_pixels(images), atol=1e-6)

    argv = ["export", "zca", "random_real", "--runs", str(out), "--format", "imagefolder"]
    assert main([*argv, "--out", str(tmp_path / "png")]) == 0
    (folder,) = (tmp_path / "png").iterdir()
    assert (folder / "zca.safetensors").is_file()
    params = FromFilesParams.model_validate({"image_folder": str(folder)})
    imported = read_distillate(params, real, 2)  # pixels -> mean / std -> the dataset's ZCA
    assert torch.allclose(real.to_pixels(imported.images), real.to_pixels(images), atol=3e-3)
