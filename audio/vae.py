"""An optional mel VAE: the model trains on its latents instead of the log-mel (latent diffusion, AudioLDM).

The VAE is a diffusers `AutoencoderKL` from a local folder (`config.json` + weights), e.g. the `vae/` folder
of AudioLDM (Liu et al. 2023), which was trained on raw log-mels in our convention at 16 kHz, n_fft 1024,
hop 160, 64 mels (set the mel keys to match). Like AudioLDM it sees a mel as a one-channel picture with time
down and frequency across, (B, 1, T, F), un-normalised; its encoder gives q(z|mel) = N(μ, σ²) and the model
trains on z = s · (μ + σ ε) (s = `scaling_factor` from its config), drawn from torch's RNG, which the trainer
seeds per step. Latents are kept as (B, C, F/f, T/f), frequency first like the mel, f = 2^(blocks − 1).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from layersync.core.errors import UserValueError
from layersync.core.sample_rng import normal
from layersync.core.weights import MissingWeightsError, sha256sum

_WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


@dataclass(frozen=True)
class VaeGeometry:
    """What the backbone sees: latent channels, downsampling per axis, and the latent scale."""

    latent_channels: int
    downsample: int
    scaling_factor: float

    def latent_size(self, n_mels: int, frames: int) -> tuple[int, int]:
        """(F/f, T/f); both must divide."""
        if n_mels % self.downsample or frames % self.downsample:
            raise UserValueError(f"the VAE downsamples by {self.downsample}: n_mels ({n_mels}) and "
                                 f"clip_frames ({frames}) must be multiples of it")
        return n_mels // self.downsample, frames // self.downsample


def vae_geometry(folder: str | os.PathLike) -> VaeGeometry:
    """Read the geometry from `folder/config.json` (no network, no diffusers import)."""
    config_file = Path(folder) / "config.json"
    if not config_file.is_file():
        raise MissingWeightsError(f"{config_file} not found: --vae takes a local diffusers AutoencoderKL "
                                  "folder (config.json + diffusion_pytorch_model.safetensors), e.g. "
                                  "AudioLDM's vae/")
    config = json.loads(config_file.read_text())
    if config.get("_class_name") not in (None, "AutoencoderKL") or config.get("in_channels", 1) != 1:
        raise UserValueError(f"{config_file}: expected a one-channel AutoencoderKL (a mel VAE), got "
                             f"{config.get('_class_name')} with {config.get('in_channels')} input channels")
    return VaeGeometry(int(config.get("latent_channels", 4)), 2 ** (len(config["block_out_channels"]) - 1),
                       float(config.get("scaling_factor", 1.0)))


class MelVae:
    """A frozen AutoencoderKL between raw log-mels (B, F, T) and scaled latents (B, C, F/f, T/f)."""

    def __init__(self, folder: str | os.PathLike):
        from diffusers import AutoencoderKL

        folder = Path(folder)
        self.geometry = vae_geometry(folder)
        weights = [folder / name for name in _WEIGHT_NAMES if (folder / name).is_file()]
        if not weights:
            raise MissingWeightsError(f"{folder} holds no {' or '.join(_WEIGHT_NAMES)}")
        self.weights_sha256 = sha256sum(weights[0])
        self.vae = AutoencoderKL.from_pretrained(folder, local_files_only=True).eval().requires_grad_(False)

    @torch.no_grad()
    def encode(self, mel: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        """(B, F, T) log-mel → s · (μ + σ ε), ε drawn from each sample's key (core/sample_rng.py), or s · μ
        without keys; (B, C, F/f, T/f)."""
        dist = self.vae.encode(mel.float().transpose(1, 2)[:, None]).latent_dist  # input (B, 1, T, F)
        z = dist.mean  # (B, C, T/f, F/f)
        if keys is not None:
            z = z + dist.std * normal(keys, "vae", tuple(z.shape[1:])).to(z)
        return (z * self.geometry.scaling_factor).transpose(2, 3)  # (B, C, F/f, T/f)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, C, F/f, T/f) → log-mel (B, F, T)."""
        out = self.vae.decode(z.float().transpose(2, 3) / self.geometry.scaling_factor).sample  # (B, 1, T, F)
        return out[:, 0].transpose(1, 2)


class VaeSource:
    """Wraps a source of raw log-mel clips (B, F, T): each batch is encoded to latents in the model layout."""

    def __init__(self, inner, vae: MelVae, layout):
        self.inner, self.vae, self.layout = inner, vae, layout

    def __len__(self) -> int:
        return len(self.inner)

    def batch(self, indices: torch.Tensor, keys: torch.Tensor):
        from layersync.audio.layout import to_model
        from layersync.core.trainer import Batch

        b = self.inner.batch(indices, keys)
        return Batch(to_model(self.vae.encode(b.x, keys), self.layout), b.cond)
