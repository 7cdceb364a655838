"""The SD-VAE between 256² RGB images and 32×32×4 latents (Rombach et al. 2022), from a local folder only.

Latent diffusion as DiT, SiT and REPA run it: the encoder gives a diagonal Gaussian q(z|x) = N(μ, σ²); the
model trains on z = s · (μ + σ ε), s = the VAE config's `scaling_factor` (0.18215 for the SD-VAE), and
samples are decoded as D(z / s). We store the moments (μ, log σ²) rather than one draw of z, so every epoch
draws a fresh ε, as REPA's pipeline does. Weights: sd-vae-ft-ema (DiT, SiT, REPA) or sd-vae-ft-mse.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from layersync.core.errors import UserValueError
from layersync.core.weights import MissingWeightsError, WeightFile, resolve, sha256sum

SD_VAE_EMA = WeightFile(
    filename="sd-vae-ft-ema",
    sha256=None,  # a folder: `prepare` records its weights file's sha256, every later load checks it
    source="https://huggingface.co/stabilityai/sd-vae-ft-ema (config.json and "
    "diffusion_pytorch_model.safetensors in one folder; sd-vae-ft-mse works the same way)",
    description="SD-VAE (kl-f8) for ImageNet latents",
)
_WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


@dataclass(frozen=True)
class VaeInfo:
    """Where a VAE came from and the latent geometry it gives; recorded in a prepared data set's index."""

    path: str
    weights_sha256: str
    scaling_factor: float
    latent_channels: int
    downsample: int  # image pixels per latent pixel along each axis (8 for kl-f8)


class LatentVae:
    """A frozen diffusers AutoencoderKL: uint8 images → latent moments, and latents z → images in [-1, 1]."""

    def __init__(self, vae: nn.Module, info: VaeInfo):
        self.vae = vae.eval().requires_grad_(False)
        self.info = info

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    def to(self, device: torch.device | str) -> LatentVae:
        self.vae.to(device)
        return self

    @torch.no_grad()
    def encode_moments(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) → (B, 2C, H/f, W/f) float32: μ, then log σ² clamped to [−30, 20] (diffusers)."""
        x = torch.as_tensor(images).to(self.device).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (B, 3, H, W)
        dist = self.vae.encode(x).latent_dist
        return torch.cat([dist.mean, dist.logvar], dim=1).float()

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, C, h, w) → images (B, 3, f·h, f·w) in [-1, 1] (float32, clamped)."""
        x = self.vae.decode(z.to(self.device).float() / self.info.scaling_factor).sample
        return x.float().clamp(-1.0, 1.0)


def sample_latents(moments: torch.Tensor, scaling_factor: float, eps: torch.Tensor) -> torch.Tensor:
    """z = s · (μ + σ ε): stored moments (B, 2C, h, w) and standard normal ε (B, C, h, w) → (B, C, h, w)."""
    mean, logvar = moments.float().chunk(2, dim=1)
    return torch.addcmul(mean, torch.exp(0.5 * logvar), eps).mul_(scaling_factor)


def vae_folder(path: str | os.PathLike | None) -> Path:
    """The VAE folder at `path`, or `$LAYERSYNC_WEIGHTS/sd-vae-ft-ema`; must hold config.json and weights."""
    folder = Path(path).expanduser() if path else resolve(SD_VAE_EMA)
    weights = [folder / name for name in _WEIGHT_NAMES if (folder / name).is_file()]
    if not (folder / "config.json").is_file() or not weights:
        raise MissingWeightsError(
            f"VAE folder {folder} must hold config.json and one of {', '.join(_WEIGHT_NAMES)}; obtain them "
            f"from {SD_VAE_EMA.source} and pass the folder with --vae (or put it in $LAYERSYNC_WEIGHTS)."
        )
    return folder


def load_vae(path: str | os.PathLike | None = None, sha256: str = "",
             device: torch.device | str = "cpu") -> LatentVae:
    """The AutoencoderKL in `path` (see `vae_folder`), never downloaded; `sha256` pins its weights file."""
    from diffusers import AutoencoderKL

    folder = vae_folder(path)
    weights = next(folder / name for name in _WEIGHT_NAMES if (folder / name).is_file())
    got = sha256sum(weights)
    if sha256 and got != sha256:
        raise MissingWeightsError(
            f"{weights} has sha256 {got}, but the latents were made with a VAE whose weights have sha256 "
            f"{sha256}; decode with that same VAE (pass its folder with --vae)."
        )
    vae = AutoencoderKL.from_pretrained(folder, local_files_only=True)
    config = vae.config
    if getattr(config, "shift_factor", None):
        raise UserValueError(f"{folder} is a VAE with a latent shift ({config.shift_factor}), not the SD-VAE")
    info = VaeInfo(path=str(folder.resolve()), weights_sha256=got,
                   scaling_factor=float(config.scaling_factor), latent_channels=int(config.latent_channels),
                   downsample=2 ** (len(config.block_out_channels) - 1))
    return LatentVae(vae, info).to(device)
