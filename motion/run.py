"""The motion recipe's config, presets, data and hooks (`recipes/motion_mdm.py`, `layersync motion`)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch

from layersync.core.checkpoint import default_cache_dir
from layersync.core.config import checked
from layersync.core.errors import UserFileNotFoundError, UserValueError
from layersync.core.recipe import AlignSpec, ModelSpec, PathSpec
from layersync.core.trainer import TrainConfig
from layersync.motion.evaluator import EvaluatorConfig
from layersync.motion.generate import MotionSampleSpec
from layersync.motion.t2m_eval import T2MEvalSpec

log = logging.getLogger("layersync")


@dataclass(frozen=True)
@checked(depth=">= 1", hidden_size=">= 1", num_heads=">= 1", ff_size=">= 1", dropout="[0, 1)",
         cond_dropout="[0, 1)")
class MDMSpec:
    """MDM's shape (paper: 8 layers, width 512, 4 heads, feed-forward 1024, dropout 0.1, text dropped 10%)."""

    depth: int = 8
    hidden_size: int = 512
    num_heads: int = 4
    ff_size: int = 1024
    dropout: float = 0.1
    cond_dropout: float = 0.1
    identical_init: bool = True  # MDM: its 8 layers start as copies of one (nn.TransformerEncoder)
    attend_padding: bool = True  # MDM: attention reads padded frames; False = its --mask_frames


@dataclass(frozen=True)
@checked(max_frames=">= 1", min_frames=">= 1", sample_prompts=">= 0")
class MotionRecipe:
    """Text-to-motion diffusion; the default is the embedded synthetic set, `--data` a HumanML3D folder."""

    # Sampling and evaluation only: a run may resume with these changed (core.trainer.fingerprint).
    resumable_keys: ClassVar[tuple[str, ...]] = ("sample", "sample_prompts", "eval", "evaluator", "embedded_evaluator",
                                                 "t2m_evaluator", "t2m_glove", "t2m_meta")

    run_dir: str = "runs/motion_mdm"
    data: str = ""  # "" = the embedded synthetic set; a path = a HumanML3D folder
    backbone: Literal["mdm", "dit"] = "mdm"
    max_frames: int = 196
    min_frames: int = 40
    text_encoder: Literal["clip", "minilm"] = "clip"
    text_encoder_path: str = ""  # CLIP: a transformers folder of openai/clip-vit-base-patch32
    train: TrainConfig = field(default_factory=TrainConfig)
    mdm: MDMSpec = field(default_factory=MDMSpec)
    model: ModelSpec = field(default_factory=lambda: ModelSpec(preset="S/2", patch_size=1))  # backbone=dit
    path: PathSpec = field(default_factory=lambda: PathSpec(path="vp_cosine", prediction="x0"))
    align: AlignSpec = field(default_factory=AlignSpec)
    sample: MotionSampleSpec = field(default_factory=MotionSampleSpec)
    eval: T2MEvalSpec = field(default_factory=T2MEvalSpec)
    evaluator: Literal["t2m", "embedded"] = "t2m"  # T2M's released model, or one trained here on `data`
    embedded_evaluator: EvaluatorConfig = field(default_factory=EvaluatorConfig)
    t2m_evaluator: str = ""  # T2M's finest.tar (or $LAYERSYNC_WEIGHTS)
    t2m_glove: str = ""  # folder of our_vab_data.npy, our_vab_words.pkl, our_vab_idx.pkl
    t2m_meta: str = ""  # folder of the evaluator's mean.npy and std.npy
    sample_prompts: int = 4  # test captions rendered as MP4 by each sampling hook


