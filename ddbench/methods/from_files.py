"""`from_files`: a distillate made elsewhere, read from files, so ddbench can evaluate it.

What lives here:

- `FromFilesParams`: where the files are and what space the images are in. Validation resolves
  the paths to absolute ones (a distill job may run in another working directory) and fills in
  `content_sha256`, a SHA-256 over the files' bytes, so the job id changes whenever the files'
  contents do (a rerun with new files is not skipped as done); a `content_sha256` given in the
  suite pins the files (validation fails when they no longer match).
- `read_distillate`: loads the files (`torch.load(..., weights_only=True)`, safetensors, or an
  image folder read with the folder datasets' reader, `ddbench.datasets.folders`) and checks them
  against the dataset and the job's IPC, raising a `UserError` that names the file and what was
  expected.
- `FromFiles`: the method. `check` runs `read_distillate` on the driver before any work, so bad
  files stop `ddbench run` / `ddbench eval` with exit code 2; `distill` returns an `ImageSet`
  (images in the dataset's normalised space, hard or soft labels as given, the learned lr).

Inputs (docs/results.md#distillates-as-files):

- `images`: a tensor [N, C, H, W] in a `.pt` file (or the tensor `images` of a `.safetensors`
  file, whose `labels` and `lr` tensors are then used when `labels` / `lr` are not given);
  or `image_folder`: `root/<class name>/*.png|jpg` (class folders matched by name to the
  dataset's classes; images read in the dataset's class order, then by file name).
- `labels`: hard int [N] in [0, K) or soft float [N, K] (rows of probabilities summing to 1),
  K = the dataset's classes; required with `images`, optional with an image folder (default:
  the folders' classes; if given, rows follow the reading order above).
- `lr`: a scalar (MTT / DATM's learned `syn_lr`); evaluators then train with it instead of
  their recipe's lr (`ddbench.fit.artifact_recipe`) and write a `learned_lr` row.
- `value_space`: `normalised` (the dataset's mean / std, and its ZCA when the suite's dataset
  applies it: what ddbench's own artifacts store) or `pixels` in [0, 1] (uint8 0..255 is
  divided by 255), which are normalised here; an image folder is always `pixels`.

Heuristic for a mislabelled space: a `normalised` tensor whose every value lies in [0, 1] is
refused as "looks like pixels", because the dataset's normalisation centres each channel on 0
(the images of a real class are about half negative), so a normalised distillate practically
always has negative values.

IPC: N must be IPC x the number of classes for the suite IPC it is evaluated at (each suite IPC
is a job of its own; the count is what "images per class" means for the rows and the report).
A class-subset job (continual learning) keeps the rows whose (argmax) label is in the subset.
The files must be readable where the distill job runs: any local path with `--local` or the
embedded Ray, a shared path on a cluster.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import model_validator

from ddbench.artifact import ImageSet
from ddbench.errors import UserError
from ddbench.methods import Method, MethodParams, register_method
from ddbench.registry import did_you_mean

if TYPE_CHECKING:
    from ddbench.context import Context
    from ddbench.data import RealData

SOFT_SUM_TOL = 1e-3  # |row sum - 1| allowed for soft labels (float32 softmax rounding)
PIXEL_TOL = 1e-6  # values this far outside [0, 1] still count as pixels (float rounding)
HASH_CHUNK = 1 << 20  # bytes read at a time while hashing (bounds memory, not the digest)
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})  # PIL modes with one colour channel


class FromFilesParams(MethodParams):
    # .pt tensor [N, C, H, W] (or a .safetensors file with tensor `images`); this or image_folder
    images: str | None = None
    # root/<class name>/*.png|jpg, class folders named like the dataset's classes (pixels)
    image_folder: str | None = None
    # .pt: hard int [N] in [0, K) or soft float [N, K] rows summing to 1; required with `images`
    labels: str | None = None
    lr: str | None = None  # .pt scalar: a learned lr (MTT / DATM) replacing the recipe's lr
    # space of `images`; None: normalised for a tensor file, pixels for an image folder
    value_space: Literal["normalised", "pixels"] | None = None
    # sha256 of the files' bytes, filled in at validation (new files -> new job id); set to pin
    content_sha256: str | None = None

    @model_validator(mode="after")
    def _resolve(self) -> FromFilesParams:
        if (self.images is None) == (self.image_folder is None):
            raise ValueError("give exactly one of `images` (a tensor file) or `image_folder`")
        if self.images is not None:
            self.images = str(_existing(self.images, "images", folder=False))
            if self.images.endswith(".safetensors"):  # labels / lr may live in the same file
                keys = _safetensors_keys(Path(self.images))
                if self.labels is None and "labels" in keys:
                    self.labels = self.images
                if self.lr is None and "lr" in keys:
                    self.lr = self.images
            if self.labels is None:
                raise ValueError(f"images {self.images}: `labels` is required with a tensor file")
            self.value_space = self.value_space or "normalised"
        else:
            self.image_folder = str(_existing(self.image_folder, "image_folder", folder=True))
            if self.value_space == "normalised":
                raise ValueError(
                    f"image_folder {self.image_folder}: image files hold pixels; "
                    "drop value_space or set it to pixels"
                )
            self.value_space = "pixels"
        if self.labels is not None:
            self.labels = str(_existing(self.labels, "labels", folder=False))
        if self.lr is not None:
            self.lr = str(_existing(self.lr, "lr", folder=False))
        digest = files_sha256(self)
        if self.content_sha256 is not None and self.content_sha256 != digest:
            raise ValueError(
                f"the files changed: content_sha256 is {self.content_sha256} but they hash to "
                f"{digest} now (a job pinned to other files, or files replaced mid-run)"
            )
        self.content_sha256 = digest
        return self


def _existing(path: str, what: str, folder: bool) -> Path:
    resolved = Path(path).expanduser().resolve()
    if folder and not resolved.is_dir():
        raise ValueError(f"{what} {resolved}: no such folder")
    if not folder and not resolved.is_file():
        raise ValueError(f"{what} {resolved}: no such file")
    return resolved


def _safetensors_keys(path: Path) -> set[str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return set(f.keys())
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise ValueError(f"images {path}: not a readable safetensors file ({exc})") from None


# --------------------------------------------------------------------------- content hash


def _file_sha256(path: Path) -> str:
    """sha256 of one file's bytes. Not cached: a file rewritten within the filesystem's
    timestamp resolution keeps its size and mtime, so only the bytes tell."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(HASH_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _folder_files(root: Path) -> list[Path]:
    """Every image file of root/<folder>/ (what an image folder's hash covers), sorted."""
    from ddbench.datasets.folders import IMAGE_SUFFIXES

    return sorted(p for p in root.glob("*/*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def files_sha256(params: FromFilesParams) -> str:
    """One sha256 over the role, name and bytes of every input file (the image folder's images
    by their paths relative to its root), so renaming a role or editing a byte changes it."""
    parts: list[tuple[str, Path]] = []
    if params.images is not None:
        parts.append(("images", Path(params.images)))
    else:
        root = Path(params.image_folder)
        for path in _folder_files(root):
            parts.append((f"image_folder/{path.relative_to(root).as_posix()}", path))
    for role in ("labels", "lr"):
        path = getattr(params, role)
        if path is not None:
            parts.append((role, Path(path)))
    h = hashlib.sha256()
    for name, path in parts:
        h.update(f"{name}\0{_file_sha256(path)}\0".encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- reading


def _load_tensor(path: Path, what: str, key: str) -> torch.Tensor:
    """A tensor from a `.pt` file (torch.load with weights_only=True: no code runs) or the
    tensor `key` of a `.safetensors` file."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        if key not in tensors:
            raise UserError(f"from_files: {what} {path}: no tensor {key!r} (has {sorted(tensors)})")
        return tensors[key]
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - report any unreadable file the same way
        raise UserError(
            f"from_files: {what} {path}: cannot be read by torch.load(weights_only=True) "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); save a "
            "plain tensor with torch.save(tensor, path)"
        ) from None
    if isinstance(obj, int | float) and not isinstance(obj, bool):
        obj = torch.tensor(float(obj))
    if not isinstance(obj, torch.Tensor):
        raise UserError(
            f"from_files: {what} {path}: holds a {type(obj).__name__}, expected a tensor "
            "(torch.save(tensor, path))"
        )
    return obj.detach()


@dataclass
class Distillate:
    """What `read_distillate` returns: images in the dataset's normalised space."""

    images: torch.Tensor  # float32 [N, C, H, W], normalised like the real data
    labels: torch.Tensor  # int64 [N] or float32 [N, K]
    lr: torch.Tensor | None  # float32 scalar, or None


def read_distillate(params: FromFilesParams, real: RealData, ipc: int) -> Distillate:
    """Load the files of `params` and check them against `real` and `ipc` (module docstring);
    every problem is a `UserError` naming the file and what was expected."""
    if params.images is not None:
        images_path = Path(params.images)
        images = _load_tensor(images_path, "images", "images")
        _check_images(images, images_path, real)
        images = _to_float_space(images, images_path, params.value_space, real)
        labels = _load_tensor(Path(params.labels), "labels", "labels")
        _check_labels(labels, Path(params.labels), len(images), real)
    else:
        images, folder_labels = _read_folder(Path(params.image_folder), real)
        labels = folder_labels
        if params.labels is not None:
            labels = _load_tensor(Path(params.labels), "labels", "labels")
            _check_labels(labels, Path(params.labels), len(images), real)
            hard = labels if labels.dim() == 1 else None
            if hard is not None and not torch.equal(hard.long(), folder_labels):
                raise UserError(
                    f"from_files: labels {params.labels}: hard labels disagree with the class "
                    f"folders of {params.image_folder} (rows follow the dataset's class order, "
                    "then file names)"
                )
        images = real.from_pixels(images)
    labels = labels.long() if labels.dim() == 1 else labels.float()
    lr = None if params.lr is None else _read_lr(Path(params.lr))
    images, labels = _keep_classes(images, labels, real)
    _check_ipc(len(images), ipc, real, params)
    return Distillate(images.float().contiguous(), labels.contiguous(), lr)


def _check_images(images: torch.Tensor, path: Path, real: RealData) -> None:
    c, h, w = real.image_shape
    if images.dim() != 4:
        raise UserError(
            f"from_files: images {path}: expected a 4-D tensor N x C x H x W "
            f"(N x {c} x {h} x {w} for {real.name}), got shape {tuple(images.shape)}"
        )
    if tuple(images.shape[1:]) != (c, h, w):
        what = "channels" if images.shape[1] != c else "size"
        raise UserError(
            f"from_files: images {path}: {what} do not match the dataset: images are "
            f"{'x'.join(map(str, images.shape[1:]))}, {real.name} has {c}x{h}x{w} "
            "(C x H x W); ddbench does not resample a distillate"
        )
    if not (images.is_floating_point() or images.dtype == torch.uint8):
        raise UserError(
            f"from_files: images {path}: expected float (or uint8) images, got {images.dtype}"
        )
    if images.is_floating_point() and not torch.isfinite(images).all():
        raise UserError(f"from_files: images {path}: holds NaN or infinite values")


def _to_float_space(
    images: torch.Tensor, path: Path, value_space: str | None, real: RealData
) -> torch.Tensor:
    """float32 images in the dataset's normalised space, after the value-space checks."""
    if images.dtype == torch.uint8:
        if value_space != "pixels":
            raise UserError(
                f"from_files: images {path}: uint8 images are pixels 0..255: "
                "set value_space: pixels"
            )
        return real.from_pixels(images.float() / 255.0)
    images = images.float()
    lo, hi = float(images.min()), float(images.max())
    if value_space == "pixels":
        if lo < -PIXEL_TOL or hi > 1 + PIXEL_TOL:
            raise UserError(
                f"from_files: images {path}: value_space is pixels but values span "
                f"[{lo:.4g}, {hi:.4g}], outside [0, 1]; if they are normalised with the "
                f"dataset's mean / std, set value_space: normalised"
            )
        return real.from_pixels(images.clamp(0, 1))
    if lo >= 0.0 and hi <= 1.0:
        raise UserError(
            f"from_files: images {path}: value_space is normalised but every value lies in "
            f"[0, 1] ([{lo:.4g}, {hi:.4g}]): that looks like pixels (normalised images are "
            "centred on 0 and have negative values); set value_space: pixels"
        )
    return images


def _check_labels(labels: torch.Tensor, path: Path, n: int, real: RealData) -> None:
    k = real.num_classes
    if labels.dim() not in (1, 2):
        raise UserError(
            f"from_files: labels {path}: expected hard labels [N] or soft labels [N, K], got "
            f"shape {tuple(labels.shape)}"
        )
    if len(labels) != n:
        raise UserError(
            f"from_files: labels {path}: {len(labels)} labels for {n} images (one row per image)"
        )
    if labels.dim() == 1:
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise UserError(
                f"from_files: labels {path}: hard labels must be an integer tensor, got "
                f"{labels.dtype} (soft labels are [N, K])"
            )
        bad = labels[(labels < 0) | (labels >= k)]
        if len(bad):
            raise UserError(
                f"from_files: labels {path}: values must be class ids in [0, {k}) for "
                f"{real.name}, found {sorted(set(bad.tolist()))[:5]}"
            )
        return
    if labels.shape[1] != k:
        raise UserError(
            f"from_files: labels {path}: soft labels have K={labels.shape[1]} columns but "
            f"{real.name} has {k} classes"
        )
    if not labels.is_floating_point():
        raise UserError(f"from_files: labels {path}: soft labels must be float, got {labels.dtype}")
    soft = labels.double()
    sums = soft.sum(dim=1)
    worst = int((sums - 1).abs().argmax())
    if not torch.isfinite(soft).all() or float(soft.min()) < 0:
        raise UserError(
            f"from_files: labels {path}: soft labels must be probabilities (finite, >= 0)"
        )
    if abs(float(sums[worst]) - 1) > SOFT_SUM_TOL:
        raise UserError(
            f"from_files: labels {path}: soft label rows must sum to 1 (probabilities, not "
            f"logits); row {worst} sums to {float(sums[worst]):.4g}"
        )


def _read_lr(path: Path) -> torch.Tensor:
    lr = _load_tensor(path, "lr", "lr")
    if lr.numel() != 1:
        raise UserError(f"from_files: lr {path}: expected a scalar, got shape {tuple(lr.shape)}")
    value = float(lr.reshape(()))
    if not (value > 0 and value < float("inf")):
        raise UserError(
            f"from_files: lr {path}: a learning rate must be > 0 and finite, got {value}"
        )
    return torch.tensor(value, dtype=torch.float32)


def _read_folder(root: Path, real: RealData) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels [N, C, H, W] and folder labels of root/<class name>/*, checked image by image."""
    from PIL import Image

    from ddbench.datasets.folders import folder_items, read_image_files

    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    unknown = [name for name in folders if name not in real.class_names]
    if unknown:
        hint = did_you_mean(unknown[0], real.class_names)
        shown = ", ".join(repr(n) for n in real.class_names[:20])
        more = ", ..." if real.num_classes > 20 else ""
        raise UserError(
            f"from_files: image_folder {root}: unknown class folder(s) {unknown[:10]}{hint}; "
            f"{real.name}'s classes are {shown}{more}"
        )
    items = folder_items(root, list(real.class_names))
    if not items:
        raise UserError(
            f"from_files: image_folder {root}: no images (expected {root}/<class name>/*.png)"
        )
    c, h, w = real.image_shape
    for path, _ in items:
        with Image.open(path) as im:
            size, mode = im.size, im.mode
        if size != (w, h):
            raise UserError(
                f"from_files: image_folder: {path} is {size[0]}x{size[1]} pixels but "
                f"{real.name} images are {w}x{h}; ddbench does not resample a distillate"
            )
        if (mode in GRAY_MODES) != (c == 1):
            raise UserError(
                f"from_files: image_folder: {path} has PIL mode {mode} but {real.name} has {c} "
                f"channel(s) ({'grayscale' if c == 1 else 'RGB'})"
            )
    return read_image_files(items, h, c)


def _keep_classes(
    images: torch.Tensor, labels: torch.Tensor, real: RealData
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows of the classes present in `real` (a class-subset job keeps its classes only)."""
    if len(real.classes) == real.num_classes:
        return images, labels
    hard = labels if labels.dim() == 1 else labels.argmax(dim=1)
    keep = torch.isin(hard, torch.tensor(real.classes))
    return images[keep], labels[keep]


def _check_ipc(n: int, ipc: int, real: RealData, params: FromFilesParams) -> None:
    classes = len(real.classes)
    if n == ipc * classes:
        return
    source = params.images or params.image_folder
    per_class = f"{n // classes}" if n % classes == 0 else f"{n / classes:.3g} (not a whole number)"
    raise UserError(
        f"from_files: {source} holds {n} images = {per_class} per class x {classes} classes, but "
        f"the job evaluates it at ipc={ipc}, which needs {ipc} x {classes} = {ipc * classes}: "
        f"evaluate it at ipc {n // classes if n % classes == 0 else '?'} (`--ipc`, or the "
        f"suite's `ipc:` list)"
    )


@register_method
class FromFiles(Method):
    name = "from_files"
    paper = "a distillate made elsewhere, read from files (images, labels, learned lr)"
    version = 1
    Params = FromFilesParams

    def check(self, real: RealData, ipc: int, params: FromFilesParams) -> None:
        read_distillate(params, real, ipc)

    def distill(self, real: RealData, ipc: int, params: FromFilesParams, ctx: Context) -> ImageSet:
        d = read_distillate(params, real, ipc)
        meta: dict[str, Any] = {
            "source": {
                "images": params.images,
                "image_folder": params.image_folder,
                "labels": params.labels,
                "lr": params.lr,
            },
            "input_value_space": params.value_space,
            "content_sha256": params.content_sha256,
            "label_kind": "hard" if d.labels.dim() == 1 else "soft",
            "learned_lr": None if d.lr is None else float(d.lr),
        }
        return ImageSet(d.images, d.labels, meta, d.lr)
