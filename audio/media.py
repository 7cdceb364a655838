"""Samples on disk: a 16-bit WAV and a spectrogram PNG per clip, and one overview PNG of all clips.

The PNG shows the log-mel with low frequencies at the bottom and time to the right, coloured by matplotlib's
"magma" map over the top 8 nats (≈ 70 dB) below the clip's loudest bin; each bin is `upscale` pixels square.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from layersync.audio.decode import write_wav
from layersync.core.errors import UserValueError

DYNAMIC_RANGE_NATS = 8.0


def mel_rgb(logmel: torch.Tensor | np.ndarray, upscale: int = 4) -> np.ndarray:
    """(F, T) log-mel → (F·upscale, T·upscale, 3) uint8, low frequencies at the bottom."""
    from matplotlib import colormaps

    x = np.asarray(logmel, dtype=np.float64)
    if x.ndim != 2 or not np.isfinite(x).all():
        raise UserValueError(f"expected a finite (F, T) log-mel, got shape {x.shape}")
    top = x.max()
    scaled = np.clip((x - (top - DYNAMIC_RANGE_NATS)) / DYNAMIC_RANGE_NATS, 0, 1)[::-1]  # row 0 = highest bin
    rgb = (colormaps["magma"](scaled)[..., :3] * 255).round().astype(np.uint8)  # (F, T, 3)
    return rgb.repeat(upscale, 0).repeat(upscale, 1)


def save_mel_png(logmel: torch.Tensor | np.ndarray, path: str | os.PathLike, upscale: int = 4) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mel_rgb(logmel, upscale)).save(path, format="PNG")
    return path


def save_mel_overview(logmels: torch.Tensor, labels: list[int], path: str | os.PathLike, upscale: int = 2,
                      pad: int = 2) -> Path:
    """All clips (B, F, T) on one PNG, one row per label in first-seen order, grey separators."""
    rows: dict[int, list[np.ndarray]] = {}
    for mel, label in zip(logmels, labels):
        rows.setdefault(int(label), []).append(mel_rgb(mel, upscale))
    h, w = next(iter(rows.values()))[0].shape[:2]
    cols = max(len(r) for r in rows.values())
    canvas = np.full((len(rows) * (h + pad) + pad, cols * (w + pad) + pad, 3), 128, np.uint8)
    for r, cells in enumerate(rows.values()):
        for c, cell in enumerate(cells):
            y0, x0 = pad + r * (h + pad), pad + c * (w + pad)
            canvas[y0 : y0 + h, x0 : x0 + w] = cell
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(path, format="PNG")
    return path


def write_samples(waves: torch.Tensor, logmels: torch.Tensor, names: list[str], folder: str | os.PathLike,
                  sample_rate_hz: int) -> list[Path]:
    """`folder/<name>.wav` and `folder/<name>.png` per clip; returns the WAV paths."""
    if not len(waves) == len(logmels) == len(names):
        raise UserValueError(f"{len(waves)} waveforms, {len(logmels)} mels and {len(names)} names")
    folder = Path(folder)
    out = []
    for wave, mel, name in zip(waves, logmels, names):
        out.append(write_wav(folder / f"{name}.wav", wave.detach().cpu().numpy(), sample_rate_hz))
        save_mel_png(mel.detach().cpu(), folder / f"{name}.png")
    return out
