"""Real datasets: `RealData` (train / val / test tensors, normalisation, classes) and a registry.

A dataset is a function registered in `DATASETS` that takes validated params and returns the raw
splits as float tensors in [0, 1]; `load_dataset` then holds out a seeded validation split from
train, normalises with the dataset's mean / std and optionally fits ZCA. To add a dataset, write a
`Params` model and a loader::

    class MyParams(DatasetParams):
        root: str | None = None  # where the files live; default $DDBENCH_DATA/my_dataset

    @DATASETS.register("my_dataset")
    def my_dataset(params: MyParams) -> RawSplits: ...
    my_dataset.Params = MyParams

Nothing is ever downloaded unless `download: true` is asked for; missing files raise `DataError`
with the path looked in and how to obtain them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from ddbench.errors import DataError
from ddbench.registry import Registry
from ddbench.seeding import derive_seed

if TYPE_CHECKING:
    import torch

# Normalisation constants of the DC protocol (docs/protocols.md#normalisation-and-zca); others
# are computed on train.
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)


class DatasetParams(BaseModel):
    """Parameters every dataset accepts."""

    model_config = ConfigDict(extra="forbid")

    val_fraction: float = 0.1  # share of train held out for selection (NAS protocol: 10 %)
    split_seed: int = 0  # names the val split; fixed so every suite sees the same split
    zca: bool = False  # ZCA whitening (kornia, eps 0.1) fitted on train; off in the DC protocol


class TorchvisionParams(DatasetParams):
    root: str | None = None  # data directory; default $DDBENCH_DATA, else ~/.cache/ddbench/data
    download: bool = False  # fetch from the internet only when asked (tests never do)


class FolderParams(DatasetParams):
    root: str | None = None  # folder with train/<class>/* and test/<class>/* (or val/)
    image_size: int = 32  # images are resized to image_size x image_size pixels
    channels: int = 3  # 3 = RGB, 1 = grayscale


class DigitsParams(DatasetParams):
    image_size: int = 8  # native resolution of scikit-learn's digits (8 x 8); larger = bilinear
    test_fraction: float = 0.2  # digits has no official test split: a fixed stratified 20 %


@dataclass
class RawSplits:
    """What a loader returns: images in [0, 1] as float32 [N, C, H, W] and int64 labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    class_names: list[str]
    mean: tuple[float, ...] | None = None  # None = computed on train
    std: tuple[float, ...] | None = None


@dataclass
class RealData:
    """A normalised real dataset with a held-out validation split.

    Images are stored normalised ((x - mean) / std, then ZCA when enabled); `to_pixels` inverts
    both. `subset(classes)` keeps only some classes (labels unchanged), used by continual learning.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    zca_state: dict[str, torch.Tensor] | None = None
    classes: tuple[int, ...] = field(default=())  # the label ids present; () = all

    def __post_init__(self) -> None:
        if not self.classes:
            self.classes = tuple(range(len(self.class_names)))

    @property
    def num_classes(self) -> int:
        """Width of the output head: always the full label space, also for a subset."""
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[-1])

    def class_indices(self, label: int) -> torch.Tensor:
        """Indices into train_x of the images of one class."""
        return (self.train_y == label).nonzero().flatten()

    def subset(self, classes: list[int] | tuple[int, ...]) -> RealData:
        """The same dataset restricted to `classes` in every split (labels keep their ids)."""
        import torch

        unknown = sorted(set(classes) - set(self.classes))
        if unknown:
            raise ValueError(f"classes {unknown} are not in dataset {self.name!r}")
        keep = torch.tensor(sorted(classes))

        def pick(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            mask = torch.isin(y, keep)
            return x[mask], y[mask]

        train_x, train_y = pick(self.train_x, self.train_y)
        val_x, val_y = pick(self.val_x, self.val_y)
        test_x, test_y = pick(self.test_x, self.test_y)
        return replace(
            self,
            train_x=train_x,
            train_y=train_y,
            val_x=val_x,
            val_y=val_y,
            test_x=test_x,
            test_y=test_y,
            classes=tuple(sorted(classes)),
        )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.train_x.shape[1:]
        return int(c), int(h), int(w)

    def to_pixels(
        self,
        x: torch.Tensor,
        clamp: bool = True,  # True: clip to [0, 1] (what a picture can show)
    ) -> torch.Tensor:
        """Normalised (and possibly ZCA-whitened) images back to [0, 1] pixels (`clamp=False`
        keeps values outside [0, 1], e.g. to count what clamping would change)."""
        return normalised_to_pixels(x, self.mean, self.std, self.zca_state, clamp)

    def from_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixels into this dataset's normalised space (mean / std, then ZCA if fitted):
        the inverse of `to_pixels` for values inside [0, 1]."""
        return pixels_to_normalised(x, self.mean, self.std, self.zca_state)

    def describe(self) -> str:
        return (
            f"{self.name}: {len(self.train_y)} train / {len(self.val_y)} val / "
            f"{len(self.test_y)} test, {self.num_classes} classes, "
            f"{self.channels}x{self.image_size}x{self.image_size}"
        )


