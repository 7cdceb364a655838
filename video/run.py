"""The video recipe's config, presets and hooks, shared by `recipes/video_sit.py` and `layersync video`."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch

from layersync.core.config import checked
from layersync.core.errors import UserFileNotFoundError, UserValueError
from layersync.core.models import DiT
from layersync.core.recipe import AlignSpec, ModelSpec, PathSpec, SampleSpec, build_model
from layersync.core.trainer import TrainConfig
from layersync.video.balls import BallsConfig
from layersync.video.clevrer import ClipSpec

log = logging.getLogger("layersync")

FVD_MIN_FRAMES = 16  # the StyleGAN-V FVD protocol scores 16-frame clips


@dataclass(frozen=True)
@checked(data_limit=">= 0", patch=">= 1", sample_clips=">= 1", eval_clips=">= 0", fps=">= 1",
         upscale=">= 1")
class VideoRecipe:
    """Unconditional SiT on video clips; the default is the embedded balls clips in pixel space."""

    # Sampling and evaluation only: a run may resume with these changed (core.trainer.fingerprint).
    resumable_keys: ClassVar[tuple[str, ...]] = ("sample", "sample_clips", "eval_clips", "fps", "codec", "upscale", "fvd_reference",
                                                 "i3d")

    run_dir: str = "runs/video_sit"
    data: str = ""  # "" = embedded balls; a CLEVRER root (video_00000-01000/…) or a prepared folder
    split: Literal["train", "validation", "test"] = "train"
    clip: ClipSpec = field(default_factory=ClipSpec)  # how CLEVRER videos are cut (real data only)
    data_limit: int = 0  # use the first N CLEVRER videos of the split (0 = all)
    encoding: Literal["pixels", "sd_vae"] = "pixels"
    vae: str = ""  # local SD-VAE folder for encoding=sd_vae (else $LAYERSYNC_WEIGHTS/sd-vae-ft-ema)
    vae_sha256: str = ""  # if set, the VAE weights file must have this sha256
    precompute_latents: bool = True  # False: encode each batch with the VAE while training
    balls: BallsConfig = field(default_factory=BallsConfig)  # the embedded clips (data="")
    patch: tuple[int, int, int] = (2, 4, 4)  # (t, h, w) patch of the 3-D token embedder
    train: TrainConfig = field(default_factory=TrainConfig)
    model: ModelSpec = field(default_factory=ModelSpec)
    path: PathSpec = field(default_factory=PathSpec)
    align: AlignSpec = field(default_factory=AlignSpec)
    sample: SampleSpec = field(default_factory=SampleSpec)
    sample_clips: int = 8  # EMA clips written as MP4 + PNG strip at every sampling
    eval_clips: int = 256  # EMA clips scored at every evaluation (0 = no evaluation)
    fps: int = 8
    codec: Literal["auto", "libx264", "mpeg4"] = "auto"
    upscale: int = 4  # pixel repetition in the MP4s and strips
    fvd_reference: str = ""  # real data: I3D statistics .npz (`video fvd-stats`) or a prepared pixel folder
    i3d: str = ""  # I3D weights file (else $LAYERSYNC_WEIGHTS/i3d_torchscript.pt)


# The default run, sized for 2 CPU cores: a 1.4M-parameter SiT (8 blocks, width 96) on 8 frames of 16×16
# balls, 3-D patches 2×4×4 → 64 spatio-temporal tokens, LayerSync 3←6 over all of them (teacher before the
# last 20% of blocks, student after the first, as the paper advises). It predicts x₀: a token holds
# 2·4·4·3 = 96 pixels at width 96, and velocity (noise-like) targets that wide stay noise in pixel space
# (Li & He 2025, "Back to Basics"); logit-normal times (SD3) help too (docs/design.md has our numbers).
_BALLS = {
    "run_dir": "runs/video_sit", "path.prediction": "x0", "path.time_sampling": "logit_normal",
    "model.preset": "S/2", "model.depth": 8, "model.hidden_size": 96, "model.num_heads": 4,
    "patch": (2, 4, 4), "align.layersync": "3:6", "align.layersync_weight": 0.2,
    "train.total_steps": 800, "train.global_batch_size": 32, "train.lr": 1e-3, "train.warmup_steps": 50,
    "train.ema_decay": 0.995, "train.log_every": 50, "train.ckpt_every": 400, "train.sample_every": 400,
    "train.eval_every": 0, "sample.sampler": "heun", "sample.steps": 16, "eval_clips": 256, "sample_clips": 8,
}

# The paper's setting: SiT-XL/2 from scratch on CLEVRER, 16 frames every 4 at 128×128 as frame-wise SD-VAE
# latents (4 × 16 × 16 × 16), 3-D patches 2×2×2 → 512 tokens, LayerSync 8←16 with λ 0.2 (its SiT-XL pair),
# SiT's optimiser (AdamW 1e-4, batch 256, EMA 0.9999) and its SDE sampler for evaluation.
_CLEVRER_XL = {
    "run_dir": "runs/video_sit_clevrer_xl", "encoding": "sd_vae",
    "clip.num_frames": 16, "clip.frame_stride": 4, "clip.size": 128, "clip.clips_per_video": 0,
    "model.preset": "XL/2", "patch": (2, 2, 2), "align.layersync": "8:16", "align.layersync_weight": 0.2,
    "train.total_steps": 400_000, "train.global_batch_size": 256, "train.lr": 1e-4, "train.ema_decay": 0.9999,
    "train.log_every": 100, "train.ckpt_every": 10_000, "train.sample_every": 10_000,
    "train.eval_every": 50_000,
    "sample.sampler": "sde", "eval_clips": 2048, "sample_clips": 16, "upscale": 1,
}

PRESETS: dict[str, dict[str, object]] = {
    "balls": _BALLS,
    "balls-vanilla": {**_BALLS, "run_dir": "runs/video_sit_vanilla", "align.layersync": ""},
    "clevrer-xl": _CLEVRER_XL,
    "clevrer-xl-vanilla": {**_CLEVRER_XL, "run_dir": "runs/video_sit_clevrer_xl_vanilla",
                           "align.layersync": ""},
}
DEFAULT_PRESET = "balls"


def is_embedded(cfg: VideoRecipe) -> bool:
    return not cfg.data


def load_vae(cfg: VideoRecipe):
    """The frame VAE for encoding=sd_vae (on the GPU when there is one), else None."""
    if cfg.encoding == "pixels":
        return None
    if is_embedded(cfg):
        raise UserValueError("the embedded balls clips are trained in pixel space; leave encoding=pixels or "
                             "give --data=<CLEVRER root>")
    from layersync.video.latents import FrameVAE

    return FrameVAE.from_local(cfg.vae or None, "cuda" if torch.cuda.is_available() else "cpu",
                               expected_sha256=cfg.vae_sha256)


def pin_vae(cfg: VideoRecipe, vae) -> VideoRecipe:
    """The config with the VAE's weights sha256 filled in, so that sampling a checkpoint later refuses another
    VAE (its latents would decode to wrong clips without an error)."""
    if vae is None or cfg.vae_sha256:
        return cfg
    return dataclasses.replace(cfg, vae_sha256=vae.sha256)


def model_shape(cfg: VideoRecipe, vae) -> tuple[int, int, int, int]:
    """(C, T, H, W) the model sees: balls pixels, CLEVRER pixels, or CLEVRER frame latents."""
    if is_embedded(cfg):
        return cfg.balls.shape
    pixels = (3, cfg.clip.num_frames, cfg.clip.size, cfg.clip.size)
    return pixels if vae is None else vae.latent_shape(pixels)


def build_video_model(cfg: VideoRecipe, shape: tuple[int, int, int, int]) -> DiT:
    """An unconditional DiT from `cfg.model` with the 3-D patch `cfg.patch` over (T, H, W)."""
    if cfg.model.patch_size:
        raise UserValueError("video models take a 3-D patch: set --patch=t,h,w instead of --model.patch_size")
    return build_model(cfg.model, shape[1:], shape[0], cond_kind="none", patch_size=tuple(cfg.patch))


def check_evaluation(cfg: VideoRecipe) -> None:
    """Fail at start-up, not after training, when the evaluation at the end could not run."""
    if cfg.eval_clips < 0 or cfg.sample_clips < 1 or cfg.fps < 1 or cfg.upscale < 1:
        raise UserValueError("need eval_clips ≥ 0, sample_clips ≥ 1, fps ≥ 1 and upscale ≥ 1")
    if cfg.eval_clips == 0:
        return
    if is_embedded(cfg):
        from layersync.video.balls_eval import EncoderConfig

        need = EncoderConfig().feature_dim + 1
        if not need <= cfg.eval_clips <= cfg.balls.train_clips:
            raise UserValueError(f"eval_clips={cfg.eval_clips}: fd_balls needs at least {need} clips and "
                                 "compares "
                                 f"with as many train clips (balls.train_clips={cfg.balls.train_clips})")
        return
    from layersync.core.weights import resolve
    from layersync.metrics.i3d import I3D_WEIGHTS
    from layersync.video.evaluate import reference_protocol

    if cfg.clip.num_frames < FVD_MIN_FRAMES:
        raise UserValueError(f"FVD scores {FVD_MIN_FRAMES}-frame clips but clip.num_frames="
                             f"{cfg.clip.num_frames}; use more frames or --eval_clips=0")
    if not cfg.fvd_reference:
        raise UserValueError("evaluating CLEVRER needs --fvd_reference (a prepared pixel folder of real "
                             "clips or "
                         "an I3D statistics .npz from `layersync video fvd-stats`), or --eval_clips=0")
    protocol = reference_protocol(cfg.fvd_reference)
    resolve(I3D_WEIGHTS, cfg.i3d or None)  # MissingWeightsError says where to get it
    if cfg.eval_clips < max(401, protocol.num_gen):
        raise UserValueError(f"eval_clips={cfg.eval_clips}: FVD on 400-d I3D logits needs at least 401 "
                             "clips, "
                             f"and its {protocol.name} protocol scores {protocol.num_gen or 'any number of'} "
                             "clips")


def load_data(cfg: VideoRecipe, vae):
    """The training DataSource for `cfg.data`: embedded balls, or CLEVRER prepared under the run directory."""
    from layersync.core.trainer import TensorSource

    if is_embedded(cfg):
        from layersync.video.balls import balls_clips

        return TensorSource(balls_clips("train", cfg.balls).clips)
    from layersync.video.prepared import EncodedSource, PreparedClips, describe, is_prepared, prepare

    data = Path(cfg.data)
    if not data.exists():
        raise UserFileNotFoundError(f"--data={cfg.data}: no such folder (leave it empty for the embedded "
                                    "balls)")
    if (data / "manifest.json").is_file():  # already prepared
        source = PreparedClips(data)
        spec = source.manifest["spec"]
        if spec != {**spec, **vars(cfg.clip)}:
            raise UserValueError(f"{data} was prepared with clip settings {spec}; set --clip.* to match")
    else:
        precompute = vae is not None and cfg.precompute_latents
        encoding = "sd_vae" if precompute else "pixels"
        folder = Path(cfg.run_dir) / "data" / f"{cfg.split}_{encoding}"
        identity = describe(data, cfg.split, cfg.clip, encoding, cfg.data_limit, vae if precompute else None)
        if not is_prepared(folder, identity):
            shutil.rmtree(folder, ignore_errors=True)  # the run's own copy, made for other settings: remade
            log.info("preparing CLEVRER %s clips (%s) in %s", cfg.split, encoding, folder)
            prepare(data, cfg.split, folder, cfg.clip, encoding, vae if precompute else None, cfg.data_limit)
        source = PreparedClips(folder)
    if source.encoding == "pixels" and vae is not None:
        return EncodedSource(source, vae)
    if source.encoding == "sd_vae" and vae is None:
        raise UserValueError(f"{source.folder} holds SD-VAE latents: set --encoding=sd_vae and --vae")
    if source.encoding == "sd_vae" and source.manifest["vae"]["sha256"] != vae.sha256:
        raise UserValueError(f"{source.folder} was encoded by a VAE with sha256 "
                             f"{source.manifest['vae']['sha256']}, but --vae has {vae.sha256}; "
                             "samples would decode wrongly")
    return source


def generate(model, interpolant, spec: SampleSpec, n: int, shape: tuple[int, ...], seed: int,
             batch_size: int = 128) -> tuple[torch.Tensor, float]:
    """`n` unconditional samples in model space from a fixed seed (in chunks); returns (samples, model
    evaluations per sample, averaged over the chunks: adaptive solvers may take different numbers)."""
    from layersync.core.recipe import sample

    device = next(model.parameters()).device
    out, nfe = [], []
    g = torch.Generator(device=device).manual_seed(seed)
    for lo in range(0, n, batch_size):
        noise = torch.randn((min(batch_size, n - lo), *shape), generator=g, device=device)
        x, k = sample(model, interpolant, noise, None, None, spec, generator=g)  # k batched evaluations
        out.append(x.float().cpu())
        nfe.append(k)
    return torch.cat(out), sum(nfe) / len(nfe)


def to_pixels(x: torch.Tensor, vae) -> torch.Tensor:
    """Model-space samples → clips (N, 3, T, H, W) clamped to [-1, 1]."""
    return (x if vae is None else vae.decode(x)).clamp(-1, 1)


def score(cfg: VideoRecipe, clips: torch.Tensor) -> dict:
    """fd_balls on the embedded data, FVD (I3D) against `cfg.fvd_reference` on real data."""
    if is_embedded(cfg):
        from layersync.video.balls_eval import BallsEvaluator, EncoderConfig

        return BallsEvaluator.load_or_train(EncoderConfig(data=cfg.balls)).evaluate(clips)
    from layersync.video.evaluate import fvd_against
    from layersync.video.media import to_uint8

    return fvd_against(to_uint8(clips), cfg.fvd_reference, cfg.i3d or None)


def make_hooks(cfg: VideoRecipe, interpolant, shape: tuple[int, ...], vae):
    """The trainer's sample_fn (MP4s + PNG strips) and eval_fn (fd_balls or FVD; None if eval_clips = 0)."""
    from layersync.video.media import to_uint8, write_clips

    def sample_fn(ema_model, step: int, run_dir: Path) -> None:
        x, _ = generate(ema_model, interpolant, cfg.sample, cfg.sample_clips, shape, seed=cfg.train.seed)
        folder = Path(run_dir) / "samples" / f"step_{step:08d}"
        codec, _ = write_clips(to_uint8(to_pixels(x, vae)), folder, cfg.fps, cfg.codec, cfg.upscale)
        shutil.copyfile(folder / "strips.png", Path(run_dir) / "samples_ema.png")
        log.info("step %d: %d EMA clips → %s (MP4 codec %s, PNG strips)", step, len(x), folder, codec)

    def eval_fn(ema_model, step: int) -> dict:
        x, nfe = generate(ema_model, interpolant, cfg.sample, cfg.eval_clips, shape, seed=cfg.train.seed + 1)
        result = {**score(cfg, to_pixels(x, vae)), "sampler": cfg.sample.sampler,
                  "nfe_per_sample": nfe, "step": step}
        Path(cfg.run_dir, "eval.json").write_text(json.dumps(jsonable(result), indent=2) + "\n")
        return result

    return sample_fn, (eval_fn if cfg.eval_clips else None)


def jsonable(d: dict) -> dict:
    """numpy and torch scalars/arrays → plain Python, recursively."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            v = jsonable(v)
        elif isinstance(v, (np.floating, np.integer)):
            v = v.item()
        elif isinstance(v, np.ndarray) or torch.is_tensor(v):
            v = v.tolist()
        out[k] = v
    return out
