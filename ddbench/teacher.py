"""Teacher soft labels: D4M's training-time matching (TTM, FKD style), usable by any method.

- `teacher_model(real, arch, recipe, seed, cache_dir, device)`: a network trained on the whole
  real train split with `recipe` (`ddbench.fit`); `teacher_recipe` makes it from a student's
  recipe: the shared DC recipe's SGD at the teacher's own epochs, lr and batch size.
  It is a cached reference job: saved with safetensors under `cache_dir/teachers/<key>` where the
  key hashes everything that determines it (data content, arch, recipe, seed, this module's
  version). Concurrent cells take a file lock (`filelock.FileLock`, any OS), so the first trains
  and the others load; the write is atomic (temporary file + rename). Without `cache_dir` it is
  memoised in-process.
- `teacher_targets(teacher, x_aug, temperature)`: softmax(teacher(x_aug) / T), no gradient.
- `kd_loss(student_logits, targets, temperature)`: KL(teacher_T ‖ student_T) · T², batch mean —
  Hinton et al.'s scaling, which keeps the gradient magnitude independent of T.
- `TeacherLabels`: the per-batch labeller `ddbench.fit.train_model` calls *after* each batch's
  augmentation, so the soft labels are regenerated every epoch under that epoch's augmentation
  (D4M Eq. 8; FKD regenerates them per crop). It measures how confident the targets it gave
  were (`confidence`), which evaluators write as a row. `teacher_labels(...)` builds one from
  the cached teacher; evaluators (`cross_arch`, Tune's selection in `ddbench.tuning`) go
  through `labels_for(their params, ...)`, so equal settings share one teacher. It also
  measures how often the teacher's top class was the image's own label (`agreement`): a
  teacher that disagrees with a distillate's labels teaches another task than its images were
  made for.

To use another target (e.g. an ensemble), write an object with `targets(x, labels)` and
`loss(logits, targets)` and pass it as `labeler` to `ddbench.fit.train_model`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from filelock import FileLock
from torch import Tensor, nn

from ddbench.fit import Recipe, accuracy, select_labels, train_model
from ddbench.protocols import TEACHER_BATCH_SIZE, TEACHER_EPOCHS, TEACHER_LR
from ddbench.seeding import content_hash, derive_seed
from ddbench.storage import atomic_write

if TYPE_CHECKING:
    from ddbench.data import RealData

TEACHER_VERSION = 1  # bump when a teacher trained by this code would differ (cache key)
_MEMORY: dict[str, dict[str, Tensor]] = {}  # in-process cache when no cache_dir is given


def data_digest(real: RealData) -> str:
    """A hash of the train split's content (images, labels) and its class names."""
    h = hashlib.sha256()
    for t in (real.train_x, real.train_y):
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    h.update(json.dumps(list(real.class_names)).encode())
    return h.hexdigest()[:16]


def teacher_key(real: RealData, arch: str, recipe: Recipe, seed: int) -> str:
    """Content hash naming a teacher (what determines its weights)."""
    payload = {
        "version": TEACHER_VERSION,
        "dataset": real.name,
        "data": data_digest(real),
        "arch": arch,
        "recipe": recipe.model_dump(mode="json"),
        "seed": seed,
    }
    return content_hash(json.dumps(payload, sort_keys=True))


def _build(real: RealData, arch: str) -> nn.Module:
    from ddbench.archs import build_arch

    return build_arch(arch, real.channels, real.num_classes, real.image_size)


def _train(real: RealData, arch: str, recipe: Recipe, seed: int, device: str) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "teacher_init", arch))
        model = _build(real, arch)
    train_model(
        model, real.train_x, real.train_y, recipe, real.name, derive_seed(seed, "teacher"), device
    )
    return model


def teacher_model(
    real: RealData,
    arch: str,
    recipe: Recipe,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    device: str = "cpu",
    stats: dict[str, Any] | None = None,
) -> nn.Module:
    """The teacher of `arch` trained on `real`'s whole train split (cached; see module doc), in
    eval mode on `device` with frozen parameters. `stats` gets `key`, `cached` and, on disk,
    `path` and the teacher's `val_top1` / `test_top1`."""
    key = teacher_key(real, arch, recipe, seed)
    info: dict[str, Any] = {"key": key, "cached": True}
    model = _build(real, arch)
    if cache_dir is None:
        if key not in _MEMORY:
            info["cached"] = False
            trained = _train(real, arch, recipe, seed, device)
            _MEMORY[key] = {k: v.detach().cpu().clone() for k, v in trained.state_dict().items()}
        model.load_state_dict(_MEMORY[key])
    else:
        from safetensors.torch import load_file, save_file

        folder = Path(cache_dir) / "teachers"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{arch}-{key}.safetensors"
        meta_path = path.with_suffix(".json")
        with FileLock(folder / f"{arch}-{key}.lock"):  # one trainer; the others wait, then load
            if not path.is_file():
                info["cached"] = False
                trained = _train(real, arch, recipe, seed, device)
                state = {k: v.detach().cpu().contiguous() for k, v in trained.state_dict().items()}
                meta = {
                    "arch": arch,
                    "dataset": real.name,
                    "recipe": recipe.model_dump(mode="json"),
                    "seed": seed,
                    "val_top1": accuracy(trained, real.val_x, real.val_y, device),
                }
                if len(real.test_y):  # not when Tune's selection (no test split) trained it
                    meta["test_top1"] = accuracy(trained, real.test_x, real.test_y, device)
                atomic_write(meta_path, lambda p: p.write_text(json.dumps(meta, indent=2)))
                atomic_write(path, lambda p: save_file(state, str(p)))
            model.load_state_dict(load_file(str(path)))
        info["path"] = str(path)
        if meta_path.is_file():
            saved = json.loads(meta_path.read_text())
            info.update({k: saved[k] for k in ("val_top1", "test_top1") if k in saved})
    if stats is not None:
        stats.update(info)
    model.to(device).eval().requires_grad_(False)
    return model