def normalised_to_pixels(
    x: torch.Tensor,
    mean: tuple[float, ...] | list[float],
    std: tuple[float, ...] | list[float],
    zca_state: dict[str, torch.Tensor] | None = None,
    clamp: bool = True,  # True: clip to [0, 1] (what a picture can show)
) -> torch.Tensor:
    """Images in a dataset's normalised space (given its mean / std and ZCA state, as
    `RealData` or an artifact's meta.json record them) back to pixels in [0, 1]."""
    import torch

    if zca_state is not None:
        from ddbench.augment import ZCA

        zca = ZCA()
        zca.load_state_dict(zca_state)
        x = zca.inverse(x)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    x = x * s + m
    return x.clamp(0, 1) if clamp else x


def pixels_to_normalised(
    x: torch.Tensor,
    mean: tuple[float, ...] | list[float],
    std: tuple[float, ...] | list[float],
    zca_state: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Pixels in [0, 1] into a dataset's normalised space: (x - mean) / std, then ZCA."""
    import torch

    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    x = ((x - m) / s).contiguous()
    if zca_state is not None:
        from ddbench.augment import ZCA

        zca = ZCA()
        zca.load_state_dict(zca_state)
        x = zca.transform(x)
    return x


DatasetLoader = Callable[[Any], RawSplits]
DATASETS: Registry[DatasetLoader] = Registry("dataset", "ddbench.datasets")


def _dataset(name: str) -> Callable[[DatasetLoader], DatasetLoader]:
    def decorate(loader: DatasetLoader) -> DatasetLoader:
        loader.name = name  # type: ignore[attr-defined]
        return DATASETS.register(loader)

    return decorate


def dataset_params_model(name: str) -> type[DatasetParams]:
    return getattr(DATASETS.get(name), "Params", DatasetParams)


def load_dataset(name: str, params: dict[str, Any] | DatasetParams | None = None) -> RealData:
    """Load, split, normalise (and ZCA) a registered dataset."""
    import torch

    loader = DATASETS.get(name)
    model = dataset_params_model(name)
    p = params if isinstance(params, DatasetParams) else model.model_validate(params or {})
    raw = loader(p)
    train_x, train_y, val_x, val_y = _split_val(raw.train_x, raw.train_y, p, name)
    if raw.mean is None or raw.std is None:
        mean = tuple(train_x.mean(dim=(0, 2, 3)).tolist())
        std = tuple(train_x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())
    else:
        mean, std = raw.mean, raw.std
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)

    def norm(x: torch.Tensor) -> torch.Tensor:
        return ((x - m) / s).contiguous()

    train_x, val_x, test_x = norm(train_x), norm(val_x), norm(raw.test_x)
    zca_state = None
    if p.zca:
        from ddbench.augment import ZCA

        zca = ZCA()
        zca.fit(train_x)
        train_x, val_x, test_x = zca.transform(train_x), zca.transform(val_x), zca.transform(test_x)
        zca_state = zca.state_dict()
    return RealData(
        name=name,
        train_x=train_x,
        train_y=train_y,
        val_x=val_x,
        val_y=val_y,
        test_x=test_x,
        test_y=raw.test_y,
        class_names=raw.class_names,
        mean=mean,
        std=std,
        zca_state=zca_state,
    )


