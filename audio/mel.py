"""Log-mel spectrograms, their per-bin normalisation statistics, and Griffin-Lim back to a waveform.

One convention everywhere, HiFi-GAN's (Kong et al. 2020, `meldataset.py`), so that a neural vocoder trained
on it reads our mels unchanged:

    pad the waveform by (n_fft − hop)/2 samples on each side (reflect), STFT with a periodic Hann window,
    |X| = sqrt(Re² + Im² + 1e-9),  M = B_mel |X|  (librosa's Slaney mel filters),  log-mel = ln max(M, floor)

A clip of T samples gives exactly T / hop frames (T a multiple of hop), and frames · hop samples come back.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
import torch
from layersync.core.config import checked
from layersync.core.errors import UserValueError


@dataclass(frozen=True)
@checked(sample_rate_hz=">= 1", n_fft=">= 1", hop_length=">= 1", win_length=">= 0", n_mels=">= 1",
         f_min_hz=">= 0", f_max_hz="> 0", log_floor="> 0")
class MelConfig:
    """Log-mel analysis. The default (16 kHz, 512-point FFT, hop 256, 48 mels) is the embedded run's."""

    # 16 kHz keeps everything up to 8 kHz, where music's harmonics that matter for timbre lie, at a third
    # of the frames of 44.1 kHz; a 512-point (32 ms) window resolves 31 Hz; hop 256 = 62.5 frames/s, so a
    # 32-frame clip is 0.512 s; 48 mel bands keep Griffin-Lim's harmonics nearly as clean as 64 (32 smear
    # them) while a frame stays small enough to be one token's worth with two frames per token.
    sample_rate_hz: int = 16_000
    n_fft: int = 512
    hop_length: int = 256
    win_length: int = 0  # 0 = n_fft
    n_mels: int = 48
    f_min_hz: float = 0.0
    f_max_hz: float = 8_000.0
    log_floor: float = 1e-5  # HiFi-GAN's clamp before the natural log

    def __post_init__(self):
        win = self.win_length or self.n_fft
        if not 0 < win <= self.n_fft:
            raise UserValueError(f"win_length {win} must be in (0, n_fft={self.n_fft}]")
        if (self.n_fft - self.hop_length) % 2 or self.hop_length > self.n_fft:
            raise UserValueError(f"n_fft − hop_length must be even and ≥ 0 (the padding is half of it), got "
                                 f"n_fft={self.n_fft}, hop_length={self.hop_length}")
        if not 0 <= self.f_min_hz < self.f_max_hz <= self.sample_rate_hz / 2:
            raise UserValueError(f"need 0 ≤ f_min_hz < f_max_hz ≤ sample_rate_hz / 2, got {self.f_min_hz}, "
                                 f"{self.f_max_hz}, {self.sample_rate_hz}")

    @property
    def window_length(self) -> int:
        return self.win_length or self.n_fft

    @property
    def padding(self) -> int:
        """Reflect padding on each side: (n_fft − hop) / 2."""
        return (self.n_fft - self.hop_length) // 2

    def frames(self, num_samples: int) -> int:
        """Frames of a clip of `num_samples` samples."""
        return (num_samples + 2 * self.padding - self.n_fft) // self.hop_length + 1

    def to_dict(self) -> dict:
        return asdict(self)


# HiFi-GAN's universal generator was trained on these (its config.json: 22.05 kHz, 80 mels up to 8 kHz).
HIFIGAN_MEL = MelConfig(sample_rate_hz=22_050, n_fft=1024, hop_length=256, win_length=1024, n_mels=80,
                        f_min_hz=0.0, f_max_hz=8_000.0, log_floor=1e-5)
MEL_PRESETS: dict[str, MelConfig] = {"default16k": MelConfig(), "hifigan22k": HIFIGAN_MEL}


@lru_cache(maxsize=8)
def _mel_basis_np(cfg: MelConfig) -> np.ndarray:
    import librosa

    return librosa.filters.mel(sr=cfg.sample_rate_hz, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.f_min_hz,
                               fmax=cfg.f_max_hz)  # (F, n_fft/2 + 1), Slaney scale and area norm


def mel_basis(cfg: MelConfig, device=None) -> torch.Tensor:
    """Slaney mel filters (n_mels, n_fft/2 + 1), float32."""
    return torch.from_numpy(_mel_basis_np(cfg)).to(device=device, dtype=torch.float32)


def _window(cfg: MelConfig, device) -> torch.Tensor:
    """Periodic Hann of win_length, zero-padded to n_fft in the middle (as torch.stft does)."""
    win = torch.hann_window(cfg.window_length, periodic=True, dtype=torch.float32, device=device)
    left = (cfg.n_fft - cfg.window_length) // 2
    return torch.nn.functional.pad(win, (left, cfg.n_fft - cfg.window_length - left))  # (n_fft,)


