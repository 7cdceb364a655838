"""Fréchet Audio Distance (Kilgour et al. 2019): Fréchet distance of Gaussians fitted to audio embeddings.

Two named protocols; each result stores its preset (`FadResult.to_dict`):
- "vggish" (the Google FAD): 16 kHz mono, non-overlapping 0.96 s windows of 96×64 log-mel, 128-d VGGish
  embedding per window (pre-PCA, pre-ReLU fc output), every window of every file is one sample.
- "clap" (FAD on LAION-CLAP music-checkpoint embeddings, a model fadtk also offers): 48 kHz mono,
  non-overlapping 10 s windows (a clip under 10 s is one window, tiled by laion-clap's `repeatpad`; the tail
  under 10 s of a longer clip is dropped so no window is padded), 512-d L2-normalised HTSAT-base
  embeddings, each window one sample. Tools differ in the window layout (hops, padding); this is ours.

Resampling differs from the reference tools (resampy's kaiser_best for VGGish, librosa for CLAP): both use
scipy's polyphase `resample_poly` (Kaiser window, β = 5), deterministic and dependency-free. It shifts FAD
slightly against those tools' numbers; compare values computed under one preset.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import scipy.signal
import soundfile
import torch
from torch import nn

from layersync.metrics import clap, vggish
from layersync.metrics.frechet import ArrayLike, GaussianStats, frechet_distance

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
EmbeddingModel = Literal["vggish", "clap"]


@dataclass(frozen=True)
class FadPreset:
    """How audio becomes the samples of the Gaussian: rate, resampling, windows, pooling, embedding."""

    name: str
    model: EmbeddingModel
    sample_rate_hz: int
    resampling: str
    window_seconds: float
    hop_seconds: float
    short_clips: str  # what happens to audio shorter than one window
    pooling: str
    embedding: str
    embedding_dim: int
    l2_normalized: bool
    weights: str  # the checkpoint file name

    def to_dict(self) -> dict:
        return asdict(self)


VGGISH_FAD = FadPreset(
    name="vggish",
    model="vggish",
    sample_rate_hz=vggish.SAMPLE_RATE_HZ,
    resampling="mono mean of channels; scipy.signal.resample_poly (Kaiser β=5) to 16 kHz",
    window_seconds=vggish.EXAMPLE_SECONDS,
    hop_seconds=vggish.EXAMPLE_SECONDS,
    short_clips="error: a clip shorter than 0.975 s yields no 96-frame example",
    pooling="every 0.96 s window of every clip is one sample; partial trailing windows are dropped",
    embedding="VGGish fc 128-d before its ReLU, before PCA (Google FAD: vggish/fc2, activation None)",
    embedding_dim=vggish.EMBEDDING_DIM,
    l2_normalized=False,
    weights=vggish.VGGISH_WEIGHTS.filename,
)

CLAP_FAD = FadPreset(
    name="clap",
    model="clap",
    sample_rate_hz=clap.SAMPLE_RATE_HZ,
    resampling="mono mean of channels; scipy.signal.resample_poly (Kaiser β=5) to 48 kHz; int16 round trip",
    window_seconds=10.0,
    hop_seconds=10.0,
    short_clips="a clip under 10 s is one window, tiled whole, zero-padded to 10 s (laion-clap repeatpad)",
    pooling="every 10 s window is one sample; the tail under 10 s of a longer clip is dropped",
    embedding="LAION-CLAP HTSAT-base audio embedding after audio_projection (joint space)",
    embedding_dim=clap.EMBEDDING_DIM,
    l2_normalized=True,
    weights=clap.CLAP_MUSIC_WEIGHTS.filename,
)

PRESETS: dict[str, FadPreset] = {p.name: p for p in (VGGISH_FAD, CLAP_FAD)}


def get_preset(preset: str | FadPreset) -> FadPreset:
    if isinstance(preset, FadPreset):
        return preset
    if preset not in PRESETS:
        raise KeyError(f"unknown FAD preset {preset!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[preset]


def fad(embeddings_a: ArrayLike, embeddings_b: ArrayLike) -> float:
    """FAD between two (N, D) embedding sets: Fréchet distance of their Gaussians (ddof-1 covariances)."""
    return frechet_distance(embeddings_a, embeddings_b)


def to_mono(waveform: np.ndarray, sample_rate_hz: int, target_rate_hz: int) -> np.ndarray:
    """(T,) or (T, C) audio → (T',) float64 mono at `target_rate_hz` (channel mean, polyphase resampling)."""
    x = np.asarray(waveform, dtype=np.float64)
    if x.ndim == 2:
        x = x.mean(axis=1)
    elif x.ndim != 1:
        raise ValueError(f"expected (T,) or (T, channels) audio, got shape {x.shape}")
    if sample_rate_hz != target_rate_hz:
        g = math.gcd(int(sample_rate_hz), int(target_rate_hz))
        x = scipy.signal.resample_poly(x, target_rate_hz // g, sample_rate_hz // g)
    return x


def windows(waveform: np.ndarray, preset: FadPreset) -> np.ndarray:
    """Model inputs of a mono clip at the preset's rate: VGGish (N, 1, 96, 64) log-mel, CLAP (N, ≤480000)."""
    if preset.model == "vggish":
        return vggish.waveform_to_examples(waveform)[:, None]  # (N, 1, 96, 64)
    size = round(preset.window_seconds * preset.sample_rate_hz)
    hop = round(preset.hop_seconds * preset.sample_rate_hz)
    if len(waveform) <= size:
        return waveform[None].astype(np.float32)  # (1, T): repeat-padded by the encoder
    return vggish.frame(waveform, size, hop).astype(np.float32)  # (N, 480000)


@dataclass
class AudioEmbedder:
    """A FAD preset with its network: clips in, per-window embeddings (float64) out."""

    preset: FadPreset
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor]
    device: torch.device | str = "cpu"
    batch_size: int = 64

    @classmethod
    def load(
        cls,
        preset: str | FadPreset,
        weights: str | os.PathLike | None = None,
        device: torch.device | str = "cpu",
    ) -> AudioEmbedder:
        """The preset's pretrained network from `weights` (file or folder) or `$LAYERSYNC_WEIGHTS`."""
        preset = get_preset(preset)
        model = vggish.load_vggish(weights) if preset.model == "vggish" else clap.load_clap_audio(weights)
        return cls(preset, model.to(device), device)

    @torch.no_grad()
    def embed(self, waveform: np.ndarray, sample_rate_hz: int, name: str = "clip") -> np.ndarray:
        """(N, D) float64 embeddings of the windows of one clip given as (T,) or (T, C) samples in [-1, 1]."""
        x = windows(to_mono(waveform, sample_rate_hz, self.preset.sample_rate_hz), self.preset)
        if len(x) == 0:
            raise ValueError(f"{name} is too short for FAD-{self.preset.name}: {self.preset.short_clips}")
        out = [
            self.model(torch.from_numpy(np.ascontiguousarray(x[i : i + self.batch_size])).to(self.device))
            for i in range(0, len(x), self.batch_size)
        ]
        return torch.cat(out).double().cpu().numpy()

    def embed_files(self, paths: Sequence[str | os.PathLike]) -> np.ndarray:
        """(N, D) embeddings of all windows of all files, in file order."""
        if not paths:
            raise ValueError("no audio files to embed")
        out = []
        for path in paths:
            audio, rate = soundfile.read(path, dtype="float64", always_2d=True)  # int PCM scaled by 1/32768
            out.append(self.embed(audio, rate, name=str(path)))
        return np.concatenate(out)


def audio_files(directory: str | os.PathLike) -> list[Path]:
    """Sorted audio files (.wav, .flac, .ogg) directly in `directory`; an empty folder is an error."""
    folder = Path(directory)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a directory of audio files")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"no {'/'.join(AUDIO_EXTENSIONS)} files in {folder}")
    return files


def gaussian_of(embeddings: ArrayLike, name: str = "embeddings") -> GaussianStats:
    """Mean and ddof-1 covariance (two-pass, float64) of (N, D) embeddings; needs N ≥ D + 1."""
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < x.shape[1] + 1:
        raise ValueError(f"{name}: need (N, D) with N ≥ D + 1 for a full-rank covariance, got {x.shape}")
    return GaussianStats(x.mean(0), np.cov(x, rowvar=False))


def save_reference_stats(
    path: str | os.PathLike, embeddings: ArrayLike, preset: str | FadPreset
) -> GaussianStats:
    """Fit and write an npz (`mu`, `sigma`, `preset` as JSON) so a reference set is embedded only once."""
    preset = get_preset(preset)
    gaussian = gaussian_of(embeddings, "reference embeddings")
    np.savez(path, mu=gaussian.mu, sigma=gaussian.sigma, preset=json.dumps(preset.to_dict()))
    return gaussian


def load_reference_stats(path: str | os.PathLike, preset: str | FadPreset) -> GaussianStats:
    """Read `save_reference_stats` output; refuses statistics made under another preset."""
    preset = get_preset(preset)
    with np.load(path) as data:
        if "preset" not in data.files:
            raise KeyError(f"{path} records no FAD preset; write it with save_reference_stats")
        stored = json.loads(str(data["preset"]))
        if stored != preset.to_dict():
            raise ValueError(f"{path} was made with preset {stored['name']!r}, not {preset.name!r}: {stored}")
    return GaussianStats.load(path)


@dataclass(frozen=True)
class FadResult:
    """A FAD value with what it was computed on and how."""

    fad: float
    preset: FadPreset
    num_gen_files: int
    num_gen_windows: int
    reference: str
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"fad": self.fad, "preset": self.preset.to_dict(), "num_gen_files": self.num_gen_files,
                "num_gen_windows": self.num_gen_windows, "reference": self.reference, **self.extra}


