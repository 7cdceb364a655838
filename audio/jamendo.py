"""MTG-Jamendo (Bogdanov et al. 2019): TSV metadata, tag vocabularies, conditioning, and on-the-fly clips.

Metadata files (`autotagging*.tsv`, `splits/split-N/autotagging-{train,validation,test}.tsv`) have a header
`TRACK_ID ARTIST_ID ALBUM_ID PATH DURATION TAGS` and one track per line, tab-separated, with one or more tags
as further columns, each `category---value` (categories `genre`, `instrument`, `mood/theme`). PATH is
relative to the audio root (`NN/<id>.mp3`; the low-quality set uses `NN/<id>.low.mp3`: set `audio_suffix`).

Vocabularies ("genre", "instrument", "moodtheme": every tag of that category in the metadata; "top50": the
50 tags on most tracks, ties by name, the rule of `autotagging_top50tags.tsv`; "all": every tag) are sorted.
Conditioning rules, for tracks with several tags:
- "first_tag": the class is the first of the track's tags (in the TSV's column order) that the vocabulary
  holds; class-conditional DiT with one embedding per tag.
- "multi_hot": a (V,) 0/1 vector of all the track's tags in the vocabulary, fed as a text-like vector
  (`cond_kind="text"`, a Linear from V to the width: the sum of the tags' embeddings).
Tracks with no tag in the vocabulary, shorter than one clip, or whose file cannot be opened are dropped,
counted and listed (with the reason) and a warning is logged.
"""

from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from layersync.audio.decode import AudioReadError, load_audio, probe
from layersync.audio.layout import Layout, to_model
from layersync.audio.mel import MelConfig, MelStats, MelStatsAccumulator, log_mel
from layersync.core.errors import UserFileNotFoundError, UserValueError
from layersync.core.sample_rng import randint
from layersync.core.trainer import Batch

log = logging.getLogger(__name__)

TagCategory = Literal["genre", "instrument", "moodtheme", "top50", "all"]
Conditioning = Literal["first_tag", "multi_hot"]
PREFIXES = {"genre": "genre---", "instrument": "instrument---", "moodtheme": "mood/theme---"}
HEADER = ["TRACK_ID", "ARTIST_ID", "ALBUM_ID", "PATH", "DURATION", "TAGS"]


@dataclass(frozen=True)
class JamendoTrack:
    """One metadata row."""

    track_id: str
    artist_id: str
    album_id: str
    path: str  # relative to the audio root
    duration_s: float
    tags: tuple[str, ...]


def read_tsv(path: str | os.PathLike) -> list[JamendoTrack]:
    """Parse an MTG-Jamendo metadata TSV; a malformed line is an error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise UserFileNotFoundError(f"{path}: no such metadata TSV")
    tracks = []
    with path.open(newline="", encoding="utf-8") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(rows, None)
        if header is None or [h.strip() for h in header[:6]] != HEADER:
            raise UserValueError(f"{path}: first line must be the header {' '.join(HEADER)} (tab-separated), "
                                 f"got {header!r}")
        for line, row in enumerate(rows, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) < 6:
                raise UserValueError(f"{path}:{line}: expected ≥ 6 tab-separated columns (at least one tag), "
                                     f"got {len(row)}")
            try:
                duration = float(row[4])
            except ValueError:
                raise UserValueError(f"{path}:{line}: DURATION {row[4]!r} is not a number") from None
            tags = tuple(t.strip() for t in row[5:] if t.strip())
            tracks.append(JamendoTrack(row[0], row[1], row[2], row[3], duration, tags))
    if not tracks:
        raise UserValueError(f"{path}: no tracks")
    return tracks


@dataclass(frozen=True)
class TagVocabulary:
    """The sorted tags of one category; a tag's index is its class."""

    category: TagCategory
    tags: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.tags)

    @classmethod
    def from_tracks(cls, tracks: list[JamendoTrack], category: TagCategory) -> TagVocabulary:
        counts = Counter(tag for t in tracks for tag in set(t.tags))
        if category in PREFIXES:
            tags = sorted(tag for tag in counts if tag.startswith(PREFIXES[category]))
        elif category == "top50":
            tags = sorted(sorted(counts, key=lambda tag: (-counts[tag], tag))[:50])
        elif category == "all":
            tags = sorted(counts)
        else:
            raise UserValueError(f"unknown tag category {category!r}; choose genre, instrument, moodtheme, "
                                 "top50 or all")
        if not tags:
            raise UserValueError(f"no {category} tags in the metadata")
        return cls(category, tuple(tags))

    def class_of(self, track_tags: tuple[str, ...]) -> int | None:
        """The "first_tag" rule: index of the first of `track_tags` in the vocabulary, None if none is."""
        lookup = self._lookup()
        return next((lookup[t] for t in track_tags if t in lookup), None)

    def multi_hot(self, track_tags: tuple[str, ...]) -> np.ndarray:
        """(V,) float32, 1 for every tag of the track in the vocabulary."""
        lookup = self._lookup()
        out = np.zeros(len(self.tags), np.float32)
        out[[lookup[t] for t in track_tags if t in lookup]] = 1.0
        return out

    def _lookup(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tags)}


def conditions(tracks: list[JamendoTrack], vocab: TagVocabulary, rule: Conditioning) -> list:
    """Per track: a class (int) or multi-hot vector, or None when the track has no tag in `vocab`."""
    if rule == "first_tag":
        return [vocab.class_of(t.tags) for t in tracks]
    if rule == "multi_hot":
        return [v if v.any() else None for v in (vocab.multi_hot(t.tags) for t in tracks)]
    raise UserValueError(f"unknown conditioning {rule!r}; choose first_tag or multi_hot")


