"""VGGish (Hershey et al. 2017) and its exact log-mel front end, as the Google FAD (Kilgour et al. 2019) uses.

Front end (tensorflow/models research/audioset/vggish: vggish_input.py, mel_features.py), in float64 numpy:
- mono, 16 kHz, samples in [-1, 1];
- |rfft| of 25 ms frames (400 samples, periodic Hann, zero-padded to 512) every 10 ms (160 samples);
- 64 triangular mel bands, 125–7500 Hz on the HTK mel scale m = 1127 ln(1 + f / 700), DC bin zeroed;
- log(mel + 0.01); non-overlapping 0.96 s examples of 96 frames × 64 bands (the tail is dropped).

Network: torchvggish's port of the TF-slim model (parameter names kept, so `vggish-10086976.pth` loads as is).
The embedding is the 128-d output of the last fully connected layer *before* its ReLU and before the PCA
whitening: the Google FAD reads `vggish/fc2` whose activation is None (gudgud96's `use_activation=False`,
`use_pca=False`); torchvggish appends a ReLU that this module leaves out.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from layersync.core.errors import UserValueError
from layersync.core.weights import WeightFile, resolve

SAMPLE_RATE_HZ = 16_000
STFT_WINDOW_SECONDS = 0.025
STFT_HOP_SECONDS = 0.010
NUM_MEL_BANDS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_SECONDS = 0.96  # window and hop of one example
EXAMPLE_FRAMES = 96
EMBEDDING_DIM = 128

VGGISH_WEIGHTS = WeightFile(
    filename="vggish-10086976.pth",
    # torch.hub names files by their sha256 prefix (`10086976`); full digest as recorded by users of the file.
    sha256="10086976245803799d9194e9a73d9b6c1549c71d1b80106f5cade5608a561f4b",
    source="https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth",
    description="VGGish AudioSet weights ported from TF by torchvggish",
)


def frame(x: np.ndarray, window: int, hop: int) -> np.ndarray:
    """Frames of `window` rows every `hop` rows along axis 0, only whole frames: (F, window, ...)."""
    num_frames = 1 + (x.shape[0] - window) // hop
    if num_frames < 1:
        return np.empty((0, window) + x.shape[1:], dtype=x.dtype)
    return np.lib.stride_tricks.as_strided(
        x,
        shape=(num_frames, window) + x.shape[1:],
        strides=(x.strides[0] * hop,) + x.strides,
        writeable=False,
    )


def hertz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale, m = 1127 ln(1 + f / 700) (mel_features.hertz_to_mel)."""
    return 1127.0 * np.log(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)  # log(1 + x) as the reference


def mel_matrix(
    num_spectrogram_bins: int = 257,
    sample_rate_hz: int = SAMPLE_RATE_HZ,
    num_mel_bands: int = NUM_MEL_BANDS,
    min_hz: float = MEL_MIN_HZ,
    max_hz: float = MEL_MAX_HZ,
) -> np.ndarray:
    """(bins, bands) triangular weights, equally spaced in mel, peak 1 at each band centre, DC row zeroed."""
    if not 0.0 <= min_hz < max_hz <= sample_rate_hz / 2:
        raise UserValueError(f"need 0 <= min_hz < max_hz <= {sample_rate_hz / 2} Hz, got {min_hz}, {max_hz}")
    bins_mel = hertz_to_mel(np.linspace(0.0, sample_rate_hz / 2, num_spectrogram_bins))  # (bins,)
    edges = np.linspace(hertz_to_mel(min_hz), hertz_to_mel(max_hz), num_mel_bands + 2)  # (bands + 2,)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]  # (bands,) each
    rising = (bins_mel[:, None] - lower) / (centre - lower)  # (bins, bands)
    falling = (upper - bins_mel[:, None]) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0  # the reference drops the DC bin
    return weights


def log_mel(waveform: np.ndarray) -> np.ndarray:
    """(frames, 64) log(mel + 0.01) of a 16 kHz mono float waveform (mel_features.log_mel_spectrogram)."""
    window = round(SAMPLE_RATE_HZ * STFT_WINDOW_SECONDS)  # 400
    hop = round(SAMPLE_RATE_HZ * STFT_HOP_SECONDS)  # 160
    fft_length = 1 << int(np.ceil(np.log2(window)))  # 512
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(window) / window)  # periodic Hann
    frames = frame(np.asarray(waveform, dtype=np.float64), window, hop)  # (F, 400)
    magnitude = np.abs(np.fft.rfft(frames * hann, fft_length))  # (F, 257)
    return np.log(magnitude @ mel_matrix(magnitude.shape[1]) + LOG_OFFSET)  # (F, 64)


def waveform_to_examples(waveform: np.ndarray) -> np.ndarray:
    """(N, 96, 64) float32 log-mel examples of a 16 kHz mono waveform in [-1, 1]; N = 0 below ~0.975 s."""
    waveform = np.asarray(waveform)
    if waveform.ndim != 1:
        raise UserValueError(f"expected a mono (T,) waveform at {SAMPLE_RATE_HZ} Hz, got shape "
                             f"{waveform.shape}")
    features_per_second = 1.0 / STFT_HOP_SECONDS
    example = round(EXAMPLE_SECONDS * features_per_second)  # 96
    return frame(log_mel(waveform), example, example).astype(np.float32)


class VGGish(nn.Module):
    """VGG-style audio CNN: (N, 1, 96, 64) log-mel examples → (N, 128) pre-activation fc embeddings."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for width in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M"):
            if width == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, width, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                channels = width
        self.features = nn.Sequential(*layers)
        # Indices 0, 2, 4 hold the weights, as in torchvggish; the reference's final ReLU is left out.
        self.embeddings = nn.Sequential(
            nn.Linear(512 * 6 * 4, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, EMBEDDING_DIM),
        )

    def forward(self, examples: torch.Tensor) -> torch.Tensor:
        if examples.ndim != 4 or examples.shape[1:] != (1, EXAMPLE_FRAMES, NUM_MEL_BANDS):
            raise UserValueError(f"expected (N, 1, 96, 64) log-mel examples, got {tuple(examples.shape)}")
        x = self.features(examples)  # (N, 512, 6, 4)
        # TF flattens NHWC: channels vary fastest, so the fc weights expect (N, 6, 4, 512) order.
        x = x.permute(0, 2, 3, 1).flatten(1)  # (N, 12288)
        return self.embeddings(x)  # (N, 128)


def load_vggish(path: str | os.PathLike | None = None, verify: bool = True) -> VGGish:
    """VGGish in eval mode with the AudioSet weights from `path` (file or folder) or `$LAYERSYNC_WEIGHTS`."""
    file = resolve(VGGISH_WEIGHTS, path, verify=verify)
    state = torch.load(file, map_location="cpu", weights_only=True)
    model = VGGish()
    model.load_state_dict(state)
    return model.eval()