# The paper's setting (MDM on HumanML3D, 600K steps of batch 64 at lr 1e-4). LayerSync's pair scales the
# SiT-XL choice 8←16 of 28 blocks to 8 layers (student ≈ 0.29·depth, teacher ≈ 0.57·depth): 2←5; the
# teacher stays out of the last 20% of blocks and the student is not the first.
_HUMANML3D = {
    "run_dir": "runs/motion_mdm_humanml3d", "max_frames": 196, "min_frames": 40, "text_encoder": "clip",
    "evaluator": "t2m",
    "align.layersync": "2:5", "align.layersync_weight": 0.2,
    "train.total_steps": 600_000, "train.global_batch_size": 64, "train.lr": 1e-4, "train.grad_clip": 0.0,
    "train.log_every": 100, "train.ckpt_every": 50_000, "train.sample_every": 50_000,
    "sample.sampler": "ddpm", "sample.steps": 1000, "sample.cfg_scale": 2.5,
    # MDM's eval_humanml.py wo_mm (t2m_eval.MDM_WO_MM); `layersync motion evaluate --protocol=mdm-mm` adds MM.
    "eval.protocol": "mdm", "eval.num_texts": 1024, "eval.mm_texts": 0,
}
# The default run, sized for 2 CPU cores: a 0.7M-parameter MDM (8 layers, width 96) on ≤ 64-frame clips
# of the embedded set, MiniLM captions, dropout off (CPU Bernoulli draws cost ~half the step), 1400 steps
# of batch 32 (~0.31 s each on one core), DDIM 20 steps, and a 3-replication T2M protocol on 128 test
# captions with the embedded evaluator.
_EMBEDDED = {
    "run_dir": "runs/motion_mdm", "max_frames": 64, "min_frames": 40, "text_encoder": "minilm",
    "evaluator": "embedded",
    "mdm.hidden_size": 96, "mdm.ff_size": 192, "mdm.dropout": 0.0,
    "mdm.identical_init": False, "mdm.attend_padding": False,  # as when its README numbers were measured
    "align.layersync": "2:5", "align.layersync_weight": 0.2,
    "train.total_steps": 1400, "train.global_batch_size": 32, "train.lr": 1e-3, "train.warmup_steps": 50,
    "train.ema_decay": 0.995, "train.log_every": 50, "train.ckpt_every": 500, "train.sample_every": 0,
    "train.eval_every": 0, "sample.sampler": "ddim", "sample.steps": 20, "sample.cfg_scale": 2.5,
    "eval.replications": 3, "eval.num_texts": 128, "eval.mm_texts": 4, "eval.mm_repeats": 11,
    "eval.diversity_pairs": 100, "sample_prompts": 3,
}
PRESETS: dict[str, dict[str, object]] = {
    "embedded": _EMBEDDED,
    "embedded-vanilla": {**_EMBEDDED, "run_dir": "runs/motion_mdm_vanilla", "align.layersync": ""},
    "embedded-dit": {**_EMBEDDED, "run_dir": "runs/motion_dit", "backbone": "dit", "model.depth": 8,
                     "model.hidden_size": 96, "model.num_heads": 4},
    "humanml3d": _HUMANML3D,
    "humanml3d-vanilla": {**_HUMANML3D, "run_dir": "runs/motion_mdm_humanml3d_vanilla",
                          "align.layersync": ""},
    "humanml3d-dit": {**_HUMANML3D, "run_dir": "runs/motion_dit_humanml3d", "backbone": "dit",
                      "align.layersync": "3:7"},
}
DEFAULT_PRESET = "embedded"
TEXT_DIMS = {"clip": 512, "minilm": 384}  # CLIP ViT-B/32's projection, MiniLM-L6's width


def embedded_folder() -> Path:
    """The embedded set in the HumanML3D layout, synthesised once into the cache (keyed by its code)."""
    from layersync.motion import features, skeleton, synthetic

    h = hashlib.sha256()
    for module in (synthetic, features, skeleton):
        h.update(Path(module.__file__).read_bytes())
    folder = default_cache_dir() / f"motion_synthetic-{h.hexdigest()[:16]}"
    if not (folder / "Std.npy").is_file():
        log.info("synthesising the embedded motion set into %s", folder)
        tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        synthetic.write_dataset(tmp)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished first: keep its copy
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def data_folder(cfg: MotionRecipe) -> Path:
    if not cfg.data:
        return embedded_folder()
    if not Path(cfg.data).is_dir():
        raise UserFileNotFoundError(f"--data={cfg.data}: no such HumanML3D folder (leave it empty for the "
                                    "embedded set)")
    return Path(cfg.data)


@dataclass
class MotionData:
    """What training, sampling and evaluation share: splits, normalisation, the frozen text encoder and its
    table of caption embeddings (every caption of the loaded splits, encoded once)."""

    train: object  # MotionSet or None
    test: object  # MotionSet or None
    mean: np.ndarray  # (263,) Mean.npy of the folder
    std: np.ndarray  # (263,) Std.npy
    encoder: object  # TextEncoder
    rows: dict[str, int]
    table: torch.Tensor  # (C, D)

    def denormalize(self, x: np.ndarray) -> np.ndarray:
        """Model space → HumanML3D features."""
        return x * self.std + self.mean

    def embed(self, texts: list[str]) -> torch.Tensor:
        """(N, D) text features: table rows for known captions, the encoder for new ones."""
        missing = sorted({t for t in texts if t not in self.rows})
        fresh = dict(zip(missing, self.encoder.encode(missing))) if missing else {}
        return torch.stack([self.table[self.rows[t]] if t in self.rows else fresh[t] for t in texts])


def load_data(cfg: MotionRecipe, splits: tuple[str, ...] = ("train", "test")) -> MotionData:
    """The splits asked for (none: just the normalisation, for sampling prompts) and the text encoder."""
    from layersync.motion.humanml3d import load_split, read_mean_std
    from layersync.motion.text import embed_captions, load_text_encoder

    folder = data_folder(cfg)
    encoder = load_text_encoder(cfg.text_encoder, cfg.text_encoder_path)
    sets = {s: load_split(folder, s, cfg.min_frames, cfg.max_frames) for s in splits}
    mean, std = read_mean_std(folder)
    texts = [c.text for s in sets.values() for item in s.items for c in item.captions]
    rows, table = embed_captions(encoder, texts) if texts else ({}, torch.zeros(0, encoder.dim))
    return MotionData(sets.get("train"), sets.get("test"), mean, std, encoder, rows, table)


