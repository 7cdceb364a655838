"""FID Inception-v3: a PyTorch port of TensorFlow's 2015-12-05 Inception graph, which TTUR and ADM use.

The graph differs from torchvision's Inception-v3 in three places (Heusel et al.'s TTUR code, ported by
pytorch-fid): the 3×3 average pools of the A, C and E blocks exclude padding from the mean (TF's SAME
average pool), the last E block pools its branch with a max instead of an average, and the classifier has
1008 classes. Parameter names follow torchvision, so pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`
loads as is.

Outputs, as ADM's evaluator reads them from the TF graph:
- `pool`: pool_3, the 2048-d FID feature;
- `spatial`: mixed_6/conv (the 1×1 branch of Mixed_6d, 17×17×192), first 7 channels, flattened in TF's
  NHWC order: 17·17·7 = 2023 sFID features (Nash et al. 2021);
- `logits`: pool_3 @ W of softmax/logits/MatMul, without the bias (ADM's Inception Score uses that op).

Preprocessing (`preprocess`):
- "adm": what the TF graph does after its `ExpandDims` input, which ADM feeds with float [0, 255] NHWC
  batches: TF1 `ResizeBilinear` to 299 with align_corners=False and no half-pixel centres (source pixel
  = destination · in/out), then (x − 128) / 128, i.e. [0, 255] ↦ [−1, 0.9921875].
- "pytorch_fid": pytorch-fid's `F.interpolate(bilinear, align_corners=False)` (half-pixel centres), then
  x / 127.5 − 1 ↦ [−1, 1]. Its FID differs slightly from ADM's on images that are not 299×299.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Literal, NamedTuple, get_args

import torch
import torch.nn.functional as F
from torch import nn

from layersync.core.errors import UserValueError
from layersync.core.weights import WeightFile, resolve

Preprocess = Literal["adm", "pytorch_fid"]
INPUT_SIZE = 299
POOL_DIM = 2048
NUM_CLASSES = 1008  # the 2015 graph's softmax has 1008 outputs (1000 ImageNet classes + unused)
SPATIAL_CHANNELS = 7  # ADM keeps mixed_6/conv[..., :7]
SPATIAL_DIM = 17 * 17 * SPATIAL_CHANNELS  # 2023

INCEPTION_WEIGHTS = WeightFile(
    filename="pt_inception-2015-12-05-6726825d.pth",
    # `6726825d` in the name is torch.hub's sha256 prefix. The full digest is the one projects pinning this
    # file publish (95 628 359 bytes, 566 tensors; torch-fidelity re-hosts it under the same prefix).
    sha256="6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
    source="https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    "pt_inception-2015-12-05-6726825d.pth",
    description="FID Inception-v3 (TF graph 2015-12-05, ported by pytorch-fid)",
)


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """Run the enclosed code in true float32: TF32's 10-bit mantissa in matmuls and convolutions would
    perturb features and make the metric depend on the GPU generation."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn


def resize_bilinear_tf1(images: torch.Tensor, size: int) -> torch.Tensor:
    """TF1 `ResizeBilinear(align_corners=False)` of (B, C, H, W) to (B, C, size, size).

    Source coordinate = destination · (in / out) in float32, no half-pixel offset; the upper neighbour is
    clamped to the last pixel. Interpolates along the width, then the height, as TF's kernel does.
    """
    x = images.float()

    def taps(n_in: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scale = torch.tensor(float(n_in), dtype=torch.float32) / size  # float32 division, as TF
        src = torch.arange(size, dtype=torch.float32) * scale  # (size,)
        low = src.floor()
        high = torch.clamp(src.ceil(), max=n_in - 1)
        return low.long().to(x.device), high.long().to(x.device), (src - low).to(x.device)

    low, high, frac = taps(x.shape[-1])
    x = x[..., low] + (x[..., high] - x[..., low]) * frac  # (B, C, H, size)
    low, high, frac = taps(x.shape[-2])
    frac = frac[:, None]
    return x[..., low, :] + (x[..., high, :] - x[..., low, :]) * frac  # (B, C, size, size)


class BasicConv2d(nn.Module):
    """Convolution without bias, batch norm (TF's epsilon 0.001), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **conv_kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv_kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool_3x3(x: torch.Tensor) -> torch.Tensor:
    """TF's SAME 3×3 average pool: the padded border does not count in the mean."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35×35 block (Mixed_5b–5d): 1×1, 5×5, double 3×3 and pooled branches."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = self.branch_pool(_tf_avg_pool_3x3(x))
        return torch.cat([self.branch1x1(x), branch5x5, branch3x3dbl, branch_pool], 1)


class InceptionB(nn.Module):
    """Grid reduction 35→17 (Mixed_6a)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([self.branch3x3(x), branch3x3dbl, branch_pool], 1)


class InceptionC(nn.Module):
    """17×17 block with factorised 7×7 convolutions (Mixed_6b–6e)."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def branches(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four branch outputs, each (B, 192, 17, 17); the first is TF's `mixed_k/conv`."""
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        dbl = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            dbl = layer(dbl)
        return [self.branch1x1(x), branch7x7, dbl, self.branch_pool(_tf_avg_pool_3x3(x))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.branches(x), 1)


class InceptionD(nn.Module):
    """Grid reduction 17→8 (Mixed_7a)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            branch7x7x3 = layer(branch7x7x3)
        return torch.cat([branch3x3, branch7x7x3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """8×8 block with split 1×3 / 3×1 convolutions (Mixed_7b, 7c); `pool` is "max" in the graph's last one."""

    def __init__(self, in_channels: int, pool: Literal["avg", "max"]):
        super().__init__()
        if pool not in ("avg", "max"):
            raise UserValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        if self.pool == "avg":
            pooled = _tf_avg_pool_3x3(x)
        else:  # the 2015 graph's mixed_10 max-pools here (TTUR/pytorch-fid FIDInceptionE_2)
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch3x3_2a(b3),
                self.branch3x3_2b(b3),
                self.branch3x3dbl_3a(dbl),
                self.branch3x3dbl_3b(dbl),
                self.branch_pool(pooled),
            ],
            1,
        )