def stft(waveform: torch.Tensor, cfg: MelConfig) -> torch.Tensor:
    """Complex STFT (B, n_fft/2 + 1, frames) of (B, T) audio, padded HiFi-GAN's way."""
    if waveform.ndim != 2:
        raise UserValueError(f"waveform must be (B, T), got {tuple(waveform.shape)}")
    if waveform.shape[1] <= cfg.padding:
        raise UserValueError(f"a clip of {waveform.shape[1]} samples is too short for n_fft={cfg.n_fft}")
    x = torch.nn.functional.pad(waveform.float()[:, None], (cfg.padding, cfg.padding), mode="reflect")[:, 0]
    return torch.stft(x, cfg.n_fft, cfg.hop_length, window=_window(cfg, x.device), center=False,
                      return_complex=True)  # (B, K, frames)


def istft(spec: torch.Tensor, cfg: MelConfig) -> torch.Tensor:
    """Inverse of `stft` by weighted overlap-add: (B, K, frames) → (B, frames · hop)."""
    b, _, n = spec.shape
    win = _window(cfg, spec.device)
    frames = torch.fft.irfft(spec, n=cfg.n_fft, dim=1) * win[None, :, None]  # (B, n_fft, frames)
    length = (n - 1) * cfg.hop_length + cfg.n_fft
    fold = dict(output_size=(1, length), kernel_size=(1, cfg.n_fft), stride=(1, cfg.hop_length))
    out = torch.nn.functional.fold(frames, **fold)[:, 0, 0]  # (B, length)
    squared = (win**2)[None, :, None].expand(1, -1, n)  # (1, n_fft, frames)
    envelope = torch.nn.functional.fold(squared, **fold)[0, 0, 0]  # (length,) Σ of shifted w²
    out = out / envelope.clamp_min(1e-8)
    return out[:, cfg.padding : cfg.padding + n * cfg.hop_length]  # (B, frames · hop)


def log_mel(waveform: torch.Tensor, cfg: MelConfig) -> torch.Tensor:
    """ln max(B_mel |STFT(x)|, floor) of (B, T) or (T,) audio: (B, n_mels, frames) or (n_mels, frames)."""
    single = waveform.ndim == 1
    spec = stft(waveform[None] if single else waveform, cfg)
    magnitude = torch.sqrt(spec.real**2 + spec.imag**2 + 1e-9)  # (B, K, frames), HiFi-GAN's ε
    mel = mel_basis(cfg, magnitude.device) @ magnitude  # (B, F, frames)
    out = torch.log(mel.clamp_min(cfg.log_floor))
    return out[0] if single else out


def mel_to_magnitude(logmel: torch.Tensor, cfg: MelConfig, nnls_iterations: int = 50) -> torch.Tensor:
    """Non-negative least-squares linear magnitude (B, n_fft/2 + 1, T) of a log-mel (B, n_mels, T)."""
    mel = torch.exp(logmel.float())  # (B, F, T)
    basis = mel_basis(cfg, mel.device)  # (F, K)
    magnitude = (torch.linalg.pinv(basis) @ mel).clamp_min(0) + 1e-8  # (B, K, T); > 0 so updates can move it
    numerator = basis.T @ mel  # (B, K, T)
    for _ in range(nnls_iterations):
        magnitude = magnitude * numerator / (basis.T @ (basis @ magnitude)).clamp_min(1e-12)
    return magnitude


def griffin_lim(logmel: torch.Tensor, cfg: MelConfig, iterations: int = 64, momentum: float = 0.99,
                seed: int = 0, nnls_iterations: int = 50) -> torch.Tensor:
    """Waveform (B, frames · hop) whose log-mel approximates `logmel` (B, n_mels, frames).

    The linear magnitude S ≥ 0 minimises ‖M − B S‖² (B the mel filters): the pseudo-inverse clamped at 0, then
    `nnls_iterations` multiplicative updates S ← S ⊙ BᵀM / BᵀBS (Lee & Seung 2001). Its phase comes
    from fast Griffin-Lim (Perraudin, Balazs & Søndergaard 2013): with P₁ the projection onto the target
    magnitude and P₂ = STFT∘ISTFT the projection onto consistent spectrograms,
        c_n = P₁(P₂(t_{n−1})),  t_n = c_n + α (c_n − c_{n−1}),  α = `momentum` (0 gives Griffin & Lim 1984).
    The initial phase is uniform noise from `seed`, so the result is deterministic.
    """
    if logmel.ndim != 3 or logmel.shape[1] != cfg.n_mels:
        raise UserValueError(f"logmel must be (B, {cfg.n_mels}, frames), got {tuple(logmel.shape)}")
    if not torch.isfinite(logmel).all():
        raise UserValueError("logmel has NaN or inf values; the sampler diverged")
    target = mel_to_magnitude(logmel, cfg, nnls_iterations)  # (B, K, T)
    g = torch.Generator(device="cpu").manual_seed(seed)
    phase = torch.rand(target.shape, generator=g).to(target.device) * 2 * torch.pi
    angles = torch.polar(torch.ones_like(target), phase)  # (B, K, T) unit complex
    previous = torch.zeros_like(angles)
    for _ in range(iterations):
        rebuilt = stft(istft(target * angles, cfg), cfg)  # P₂
        current = rebuilt / rebuilt.abs().clamp_min(1e-16)  # P₁ keeps only the phase
        angles = current + momentum * (current - previous)
        angles = angles / angles.abs().clamp_min(1e-16)
        previous = current
    return istft(target * angles, cfg)  # (B, frames · hop)