def build_backbone(cfg: MotionRecipe, text_dim: int) -> torch.nn.Module:
    """MDM, or the core DiT over 1-D frame tokens (patch 1: one token per frame)."""
    from layersync.motion.features import FEATURE_DIM

    if cfg.backbone == "mdm":
        from layersync.motion.mdm import MDM, MDMConfig

        m = cfg.mdm
        return MDM(MDMConfig(text_dim=text_dim, max_frames=cfg.max_frames, depth=m.depth,
                             hidden_size=m.hidden_size, num_heads=m.num_heads, ff_size=m.ff_size,
                             dropout=m.dropout, cond_dropout=m.cond_dropout, identical_init=m.identical_init,
                             attend_padding=m.attend_padding))
    if cfg.backbone == "dit":
        from layersync.core.recipe import build_model

        return build_model(cfg.model, (cfg.max_frames,), FEATURE_DIM, cond_kind="text", text_dim=text_dim)
    raise UserValueError(f"backbone={cfg.backbone!r}; choose mdm or dit")


def build_evaluator(cfg: MotionRecipe, data: MotionData):
    """T2M's released evaluator, or the embedded one trained (once, cached) on the training split."""
    if cfg.evaluator == "embedded":
        from layersync.motion.evaluator import EmbeddedEvaluator

        return EmbeddedEvaluator.load_or_train(data.train, cfg.embedded_evaluator)
    from layersync.motion.t2m_eval import T2MPretrained

    return T2MPretrained(cfg.t2m_evaluator, cfg.t2m_glove, cfg.t2m_meta)


def make_generate_fn(cfg: MotionRecipe, model, interpolant, data: MotionData, spec: MotionSampleSpec):
    """(captions, lengths, seed, keep_padding) → HumanML3D features (denormalised), for the T2M protocol and
    the CLI; `keep_padding` keeps the frames past each length (MDM's evaluation)."""
    from layersync.motion.generate import generate

    def generate_fn(captions, lengths, seed: int, keep_padding: bool = False) -> list[np.ndarray]:
        text = data.embed([c.text for c in captions])
        out = generate(model, interpolant, spec, text, torch.as_tensor(lengths), cfg.max_frames, seed,
                       keep_padding=keep_padding)
        return [data.denormalize(x) for x in out]

    return generate_fn


def slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:limit] or "motion"


def write_motion(features: np.ndarray, caption: str, folder: Path, stem: str) -> dict:
    """Features (T, 263), joints (T, 22, 3) and a stick-figure MP4 of one motion; returns the paths."""
    from layersync.motion.features import features_to_joints
    from layersync.motion.render import write_stick_mp4

    folder.mkdir(parents=True, exist_ok=True)
    joints = features_to_joints(torch.from_numpy(np.asarray(features, dtype=np.float64))).float().numpy()
    paths = {"features": folder / f"{stem}_features.npy", "joints": folder / f"{stem}_joints.npy",
             "mp4": folder / f"{stem}.mp4"}
    np.save(paths["features"], features.astype(np.float32))
    np.save(paths["joints"], joints)
    paths["codec"] = write_stick_mp4(joints, paths["mp4"], title=caption)
    return paths


def make_hooks(cfg: MotionRecipe, interpolant, data: MotionData, evaluator):
    """The trainer's sample_fn (MP4s of fixed test captions) and eval_fn (the T2M protocol).

    The evaluator is built before training, so missing evaluator files fail at start-up, not at the end.
    """
    from layersync.motion.humanml3d import crop_length
    from layersync.motion.t2m_eval import run_protocol

    spread = np.linspace(0, len(data.test.items) - 1, cfg.sample_prompts).astype(int)  # fixed test items
    prompts = [data.test.items[i] for i in spread]

    def sample_fn(ema_model, step: int, run_dir: Path) -> None:
        generate_fn = make_generate_fn(cfg, ema_model, interpolant, data, cfg.sample)
        captions = [item.captions[0] for item in prompts]
        lengths = [crop_length(item.length, cfg.max_frames, random=False) for item in prompts]
        folder = Path(run_dir) / "samples" / f"ema_step_{step:08d}"
        for k, (caption, feats) in enumerate(zip(captions, generate_fn(captions, lengths, cfg.train.seed))):
            write_motion(feats, caption.text, folder, f"{k}_{slug(caption.text)}")

    def eval_fn(ema_model, step: int) -> dict:
        generate_fn = make_generate_fn(cfg, ema_model, interpolant, data, cfg.sample)
        result = run_protocol(data.test, evaluator, generate_fn, cfg.eval, cfg.max_frames)
        result.update(step=step, sampler=cfg.sample.sampler, sample_steps=cfg.sample.steps,
                      cfg_scale=cfg.sample.cfg_scale, text_encoder=data.encoder.describe(),
                      metric="T2M protocol (R-precision, FID, matching, diversity, multimodality) under "
                             + result["evaluator"])
        Path(cfg.run_dir, "eval.json").write_text(json.dumps(result, indent=2) + "\n")
        return result

    return sample_fn, eval_fn
