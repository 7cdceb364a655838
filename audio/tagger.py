"""The embedded run's audio embedding: a small tag classifier on the synthetic music, trained here and cached.

No pretrained audio network (VGGish, CLAP) is available offline, so the default run measures its WAVs with a
CNN trained deterministically on the synthetic train split to tell the 8 classes (timbre × texture) apart,
the way FAD uses VGGish (Kilgour et al. 2019):

    FAD-tagger = ‖μ_g − μ_r‖² + Tr(Σ_g + Σ_r − 2 (Σ_g Σ_r)^{1/2})

over its 32-d penultimate features of every 0.512 s window, with the reference Gaussian fitted to the train
split's clips. It is *not* FAD-VGGish or FAD-CLAP: values compare only between runs using the same
classifier (the same cache key: training config and source of this module and of `synth.py` and `mel.py`).

Front-end (fixed, whatever the run's own mel config): mono, resampled to 16 kHz, non-overlapping windows of
8,192 samples (a shorter clip is an error), a 64-mel log-mel (64 × 32 frames) raised to at least 6 nats
(52 dB) below the window's loudest bin, so that what lies further down (the noise floor, a vocoder's
phase artefacts) does not count, then normalised per bin by the train split's statistics.

Trained with one CPU thread, deterministic algorithms and a forked RNG (~20 s of CPU), cached in
`$LAYERSYNC_CACHE` (default `~/.cache/layersync`) as `audio_tagger-<key>.pt`, written atomically and verified
by sha256 when loaded; a corrupt file is retrained with a warning.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core import cached
from ..core.config import checked
from ..core.determinism import fit_classifier
from ..core.errors import UserValueError
from ..metrics.frechet import GaussianStats
from . import mel as mel_module
from . import synth
from .decode import resample
from .mel import MelConfig, MelStats, MelStatsAccumulator, log_mel

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
FRONT_END = MelConfig(n_mels=64)  # 16 kHz, n_fft 512, hop 256
WINDOW_SAMPLES = synth.CLIP_SAMPLES
DYNAMIC_RANGE_NATS = 6.0
METRIC = ("fad_tagger: Fréchet distance on the {}-d penultimate features of a synthetic-music tag classifier "
          "(not FAD-VGGish or FAD-CLAP)")


@dataclass(frozen=True)
@checked(seed=">= 0", train_per_class=">= 1", epochs=">= 1", batch_size=">= 1", peak_lr="> 0",
         weight_decay=">= 0", dropout="[0, 1)", feature_dim=">= 1")
class TaggerConfig:
    """Training recipe of the tag classifier; it is hashed into the cache file name."""

    seed: int = 0
    train_per_class: int = 128
    epochs: int = 10
    batch_size: int = 64
    peak_lr: float = 3e-3  # one-cycle schedule (Smith & Topin 2019)
    weight_decay: float = 1e-4
    dropout: float = 0.2
    feature_dim: int = 32


class TaggerCNN(nn.Module):
    """3 × (conv3×3, ReLU, max-pool 2): 1→8→16→32 channels; mean over time; Linear 256→F; head F→8."""

    def __init__(self, feature_dim: int = 32, dropout: float = 0.2):
        super().__init__()
        channels = ((1, 8), (8, 16), (16, 32))
        self.convs = nn.ModuleList(nn.Conv2d(c_in, c_out, 3, padding=1) for c_in, c_out in channels)
        self.fc = nn.Linear(32 * (FRONT_END.n_mels // 8), feature_dim)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, synth.NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features of normalised log-mels (B, 1, 64, 32), before the ReLU (no dead unit)."""
        h = x
        for conv in self.convs:
            h = F.max_pool2d(F.relu(conv(h)), 2)  # (B, C, F/2, T/2) each time
        return self.fc(h.mean(3).flatten(1))  # (B, 32, 8, 4) → mean over time → (B, 256) → (B, F)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(F.relu(self.features(x))))  # (B, 8) logits


def cache_key(config: TaggerConfig) -> str:
    """16 hex digits of sha256(config, cache format, source of this module, synth.py, mel.py and
    core/cached.py)."""
    return cached.cache_key(config, CACHE_FORMAT, (__file__, synth.__file__, mel_module.__file__))


