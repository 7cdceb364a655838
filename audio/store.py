"""A mel store: every track decoded once into log-mel frames on disk, then random clips read by memory map.

Layout of a store folder (written to `<folder>.tmp` and renamed when complete, so a folder is never half
written):
    mels.f16     float16 frames, row-major (total_frames, n_mels); track i is rows [offset_i, offset_i + n_i)
    index.json   mel config, the tracks kept (id, path, tags, offset, frames), counts
    stats.npz    per-bin mean/std of every stored frame (`MelStats`), computed in float64 while writing
    skipped.tsv  tracks left out and why (unreadable or corrupt file, too short)
Decoding (the slow part) runs in `workers` processes; the order of tracks is the metadata's either way.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from layersync.audio.decode import AudioReadError, load_audio
from layersync.audio.jamendo import (Conditioning, JamendoTrack, Skipped, TagVocabulary, audio_path,
                                     conditions, random_offsets, report_skipped, stack_conditions,
                                     write_skipped)
from layersync.audio.layout import Layout, to_model
from layersync.audio.mel import MelConfig, MelStats, MelStatsAccumulator, log_mel
from layersync.core.errors import UserFileNotFoundError, UserValueError
from layersync.core.trainer import Batch

log = logging.getLogger(__name__)
STORE_FORMAT = 1


def _track_mel(args: tuple[str, MelConfig, float]) -> np.ndarray | str:
    """Log-mel (frames, F) float16 of one file, or the reason it cannot be read (runs in a worker)."""
    path, mel, max_seconds = args
    try:
        wave = load_audio(path, mel.sample_rate_hz)
    except AudioReadError as err:
        return f"unreadable: {err}"
    if max_seconds > 0:
        wave = wave[: int(max_seconds * mel.sample_rate_hz)]
    if len(wave) <= mel.padding or mel.frames(len(wave)) < 1:
        return f"only {len(wave)} samples"
    return log_mel(torch.from_numpy(wave), mel).T.numpy().astype(np.float16)  # (frames, F)


@dataclass(frozen=True)
class StoreSummary:
    """What `build_mel_store` did."""

    folder: Path
    kept: int
    skipped: list[Skipped]
    total_frames: int


def build_mel_store(tracks: list[JamendoTrack], audio_root, folder, mel: MelConfig,
                    audio_suffix: str = ".mp3", min_frames: int = 1, max_seconds: float = 0.0,
                    workers: int = 1) -> StoreSummary:
    """Decode `tracks`, write their log-mels to `folder`; tracks with fewer than `min_frames` are skipped."""
    folder = Path(folder)
    if folder.exists():
        raise UserValueError(f"{folder} already exists; remove it or choose another folder")
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    jobs = [(str(audio_path(audio_root, t, audio_suffix)), mel, max_seconds) for t in tracks]
    acc = MelStatsAccumulator(mel)
    kept, skipped, offset = [], [], 0
    with open(tmp / "mels.f16", "wb") as out:
        if workers > 1:
            # spawn, not fork: forking a process that holds torch/OpenMP threads can deadlock the children.
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                results = pool.map(_track_mel, jobs, chunksize=4)
                offset = _write_all(tracks, jobs, results, out, acc, kept, skipped, min_frames)
        else:
            offset = _write_all(tracks, jobs, map(_track_mel, jobs), out, acc, kept, skipped, min_frames)
    if not kept:
        shutil.rmtree(tmp)
        raise UserValueError(f"no track of {len(tracks)} could be stored; first reasons: "
                             + "; ".join(f"{s.path}: {s.reason}" for s in skipped[:3]))
    acc.result().save(tmp / "stats.npz")
    write_skipped(skipped, tmp / "skipped.tsv")
    index = {"format": STORE_FORMAT, "mel": mel.to_dict(), "total_frames": offset, "tracks": kept,
             "skipped": len(skipped)}
    (tmp / "index.json").write_text(json.dumps(index) + "\n")
    os.replace(tmp, folder)
    report_skipped(skipped, len(tracks), str(folder / "skipped.tsv"))
    return StoreSummary(folder, len(kept), skipped, offset)


def _write_all(tracks, jobs, results, out, acc, kept, skipped, min_frames) -> int:
    offset = 0
    for track, (path, _, _), result in zip(tracks, jobs, results):
        if isinstance(result, str):
            skipped.append(Skipped(track.track_id, path, result))
            continue
        if len(result) < min_frames:
            reason = f"{len(result)} frames, fewer than a clip of {min_frames}"
            skipped.append(Skipped(track.track_id, path, reason))
            continue
        out.write(result.tobytes())
        acc.add(result.T.astype(np.float32))
        kept.append({"track_id": track.track_id, "path": track.path, "tags": list(track.tags),
                     "offset": offset, "frames": len(result)})
        offset += len(result)
    return offset


class MelStore:
    """A store folder opened for reading."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        index_file = self.folder / "index.json"
        if not index_file.is_file():
            raise UserFileNotFoundError(f"{self.folder} is not a mel store (no index.json); build one with "
                                        "`layersync audio prepare`")
        index = json.loads(index_file.read_text())
        if index.get("format") != STORE_FORMAT:
            raise UserValueError(f"{self.folder}: store format {index.get('format')}, expected "
                                 f"{STORE_FORMAT}")
        self.mel = MelConfig(**index["mel"])
        self.entries = index["tracks"]
        self.frames = np.memmap(self.folder / "mels.f16", dtype=np.float16, mode="r",
                                shape=(index["total_frames"], self.mel.n_mels))
        self.stats = MelStats.load(self.folder / "stats.npz", self.mel)

    @property
    def tracks(self) -> list[JamendoTrack]:
        return [JamendoTrack(e["track_id"], "", "", e["path"], e["frames"] * self.mel.hop_length
                             / self.mel.sample_rate_hz, tuple(e["tags"])) for e in self.entries]

    def clip(self, i: int, start: int, frames: int) -> np.ndarray:
        """Frames [start, start + frames) of stored track i as (F, frames) float32."""
        e = self.entries[i]
        if start < 0 or start + frames > e["frames"]:
            raise IndexError(f"clip [{start}, {start + frames}) outside track {e['track_id']} "
                             f"({e['frames']} frames)")
        return np.asarray(self.frames[e["offset"] + start : e["offset"] + start + frames], np.float32).T


