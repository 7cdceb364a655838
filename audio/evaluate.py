"""FAD of a folder of generated audio against reference audio or stored statistics, under a named embedding.

Embeddings: "clap-laion-audio", "clap-laion-music" and "vggish" are fadtk's, the FAD presets of
`layersync.metrics.fad` (pretrained weights from a local path or `$LAYERSYNC_WEIGHTS`), with every clip
(generated and reference) cut to one length `clip_seconds`, recorded in the result; "tagger" is the embedded
run's synthetic-music tag classifier (`audio/tagger.py`), whose reference defaults to the synthetic train
split. Every window of every file is one sample of the Gaussian; the result names the embedding, its protocol
and the reference it was measured to. Files are read with `decode.read_audio` (WAV, FLAC, OGG and MP3) at
their own rate; each embedding resamples."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from layersync.audio.decode import AUDIO_EXTENSIONS, read_audio
from layersync.core.errors import UserFileNotFoundError, UserKeyError, UserValueError
from layersync.metrics.frechet import GaussianStats

EmbeddingKind = Literal["tagger", "clap-laion-audio", "clap-laion-music", "vggish"]
EMBEDDINGS: tuple[EmbeddingKind, ...] = ("tagger", "clap-laion-audio", "clap-laion-music", "vggish")
PRESET_EMBEDDINGS = EMBEDDINGS[1:]


class Embedder(Protocol):
    """Audio → per-window embeddings, with a description stored beside every result."""

    name: str

    def embed(self, waveform: np.ndarray, sample_rate_hz: int, name: str = "clip") -> np.ndarray: ...

    def describe(self) -> dict: ...


class PresetEmbedder:
    """A `metrics.fad` preset (fadtk's CLAP or VGGish FAD) with its pretrained network."""

    def __init__(self, kind: str, weights: str | os.PathLike | None = None, device="cpu",
                 clip_seconds: float | None = None):
        from layersync.metrics.fad import AudioEmbedder

        self.name = kind
        self.inner = AudioEmbedder.load(kind, weights or None, device, clip_seconds)

    def embed(self, waveform: np.ndarray, sample_rate_hz: int, name: str = "clip") -> np.ndarray:
        return self.inner.embed(waveform, sample_rate_hz, name)

    def describe(self) -> dict:
        return {"metric": f"fad_{self.name}: FAD under the {self.name!r} preset of layersync.metrics.fad",
                **self.inner.describe()}


def load_embedder(kind: EmbeddingKind, weights: str | os.PathLike | None = None, device="cpu",
                  tagger=None, clip_seconds: float | None = None) -> Embedder:
    """The named embedding; CLAP/VGGish raise MissingWeightsError (with where to get them) when absent.

    `tagger` is the TaggerConfig of the tag classifier (default: the one the embedded run uses);
    `clip_seconds` cuts every clip a preset embedding sees to its first seconds (None: whole clips)."""
    if kind == "tagger":
        from layersync.audio.tagger import AudioTagger, TaggerConfig

        return AudioTagger.load_or_train(config=tagger or TaggerConfig())
    if kind in PRESET_EMBEDDINGS:
        return PresetEmbedder(kind, weights, device, clip_seconds)
    raise UserValueError(f"unknown embedding {kind!r}; choose one of {', '.join(EMBEDDINGS)}")


def audio_files(folder: str | os.PathLike) -> list[Path]:
    """Sorted audio files (WAV, FLAC, OGG, MP3) directly in `folder`; none is an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserFileNotFoundError(f"{folder} is not a folder of audio files")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_EXTENSIONS)
    if not files:
        raise UserFileNotFoundError(f"no {'/'.join(AUDIO_EXTENSIONS)} files in {folder}")
    return files


def embed_files(embedder: Embedder, files: list[Path]) -> np.ndarray:
    """(N, D) float64 embeddings of every window of every file, in file order."""
    return np.concatenate([embedder.embed(*read_audio(f), name=str(f)) for f in files])


def embed_waveforms(embedder: Embedder, waves: np.ndarray, sample_rate_hz: int) -> np.ndarray:
    """(N, D) embeddings of every window of (B, T) in-memory clips."""
    return np.concatenate([embedder.embed(w, sample_rate_hz, name=f"clip {i}") for i, w in enumerate(waves)])


def gaussian(embeddings: np.ndarray, what: str, num_files: int = 0) -> GaussianStats:
    """Mean and ddof-1 covariance; needs N ≥ D + 1 windows. Too few windows from `num_files` files is refused
    with the number of such files that would be enough."""
    x = np.asarray(embeddings, np.float64)
    (n, dim), needed = x.shape, x.shape[1] + 1
    if n < needed:
        enough = ""
        if num_files:
            files = math.ceil(needed / max(n / num_files, 1e-9))  # at this many windows per file
            enough = f"; {files} files like these would do (e.g. `layersync audio sample --num {files}`)"
        raise UserValueError(f"{what}: {n} windows{f' from {num_files} files' if num_files else ''} for "
                             f"{dim}-d embeddings; a Fréchet distance needs at least {needed}{enough}")
    return GaussianStats(x.mean(0), np.cov(x, rowvar=False))


def save_reference(path: str | os.PathLike, embeddings: np.ndarray, embedder: Embedder) -> GaussianStats:
    """Fit and write reference statistics (`mu`, `sigma`, the embedding's description) to an npz."""
    g = gaussian(embeddings, "reference")
    np.savez(path, mu=g.mu, sigma=g.sigma, embedding=json.dumps(embedder.describe()),
             num_windows=len(embeddings))
    return g


def load_reference(path: str | os.PathLike, embedder: Embedder) -> GaussianStats:
    """Read `save_reference` output; refuses statistics made under another embedding."""
    with np.load(path) as data:
        if "embedding" not in data.files:
            raise UserKeyError(f"{path} records no embedding; write it with "
                               "`layersync audio evaluate --save-reference`")
        stored = json.loads(str(data["embedding"]))
        if stored != embedder.describe():
            raise UserValueError(f"{path} was made under another embedding ({stored.get('metric')}; "
                                 f"{stored.get('embedding', stored.get('preset', {}).get('name'))})")
        return GaussianStats(data["mu"], data["sigma"])


def reference_stats(embedder: Embedder, reference: str | os.PathLike | None) -> tuple[GaussianStats, str]:
    """(Gaussian, description) of a reference folder, a saved npz, or (tagger only) the synthetic train
    split."""
    if reference is None or str(reference) == "":
        if embedder.name != "tagger":
            raise UserValueError(f"FAD-{embedder.name} needs a reference: a folder of audio or a statistics "
                                 ".npz")
        return embedder.reference, embedder.describe()["reference"]
    path = Path(reference)
    if path.is_dir():
        files = audio_files(path)
        return gaussian(embed_files(embedder, files), str(path), len(files)), str(path)
    if path.is_file():
        return load_reference(path, embedder), str(path)
    raise UserFileNotFoundError(f"reference {path}: no such folder or statistics file")


def fad_result(embedder: Embedder, generated: np.ndarray, reference: GaussianStats, reference_name: str,
               num_files: int) -> dict:
    """FAD of generated embeddings (N, D) to a reference Gaussian, with what it was measured by."""
    value = gaussian(generated, "generated audio", num_files).frechet_distance(reference)
    result = {f"fad_{embedder.name}": float(value)}
    result.update(embedder.describe())
    result.update(num_files=num_files, num_windows=len(generated), reference=reference_name)
    return result


def fad_folder(folder: str | os.PathLike, embedder: Embedder,
               reference: str | os.PathLike | None = None) -> dict:
    """FAD of the audio files in `folder` (see `reference_stats` for `reference`)."""
    files = audio_files(folder)
    ref, ref_name = reference_stats(embedder, reference)
    return fad_result(embedder, embed_files(embedder, files), ref, ref_name, len(files))
