"""Datasets stored as image files: any `train/<class>/*` tree, the ImageNet subsets, Tiny ImageNet.

Also the image-file reader they share with `from_files` (`folder_items`, `read_image_files`).
An ImageNet-style subset stored as `train/<wnid>/` + `val/<wnid>/` folders is a three-line
subclass of `ImageNetSubset` (its `name` and how to obtain it, `how`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from ddbench.data import (
    DATASETS,
    Dataset,
    DatasetParams,
    RawSplits,
    data_root,
    images_to_tensor,
)
from ddbench.errors import DataError

if TYPE_CHECKING:
    import torch

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class FolderParams(DatasetParams):
    root: str | None = None  # folder with train/<class>/* and test/<class>/* (or val/)
    image_size: int = 32  # images are resized to image_size x image_size pixels
    channels: int = 3  # 3 = RGB, 1 = grayscale


class SubsetFolderParams(FolderParams):
    image_size: int = 128  # the ImageNet-subset protocol (imagenette, imagewoof) uses 128 px


class TinyImageNetParams(FolderParams):
    image_size: int = 64  # Tiny ImageNet's native 64 x 64


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


def read_image_files(
    items: list[tuple[Path, int]], image_size: int, channels: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(file, label) pairs -> float images [N, C, H, W] in [0, 1] and int64 labels, resized to
    `image_size` (bilinear) and converted to `channels` (1 = grayscale, 3 = RGB)."""
    import numpy as np
    import torch
    from PIL import Image

    mode = "L" if channels == 1 else "RGB"
    images = []
    for f, _ in items:
        with Image.open(f) as im:
            images.append(np.asarray(im.convert(mode).resize((image_size,) * 2, Image.BILINEAR)))
    labels = torch.tensor([label for _, label in items], dtype=torch.long)
    return images_to_tensor(np.stack(images)), labels


def _read_folder(
    split_dir: Path, classes: list[str], params: FolderParams
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of split_dir/<class>/* for the given class order."""
    items = folder_items(split_dir, classes)
    if not items:
        raise DataError(f"no images found under {split_dir} (expected {split_dir}/<class>/*.png)")
    return read_image_files(items, params.image_size, params.channels)


def _folder_dataset(
    name: str, root: Path, params: FolderParams, test_dirs: tuple[str, ...]
) -> RawSplits:
    """The splits of root/train/<class>/* and the first existing root/<test_dir>/<class>/*."""
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
    train_x, train_y = _read_folder(train_dir, classes, params)
    test_x, test_y = _read_folder(test_dir, classes, params)
    return RawSplits(train_x, train_y, test_x, test_y, classes)


@DATASETS.register
class ImageFolder(Dataset):
    """Any `root/train/<class>/*` + `root/test/<class>/*` tree; classes = sorted folder names."""

    name = "imagefolder"
    Params = FolderParams

    def load(self, params: FolderParams) -> RawSplits:
        if not params.root:
            raise DataError(
                "dataset imagefolder: params.root is required (a folder with train/, test/)"
            )
        return _folder_dataset(self.name, Path(params.root).expanduser(), params, ("test",))


class ImageNetSubset(Dataset):
    """Base of the ImageNet subsets stored as image folders (not registered itself)."""

    Params = SubsetFolderParams
    how: ClassVar[str]  # how to obtain the folders, appended to a missing-data error

    def load(self, params: SubsetFolderParams) -> RawSplits:
        root = (
            data_root(params.root, self.name)
            if params.root
            else data_root(None, self.name) / self.name
        )
        try:
            return _folder_dataset(self.name, root, params, ("val", "test"))
        except DataError as exc:
            raise DataError(f"{exc}. {self.how}") from None


@DATASETS.register
class Imagenette(ImageNetSubset):
    """10 easy ImageNet classes (fast.ai's Imagenette), stored as image folders."""

    name = "imagenette"
    how = "Unpack fast.ai's imagenette2 archive (train/ and val/ folders) there."


@DATASETS.register
class Imagewoof(ImageNetSubset):
    """10 ImageNet dog breeds (fast.ai's Imagewoof), stored as image folders."""

    name = "imagewoof"
    how = "Unpack fast.ai's imagewoof2 archive (train/ and val/ folders) there."


@DATASETS.register
class Imagesquawk(ImageNetSubset):
    """10 ImageNet bird classes (the MTT paper's ImageSquawk), stored as image folders."""

    name = "imagesquawk"
    how = (
        "Build it from ImageNet as in the MTT paper's class list, as train/<wnid>/ and val/<wnid>/."
    )


@DATASETS.register
class TinyImageNet(Dataset):
    """Tiny ImageNet (200 classes, 64 px); its labelled val split serves as test.

    Layout: root/train/<wnid>/images/*.JPEG and root/val/images/* + root/val/val_annotations.txt.
    """

    name = "tiny_imagenet"
    Params = TinyImageNetParams

    def load(self, params: TinyImageNetParams) -> RawSplits:
        root = (
            data_root(params.root, self.name)
            if params.root
            else data_root(None, self.name) / "tiny-imagenet-200"
        )
        train_dir, ann = root / "train", root / "val" / "val_annotations.txt"
        if not train_dir.is_dir() or not ann.is_file():
            raise DataError(
                f"dataset tiny_imagenet: expected {train_dir} and {ann}. Unpack "
                f"tiny-imagenet-200.zip there or set dataset.params.root."
            )
        classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir())
        train_items = [
            (f, label)
            for label, c in enumerate(classes)
            for f in sorted((train_dir / c / "images").glob("*"))
            if f.suffix.lower() in IMAGE_SUFFIXES
        ]
        by_file = dict(line.split("\t")[:2] for line in ann.read_text().splitlines() if line)
        test_items = [
            (root / "val" / "images" / f, classes.index(c)) for f, c in sorted(by_file.items())
        ]
        size, channels = params.image_size, params.channels
        train_x, train_y = read_image_files(train_items, size, channels)
        test_x, test_y = read_image_files(test_items, size, channels)
        return RawSplits(train_x, train_y, test_x, test_y, classes)
