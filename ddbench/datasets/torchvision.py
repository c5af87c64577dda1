"""Datasets read through torchvision from a local root: MNIST, Fashion-MNIST, SVHN, CIFAR-10/100.

`TorchvisionDataset` holds the whole loader; a member is a subclass naming the torchvision class
(`tv_class`) and, for the DC protocol's datasets, fixed normalisation constants. A torchvision
dataset with another constructor or storage (SVHN's `split=` and `labels`) overrides `build` /
`arrays`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

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

# Normalisation constants of the DC protocol (docs/protocols.md#normalisation-and-zca); others
# are computed on train.
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)

HOW = "torchvision expects its own folder layout (e.g. {root}/cifar-10-batches-py)."


class TorchvisionParams(DatasetParams):
    root: str | None = None  # data directory; default $DDBENCH_DATA, else ~/.cache/ddbench/data
    download: bool = False  # fetch from the internet only when asked (tests never do)


class TorchvisionDataset(Dataset):
    """Base of the torchvision datasets (not registered itself)."""

    Params = TorchvisionParams
    tv_class: ClassVar[str]  # the class name in torchvision.datasets
    mean: ClassVar[tuple[float, ...] | None] = None  # None: computed on train
    std: ClassVar[tuple[float, ...] | None] = None  # None: computed on train

    def build(self, cls: Any, root: str, train: bool, download: bool) -> Any:
        """The torchvision dataset object of one split."""
        return cls(root, train=train, download=download)

    def arrays(self, ds: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(images [N, C, H, W] in [0, 1], int64 labels) of a torchvision dataset object."""
        import torch

        return images_to_tensor(ds.data), torch.as_tensor(ds.targets, dtype=torch.long)

    def load(self, params: TorchvisionParams) -> RawSplits:
        import torchvision.datasets as tvd

        cls = getattr(tvd, self.tv_class)
        root = data_root(params.root, self.name)
        try:
            train = self.build(cls, str(root), True, params.download)
            test = self.build(cls, str(root), False, params.download)
        except (RuntimeError, FileNotFoundError, OSError) as exc:
            raise DataError(
                f"dataset {self.name}: not found under {root} ({exc}). {HOW} Either set "
                f"dataset.params.root or $DDBENCH_DATA to the folder holding it, or set "
                f"dataset.params.download: true to let torchvision download it there."
            ) from None
        train_x, train_y = self.arrays(train)
        test_x, test_y = self.arrays(test)
        names = list(getattr(train, "classes", [])) or [str(c) for c in range(10)]
        names = [str(n) for n in names]
        return RawSplits(train_x, train_y, test_x, test_y, names, self.mean, self.std)


@DATASETS.register
class MNIST(TorchvisionDataset):
    """torchvision MNIST (28x28 grayscale digits), read from a local root."""

    name = "mnist"
    tv_class = "MNIST"


@DATASETS.register
class FashionMNIST(TorchvisionDataset):
    """torchvision FashionMNIST (28x28 grayscale clothing), read from a local root."""

    name = "fashion_mnist"
    tv_class = "FashionMNIST"


@DATASETS.register
class SVHN(TorchvisionDataset):
    """torchvision SVHN (32x32 house-number digits), read from a local root."""

    name = "svhn"
    tv_class = "SVHN"

    def build(self, cls: Any, root: str, train: bool, download: bool) -> Any:
        return cls(root, split="train" if train else "test", download=download)

    def arrays(self, ds: Any) -> tuple[torch.Tensor, torch.Tensor]:
        import numpy as np
        import torch

        x = torch.from_numpy(ds.data).float().div(255.0)  # stored as [N, C, H, W] uint8
        return x, torch.as_tensor(np.asarray(ds.labels), dtype=torch.long)


@DATASETS.register
class CIFAR10(TorchvisionDataset):
    """torchvision CIFAR10 (32x32 colour, 10 classes), read from a local root."""

    name = "cifar10"
    tv_class = "CIFAR10"
    mean, std = CIFAR10_MEAN, CIFAR10_STD


@DATASETS.register
class CIFAR100(TorchvisionDataset):
    """torchvision CIFAR100 (32x32 colour, 100 classes), read from a local root."""

    name = "cifar100"
    tv_class = "CIFAR100"
    mean, std = CIFAR100_MEAN, CIFAR100_STD