@dataclass(frozen=True, eq=False)
class MelStats:
    """Per-mel-bin mean and standard deviation of log-mel frames: the model sees (x − mean) / std."""

    mean: np.ndarray  # (F,) float64
    std: np.ndarray  # (F,) float64
    mel: MelConfig
    num_frames: int

    def __post_init__(self):
        mean, std = np.asarray(self.mean, np.float64), np.asarray(self.std, np.float64)
        if mean.shape != (self.mel.n_mels,) or std.shape != mean.shape:
            raise UserValueError(f"mean and std must be ({self.mel.n_mels},), got {mean.shape} and "
                                 f"{std.shape}")
        if not (std > 0).all():
            raise UserValueError("a mel bin has zero variance; the statistics come from constant audio")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @classmethod
    def identity(cls, mel: MelConfig) -> MelStats:
        """Mean 0, std 1: no normalisation (a VAE reads raw log-mels)."""
        return cls(np.zeros(mel.n_mels), np.ones(mel.n_mels), mel, 0)

    def normalize(self, logmel: torch.Tensor) -> torch.Tensor:
        """(…, F, T) log-mel → zero-mean, unit-variance per bin."""
        mean, std = (torch.as_tensor(v, dtype=torch.float32, device=logmel.device)[:, None]
                     for v in (self.mean, self.std))
        return (logmel - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of `normalize`."""
        mean, std = (torch.as_tensor(v, dtype=torch.float32, device=x.device)[:, None]
                     for v in (self.mean, self.std))
        return x.float() * std + mean

    def save(self, path: str | os.PathLike) -> None:
        """An npz with `mean`, `std`, `num_frames` and the mel config as JSON."""
        np.savez(path, mean=self.mean, std=self.std, num_frames=self.num_frames,
                 mel=json.dumps(self.mel.to_dict()))

    @classmethod
    def load(cls, path: str | os.PathLike, mel: MelConfig | None = None) -> MelStats:
        """Read `save` output; with `mel`, refuse statistics computed under another mel config."""
        with np.load(path) as data:
            stored = MelConfig(**json.loads(str(data["mel"])))
            if mel is not None and stored != mel:
                raise UserValueError(f"{path} holds statistics for mel config {stored.to_dict()}, not "
                                     f"{mel.to_dict()}; recompute them (delete the file)")
            return cls(data["mean"], data["std"], stored, int(data["num_frames"]))


class MelStatsAccumulator:
    """Running per-bin sums in float64 over any number of (F, T) log-mels; `result()` gives MelStats."""

    def __init__(self, mel: MelConfig):
        self.mel = mel
        self.count = 0
        self.total = np.zeros(mel.n_mels)
        self.total_sq = np.zeros(mel.n_mels)
        self.shift: np.ndarray | None = None  # first frame's values: sums of (x − shift) avoid cancellation

    def add(self, logmel: torch.Tensor | np.ndarray) -> None:
        x = np.asarray(logmel, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] != self.mel.n_mels:
            raise UserValueError(f"expected a ({self.mel.n_mels}, T) log-mel, got {x.shape}")
        if self.shift is None:
            self.shift = x[:, :1].mean(1) if x.shape[1] else np.zeros(self.mel.n_mels)
        d = x - self.shift[:, None]
        self.count += x.shape[1]
        self.total += d.sum(1)
        self.total_sq += (d**2).sum(1)

    def result(self) -> MelStats:
        if self.count < 2:
            raise UserValueError("need at least 2 frames for mel statistics")
        mean_d = self.total / self.count
        var = (self.total_sq - self.count * mean_d**2) / (self.count - 1)
        return MelStats(mean_d + self.shift, np.sqrt(np.maximum(var, 0)), self.mel, self.count)
