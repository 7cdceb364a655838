"""Audio files in and out: decode (MP3 through PyAV/FFmpeg, WAV/FLAC/OGG through libsndfile), mono, resample.

Resampling is scipy's polyphase `resample_poly` (Kaiser window, β = 5), as `layersync.metrics.fad` does, so
the training data and the FAD front-end resample alike. Output WAVs are 16-bit PCM.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import scipy.signal
import soundfile

from layersync.core.errors import UserValueError

SOUNDFILE_EXTENSIONS = (".wav", ".flac", ".ogg")
AUDIO_EXTENSIONS = (*SOUNDFILE_EXTENSIONS, ".mp3")


class AudioReadError(ValueError):
    """A file that cannot be decoded: missing, empty, truncated or not audio."""


def resample(waveform: np.ndarray, rate_hz: int, target_hz: int) -> np.ndarray:
    """(T,) float audio from `rate_hz` to `target_hz` by polyphase filtering; unchanged when equal."""
    if rate_hz == target_hz:
        return waveform
    g = math.gcd(int(rate_hz), int(target_hz))
    return scipy.signal.resample_poly(waveform, target_hz // g, rate_hz // g)


def _decode_av(path: Path) -> tuple[np.ndarray, int]:
    """(T, C) float32 samples and rate of the first audio stream, through PyAV."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioReadError(f"{path}: no audio stream")
            stream = container.streams.audio[0]
            chunks = []
            for frame in container.decode(stream):
                a = frame.to_ndarray()  # planar (C, n) or packed (1, n·C)
                if not frame.format.is_planar:
                    a = a.reshape(-1, len(frame.layout.channels)).T
                chunks.append(a)
            rate = stream.rate
    except AudioReadError:
        raise
    except Exception as err:  # av raises many error types (InvalidDataError, EOFError, …) for bad data
        raise AudioReadError(f"{path}: {type(err).__name__}: {err}") from err
    if not chunks:
        raise AudioReadError(f"{path}: no audio frames decoded")
    data = np.concatenate(chunks, axis=1).T  # (T, C)
    if np.issubdtype(data.dtype, np.integer):  # s16/s32 sample formats: full scale is 2^(bits−1)
        return (data / (float(np.iinfo(data.dtype).max) + 1)).astype(np.float32), int(rate)
    return data.astype(np.float32, copy=False), int(rate)


def _decode_soundfile(path: Path) -> tuple[np.ndarray, int]:
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)  # (T, C), PCM / 32768
    except Exception as err:  # soundfile.LibsndfileError, RuntimeError, …
        raise AudioReadError(f"{path}: {type(err).__name__}: {err}") from err
    return data, int(rate)


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Mono float32 (T,) at the file's own rate (channel mean), and that rate.

    Raises AudioReadError for a missing, empty or undecodable file or one holding no samples.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioReadError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise AudioReadError(f"{path}: empty file")
    ext = path.suffix.lower()
    data, rate = _decode_soundfile(path) if ext in SOUNDFILE_EXTENSIONS else _decode_av(path)
    if data.shape[0] == 0:
        raise AudioReadError(f"{path}: no samples")
    if not np.isfinite(data).all():
        raise AudioReadError(f"{path}: decoded samples contain NaN or inf")
    return data.mean(axis=1, dtype=np.float64).astype(np.float32), rate


def load_audio(path: str | os.PathLike, sample_rate_hz: int) -> np.ndarray:
    """Mono float32 (T,) at `sample_rate_hz`: channel mean, then polyphase resampling (see `read_audio`)."""
    mono, rate = read_audio(path)
    return resample(mono.astype(np.float64), rate, sample_rate_hz).astype(np.float32)


def probe(path: str | os.PathLike) -> None:
    """Open `path` and decode its first audio frame; AudioReadError if that fails (a cheap sanity check)."""
    import av

    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise AudioReadError(f"{path}: {'no such file' if not path.is_file() else 'empty file'}")
    if path.suffix.lower() in SOUNDFILE_EXTENSIONS:
        try:
            info = soundfile.info(str(path))
        except Exception as err:
            raise AudioReadError(f"{path}: {type(err).__name__}: {err}") from err
        if info.frames == 0:
            raise AudioReadError(f"{path}: no samples")
        return
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioReadError(f"{path}: no audio stream")
            next(container.decode(container.streams.audio[0]))
    except AudioReadError:
        raise
    except Exception as err:
        raise AudioReadError(f"{path}: {type(err).__name__}: {err}") from err


def write_wav(path: str | os.PathLike, waveform: np.ndarray, sample_rate_hz: int) -> Path:
    """Mono (T,) audio in [-1, 1] (clipped) as a 16-bit PCM WAV; creates the folder."""
    path = Path(path)
    x = np.asarray(waveform, dtype=np.float64)
    if x.ndim != 1:
        raise UserValueError(f"write_wav takes mono (T,) audio, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise UserValueError(f"{path}: audio contains NaN or inf; nothing written")
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), np.clip(x, -1.0, 1.0), sample_rate_hz, subtype="PCM_16")
    return path


def write_mp3(path: str | os.PathLike, waveform: np.ndarray, sample_rate_hz: int,
              bitrate: int = 128_000) -> Path:
    """Mono (T,) audio as an MP3 through PyAV's LAME encoder (used to make test files)."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.clip(np.asarray(waveform, dtype=np.float32), -1, 1)[None]  # (1, T)
    with av.open(str(path), "w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=sample_rate_hz)
        stream.layout = "mono"
        stream.bit_rate = bitrate
        frame = av.AudioFrame.from_ndarray(x, format="fltp", layout="mono")
        frame.sample_rate = sample_rate_hz
        for packet in (*stream.encode(frame), *stream.encode(None)):
            container.mux(packet)
    return path
