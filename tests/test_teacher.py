"""Teacher soft labels (ddbench.teacher) and their use in the shared recipe (ddbench.fit)."""

from __future__ import annotations

import math

import pytest
import torch

from ddbench.artifact import ImageSet
from ddbench.context import Context
from ddbench.evals import EvalJob, get_eval
from ddbench.fit import Recipe, fit_and_test, fit_artifact, train_model
from ddbench.methods import get_method
from ddbench.protocols import (
    NEAR_UNIFORM_CERTAINTY,
    TEACHER_BATCH_SIZE,
    TEACHER_EPOCHS,
    TEACHER_LR,
    TEACHER_SETTINGS,
    teacher_certainty,
)
from ddbench.teacher import (
    TeacherLabels,
    kd_loss,
    teacher_model,
    teacher_recipe,
    teacher_targets,
)

QUICK = Recipe(epochs=2, batch_size=64, augment=False)  # 40 steps of an MLP: a second


def tiny_set(real, ipc: int = 3) -> ImageSet:
    idx = torch.cat([real.class_indices(c)[:ipc] for c in real.classes])
    return ImageSet(real.train_x[idx].clone(), real.train_y[idx].clone())


def test_teacher_is_cached_on_disk(digits, tmp_path, monkeypatch):
    first: dict = {}
    a = teacher_model(digits, "mlp", QUICK, cache_dir=tmp_path, stats=first)
    assert first["cached"] is False and 0.0 <= first["test_top1"] <= 1.0
    assert (tmp_path / "teachers").is_dir()

    def no_training(*args, **kwargs):
        raise AssertionError("the cached teacher was retrained")

    monkeypatch.setattr("ddbench.teacher._train", no_training)
    second: dict = {}
    b = teacher_model(digits, "mlp", QUICK, cache_dir=tmp_path, stats=second)
    assert second["cached"] is True and second["key"] == first["key"]
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    assert not any(p.requires_grad for p in b.parameters()) and not b.training
    # another recipe (or arch, or data) is another teacher
    with pytest.raises(AssertionError, match="retrained"):
        teacher_model(digits, "mlp", QUICK.model_copy(update={"lr": 0.02}), cache_dir=tmp_path)


def test_targets_are_probability_rows_and_kl_vanishes_on_the_teacher(digits):
    teacher = teacher_model(digits, "mlp", QUICK)  # memoised in-process
    x = digits.val_x[:50]
    for temperature in (1.0, 4.0, 20.0):
        p = teacher_targets(teacher, x, temperature)
        assert p.shape == (50, digits.num_classes)
        assert (p >= 0).all() and torch.allclose(p.sum(1), torch.ones(50), atol=1e-5)
        logits = teacher(x)
        assert float(kd_loss(logits, p, temperature)) == pytest.approx(0.0, abs=1e-5)
        assert float(kd_loss(-logits, p, temperature)) > 1e-3
    # a higher temperature gives flatter targets
    assert teacher_targets(teacher, x, 20.0).max(1).values.mean() < (
        teacher_targets(teacher, x, 1.0).max(1).values.mean()
    )


class Recording(TeacherLabels):
    def __init__(self, teacher, temperature):
        super().__init__(teacher, temperature)
        self.batches: list[torch.Tensor] = []

    def targets(self, x, labels):
        self.batches.append(x.detach().clone())
        return super().targets(x, labels)


def test_soft_labels_are_regenerated_per_batch_after_augmentation(digits):
    teacher = teacher_model(digits, "mlp", QUICK)
    labels = Recording(teacher, 4.0)
    images = tiny_set(digits, 3)
    recipe = Recipe(epochs=3, batch_size=16)  # 30 images: 2 batches per epoch
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    train_model(model, images.images, images.labels, recipe, "digits", 0, labeler=labels)
    assert len(labels.batches) == 3 * 2
    raw = {tuple(row.flatten().tolist()) for row in images.images}
    augmented = [
        b for b in labels.batches if any(tuple(r.flatten().tolist()) not in raw for r in b)
    ]
    assert augmented, "the teacher saw un-augmented images only"


def test_hard_path_is_unchanged_and_label_modes_differ(digits, path_rows):
    images = tiny_set(digits, 2)
    recipe = Recipe(epochs=4)
    direct = fit_and_test("mlp", digits, images.images, images.labels, recipe, 0)
    hard, extra = fit_artifact("mlp", images, 2, digits, recipe, 0)
    assert hard == direct  # extra: the execution path only (fixed data has no time-matched stats)
    assert set(extra) == path_rows  # the training path and the test pass's batch
    # soft labels of an artifact: `hard` trains on their argmax, `soft` on the rows themselves
    onehot = torch.nn.functional.one_hot(images.labels, 10).float() * 0.8 + 0.02
    soft_set = ImageSet(images.images, onehot)
    assert fit_artifact("mlp", soft_set, 2, digits, recipe, 0)[0] == direct
    soft, _ = fit_artifact("mlp", soft_set, 2, digits, recipe, 0, label_mode="soft")
    assert all(math.isfinite(v) for v in soft.values())
    teacher = teacher_model(digits, "mlp", QUICK)
    with pytest.raises(ValueError, match="labeler"):
        fit_artifact("mlp", images, 2, digits, recipe, 0, label_mode="teacher")
    taught, _ = fit_artifact(
        "mlp", images, 2, digits, recipe, 0, label_mode="teacher", labeler=TeacherLabels(teacher, 4)
    )
    assert taught != direct


