"""The labelled held-out set that `layersync video analyze` and `--align.layersync=auto` probe: the embedded
balls' test clips, labelled by their number of balls (the model is unconditional)."""

from __future__ import annotations

from layersync.core.errors import UserValueError
from layersync.metrics.representation import ProbeSet
from layersync.video.run import VideoRecipe, is_embedded


def probe_set(cfg: VideoRecipe) -> ProbeSet:
    if not is_embedded(cfg):
        raise UserValueError("analyze and --align.layersync=auto need a label per clip, which only the "
                             "embedded balls have here (the CLEVRER pipeline reads the videos, not their "
                             "annotations): give the pair by hand, e.g. --align.layersync=8:16")
    from layersync.video.balls import balls_clips

    clips = balls_clips("test", cfg.balls)
    return ProbeSet(clips.clips, clips.count - 1, None, "number of balls")
