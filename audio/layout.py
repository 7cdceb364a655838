"""How a clip in model space — a log-mel (F mel bins × T frames) or a VAE latent (C × F' × T') — becomes
the backbone's input, and back.

- "image":  x is (C, F, T), a C-channel picture cut into p × p patches (2-D tokens, as in DiT);
            F and T must be multiples of p. N = (F/p)·(T/p) tokens of C·p² values.
- "frames": x is (C·F, T), every frequency row of every channel a channel of a 1-D sequence cut into runs of
            p frames (1-D tokens). N = T/p tokens of C·F·p values, each seeing the whole spectrum.
A log-mel is the case C = 1. "frames" gives fewer, wider tokens, which is what makes the embedded run fit a
CPU budget; "image" keeps local time-frequency structure per token.
"""

from __future__ import annotations

from typing import Literal

import torch

from layersync.core.errors import UserValueError

Layout = Literal["image", "frames"]
LAYOUTS: tuple[Layout, ...] = ("image", "frames")


def model_shape(layout: Layout, channels: int, height: int, frames: int) -> tuple[tuple[int, ...], int]:
    """(input_size, in_channels) of the backbone for clips of channels × height (mel bins) × frames."""
    if layout == "image":
        return (height, frames), channels
    if layout == "frames":
        return (frames,), channels * height
    raise UserValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")


def to_model(x: torch.Tensor, layout: Layout) -> torch.Tensor:
    """(B, F, T) log-mel or (B, C, F, T) latent → (B, C, F, T) for "image", (B, C·F, T) for "frames"."""
    if x.ndim == 3:
        x = x[:, None]  # a log-mel is one channel
    if x.ndim != 4:
        raise UserValueError(f"expected (B, F, T) or (B, C, F, T), got {tuple(x.shape)}")
    return x if layout == "image" else x.flatten(1, 2)


def from_model(x: torch.Tensor, layout: Layout, channels: int = 1) -> torch.Tensor:
    """Inverse of `to_model`: backbone samples → (B, C, F, T)."""
    if layout == "image":
        if x.ndim != 4 or x.shape[1] != channels:
            raise UserValueError(f"'image' layout samples must be (B, {channels}, F, T), got "
                                 f"{tuple(x.shape)}")
        return x
    if x.ndim != 3 or x.shape[1] % channels:
        raise UserValueError(f"'frames' layout samples must be (B, {channels}·F, T), got {tuple(x.shape)}")
    return x.unflatten(1, (channels, x.shape[1] // channels))
