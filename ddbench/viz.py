"""Pictures: image grids of a distillate (PNG) shared by the report and MLflow.

Images are laid out one row per class, enlarged with nearest-neighbour so 8-px digits stay
legible. Matplotlib plots live in `ddbench.report`; this module only needs numpy and Pillow.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

GRID_FILE = "grid.png"  # drawn beside each image-set artifact at distill time

if TYPE_CHECKING:
    import torch

    from ddbench.data import RealData


def grid_png(
    images: torch.Tensor,
    labels: torch.Tensor,
    real: RealData,
    path: str | Path,
    per_class: int = 10,  # columns: at most this many images of each class
    cell_px: int = 48,  # each image is scaled to about this many pixels a side
) -> Path:
    """Save a class-per-row grid of (normalised) images as a PNG; returns the path."""
    import numpy as np
    from PIL import Image

    pixels = real.to_pixels(images.detach().float().cpu())
    hard = labels if labels.dim() == 1 else labels.argmax(dim=1)
    rows = []
    scale = max(1, cell_px // pixels.shape[-1])
    size = pixels.shape[-1] * scale
    for label in sorted(set(hard.tolist())):
        picked = pixels[hard == label][:per_class]
        row = np.ones((size + 2, (size + 2) * per_class, 3), dtype=np.float32)
        for j, img in enumerate(picked):
            arr = img.numpy().transpose(1, 2, 0)
            if arr.shape[2] == 1:
                arr = np.repeat(arr, 3, axis=2)
            arr = arr.repeat(scale, axis=0).repeat(scale, axis=1)
            row[1 : 1 + size, j * (size + 2) + 1 : j * (size + 2) + 1 + size] = arr
        rows.append(row)
    grid = (np.concatenate(rows, axis=0) * 255).clip(0, 255).astype(np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    return path