def front_end_mels(waves: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Log-mels (N, 64, 32) of 16 kHz windows (N, WINDOW_SAMPLES), floored 6 nats below each one's top."""
    waves = torch.tensor(np.asarray(waves, dtype=np.float32))  # a copy: synth arrays are read-only
    if waves.ndim != 2 or waves.shape[1] != WINDOW_SAMPLES:
        raise UserValueError(f"windows must be (N, {WINDOW_SAMPLES}), got {tuple(waves.shape)}")
    mels = torch.cat([log_mel(chunk, FRONT_END) for chunk in waves.split(256)])
    return torch.maximum(mels, mels.amax(dim=(1, 2), keepdim=True) - DYNAMIC_RANGE_NATS)


def train_tagger(config: TaggerConfig) -> tuple[TaggerCNN, MelStats]:
    """Train on the synthetic train split, reproducibly (one thread, deterministic, forked RNG)."""
    waves, labels, _ = synth.synth_dataset("train", config.train_per_class)
    mels = front_end_mels(waves)  # (N, 64, 64)
    acc = MelStatsAccumulator(FRONT_END)
    for m in mels:
        acc.add(m)
    stats = acc.result()
    x, y = stats.normalize(mels)[:, None], torch.from_numpy(labels.copy())  # (N, 1, 64, 64), (N,)
    start = time.perf_counter()
    model = fit_classifier(lambda: TaggerCNN(config.feature_dim, config.dropout), x, y, seed=config.seed,
                           epochs=config.epochs, batch_size=config.batch_size, peak_lr=config.peak_lr,
                           weight_decay=config.weight_decay)
    log.info("trained the audio tagger in %.1f s (%d epochs)", time.perf_counter() - start, config.epochs)
    return model, stats


class AudioTagger:
    """The synthetic-music tag classifier as an audio embedding: windows in, 32-d features out."""

    name = "tagger"

    def __init__(self, model: TaggerCNN, stats: MelStats, config: TaggerConfig,
                 reference: dict | None = None):
        self.model, self.stats, self.config = model.eval(), stats, config
        if reference is None:
            waves, labels, _ = synth.synth_dataset("train", config.train_per_class)
            test_waves, test_labels, _ = synth.synth_dataset("test", max(1, config.train_per_class // 4))
            feats = self.embed_windows(waves)
            correct = self.predict_windows(test_waves) == torch.from_numpy(test_labels.copy())
            reference = {"mu": torch.from_numpy(feats.mean(0)),
                         "sigma": torch.from_numpy(np.cov(feats, rowvar=False)),
                         "test_accuracy": float(correct.double().mean()), "num_clips": len(waves)}
        self.reference = GaussianStats(np.asarray(reference["mu"]), np.asarray(reference["sigma"]))
        self.reference_accuracy = float(reference["test_accuracy"])
        self.reference_clips = int(reference["num_clips"])

    @classmethod
    def load_or_train(cls, cache_dir: str | os.PathLike | None = None,
                      config: TaggerConfig = TaggerConfig()) -> AudioTagger:
        """The cached tagger for `config` in `cache_dir` (default `$LAYERSYNC_CACHE`), trained if absent.

        A file that fails its checksum or cannot be read is logged as a warning, retrained and replaced.
        """
        return cached.load_or_build("audio_tagger", cache_key(config), CACHE_FORMAT,
                                    lambda: cls(*train_tagger(config), config), _payload,
                                    lambda state: _from_payload(state, config), cache_dir)

    @property
    def dim(self) -> int:
        return self.config.feature_dim

    @property
    def identity(self) -> str:
        return f"audio_tagger-{cache_key(self.config)}"

    def describe(self) -> dict:
        """What the embedding is, stored beside every result."""
        return {"metric": METRIC.format(self.dim), "embedding": self.identity,
                "front_end": {"mel": FRONT_END.to_dict(), "window_samples": WINDOW_SAMPLES},
                "reference": f"synthetic music train split, {self.reference_clips} clips",
                "reference_accuracy": self.reference_accuracy}

    def _inputs(self, windows: np.ndarray | torch.Tensor) -> torch.Tensor:
        return self.stats.normalize(front_end_mels(windows))[:, None]  # (N, 1, 64, 32)

    @torch.no_grad()
    def embed_windows(self, windows: np.ndarray | torch.Tensor) -> np.ndarray:
        """(N, F) float64 features of 16 kHz windows (N, WINDOW_SAMPLES)."""
        return torch.cat([self.model.features(x) for x in self._inputs(windows).split(512)]).double().numpy()

    @torch.no_grad()
    def predict_windows(self, windows: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Predicted class (N,) of 16 kHz windows (N, WINDOW_SAMPLES)."""
        return torch.cat([self.model(x).argmax(1) for x in self._inputs(windows).split(512)])

    def windows(self, waveform: np.ndarray, sample_rate_hz: int, name: str = "clip") -> np.ndarray:
        """Non-overlapping 16 kHz windows (N, WINDOW_SAMPLES) of mono (T,) audio; the tail is dropped."""
        x = resample(np.asarray(waveform, dtype=np.float64), sample_rate_hz, FRONT_END.sample_rate_hz)
        n = len(x) // WINDOW_SAMPLES
        if n == 0:
            raise UserValueError(f"{name} is shorter than the tagger's {WINDOW_SAMPLES / 16_000:.3f} s "
                                 "window")
        return x[: n * WINDOW_SAMPLES].reshape(n, WINDOW_SAMPLES).astype(np.float32)

    def embed(self, waveform: np.ndarray, sample_rate_hz: int, name: str = "clip") -> np.ndarray:
        """(N, F) features of every window of one mono clip (the interface of the FAD embedders)."""
        return self.embed_windows(self.windows(waveform, sample_rate_hz, name))


def _payload(tagger: AudioTagger) -> dict:
    """What the cache holds: the model, its front-end statistics and its reference."""
    reference = {"mu": torch.from_numpy(tagger.reference.mu),
                 "sigma": torch.from_numpy(tagger.reference.sigma),
                 "test_accuracy": tagger.reference_accuracy, "num_clips": tagger.reference_clips}
    stats = {"mean": torch.from_numpy(tagger.stats.mean), "std": torch.from_numpy(tagger.stats.std),
             "num_frames": tagger.stats.num_frames}
    return {"state_dict": tagger.model.state_dict(), "stats": stats, "reference": reference}


def _from_payload(state: dict, config: TaggerConfig) -> AudioTagger:
    model = TaggerCNN(config.feature_dim, config.dropout)
    model.load_state_dict(state["state_dict"])
    s = state["stats"]
    stats = MelStats(s["mean"].numpy(), s["std"].numpy(), FRONT_END, int(s["num_frames"]))
    return AudioTagger(model, stats, config, state["reference"])
