"""scikit-learn's digits: 1,797 real 8x8 handwritten digits embedded in the package."""

from __future__ import annotations

from ddbench.data import DATASETS, Dataset, DatasetParams, RawSplits
from ddbench.seeding import derive_seed


class DigitsParams(DatasetParams):
    image_size: int = 8  # native resolution of scikit-learn's digits (8 x 8); larger = bilinear
    test_fraction: float = 0.2  # digits has no official test split: a fixed stratified 20 %


@DATASETS.register
class Digits(Dataset):
    """scikit-learn's 1,797 real 8x8 handwritten digits (ships with the package; no download).

    Pixel values 0..16 are scaled to [0, 1]. digits has no official test split, so a fixed
    stratified `test_fraction` is held out with a named seed, identical in every suite.
    """

    name = "digits"
    Params = DigitsParams

    def load(self, params: DigitsParams) -> RawSplits:
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
