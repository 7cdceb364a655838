"""The embedded image dataset of the default run: scikit-learn's 8×8 handwritten digits (no download).

`sklearn.datasets.load_digits` ships 1,797 grey 8×8 images of the digits 0–9 (UCI "Optical Recognition of
Handwritten Digits", pixel values 0–16) inside the scikit-learn wheel. Images are returned in model space,
(1, 8, 8) float32 in [-1, 1] via pixel / 16 · 2 − 1, with their class as a long label.

Split (deterministic, stratified): within each class, images are taken in the order scikit-learn stores them
and every 5th one, starting with the first (class-local index i with i % 5 == 0), goes to "test"; the rest
are "train". That gives 364 test and 1,433 train images with the class proportions of the whole set.
"all" is the 1,797 images in scikit-learn's order.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from layersync.core.errors import UserValueError

Split = Literal["train", "test", "all"]
SPLITS: tuple[Split, ...] = ("train", "test", "all")
NUM_CLASSES = 10
IMAGE_SHAPE = (1, 8, 8)  # (C, H, W)
TEST_EVERY = 5  # every 5th image of each class is a test image
PIXEL_MAX = 16.0  # the dataset's pixel values are integers 0..16


@lru_cache(maxsize=1)
def _raw() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as (images (1797, 8, 8) float, labels (1797,) int), read once per process."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target


@lru_cache(maxsize=None)
def split_indices(split: Split) -> np.ndarray:
    """Indices into scikit-learn's order of the images in `split`, ascending (see the module docstring)."""
    if split not in SPLITS:
        raise UserValueError(f"split must be one of {SPLITS}, got {split!r}")
    _, labels = _raw()
    if split == "all":
        out = np.arange(len(labels))
    else:
        is_test = np.zeros(len(labels), dtype=bool)
        for c in range(NUM_CLASSES):
            members = np.flatnonzero(labels == c)  # ascending: scikit-learn's order within the class
            is_test[members[::TEST_EVERY]] = True
        out = np.flatnonzero(is_test if split == "test" else ~is_test)
    out.setflags(write=False)
    return out


def digits_tensors(split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole split as (images (N, 1, 8, 8) float32 in [-1, 1], labels (N,) long), freshly allocated.

    The fast path for training: the set fits in memory, so a trainer can index batches from these tensors
    with its own torch.Generator instead of going through a DataLoader.
    """
    images, labels = _raw()
    idx = split_indices(split)
    x = torch.from_numpy(images[idx].astype(np.float32) / PIXEL_MAX * 2.0 - 1.0)  # (N, 8, 8)
    y = torch.from_numpy(labels[idx].astype(np.int64))  # (N,)
    return x.unsqueeze(1).contiguous(), y  # (N, 1, 8, 8), (N,)


class DigitsDataset(Dataset):
    """scikit-learn's 8×8 digits as a torch Dataset of (image (1, 8, 8) in [-1, 1], label long)."""

    def __init__(self, split: Split = "train"):
        self.split = split
        self.images, self.labels = digits_tensors(split)  # (N, 1, 8, 8), (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]