def fad_from_files(
    gen_dir: str | os.PathLike,
    ref_dir_or_stats: str | os.PathLike | GaussianStats,
    preset: str | FadPreset = "vggish",
    weights: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    embedder: AudioEmbedder | None = None,
) -> FadResult:
    """FAD of the audio files in `gen_dir` against a reference folder, a stats npz, or a GaussianStats.

    `embedder` overrides the pretrained network (its preset must be `preset`); otherwise it is loaded from
    `weights` or `$LAYERSYNC_WEIGHTS`.
    """
    preset = get_preset(preset)
    if embedder is None:
        embedder = AudioEmbedder.load(preset, weights, device)
    elif embedder.preset != preset:
        raise ValueError(f"the embedder runs preset {embedder.preset.name!r}, not {preset.name!r}")
    files = audio_files(gen_dir)
    gen = embedder.embed_files(files)  # (N, D)
    extra: dict = {}
    if isinstance(ref_dir_or_stats, GaussianStats):
        ref, reference = ref_dir_or_stats, "GaussianStats"
    elif Path(ref_dir_or_stats).is_dir():
        ref_embeddings = embedder.embed_files(audio_files(ref_dir_or_stats))
        ref, reference = gaussian_of(ref_embeddings, str(ref_dir_or_stats)), str(ref_dir_or_stats)
        extra["num_ref_windows"] = len(ref_embeddings)
    else:
        ref, reference = load_reference_stats(ref_dir_or_stats, preset), str(ref_dir_or_stats)
    value = gaussian_of(gen, str(gen_dir)).frechet_distance(ref)
    return FadResult(value, preset, len(files), len(gen), reference, extra)
