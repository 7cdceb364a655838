"""Fréchet Audio Distance (Kilgour et al. 2019) as fadtk computes it, under fadtk's model names.

Followed at microsoft/fadtk @ ec74b1f (`fadtk/fad.py` `load_audio`, `fadtk/model_loader.py`); each result
stores its preset (`FadResult.to_dict`) and the sha256 of the weights file used (`metrics.weight_ids`).

Front end (every preset, fadtk's `load_audio` + `ModelLoader.load_wav`): channel mean; torchaudio's
`sinc_interp_kaiser` resampler (lowpass width 64, rolloff 0.9476, β 14.77) to the model's rate when it
differs; written as 16-bit PCM (libsndfile) and read back as int16 / 32768. Embeddings are rounded to float16,
as fadtk stores them. Every window of every file is one sample; covariance ddof 1.
- "vggish": 16 kHz; a clip under 1 s zero-padded to 1 s (fadtk `min_len=1`); non-overlapping 0.96 s windows
  of 96×64 log-mel; 128-d VGGish embedding before PCA and before its last ReLU.
- "clap-laion-audio" / "clap-laion-music": 48 kHz; a window of 10 s starting at every whole second of the clip
  (0, 1, 2, … s while before its end), zero-padded to 10 s; int16 quantisation (·32767, truncation) inside the
  encoder; 512-d L2-normalised LAION-CLAP embedding from HTSAT-tiny with `630k-audioset-best.pt` (audio) or
  HTSAT-base with `music_audioset_epoch_15_esc_90.14.pt` (music).

Not reproduced: fadtk averages each file's windows in float16 before pooling the files (per-file means
rounded to float16); here the float16 embeddings are pooled in float64.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile
import torch
import torchaudio
from torch import nn

from layersync.core.errors import UserFileNotFoundError, UserKeyError, UserValueError
from layersync.core.weights import resolve
from layersync.metrics import clap, vggish
from layersync.metrics.frechet import ArrayLike, GaussianStats, frechet_distance
from layersync.metrics.weight_ids import identify, in_memory

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
EmbeddingModel = Literal["vggish", "clap"]
# fadtk's torchaudio resampler settings (fadtk/fad.py, TORCHAUDIO_RESAMPLING = True).
RESAMPLER = dict(lowpass_filter_width=64, rolloff=0.9475937167399596, resampling_method="sinc_interp_kaiser",
                 beta=14.769656459379492)


@dataclass(frozen=True)
class FadPreset:
    """How audio becomes the samples of the Gaussian: rate, resampling, windows, pooling, embedding."""

    name: str
    model: EmbeddingModel
    sample_rate_hz: int
    window_seconds: float
    hop_seconds: float
    min_seconds: float  # shorter clips are zero-padded to this length first (0: none)
    windowing: str
    embedding: str
    embedding_dim: int
    l2_normalized: bool
    weights: str  # the checkpoint file name
    resampling: str = ("mono mean of channels; torchaudio sinc_interp_kaiser (width 64, rolloff 0.9476, "
                       "β 14.77) to the model rate; 16-bit PCM round trip, int16 / 32768 (fadtk load_audio)")
    embedding_dtype: str = "float16"  # as fadtk stores embeddings
    reference: str = "microsoft/fadtk@ec74b1f"

    def to_dict(self) -> dict:
        return asdict(self)


VGGISH_FAD = FadPreset(
    name="vggish", model="vggish", sample_rate_hz=vggish.SAMPLE_RATE_HZ,
    window_seconds=vggish.EXAMPLE_SECONDS, hop_seconds=vggish.EXAMPLE_SECONDS, min_seconds=1.0,
    windowing="non-overlapping 0.96 s windows; a partial last window is dropped",
    embedding="VGGish fc 128-d before its ReLU, before PCA (fadtk: use_pca=False, use_activation=False)",
    embedding_dim=vggish.EMBEDDING_DIM, l2_normalized=False, weights=vggish.VGGISH_WEIGHTS.filename,
)
_CLAP_WINDOWS = "10 s windows starting every 1 s from 0 while before the end, each zero-padded to 10 s"
CLAP_LAION_AUDIO = FadPreset(
    name="clap-laion-audio", model="clap", sample_rate_hz=clap.SAMPLE_RATE_HZ, window_seconds=10.0,
    hop_seconds=1.0, min_seconds=0.0, windowing=_CLAP_WINDOWS,
    embedding="LAION-CLAP HTSAT-tiny audio embedding after audio_projection (joint space)",
    embedding_dim=clap.EMBEDDING_DIM, l2_normalized=True, weights=clap.CLAP_AUDIO_WEIGHTS.filename,
)
CLAP_LAION_MUSIC = FadPreset(
    name="clap-laion-music", model="clap", sample_rate_hz=clap.SAMPLE_RATE_HZ, window_seconds=10.0,
    hop_seconds=1.0, min_seconds=0.0, windowing=_CLAP_WINDOWS,
    embedding="LAION-CLAP HTSAT-base audio embedding after audio_projection (joint space)",
    embedding_dim=clap.EMBEDDING_DIM, l2_normalized=True, weights=clap.CLAP_MUSIC_WEIGHTS.filename,
)

PRESETS: dict[str, FadPreset] = {p.name: p for p in (VGGISH_FAD, CLAP_LAION_AUDIO, CLAP_LAION_MUSIC)}


def get_preset(preset: str | FadPreset) -> FadPreset:
    if isinstance(preset, FadPreset):
        return preset
    if preset not in PRESETS:
        raise UserKeyError(f"unknown FAD preset {preset!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[preset]


def fad(embeddings_a: ArrayLike, embeddings_b: ArrayLike) -> float:
    """FAD between two (N, D) embedding sets: Fréchet distance of their Gaussians (ddof-1 covariances)."""
    return frechet_distance(embeddings_a, embeddings_b)


@functools.lru_cache(maxsize=8)
def _resampler(orig_hz: int, new_hz: int) -> torchaudio.transforms.Resample:
    """fadtk's `torchaudio.transforms.Resample` (its kernel differs from `functional.resample`'s by ~2e-5)."""
    return torchaudio.transforms.Resample(orig_hz, new_hz, **RESAMPLER)


def front_end(waveform: np.ndarray, sample_rate_hz: int, target_rate_hz: int) -> np.ndarray:
    """(T,) or (T, C) audio in [-1, 1] → (T',) float64 mono at `target_rate_hz`, as fadtk reads it."""
    x = np.asarray(waveform, dtype=np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1, dtype=np.float32)
    elif x.ndim != 1:
        raise UserValueError(f"expected (T,) or (T, channels) audio, got shape {x.shape}")
    if sample_rate_hz != target_rate_hz:
        x = _resampler(int(sample_rate_hz), int(target_rate_hz))(torch.from_numpy(x)).numpy()
    wav = io.BytesIO()  # the 16-bit file fadtk writes, quantised by libsndfile as torchaudio.save does
    soundfile.write(wav, x, target_rate_hz, subtype="PCM_16", format="WAV")
    wav.seek(0)
    return soundfile.read(wav, dtype="int16")[0] / 32768.0


def windows(waveform: np.ndarray, preset: FadPreset) -> np.ndarray:
    """Model inputs of a mono clip at the preset's rate: VGGish (N, 1, 96, 64) log-mel, CLAP (N, 480000)."""
    rate = preset.sample_rate_hz
    if len(waveform) < preset.min_seconds * rate:  # fadtk's enforce_min_len
        waveform = np.pad(waveform, (0, math.ceil(preset.min_seconds * rate - len(waveform))))
    if preset.model == "vggish":
        return vggish.waveform_to_examples(waveform)[:, None]  # (N, 1, 96, 64)
    size, hop = round(preset.window_seconds * rate), round(preset.hop_seconds * rate)
    out = np.zeros((math.ceil(len(waveform) / hop), size), dtype=np.float32)  # (N, 480000)
    for i, start in enumerate(range(0, len(waveform), hop)):
        chunk = waveform[start : start + size]
        out[i, : len(chunk)] = chunk
    return out


@dataclass
class AudioEmbedder:
    """A FAD preset with its network: clips in, per-window embeddings (float64) out.

    `clip_seconds` cuts every clip to its first seconds before anything else, so that generated and reference
    audio are measured at one length (None: whole clips); `weights` records the network's file.
    """

    preset: FadPreset
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor]
    device: torch.device | str = "cpu"
    batch_size: int = 64
    clip_seconds: float | None = None
    weights: dict = field(default_factory=lambda: in_memory("a network passed as an object"))

    def __post_init__(self):
        if self.clip_seconds is not None and self.clip_seconds <= 0:
            raise UserValueError(f"clip_seconds must be > 0 (or None for whole clips), got "
                                 f"{self.clip_seconds}")

    @classmethod
    def load(
        cls,
        preset: str | FadPreset,
        weights: str | os.PathLike | None = None,
        device: torch.device | str = "cpu",
        clip_seconds: float | None = None,
    ) -> AudioEmbedder:
        """The preset's pretrained network from `weights` (file or folder) or `$LAYERSYNC_WEIGHTS`."""
        preset = get_preset(preset)
        if preset.model == "vggish":
            path = resolve(vggish.VGGISH_WEIGHTS, weights)
            model = vggish.load_vggish(path)
        else:
            spec = clap.CLAP_AUDIO_WEIGHTS if preset.name == "clap-laion-audio" else clap.CLAP_MUSIC_WEIGHTS
            path = resolve(spec, weights)
            model = clap.load_clap_audio(path, spec)
        record = identify(path).to_dict()
        return cls(preset, model.to(device), device, clip_seconds=clip_seconds, weights=record)

    def describe(self) -> dict:
        """The preset, clip length and weights (sha256 and name) behind these embeddings."""
        return {"preset": self.preset.to_dict(), "clip_seconds": self.clip_seconds,
                "weights": {k: self.weights[k] for k in ("sha256", "name")}}

    @torch.no_grad()
    def embed(self, waveform: np.ndarray, sample_rate_hz: int, name: str = "clip") -> np.ndarray:
        """(N, D) float64 embeddings of the windows of one clip given as (T,) or (T, C) samples in [-1, 1]."""
        if self.clip_seconds is not None:
            waveform = waveform[: round(self.clip_seconds * sample_rate_hz)]
        x = windows(front_end(waveform, sample_rate_hz, self.preset.sample_rate_hz), self.preset)
        if len(x) == 0:
            raise UserValueError(f"{name} is too short for FAD-{self.preset.name}: {self.preset.windowing}")
        out = [
            self.model(torch.from_numpy(np.ascontiguousarray(x[i : i + self.batch_size])).to(self.device))
            for i in range(0, len(x), self.batch_size)
        ]
        return torch.cat(out).float().half().double().cpu().numpy()  # stored as float16, as fadtk does

    def embed_files(self, paths: Sequence[str | os.PathLike]) -> np.ndarray:
        """(N, D) embeddings of all windows of all files, in file order."""
        if not paths:
            raise UserValueError("no audio files to embed")
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
        raise UserFileNotFoundError(f"no {'/'.join(AUDIO_EXTENSIONS)} files in {folder}")
    return files


