"""Datasets: the real digits splits, missing data errors, image folders, class subsets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddbench.data import DATASETS, Dataset, DatasetParams, load_dataset
from ddbench.errors import DataError


def test_digits_splits_are_disjoint_stratified_and_fixed(digits):
    assert digits.num_classes == 10 and digits.channels == 1 and digits.image_size == 8
    n = len(digits.train_y) + len(digits.val_y) + len(digits.test_y)
    assert n == 1797
    for label in range(10):
        share = (digits.val_y == label).sum() / (digits.train_y == label).sum()
        assert 0.08 < share < 0.14
    again = load_dataset("digits")
    assert torch.equal(again.val_x, digits.val_x) and torch.equal(again.test_y, digits.test_y)
    other = load_dataset("digits", {"split_seed": 1})
    assert not torch.equal(other.val_x, digits.val_x)
    same = torch.allclose(other.to_pixels(other.test_x), digits.to_pixels(digits.test_x), atol=1e-5)
    assert same  # the test split never moves (normalisation follows the train split)
    rows = {tuple(r.tolist()) for r in digits.train_x.flatten(1)}
    assert not any(tuple(r.tolist()) in rows for r in digits.test_x.flatten(1)[:50])


def test_normalisation_round_trip(digits):
    pixels = digits.to_pixels(digits.train_x[:5])
    assert pixels.min() >= 0 and pixels.max() <= 1
    assert abs(float(digits.train_x.mean())) < 0.05


def test_missing_torchvision_data_is_a_clear_error(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", {"root": str(tmp_path / "nowhere")})
    message = str(info.value)
    assert str(tmp_path / "nowhere") in message and "download: true" in message


def test_imagefolder_reads_a_tree(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("test", 3)):
        for cls in ("cat", "ant"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                arr = rng.integers(0, 255, (10, 10, 3), dtype=np.uint8)
                Image.fromarray(arr).save(folder / f"{i}.png")
    real = load_dataset("imagefolder", {"root": str(tmp_path), "image_size": 8, "channels": 3})
    assert real.class_names == ["ant", "cat"]
    assert real.train_x.shape[1:] == (3, 8, 8)
    assert len(real.train_y) + len(real.val_y) == 24 and len(real.test_y) == 6
    with pytest.raises(DataError, match="train"):
        load_dataset("imagefolder", {"root": str(tmp_path / "missing")})


def test_subset_keeps_only_some_classes(digits):
    sub = digits.subset([3, 7])
    assert set(sub.train_y.tolist()) == {3, 7} and set(sub.test_y.tolist()) == {3, 7}
    assert sub.num_classes == 10 and sub.classes == (3, 7)
    with pytest.raises(ValueError):
        sub.subset([1])


def test_every_dataset_is_a_described_plugin():
    for name in DATASETS.names():
        cls = DATASETS.get(name)
        assert issubclass(cls, Dataset) and issubclass(cls.Params, DatasetParams), name
        assert cls.name == name and cls.description(), name
