"""The labelled held-out set that `layersync audio analyze` and `--align.layersync=auto` probe, in the form
the run's model sees in training: log-mel, normalised with the run's statistics, through the mel-VAE's encoder
when the run has one (the posterior mean s·μ: training draws s·(μ + σε) around it), in the run's layout.

- Synthetic music: the test split, 64 clips of each of the 8 classes (4 timbres × melody/chords).
- MTG-Jamendo: held-out tracks, one clip each at the track's centre, labelled by the run's tag vocabulary
  with the first_tag rule (the first of the track's tags the vocabulary holds; a multi_hot run is probed on
  that tag too, and the task string says so). The tracks: `--probe-data` (analyze) or `data.probe_data`
  (`auto`): a metadata TSV (audio under `data.audio_root`) or a mel store of held-out tracks; by default the
  test split beside the training TSV (`splits/split-N/autotagging-train.tsv` → `autotagging-test.tsv`).
  The first `PROBE_TRACKS` usable tracks in the file's order; tracks with no tag of the vocabulary, shorter
  than a clip, or unreadable are skipped, counted in the task string and logged. Rare tags stay: a class seen
  only in the probes' test part just scores as wrong (`metrics.probes.linear_probe_accuracy`).
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import torch

from ..core.errors import UserFileNotFoundError, UserValueError
from ..metrics.representation import ProbeSet
from .jamendo import JamendoTrack, Skipped, TagVocabulary, audio_path, conditions, read_tsv, stack_conditions
from .layout import to_model
from .mel import MelStats, log_mel
from .run import AudioRecipe, _synth_mels

log = logging.getLogger(__name__)
PROBE_PER_CLASS = 64  # synthetic: 512 clips; a 2:1 split leaves ~43 per class to fit each probe
PROBE_TRACKS = 512  # MTG-Jamendo: one clip per track
_HOW = ("give held-out tracks with --probe-data (analyze) or --data.probe_data (layersync=auto): a metadata "
        "TSV such as splits/split-0/autotagging-test.tsv, or a mel store of one (`layersync audio prepare`)")


def probe_set(cfg: AudioRecipe, stats: MelStats, names: tuple[str, ...], vae=None,
              probe_data: str = "") -> ProbeSet:
    """The run's probe set; `names` is its vocabulary (DomainInfo.names), `vae` its MelVae or None, and
    `probe_data` (analyze's --probe-data) overrides `cfg.data.probe_data`."""
    if cfg.data.source == "synth":
        if probe_data or cfg.data.probe_data:
            raise UserValueError("--probe-data / data.probe_data name MTG-Jamendo tracks; a synthetic-music "
                                 "run probes the synthetic test split: leave them empty")
        mels, labels = _synth_mels(cfg, "test", PROBE_PER_CLASS)
        y = torch.from_numpy(labels.copy()).long()
        return ProbeSet(model_input(mels, cfg, stats, vae), y, y, "synthetic music class")
    source = held_out_tracks(cfg, probe_data or cfg.data.probe_data)
    vocab = TagVocabulary(cfg.data.tags, tuple(names))
    clips, tracks, skipped = (_store_clips if source.is_dir() else _tsv_clips)(cfg, source, vocab)
    if skipped:
        reasons = Counter(s.reason.split(":")[0] for s in skipped)
        log.warning("probe set: skipped %d tracks of %s (%s); first: %s", len(skipped), source,
                    ", ".join(f"{k}: {n}" for k, n in sorted(reasons.items())),
                    "; ".join(f"{s.path}: {s.reason}" for s in skipped[:3]))
    labels = torch.tensor([vocab.class_of(t.tags) for t in tracks], dtype=torch.long)
    if len(labels.unique()) < 2:
        raise UserValueError(f"{source}: {len(tracks)} usable tracks of {len(set(labels.tolist()))} "
                             f"{cfg.data.tags} class(es) ({len(skipped)} skipped); the probes need two "
                             f"classes or more: {_HOW}")
    cond = stack_conditions(conditions(tracks, vocab, cfg.data.conditioning), cfg.data.conditioning)
    rule = "" if cfg.data.conditioning == "first_tag" else "; the run is multi_hot"
    task = (f"first {cfg.data.tags} tag (first_tag rule{rule}) of {len(tracks)} centre clips of "
            f"{source.name}, {len(skipped)} tracks skipped")
    return ProbeSet(model_input(torch.stack(clips), cfg, stats, vae), labels, cond, task)


def model_input(mels: torch.Tensor, cfg: AudioRecipe, stats: MelStats, vae=None) -> torch.Tensor:
    """Raw log-mels (B, F, clip_frames) → what the model sees in training (`run.load_data`)."""
    x = stats.normalize(mels)
    if vae is not None:  # its statistics are the identity: it reads raw log-mels
        x = torch.cat([vae.encode(chunk) for chunk in x.split(64)])  # no keys: s·μ
    return to_model(x, cfg.layout)


def held_out_tracks(cfg: AudioRecipe, probe_data: str) -> Path:
    """`probe_data` if given, else the test TSV beside the training TSV."""
    if probe_data:
        if not Path(probe_data).exists():
            raise UserFileNotFoundError(f"probe data {probe_data}: no such TSV or mel store")
        return Path(probe_data)
    if not cfg.data.tsv:
        raise UserValueError(f"this run reads a mel store ({cfg.data.store}) and names no split to probe; "
                             f"{_HOW}")
    train = Path(cfg.data.tsv)
    at = train.name.rfind("train")
    test = train.with_name(train.name[:at] + "test" + train.name[at + len("train"):]) if at >= 0 else None
    if test is None or not test.is_file():
        raise UserFileNotFoundError(f"data.tsv={train} has no test split beside it "
                                    f"({test or 'a name with train in it'}); {_HOW}")
    return test


def _tsv_clips(cfg: AudioRecipe, tsv: Path, vocab: TagVocabulary):
    """Centre clips of the first usable tracks of `tsv`, cut from the decoded audio as `JamendoSource` cuts
    its random clips: samples first, then the log-mel."""
    from .decode import AudioReadError, load_audio

    d = cfg.data
    if not d.audio_root or not Path(d.audio_root).is_dir():
        raise UserFileNotFoundError(f"data.audio_root={d.audio_root!r}: no such folder; the probe reads the "
                                    f"audio of {tsv} from it")
    clip = cfg.clip_frames * cfg.mel.hop_length  # samples
    from tqdm.auto import tqdm

    waves, tracks, skipped = [], [], []
    # Decoding whole tracks takes minutes: a bar over the probe tracks found so far.
    bar = tqdm(total=PROBE_TRACKS, desc=f"probe clips from {tsv.name}", unit="track", leave=False)
    for track in read_tsv(tsv):
        if len(tracks) == PROBE_TRACKS:
            break
        path = audio_path(d.audio_root, track, d.audio_suffix)
        reason = _no_tag(track, vocab)
        if reason is None:
            try:
                wave = load_audio(path, cfg.mel.sample_rate_hz)
                reason = f"too short: {len(wave)} samples, a clip is {clip}" if len(wave) < clip else None
            except AudioReadError as err:
                reason = f"unreadable: {err}"
        if reason is not None:
            skipped.append(Skipped(track.track_id, str(path), reason))
            continue
        start = (len(wave) - clip) // 2
        waves.append(torch.from_numpy(wave[start:start + clip]))
        tracks.append(track)
        bar.update()
    bar.close()
    mels = [m for chunk in torch.stack(waves).split(64) for m in log_mel(chunk, cfg.mel)] if waves else []
    return mels, tracks, skipped


def _store_clips(cfg: AudioRecipe, folder: Path, vocab: TagVocabulary):
    """Centre clips of the first usable tracks of a mel store, cut as `MelStoreSource` cuts its clips."""
    from .store import MelStore

    store = MelStore(folder)
    if store.mel != cfg.mel:
        raise UserValueError(f"{folder} was built with mel {store.mel.to_dict()}, the run has "
                             f"{cfg.mel.to_dict()}; build the probe store with the run's mel config")
    clips, tracks, skipped = [], [], []
    for i, track in enumerate(store.tracks):
        if len(tracks) == PROBE_TRACKS:
            break
        frames = store.entries[i]["frames"]
        reason = _no_tag(track, vocab)
        if reason is None and frames < cfg.clip_frames:
            reason = f"too short: {frames} frames, a clip is {cfg.clip_frames}"
        if reason is not None:
            skipped.append(Skipped(track.track_id, track.path, reason))
            continue
        clips.append(torch.from_numpy(store.clip(i, (frames - cfg.clip_frames) // 2, cfg.clip_frames)))
        tracks.append(track)
    return clips, tracks, skipped


def _no_tag(track: JamendoTrack, vocab: TagVocabulary) -> str | None:
    return f"no {vocab.category} tag of the run" if vocab.class_of(track.tags) is None else None