def audio_path(root: str | os.PathLike, track: JamendoTrack, audio_suffix: str = ".mp3") -> Path:
    """`root/PATH`, with its `.mp3` ending replaced by `audio_suffix` (e.g. ".low.mp3")."""
    rel = track.path[: -len(".mp3")] + audio_suffix if track.path.endswith(".mp3") else track.path
    return Path(root) / rel


@dataclass(frozen=True)
class Skipped:
    """A track left out, and why."""

    track_id: str
    path: str
    reason: str


def write_skipped(skipped: list[Skipped], path: str | os.PathLike) -> None:
    """A TSV `TRACK_ID PATH REASON` of the dropped tracks."""
    lines = ["TRACK_ID\tPATH\tREASON"] + [f"{s.track_id}\t{s.path}\t{s.reason}" for s in skipped]
    Path(path).write_text("\n".join(lines) + "\n")


def report_skipped(skipped: list[Skipped], total: int, where: str) -> None:
    """Log a warning with the count and the first few dropped tracks."""
    if skipped:
        first = "; ".join(f"{s.path}: {s.reason}" for s in skipped[:3])
        log.warning("skipped %d of %d tracks (listed in %s): %s%s", len(skipped), total, where, first,
                    " …" if len(skipped) > 3 else "")


def select_tracks(tracks: list[JamendoTrack], vocab: TagVocabulary, rule: Conditioning, audio_root,
                  audio_suffix: str, min_seconds: float, check_files: bool = True
                  ) -> tuple[list[JamendoTrack], list, list[Skipped]]:
    """Tracks usable for training with their conditions; the others as Skipped (no tag, too short,
    unreadable).

    `check_files` opens every file and decodes its first frame (`decode.probe`), which catches missing, empty
    and non-audio files; damage later in a file shows when it is fully decoded (the mel store does that).
    """
    kept, conds, skipped = [], [], []
    for track, cond in zip(tracks, conditions(tracks, vocab, rule)):
        path = audio_path(audio_root, track, audio_suffix)
        reason = None
        if cond is None:
            reason = f"no {vocab.category} tag"
        elif track.duration_s < min_seconds:
            reason = f"{track.duration_s:.2f} s is shorter than a {min_seconds:.3f} s clip"
        elif check_files:
            try:
                probe(path)
            except AudioReadError as err:
                reason = f"unreadable: {err}"
        if reason is None:
            kept.append(track)
            conds.append(cond)
        else:
            skipped.append(Skipped(track.track_id, str(path), reason))
    return kept, conds, skipped


def stack_conditions(conds: list, rule: Conditioning) -> torch.Tensor:
    """(N,) long classes or (N, V) float multi-hot vectors."""
    if rule == "first_tag":
        return torch.tensor(conds, dtype=torch.long)
    return torch.from_numpy(np.stack(conds))


def random_offsets(lengths: torch.Tensor, clip: int, keys: torch.Tensor) -> torch.Tensor:
    """A uniform start in [0, length − clip] per item, drawn from the item's key (core/sample_rng.py).

    Keys are a function of (seed, step, slot): crops are replayed on resume and alike for any process count.
    """
    return randint(keys, "crop", (lengths - clip + 1).clamp_min(1))


class JamendoSource:
    """Decodes each track when it is drawn and crops a random clip: no preprocessing, but slow (see store)."""

    def __init__(self, tracks: list[JamendoTrack], conds: torch.Tensor, audio_root, audio_suffix: str,
                 mel: MelConfig, stats: MelStats, clip_frames: int, layout: Layout):
        self.tracks, self.cond, self.root, self.suffix = tracks, conds, audio_root, audio_suffix
        self.mel, self.stats, self.clip_frames, self.layout = mel, stats, clip_frames, layout

    def __len__(self) -> int:
        return len(self.tracks)

    def batch(self, indices: torch.Tensor, keys: torch.Tensor) -> Batch:
        clip = self.clip_frames * self.mel.hop_length  # samples
        waves = []
        for i, key in zip(indices.tolist(), keys):
            path = audio_path(self.root, self.tracks[i], self.suffix)
            try:
                wave = load_audio(path, self.mel.sample_rate_hz)
            except AudioReadError as err:
                raise AudioReadError(f"{err} (found while training; build a mel store with `layersync audio "
                                     "prepare`, which decodes every file first and skips bad ones)") from None
            if len(wave) < clip:
                raise AudioReadError(f"{path}: {len(wave)} samples after decoding, fewer than a clip of "
                                     f"{clip}; its DURATION in the TSV is wrong (a mel store skips such "
                                     "tracks)")
            start = int(random_offsets(torch.tensor([len(wave)]), clip, key[None])[0])
            waves.append(torch.from_numpy(wave[start : start + clip]))
        mel = self.stats.normalize(log_mel(torch.stack(waves), self.mel))  # (B, F, clip_frames)
        return Batch(to_model(mel, self.layout), self.cond[indices])


def stats_from_tracks(tracks: list[JamendoTrack], audio_root, audio_suffix: str, mel: MelConfig,
                      max_tracks: int) -> MelStats:
    """Per-bin log-mel statistics of whole tracks, `max_tracks` of them spread evenly over the list."""
    pick = np.unique(np.linspace(0, len(tracks) - 1, min(max_tracks, len(tracks))).round().astype(int))
    acc = MelStatsAccumulator(mel)
    for i in pick:
        acc.add(log_mel(torch.from_numpy(load_audio(audio_path(audio_root, tracks[i], audio_suffix),
                                                    mel.sample_rate_hz)), mel))
    return acc.result()