def _split_val(
    x: torch.Tensor, y: torch.Tensor, p: DatasetParams, name: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hold out a stratified, seeded share of every class as the validation split."""
    import torch

    if not 0.0 <= p.val_fraction < 1.0:
        raise DataError(f"dataset {name}: val_fraction must be in [0, 1), got {p.val_fraction}")
    gen = torch.Generator().manual_seed(derive_seed("val_split", name, p.split_seed))
    val_idx = []
    for label in y.unique().tolist():
        idx = (y == label).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        val_idx.append(idx[: int(round(len(idx) * p.val_fraction))])
    val = torch.cat(val_idx).sort().values
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[val] = False
    return x[keep], y[keep], x[val], y[val]


def data_root(root: str | None, name: str) -> Path:
    """params.root, else $DDBENCH_DATA, else ~/.cache/ddbench/data (torchvision's layout below)."""
    if root:
        return Path(root).expanduser()
    env = os.environ.get("DDBENCH_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ddbench" / "data"


# --------------------------------------------------------------------------- digits (embedded)


@_dataset("digits")
def digits(params: DigitsParams) -> RawSplits:
    """scikit-learn's 1,797 real 8x8 handwritten digits (ships with the package; no download).

    Pixel values 0..16 are scaled to [0, 1]. digits has no official test split, so a fixed
    stratified `test_fraction` is held out with a named seed, identical in every suite.
    """
    import numpy as np
    import torch
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    if params.image_size != 8:
        x = torch.nn.functional.interpolate(
            x, size=params.image_size, mode="bilinear", align_corners=False
        ).clamp(0, 1)
    gen = torch.Generator().manual_seed(derive_seed("digits_test_split"))
    test = []
    for label in range(10):
        idx = (y == label).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        test.append(idx[: int(round(len(idx) * params.test_fraction))])
    test_idx = torch.cat(test).sort().values
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[test_idx] = False
    names = [str(d) for d in range(10)]
    return RawSplits(x[keep], y[keep], x[test_idx], y[test_idx], names)


digits.Params = DigitsParams

# --------------------------------------------------------------------------- torchvision


def _torchvision_splits(
    name: str, params: TorchvisionParams, build: Callable[[str, bool], Any], how: str
) -> tuple[Any, Any]:
    root = data_root(params.root, name)
    try:
        return build(str(root), True), build(str(root), False)
    except (RuntimeError, FileNotFoundError, OSError) as exc:
        raise DataError(
            f"dataset {name}: not found under {root} ({exc}). {how} Either set "
            f"dataset.params.root or $DDBENCH_DATA to the folder holding it, or set "
            f"dataset.params.download: true to let torchvision download it there."
        ) from None


def _images_to_tensor(array: Any) -> torch.Tensor:
    """uint8 [N, H, W] or [N, H, W, C] (numpy or tensor) -> float [N, C, H, W] in [0, 1]."""
    import numpy as np
    import torch

    t = torch.as_tensor(np.asarray(array))
    if t.dim() == 3:
        t = t.unsqueeze(-1)
    return t.permute(0, 3, 1, 2).float().div(255.0).contiguous()


def _register_torchvision(
    name: str,
    cls_name: str,
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
    how: str,
) -> None:
    def loader(params: TorchvisionParams) -> RawSplits:
        import numpy as np
        import torch
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)

        def build(root: str, train: bool) -> Any:
            if cls_name == "SVHN":
                return cls(root, split="train" if train else "test", download=params.download)
            return cls(root, train=train, download=params.download)

        train, test = _torchvision_splits(name, params, build, how)

        def arrays(ds: Any) -> tuple[torch.Tensor, torch.Tensor]:
            if cls_name == "SVHN":  # stored as [N, C, H, W] uint8 with `labels`
                x = torch.from_numpy(ds.data).float().div(255.0)
                return x, torch.as_tensor(np.asarray(ds.labels), dtype=torch.long)
            return _images_to_tensor(ds.data), torch.as_tensor(ds.targets, dtype=torch.long)

        train_x, train_y = arrays(train)
        test_x, test_y = arrays(test)
        names = list(getattr(train, "classes", [])) or [str(c) for c in range(10)]
        names = [str(n) for n in names]
        return RawSplits(train_x, train_y, test_x, test_y, names, mean, std)

    loader.__doc__ = f"torchvision {cls_name}, read from a local root. {how}"
    loader.Params = TorchvisionParams  # type: ignore[attr-defined]
    _dataset(name)(loader)


_TV_HOW = "torchvision expects its own folder layout (e.g. {root}/cifar-10-batches-py)."
_register_torchvision("mnist", "MNIST", None, None, _TV_HOW)
_register_torchvision("fashion_mnist", "FashionMNIST", None, None, _TV_HOW)
_register_torchvision("svhn", "SVHN", None, None, _TV_HOW)
_register_torchvision("cifar10", "CIFAR10", CIFAR10_MEAN, CIFAR10_STD, _TV_HOW)
_register_torchvision("cifar100", "CIFAR100", CIFAR100_MEAN, CIFAR100_STD, _TV_HOW)

# --------------------------------------------------------------------------- image folders

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def folder_items(split_dir: Path, classes: list[str]) -> list[tuple[Path, int]]:
    """(file, label) of every image of split_dir/<class>/*: classes in the given order (label =
    index in `classes`), files sorted by name within a class; missing class folders are skipped."""
    return [
        (f, label)
        for label, cls in enumerate(classes)
        if (split_dir / cls).is_dir()
        for f in sorted((split_dir / cls).iterdir())
        if f.suffix.lower() in IMAGE_SUFFIXES
    ]


def _read_folder(split_dir: Path, classes: list[str], params: FolderParams) -> RawSplits:
    """Every image of split_dir/<class>/* for the given class order."""
    import torch

    items = folder_items(split_dir, classes)
    if not items:
        raise DataError(f"no images found under {split_dir} (expected {split_dir}/<class>/*.png)")
    x, y = _read_files(items, params)
    yt = torch.tensor(y, dtype=torch.long)
    return RawSplits(x, yt, x[:0], yt[:0], classes)


def _folder_dataset(
    name: str, root: Path, params: FolderParams, test_dirs: tuple[str, ...]
) -> RawSplits:
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DataError(
            f"dataset {name}: {train_dir} does not exist. Expected {root}/train/<class>/* and "
            f"{root}/{test_dirs[0]}/<class>/*; set dataset.params.root to that folder."
        )
    test_dir = next((root / d for d in test_dirs if (root / d).is_dir()), None)
    if test_dir is None:
        raise DataError(f"dataset {name}: none of {[str(root / d) for d in test_dirs]} exists")
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir())
    if not classes:
        raise DataError(f"dataset {name}: {train_dir} holds no class folders")
    train = _read_folder(train_dir, classes, params)
    test = _read_folder(test_dir, classes, params)
    return RawSplits(train.train_x, train.train_y, test.train_x, test.train_y, classes)


@_dataset("imagefolder")
def imagefolder(params: FolderParams) -> RawSplits:
    """Any `root/train/<class>/*` + `root/test/<class>/*` tree; classes = sorted folder names."""
    if not params.root:
        raise DataError(
            "dataset imagefolder: params.root is required (a folder with train/, test/)"
        )
    return _folder_dataset("imagefolder", Path(params.root).expanduser(), params, ("test",))


imagefolder.Params = FolderParams


class SubsetFolderParams(FolderParams):
    image_size: int = 128  # the ImageNet-subset protocol (imagenette, imagewoof) uses 128 px


class TinyImageNetParams(FolderParams):
    image_size: int = 64  # Tiny ImageNet's native 64 x 64


def _register_imagenet_subset(name: str, how: str) -> None:
    def loader(params: SubsetFolderParams) -> RawSplits:
        root = data_root(params.root, name) if params.root else data_root(None, name) / name
        try:
            return _folder_dataset(name, root, params, ("val", "test"))
        except DataError as exc:
            raise DataError(f"{exc}. {how}") from None

    loader.__doc__ = f"{name}: an ImageNet subset stored as image folders. {how}"
    loader.Params = SubsetFolderParams  # type: ignore[attr-defined]
    _dataset(name)(loader)


_register_imagenet_subset(
    "imagenette", "Unpack fast.ai's imagenette2 archive (train/ and val/ folders) there."
)
_register_imagenet_subset(
    "imagewoof", "Unpack fast.ai's imagewoof2 archive (train/ and val/ folders) there."
)
_register_imagenet_subset(
    "imagesquawk",
    "Build it from ImageNet as in the MTT paper's class list, as train/<wnid>/ and val/<wnid>/.",
)


@_dataset("tiny_imagenet")
def tiny_imagenet(params: TinyImageNetParams) -> RawSplits:
    """Tiny ImageNet (200 classes, 64 px); its labelled val split serves as test.

    Layout: root/train/<wnid>/images/*.JPEG and root/val/images/* + root/val/val_annotations.txt.
    """
    import torch

    root = (
        data_root(params.root, "tiny_imagenet")
        if params.root
        else data_root(None, "tiny_imagenet") / "tiny-imagenet-200"
    )
    train_dir, ann = root / "train", root / "val" / "val_annotations.txt"
    if not train_dir.is_dir() or not ann.is_file():
        raise DataError(
            f"dataset tiny_imagenet: expected {train_dir} and {ann}. Unpack tiny-imagenet-200.zip "
            f"there or set dataset.params.root."
        )
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir())
    train_items = [
        (f, label)
        for label, c in enumerate(classes)
        for f in sorted((train_dir / c / "images").glob("*"))
        if f.suffix.lower() in IMAGE_SUFFIXES
    ]
    train_x, train_y = _read_files(train_items, params)
    by_file = dict(line.split("\t")[:2] for line in ann.read_text().splitlines() if line)
    test_x, test_y = _read_files(
        [(root / "val" / "images" / f, classes.index(c)) for f, c in sorted(by_file.items())],
        params,
    )
    return RawSplits(train_x, torch.tensor(train_y), test_x, torch.tensor(test_y), classes)


tiny_imagenet.Params = TinyImageNetParams


def read_image_files(
    items: list[tuple[Path, int]], image_size: int, channels: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(file, label) pairs -> float images [N, C, H, W] in [0, 1] and int64 labels, resized to
    `image_size` (bilinear) and converted to `channels` (1 = grayscale, 3 = RGB)."""
    import torch

    params = FolderParams(image_size=image_size, channels=channels)
    x, y = _read_files(items, params)
    return x, torch.tensor(y, dtype=torch.long)


def _read_files(
    items: list[tuple[Path, int]], params: FolderParams
) -> tuple[torch.Tensor, list[int]]:
    import numpy as np
    from PIL import Image

    mode = "L" if params.channels == 1 else "RGB"
    images = []
    for f, _ in items:
        with Image.open(f) as im:
            images.append(
                np.asarray(im.convert(mode).resize((params.image_size,) * 2, Image.BILINEAR))
            )
    return _images_to_tensor(np.stack(images)), [label for _, label in items]