@torch.no_grad()
def teacher_targets(teacher: nn.Module, x_aug: Tensor, temperature: float) -> Tensor:
    """The teacher's probabilities at temperature T for an (augmented) batch: rows sum to 1."""
    return F.softmax(teacher(x_aug).float() / temperature, dim=1)


def kd_loss(student_logits: Tensor, targets: Tensor, temperature: float) -> Tensor:
    """KL(targets ‖ softmax(student / T)) · T², averaged over the batch."""
    log_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    return F.kl_div(log_student, targets, reduction="batchmean") * temperature**2


def teacher_recipe(
    student: Recipe,
    epochs: int = TEACHER_EPOCHS,
    lr: float = TEACHER_LR,
    batch_size: int = TEACHER_BATCH_SIZE,
) -> Recipe:
    """The recipe a teacher trains with: the shared (DC) recipe's SGD and step schedule at `lr`
    on batches of `batch_size` for `epochs` whole-split epochs (`ddbench.protocols` says why
    these defaults), with the student's augmentation and execution settings; the student's
    optimiser is its own (a D4M student's AdamW recipe does not retrain the teacher)."""
    keep = ("augment", "dsa_strategy", "precision", "compile")
    return Recipe(
        epochs=epochs, lr=lr, batch_size=batch_size, **{k: getattr(student, k) for k in keep}
    )


def teacher_labels(
    real: RealData,
    arch: str,
    recipe: Recipe,
    temperature: float,
    cache_dir: str | Path | None = None,
    device: str = "cpu",
) -> TeacherLabels:
    """Soft labels at `temperature` from the (cached) teacher of `arch` trained with `recipe`;
    its `teacher_stats` hold the teacher's cache record (`teacher_model`'s `stats`)."""
    stats: dict[str, Any] = {}
    teacher = teacher_model(real, arch, recipe, cache_dir=cache_dir, device=device, stats=stats)
    return TeacherLabels(teacher, temperature, stats)


def labels_for(
    settings: Any,
    real: RealData,
    student: Recipe,
    cache_dir: str | Path | None = None,
    device: str = "cpu",
) -> TeacherLabels:
    """`teacher_labels` for an evaluation whose params `settings` carry the teacher settings
    (`ddbench.protocols.TEACHER_SETTINGS`); the teacher trains with `teacher_recipe(student,
    ...)`."""
    recipe = teacher_recipe(
        student, settings.teacher_epochs, settings.teacher_lr, settings.teacher_batch_size
    )
    return teacher_labels(
        real, settings.teacher_arch, recipe, settings.temperature, cache_dir, device
    )


class TeacherLabels:
    """Per-batch soft labels from a teacher (the `labeler` of `ddbench.fit.train_model`).

    It keeps the mean over every target it gave of the largest class probability
    (`confidence`): 1/K means uniform targets (K classes), which teach a student nothing; and
    the share of those targets whose largest class is the image's own label (`agreement`)."""

    def __init__(
        self, teacher: nn.Module, temperature: float, teacher_stats: dict[str, Any] | None = None
    ) -> None:
        self.teacher = teacher
        self.temperature = temperature
        self.teacher_stats = teacher_stats or {}  # e.g. its `val_top1` / `test_top1`
        # sum over the targets given of their largest probability (a tensor on the teacher's
        # device: adding to it does not wait for the GPU)
        self._max_prob_sum: Tensor | float = 0.0
        self._agreed: Tensor | float = 0.0  # targets whose top class was the image's label
        self._targets_given = 0

    def targets(self, x: Tensor, labels: Tensor) -> Tensor:
        probs = teacher_targets(self.teacher, x, self.temperature)
        top = probs.max(dim=1)
        self._max_prob_sum = self._max_prob_sum + top.values.sum()
        self._agreed = self._agreed + (top.indices == select_labels(labels, "hard")).sum()
        self._targets_given += len(probs)
        return probs

    @property
    def confidence(self) -> float | None:
        """Mean largest probability of the targets given so far (None before the first)."""
        return float(self._max_prob_sum) / self._targets_given if self._targets_given else None

    @property
    def agreement(self) -> float | None:
        """Share of the targets given so far whose largest class was the image's own label
        (None before the first)."""
        return float(self._agreed) / self._targets_given if self._targets_given else None

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return kd_loss(logits, targets, self.temperature)