def test_confidence_and_agreement_are_means_over_the_targets_given(digits):
    teacher = teacher_model(digits, "mlp", QUICK)
    labels = TeacherLabels(teacher, 2.0)
    assert labels.confidence is None and labels.agreement is None  # nothing given yet
    y = digits.val_y[:50]
    wrong = (y[30:] + 1) % 10  # the second batch's labels: all other classes, as soft rows
    given = [
        labels.targets(digits.val_x[:30], y[:30]),
        labels.targets(digits.val_x[30:50], torch.nn.functional.one_hot(wrong, 10).float()),
    ]
    expected = float(torch.cat(given).max(dim=1).values.mean())
    assert labels.confidence == pytest.approx(expected, rel=1e-6)
    top = torch.cat(given).argmax(dim=1)
    agreed = (top[:30] == y[:30]).sum() + (top[30:] == wrong).sum()
    assert labels.agreement == pytest.approx(float(agreed) / 50)
    assert (top[:30] == y[:30]).float().mean() > 0.5  # a trained teacher mostly agrees
    assert teacher_certainty(0.1, 10) == pytest.approx(0.0)  # uniform over 10 classes
    assert teacher_certainty(1.0, 10) == pytest.approx(1.0)  # one-hot
    assert teacher_certainty(0.55, 2) == pytest.approx(0.1)


def test_the_teacher_trains_with_sgd_whatever_the_student_uses():
    student = Recipe(
        epochs=7, optimizer="adamw", schedule="cosine", lr=1e-3, weight_decay=0.01, augment=False
    )
    teacher = teacher_recipe(student, 40, 0.05, 64)
    # SGD with the DC recipe's momentum, step schedule and decay; the teacher's epochs, lr, batch
    assert teacher == Recipe(epochs=40, lr=0.05, batch_size=64, augment=False)
    assert teacher_recipe(Recipe()) == Recipe(
        epochs=TEACHER_EPOCHS, lr=TEACHER_LR, batch_size=TEACHER_BATCH_SIZE
    )


@pytest.mark.parametrize("temperature", [0.5, 1000.0], ids=["confident", "near_uniform"])
def test_cross_arch_records_the_teacher_and_warns_on_near_uniform_targets(
    digits, tmp_path, caplog, temperature
):
    evaluator = get_eval("cross_arch")
    params = evaluator.Params(
        archs=["mlp"],
        seeds=1,
        epochs=2,
        labels="teacher",
        temperature=temperature,
        teacher_arch="mlp",
        teacher_epochs=30,  # a second of an MLP: confident at a low T
    )
    artifact = get_method("random_real").distill(digits, 2, None, Context(0))
    ctx = Context(1)
    ctx.cache_dir = str(tmp_path)
    with caplog.at_level("WARNING", logger="ddbench"):
        rows = evaluator.run(
            {"arch": "mlp", "eval_seed": 0}, EvalJob(artifact, digits, 2, "digits"), params, ctx
        )
    measured = {(r["split"], r["metric"]): r["value"] for r in rows}
    assert 0.0 <= measured[("val", "teacher_top1")] <= 1.0
    assert 0.0 <= measured[("test", "teacher_top1")] <= 1.0
    confidence = measured[("test", "teacher_confidence")]
    assert 0.1 <= confidence <= 1.0
    certainty = measured[("test", "teacher_certainty")]
    assert certainty == pytest.approx(teacher_certainty(confidence, digits.num_classes))
    assert 0.0 <= measured[("test", "teacher_agreement")] <= 1.0
    near_uniform = certainty < NEAR_UNIFORM_CERTAINTY
    assert near_uniform == (temperature > 1.0)  # T=1000: every target near 1/10
    assert ("near uniform" in caplog.text) == near_uniform


def test_every_teacher_setting_is_a_field_of_each_evaluation_that_carries_it():
    """`TEACHER_SETTINGS` is how cross_arch, a Tune block and Tune's selection pass one teacher
    along (plan and tuning copy them by name): a setting added to one model only must fail here,
    and the Tune block's default must be cross_arch's (so both share a cached teacher)."""
    from ddbench.evals.cross_arch import CrossArchParams
    from ddbench.spec import TuneSpec
    from ddbench.tuning import SelectionParams

    for name in TEACHER_SETTINGS:
        assert name in SelectionParams.model_fields
        cross, tune = CrossArchParams.model_fields[name], TuneSpec.model_fields[f"eval_{name}"]
        assert tune.default == cross.default, name
