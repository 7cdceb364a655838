"""The labelled held-out set that `layersync audio analyze` and `--align.layersync=auto` probe: the synthetic
test split (8 classes: 4 timbres × melody/chords), normalised and laid out as the run's model sees it."""

from __future__ import annotations

import torch

from layersync.audio.layout import to_model
from layersync.audio.mel import MelStats
from layersync.audio.run import AudioRecipe, _synth_mels
from layersync.core.errors import UserValueError
from layersync.metrics.representation import ProbeSet

PROBE_PER_CLASS = 64  # 512 clips: a 2:1 split leaves ~43 per class to fit each probe


def probe_set(cfg: AudioRecipe, stats: MelStats) -> ProbeSet:
    if cfg.data.source != "synth" or cfg.vae:
        raise UserValueError("analyze and --align.layersync=auto probe the synthetic music's classes; a "
                             "Jamendo or mel-VAE run has no such set here: give the pair by hand (e.g. "
                             "--align.layersync=4:8)")
    mels, labels = _synth_mels(cfg, "test", PROBE_PER_CLASS)
    y = torch.from_numpy(labels.copy()).long()
    return ProbeSet(to_model(stats.normalize(mels), cfg.layout), y, y, "synthetic music class")