def gaussian_of(embeddings: ArrayLike, name: str = "embeddings") -> GaussianStats:
    """Mean and ddof-1 covariance (two-pass, float64) of (N, D) embeddings; needs N ≥ D + 1."""
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < x.shape[1] + 1:
        raise UserValueError(f"{name}: need (N, D) with N ≥ D + 1 for a full-rank covariance, got {x.shape}")
    return GaussianStats(x.mean(0), np.cov(x, rowvar=False))


def save_reference_stats(path: str | os.PathLike, embeddings: ArrayLike, embedder: AudioEmbedder
                         ) -> GaussianStats:
    """Fit and write an npz (`mu`, `sigma`, the embedder's `describe()` as JSON) so a reference set is
    embedded only once."""
    gaussian = gaussian_of(embeddings, "reference embeddings")
    np.savez(path, mu=gaussian.mu, sigma=gaussian.sigma, embedder=json.dumps(embedder.describe()))
    return gaussian


def load_reference_stats(path: str | os.PathLike, embedder: AudioEmbedder) -> GaussianStats:
    """Read `save_reference_stats` output; refuses statistics made under another preset, clip length or
    weights (by sha256, when both are known)."""
    with np.load(path) as data:
        if "embedder" not in data.files:
            raise UserKeyError(f"{path} records no FAD preset; write it with save_reference_stats")
        stored, current = json.loads(str(data["embedder"])), embedder.describe()
    if stored["preset"] != current["preset"]:
        raise UserValueError(f"{path} was made with preset {stored['preset']['name']!r}, not "
                             f"{current['preset']['name']!r}")
    if stored["clip_seconds"] != current["clip_seconds"]:
        raise UserValueError(f"{path} was made from clips cut to {stored['clip_seconds']} s, these are cut "
                             f"to {current['clip_seconds']} s; cut both to one length")
    sha = stored["weights"]["sha256"], current["weights"]["sha256"]
    if None not in sha and sha[0] != sha[1]:
        raise UserValueError(f"{path} was made with weights {stored['weights']['name']} (sha256 {sha[0]}), "
                             f"not {current['weights']['name']} (sha256 {sha[1]})")
    return GaussianStats.load(path)


