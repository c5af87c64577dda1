"""Real datasets: `RealData` (train / val / test tensors, normalisation, classes), the `Dataset`
plugin base and its registry `DATASETS`, and `load_dataset`.

A dataset is a `Dataset` subclass registered in `DATASETS` whose `load(params)` returns the raw
splits as float tensors in [0, 1] (`RawSplits`); `load_dataset` then holds out a seeded
validation split from train, normalises with the dataset's mean / std and optionally fits ZCA.
The built-in datasets live in `ddbench/datasets/`, one module per family, imported on the
registry's first lookup. To add one, write a file there (or a plugin file, `ddbench.plugins`)::

    class MyParams(DatasetParams):
        root: str | None = None  # where the files live; default $DDBENCH_DATA/my_dataset

    @DATASETS.register
    class MyDataset(Dataset):
        '''My images (the docstring's first paragraph is its `ddbench ls datasets -v` line).'''

        name = "my_dataset"
        Params = MyParams

        def load(self, params: MyParams) -> RawSplits: ...

Nothing is ever downloaded unless `download: true` is asked for; missing files raise `DataError`
with the path looked in and how to obtain them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from ddbench.errors import DataError
from ddbench.registry import Plugin, Registry
from ddbench.seeding import derive_seed

if TYPE_CHECKING:
    import torch


class DatasetParams(BaseModel):
    """Parameters every dataset accepts."""

    model_config = ConfigDict(extra="forbid")

    val_fraction: float = 0.1  # share of train held out for selection (NAS protocol: 10 %)
    split_seed: int = 0  # names the val split; fixed so every suite sees the same split
    zca: bool = False  # ZCA whitening (kornia, eps 0.1) fitted on train; off in the DC protocol


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

    def without_test(self) -> RealData:
        """The same dataset with an empty test split, made without reading the test split: what
        every choice made on val (Tune's selection) is given, so it cannot see test."""
        return replace(
            self,
            test_x=self.val_x.new_empty((0, *self.val_x.shape[1:])),
            test_y=self.val_y.new_empty((0,)),
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


class Dataset(Plugin):
    """Base of every dataset: `name`, a `Params` model and `load`, registered in `DATASETS`."""

    Params: ClassVar[type[DatasetParams]] = DatasetParams

    def load(self, params: Any) -> RawSplits:
        """The raw splits of the dataset for validated `params` (an instance of `Params`)."""
        raise NotImplementedError


# built-ins: the modules of ddbench/datasets/, imported on the first lookup (they import this one)
DATASETS: Registry[type[Dataset]] = Registry(
    "dataset", "ddbench.datasets", builtins="ddbench.datasets"
)


def dataset_params_model(name: str) -> type[DatasetParams]:
    return DATASETS.get(name).Params


def load_dataset(name: str, params: dict[str, Any] | DatasetParams | None = None) -> RealData:
    """Load, split, normalise (and ZCA) a registered dataset."""
    import torch

    dataset = DATASETS.get(name)()
    p = params if isinstance(params, DatasetParams) else dataset.Params.model_validate(params or {})
    raw = dataset.load(p)
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


def images_to_tensor(array: Any) -> torch.Tensor:
    """uint8 [N, H, W] or [N, H, W, C] (numpy or tensor) -> float [N, C, H, W] in [0, 1]: the
    image layout of `RawSplits`."""
    import numpy as np
    import torch

    t = torch.as_tensor(np.asarray(array))
    if t.dim() == 3:
        t = t.unsqueeze(-1)
    return t.permute(0, 3, 1, 2).float().div(255.0).contiguous()
