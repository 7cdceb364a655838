"""Frame-wise SD-VAE latents for video: every frame goes through the image autoencoder on its own.

    z = s · mean(E(x_t)) for each frame t,   x_t ≈ D(z / s)            (Rombach et al. 2022; DiT §4)

with s = the VAE's `scaling_factor` (0.18215 for SD-VAE) so the latents have about unit variance. We take the
posterior mean rather than a sample, so precomputed latents are deterministic (REPA/SiT feature extraction
samples; the difference is the posterior's small std, ~1e-2 of the latent scale for SD-VAE).

The weights are a diffusers `AutoencoderKL` folder (`config.json` + `diffusion_pytorch_model.safetensors`)
loaded from a local path or `$LAYERSYNC_WEIGHTS/sd-vae-ft-ema`; nothing downloads. stabilityai publishes no
checksum, so the sha256 of the weights file is computed, recorded beside every latent set, and checked
against `expected_sha256` when the caller gives one.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from layersync.core.errors import UserValueError
from layersync.core.weights import MissingWeightsError, WeightFile, sha256sum, weights_dir

SD_VAE = WeightFile(
    filename="sd-vae-ft-ema",
    sha256=None,  # a folder; the weights file's sha256 is recorded and optionally checked (see FrameVAE)
    source="https://huggingface.co/stabilityai/sd-vae-ft-ema (config.json, "
           "diffusion_pytorch_model.safetensors)",
    description="Stable Diffusion VAE (ft-EMA) as a diffusers AutoencoderKL folder",
)
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def resolve_vae(path: str | os.PathLike | None = None) -> Path:
    """The VAE folder: `path`, or `$LAYERSYNC_WEIGHTS/sd-vae-ft-ema`; raises MissingWeightsError if absent."""
    if path:
        folder = Path(path).expanduser()
    elif weights_dir() is not None:
        folder = weights_dir() / SD_VAE.filename
    else:
        raise MissingWeightsError(
            f"no SD-VAE folder given and $LAYERSYNC_WEIGHTS is unset; download {SD_VAE.source} to a folder "
            f"and pass it (e.g. --vae=/path/to/{SD_VAE.filename}) or put it in "
            f"$LAYERSYNC_WEIGHTS/{SD_VAE.filename}")
    missing = [name for name in ("config.json",) if not (folder / name).is_file()]
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        missing.append(WEIGHT_FILES[0])
    if missing:
        raise MissingWeightsError(
            f"{folder} is not a diffusers AutoencoderKL folder (missing {', '.join(missing)}); obtain "
            f"{SD_VAE.source} and pass the folder that holds config.json")
    return folder


class FrameVAE:
    """Encodes clips (B, 3, T, H, W) in [-1, 1] to latents (B, c, T, H/f, W/f) frame by frame, and back."""

    def __init__(self, vae, device: torch.device | str = "cpu", frames_per_batch: int = 64,
                 source: str = "", sha256: str = ""):
        self.vae = vae.to(device).eval().requires_grad_(False)
        self.device = torch.device(device)
        self.frames_per_batch = frames_per_batch
        self.scaling_factor = float(vae.config.scaling_factor)
        self.latent_channels = int(vae.config.latent_channels)
        self.downsample = 2 ** (len(vae.config.block_out_channels) - 1)
        self.source, self.sha256 = source, sha256

    @classmethod
    def from_local(cls, path: str | os.PathLike | None = None, device: torch.device | str = "cpu",
                   expected_sha256: str = "", frames_per_batch: int = 64) -> FrameVAE:
        """Load from a local diffusers folder (see `resolve_vae`), hashing its weights file."""
        from diffusers import AutoencoderKL

        folder = resolve_vae(path)
        weights = next(folder / name for name in WEIGHT_FILES if (folder / name).is_file())
        digest = sha256sum(weights)
        if expected_sha256 and digest != expected_sha256:
            raise MissingWeightsError(f"{weights} has sha256 {digest}, expected {expected_sha256}; the file "
                                      f"is corrupt or another version (obtain {SD_VAE.source})")
        vae = AutoencoderKL.from_pretrained(str(folder), local_files_only=True)
        return cls(vae, device, frames_per_batch, source=str(folder), sha256=digest)

    def latent_shape(self, shape: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        """(3, T, H, W) of a clip → (c, T, H/f, W/f) of its latents."""
        _, t, h, w = shape
        if h % self.downsample or w % self.downsample:
            raise UserValueError(f"frame size {h}×{w} is not divisible by the VAE's downsampling "
                                 f"{self.downsample}")
        return self.latent_channels, t, h // self.downsample, w // self.downsample

    def describe(self) -> dict:
        """What a latent set records about the autoencoder that made it."""
        return {"source": self.source, "sha256": self.sha256, "scaling_factor": self.scaling_factor,
                "latent_channels": self.latent_channels, "downsample": self.downsample}

    def _framewise(self, x: torch.Tensor, fn) -> torch.Tensor:
        """Apply fn to every frame of (B, C, T, H, W) in chunks of frames: (B, C', T, H', W')."""
        b, _, t = x.shape[:3]
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, *x.shape[1:2], *x.shape[3:])  # (B·T, C, H, W)
        out = torch.cat([fn(chunk.to(self.device)) for chunk in frames.split(self.frames_per_batch)])
        return out.reshape(b, t, *out.shape[1:]).permute(0, 2, 1, 3, 4).contiguous()  # (B, C', T, H', W')

    @torch.no_grad()
    def encode(self, clips: torch.Tensor) -> torch.Tensor:
        """Clips (B, 3, T, H, W) in [-1, 1] → scaled posterior means (B, c, T, H/f, W/f), float32."""
        if clips.ndim != 5 or clips.shape[1] != 3:
            raise UserValueError(f"clips must be (B, 3, T, H, W), got {tuple(clips.shape)}")
        self.latent_shape(tuple(clips.shape[1:]))
        z = self._framewise(clips.float(), lambda f: self.vae.encode(f).latent_dist.mean)
        return (z * self.scaling_factor).float().cpu()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, c, T, h, w) → clips (B, 3, T, h·f, w·f), float32 (not clamped)."""
        if latents.ndim != 5 or latents.shape[1] != self.latent_channels:
            raise UserValueError(f"latents must be (B, {self.latent_channels}, T, h, w), "
                                 f"got {tuple(latents.shape)}")
        x = self._framewise(latents.float() / self.scaling_factor, lambda z: self.vae.decode(z).sample)
        return x.float().cpu()