class MelStoreSource:
    """Random clips of `clip_frames` from a mel store, normalised, with the tracks' conditions."""

    def __init__(self, store: MelStore, vocab: TagVocabulary, rule: Conditioning, clip_frames: int,
                 layout: Layout, stats: MelStats | None = None):
        conds = conditions(store.tracks, vocab, rule)
        keep = [i for i, (c, e) in enumerate(zip(conds, store.entries))
                if c is not None and e["frames"] >= clip_frames]
        dropped = len(conds) - len(keep)
        if dropped:
            log.warning("%d of %d stored tracks have no %s tag or fewer than %d frames; left out",
                        dropped, len(conds), vocab.category, clip_frames)
        if not keep:
            raise UserValueError(f"no stored track has a {vocab.category} tag and ≥ {clip_frames} frames")
        self.store, self.keep, self.clip_frames, self.layout = store, keep, clip_frames, layout
        self.stats = stats or store.stats
        self.cond = stack_conditions([conds[i] for i in keep], rule)
        self.lengths = torch.tensor([store.entries[i]["frames"] for i in keep])

    def __len__(self) -> int:
        return len(self.keep)

    def batch(self, indices: torch.Tensor, keys: torch.Tensor) -> Batch:
        starts = random_offsets(self.lengths[indices], self.clip_frames, keys)
        clips = [self.store.clip(self.keep[i], int(s), self.clip_frames)
                 for i, s in zip(indices.tolist(), starts)]
        mel = self.stats.normalize(torch.from_numpy(np.stack(clips)))  # (B, F, clip_frames)
        return Batch(to_model(mel, self.layout), self.cond[indices])
