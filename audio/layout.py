"""How a log-mel clip (F mel bins × T frames) becomes the backbone's input, and back.

- "image":  x is (1, F, T), a one-channel picture cut into p × p patches (2-D tokens, as in DiT);
            F and T must be multiples of p. N = (F/p)·(T/p) tokens.
- "frames": x is (F, T), the mel bins are channels of a 1-D sequence cut into runs of p frames
            (1-D tokens, as a 1-D DiT on audio frames). N = T/p tokens, each seeing the whole spectrum.
"frames" gives p·F values per token and F/p times fewer tokens, which is what makes the embedded run fit a
CPU budget; "image" keeps local time-frequency structure per token.
"""

from __future__ import annotations

from typing import Literal

import torch

Layout = Literal["image", "frames"]
LAYOUTS: tuple[Layout, ...] = ("image", "frames")


def model_shape(layout: Layout, n_mels: int, frames: int) -> tuple[tuple[int, ...], int]:
    """(input_size, in_channels) of the backbone for clips of `n_mels` × `frames`."""
    if layout == "image":
        return (n_mels, frames), 1
    if layout == "frames":
        return (frames,), n_mels
    raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")


def to_model(mel: torch.Tensor, layout: Layout) -> torch.Tensor:
    """(B, F, T) normalised log-mel → (B, 1, F, T) for "image" or (B, F, T) for "frames"."""
    if mel.ndim != 3:
        raise ValueError(f"expected (B, F, T) mels, got {tuple(mel.shape)}")
    return mel[:, None] if layout == "image" else mel


def from_model(x: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Inverse of `to_model`: backbone samples → (B, F, T)."""
    if layout == "image":
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"'image' layout samples must be (B, 1, F, T), got {tuple(x.shape)}")
        return x[:, 0]
    if x.ndim != 3:
        raise ValueError(f"'frames' layout samples must be (B, F, T), got {tuple(x.shape)}")
    return x