class InceptionOutput(NamedTuple):
    """What the FID suite reads from one batch."""

    pool: torch.Tensor  # (B, 2048) pool_3
    spatial: torch.Tensor  # (B, 2023) mixed_6/conv[..., :7], NHWC-flattened
    logits: torch.Tensor  # (B, 1008) pool_3 @ W, no bias


class FIDInceptionV3(nn.Module):
    """Inception-v3 of the 2015-12-05 TF graph; (B, 3, H, W) images in [0, 255] → pool, spatial, logits."""

    def __init__(self, preprocess: Preprocess = "adm"):
        super().__init__()
        if preprocess not in get_args(Preprocess):
            raise UserValueError(f"preprocess must be one of {get_args(Preprocess)}, got {preprocess!r}")
        self.preprocess = preprocess
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        # The graph's classifier; its bias is part of the checkpoint but ADM's logits leave it out.
        self.fc = nn.Linear(POOL_DIM, NUM_CLASSES)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 255] (uint8 or float) → (B, 3, 299, 299) network input."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise UserValueError(f"expected (B, 3, H, W) RGB images in [0, 255], got shape "
                                 f"{tuple(images.shape)}")
        x = images.float()
        if self.preprocess == "adm":
            return (resize_bilinear_tf1(x, INPUT_SIZE) - 128.0) / 128.0
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        return x / 127.5 - 1.0

    def forward(self, images: torch.Tensor) -> InceptionOutput:
        with no_tf32():
            x = self.normalize(images)  # (B, 3, 299, 299)
            x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # (B, 64, 147, 147)
            x = F.max_pool2d(x, kernel_size=3, stride=2)  # (B, 64, 73, 73)
            x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # (B, 192, 71, 71)
            x = F.max_pool2d(x, kernel_size=3, stride=2)  # (B, 192, 35, 35)
            x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))  # (B, 288, 35, 35)
            x = self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(x)))  # (B, 768, 17, 17)
            branches = self.Mixed_6d.branches(x)
            conv = branches[0][:, :SPATIAL_CHANNELS]  # (B, 7, 17, 17), TF's mixed_6/conv
            spatial = conv.permute(0, 2, 3, 1).flatten(1)  # (B, 2023) in TF's NHWC order, as ADM
            x = self.Mixed_6e(torch.cat(branches, 1))  # (B, 768, 17, 17)
            x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))  # (B, 2048, 8, 8)
            pool = x.mean(dim=(2, 3))  # (B, 2048), pool_3 = 8×8 VALID average pool
            logits = F.linear(pool, self.fc.weight)  # (B, 1008)
        return InceptionOutput(pool=pool, spatial=spatial, logits=logits)


def load_fid_inception(
    path: str | os.PathLike | None = None,
    preprocess: Preprocess = "adm",
    device: torch.device | str = "cpu",
    verify: bool = True,
) -> FIDInceptionV3:
    """The FID Inception with pytorch-fid's weights from `path` (file or folder) or `$LAYERSYNC_WEIGHTS`.

    Raises MissingWeightsError naming the file, where to get it and its sha256 when it is absent or altered.
    """
    file = resolve(INCEPTION_WEIGHTS, path, verify=verify)
    model = FIDInceptionV3(preprocess=preprocess)
    model.load_state_dict(torch.load(file, map_location="cpu", weights_only=True), strict=True)
    return model.eval().requires_grad_(False).to(device)
