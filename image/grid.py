"""PNG sample grids: images in [-1, 1] tiled with thin separators, upscaled by pixel repetition.

Cells are upscaled by nearest neighbour (each pixel becomes an `upscale`×`upscale` block) so that 8×8 digits
stay sharp; separators and the outer border are `pad` pixels of grey `pad_value` and are not upscaled.
A grid of `rows`×`cols` cells of H×W images is (rows·H·upscale + (rows+1)·pad) pixels high and
(cols·W·upscale + (cols+1)·pad) wide; cell (r, c) starts at row pad + r·(H·upscale + pad) and
column pad + c·(W·upscale + pad).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from layersync.core.errors import UserValueError


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Images (N, C, H, W) in [-1, 1] → uint8 (N, H, W, C) in [0, 255]: round((x + 1) · 127.5), clamped."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise UserValueError(f"images must be (N, C, H, W) with C = 1 or 3, got {tuple(images.shape)}")
    if not torch.isfinite(images).all():
        raise UserValueError("images contain NaN or inf values; nothing sensible can be drawn")
    u8 = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return u8.permute(0, 2, 3, 1).numpy()  # (N, H, W, C)


def _tile(cells: list[list[np.ndarray | None]], shape: tuple[int, int, int], upscale: int, pad: int,
          pad_value: int) -> np.ndarray:
    """Rows of uint8 cells (H, W, C) or None (left blank) → one (height, width, C) canvas."""
    h, w, c = shape
    ch, cw = h * upscale, w * upscale
    rows, cols = len(cells), max(len(r) for r in cells)
    canvas = np.full((rows * ch + (rows + 1) * pad, cols * cw + (cols + 1) * pad, c), pad_value, np.uint8)
    for r, row in enumerate(cells):
        for col, cell in enumerate(row):
            if cell is None:
                continue
            y0, x0 = pad + r * (ch + pad), pad + col * (cw + pad)
            canvas[y0 : y0 + ch, x0 : x0 + cw] = cell.repeat(upscale, 0).repeat(upscale, 1)  # nearest
    return canvas


def _write(canvas: np.ndarray, path: str | os.PathLike) -> Path:
    """Save a (height, width, 1 or 3) uint8 canvas as a greyscale or RGB PNG, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(canvas[..., 0] if canvas.shape[-1] == 1 else canvas)  # mode L or RGB
    image.save(path, format="PNG")
    return path


def _check_layout(upscale: int, pad: int, pad_value: int) -> None:
    if upscale < 1 or pad < 0 or not 0 <= pad_value <= 255:
        raise UserValueError(f"need upscale ≥ 1, pad ≥ 0, 0 ≤ pad_value ≤ 255; got {upscale}, {pad}, "
                             f"{pad_value}")


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int = 8, upscale: int = 4, pad: int = 1,
              pad_value: int = 128) -> Path:
    """Tile images (N, C, H, W) in [-1, 1] row by row, `nrow` images per row (as torchvision), into a PNG."""
    _check_layout(upscale, pad, pad_value)
    if nrow < 1:
        raise UserValueError(f"nrow must be ≥ 1, got {nrow}")
    u8 = to_uint8(images)  # (N, H, W, C)
    if len(u8) == 0:
        raise UserValueError("no images to draw")
    cells = [list(u8[i : i + nrow]) for i in range(0, len(u8), nrow)]
    return _write(_tile(cells, u8.shape[1:], upscale, pad, pad_value), path)


def save_class_grid(images: torch.Tensor, labels: torch.Tensor, path: str | os.PathLike,
                    num_classes: int | None = None, upscale: int = 4, pad: int = 1,
                    pad_value: int = 128) -> Path:
    """One row per class 0..num_classes−1 (default max label + 1), its images in their given order; a PNG.

    Rows are as long as the largest class; shorter rows and classes without images are left grey.
    """
    _check_layout(upscale, pad, pad_value)
    u8 = to_uint8(images)  # (N, H, W, C)
    labels = labels.detach().cpu().long()
    if labels.shape != (len(u8),):
        raise UserValueError(f"labels must have shape ({len(u8)},), got {tuple(labels.shape)}")
    if len(u8) == 0:
        raise UserValueError("no images to draw")
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    if labels.min() < 0 or labels.max() >= num_classes:
        raise UserValueError(f"labels must lie in [0, {num_classes - 1}], "
                             f"got [{int(labels.min())}, {int(labels.max())}]")
    cells = [[u8[i] for i in torch.nonzero(labels == c).flatten().tolist()] or [None]
             for c in range(num_classes)]
    return _write(_tile(cells, u8.shape[1:], upscale, pad, pad_value), path)