@dataclass(frozen=True)
class FadResult:
    """A FAD value with what it was computed on and how."""

    fad: float
    embedder: dict  # `AudioEmbedder.describe()`: preset, clip_seconds, weights
    num_gen_files: int
    num_gen_windows: int
    reference: str
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"fad": self.fad, **self.embedder, "num_gen_files": self.num_gen_files,
                "num_gen_windows": self.num_gen_windows, "reference": self.reference, **self.extra}


def fad_from_files(
    gen_dir: str | os.PathLike,
    ref_dir_or_stats: str | os.PathLike | GaussianStats,
    preset: str | FadPreset = "vggish",
    weights: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    embedder: AudioEmbedder | None = None,
    clip_seconds: float | None = None,
) -> FadResult:
    """FAD of the audio files in `gen_dir` against a reference folder, a stats npz, or a GaussianStats.

    `embedder` overrides the pretrained network (its preset must be `preset`, its clip length wins);
    otherwise it is loaded from `weights` or `$LAYERSYNC_WEIGHTS` and cuts clips to `clip_seconds`.
    """
    preset = get_preset(preset)
    if embedder is None:
        embedder = AudioEmbedder.load(preset, weights, device, clip_seconds)
    elif embedder.preset != preset:
        raise UserValueError(f"the embedder runs preset {embedder.preset.name!r}, not {preset.name!r}")
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
        ref, reference = load_reference_stats(ref_dir_or_stats, embedder), str(ref_dir_or_stats)
    value = gaussian_of(gen, str(gen_dir)).frechet_distance(ref)
    return FadResult(value, embedder.describe(), len(files), len(gen), reference, extra)
