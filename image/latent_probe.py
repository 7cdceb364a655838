"""The labelled set `layersync image analyze` and `--align.layersync=auto` probe on a latents run.

A prepared folder (`layersync image prepare`) stores each image's class. The probe reads `--probe-data`
(analyze) or `probe_data` (`auto`): a folder prepared from held-out images with the run's VAE, e.g. ImageNet's
validation set in class folders; without one, the run's own training folder, and the task string says that
it is training data. Selection, small and deterministic: the classes present, sorted; when there are more
than MAX_EXAMPLES // PER_CLASS, that many of them evenly spaced over the list; of each, its first PER_CLASS
items in storage order. (The analysis keeps every token's mean for the probes and, for CKA, the tokens
that fit its memory budget: metrics.representation.kept_tokens.)

What the model sees: training draws z = s · (μ + σ ε) from the stored moments of the image or of its mirror
(`latents.LatentSource`); the probe takes the unmirrored image's posterior mean z = s · μ, the same scale
without the draw, so that the set is a fixed function of the folder.
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.errors import UserValueError
from ..metrics.representation import ProbeSet
from .latents import LatentIndex
from .vae import sample_latents

PER_CLASS, MAX_EXAMPLES = 16, 512


def latent_probe_set(cfg, probe_data: str = "") -> ProbeSet:
    """The probe set of an `ImageRecipe` with dataset=latents; `probe_data` overrides `cfg.probe_data`."""
    held_out = probe_data or cfg.probe_data
    if not (held_out or cfg.data):
        raise UserValueError("dataset=latents needs --data=FOLDER (from `layersync image prepare`) to probe")
    index = LatentIndex.load(held_out or cfg.data)
    _check(index, cfg)
    labels = np.concatenate([np.load(index.root / name / "labels.npy") for name in index.shard_names])
    pick = select(labels)
    classes = np.unique(labels[pick])
    if len(classes) < 2:
        raise UserValueError(f"{index.root} holds {len(classes)} class; the probes need two or more: give a "
                             "prepared folder of held-out images with --probe-data (analyze) or --probe_data")
    moments = torch.from_numpy(_rows(index, pick))  # (B, 2C, h, w)
    x = sample_latents(moments, index.scaling_factor, torch.zeros(len(pick), *index.latent_shape))  # s·μ
    y = torch.from_numpy(labels[pick]).long()
    origin = "held out" if held_out else "the run's training data"
    task = (f"class, {len(pick)} latents ({len(classes)} classes × ≤ {PER_CLASS}) of {index.root.name}, "
            f"{origin}")
    return ProbeSet(x, y, y, task)


def select(labels: np.ndarray) -> np.ndarray:
    """Sorted global indices: ≤ PER_CLASS first items of each of ≤ MAX_EXAMPLES // PER_CLASS classes."""
    classes = np.unique(labels)
    spread = np.linspace(0, len(classes) - 1, min(len(classes), MAX_EXAMPLES // PER_CLASS))
    chosen = classes[np.unique(spread.round().astype(int))]
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[:PER_CLASS] for c in chosen]))


def _rows(index: LatentIndex, pick: np.ndarray) -> np.ndarray:
    """Stored moments of the sorted global items `pick`, shard by shard (memory-mapped)."""
    starts = np.cumsum((0,) + index.shard_counts)
    parts = []
    for s, name in enumerate(index.shard_names):
        local = pick[(pick >= starts[s]) & (pick < starts[s + 1])] - starts[s]
        if len(local):
            parts.append(np.load(index.root / name / "moments.npy", mmap_mode="r")[local])
    return np.concatenate(parts).astype(np.float32)


def _check(index: LatentIndex, cfg) -> None:
    """The probe folder must hold latents of the run's VAE, shape and classes."""
    from .run import LATENT_CHANNELS, model_shape

    expected = (LATENT_CHANNELS, *model_shape(cfg)[0])
    if tuple(index.latent_shape) != expected or index.num_classes != cfg.num_classes:
        raise UserValueError(f"{index.root} holds latents {list(index.latent_shape)} of {index.num_classes} "
                             f"classes; the run needs {list(expected)} of {cfg.num_classes}: prepare it with "
                             "the run's --image-size from a source with the same class folders")
    # The run's VAE: the one it names, else the one its training folder recorded.
    run_sha = cfg.vae_sha256 or (LatentIndex.load(cfg.data).vae_weights_sha256 if cfg.data else "")
    if run_sha and index.vae_weights_sha256 != run_sha:
        raise UserValueError(f"{index.root} was encoded by the VAE with sha256 {index.vae_weights_sha256}, "
                             f"the run by {run_sha}; prepare it with the run's --vae")
    if not index.num_items:
        raise UserValueError(f"{index.root} holds no encoded images")
