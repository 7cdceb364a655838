"""The field's SiT checkpoints in and out: willisma/SiT, vita-epfl/LayerSync, sihyun-yu/REPA, vvvvvjdy/SRA.

All four save DiT-named state dicts (`x_embedder.proj`, `t_embedder.mlp`, `y_embedder.embedding_table`,
`blocks.i.{attn.qkv, attn.proj, mlp.fc1, mlp.fc2, adaLN_modulation.1}`, `final_layer.{linear,
adaLN_modulation.1}`) plus the fixed `pos_embed` table (1, N, D), which ours rebuilds from the config. What
differs, read from their code (models.py / models/sit.py, transport/, loss.py, samplers.py, train.py):

    format     file                                    time seen by t_embedder   output        extra keys
    sit        SiT-XL-2-256x256.pt: bare EMA dict;     s = 1 − t (theirs: t = 0  x − ε, learn_σ    —
               train.py: {model, ema, opt, args}       noise, 1 data)            (2C channels)
    layersync  train.py: {model, ema, opt, args}       as SiT                    as SiT        —
    repa       train.py: {model, ema, opt, args,       t (t = 1 noise, as ours)  ε − x, C      projectors.*
               steps}; released last.pt: bare dict
    sra        train.py: {model, ema, opt, args,       t (REPA's code)           ε − x, C      ap_head.*
               epoch, steps}

So a reference's weights give its velocity field in our convention (t = 1 noise, v = ε − x) with the time
input set per format (`DiTConfig.time_input`: "reversed" for sit/layersync, "continuous" for repa/sra) and,
for sit/layersync, the output negated: v(x, t) = −u_SiT(x, 1 − t), folded into `final_layer.linear` (negation
is exact, so import and export are bit-exact inverses). The learned-σ half of the output (SiT's forward
discards it) is dropped on import and written as zeros on export. Projectors and the SRA head are
training-only and dropped.

Files are read with `torch.load(weights_only=True)` and one allowed class, argparse.Namespace (their `args`),
so a file holding any other pickled object is refused before anything in it runs.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
from pathlib import Path
from typing import Any, Literal

import torch

from ..core.checkpoint import CheckpointError
from ..core.errors import UserFileNotFoundError, UserValueError
from ..core.models import PRESETS, DiT, DiTConfig

Format = Literal["sit", "layersync", "repa", "sra"]
FORMATS: tuple[str, ...] = ("sit", "layersync", "repa", "sra")
EXPORT_FORMATS: tuple[str, ...] = ("sit", "repa")
TIME_INPUT = {"sit": "reversed", "layersync": "reversed", "repa": "continuous", "sra": "continuous"}
_SIGN = {"sit": -1.0, "layersync": -1.0, "repa": 1.0, "sra": 1.0}  # our velocity = sign · their output
_TRAINING_ONLY = {"sit": (), "layersync": (), "repa": ("projectors.",), "sra": ("ap_head.",)}
# Heads are not in the tensors; DiT/SiT's presets fix them by width (S 6, B 12, L 16, XL 16).
HEADS_BY_WIDTH = {p["hidden_size"]: p["num_heads"] for p in PRESETS.values()}
# REPA's generate.py builds its projectors from --projector-embed-dims (768 for the released DINOv2-B model,
# projector_dim 2048) and loads strictly: an export carries zero projectors of that shape.
REPA_PROJECTOR = (2048, 768)
_ALLOWED = [argparse.Namespace]
_POS_TOLERANCE = 1e-5  # |theirs − our sin-cos table|; both are float64 tables rounded to float32


def read_weights_only(path: str | os.PathLike) -> Any:
    """`torch.load(path, weights_only=True)` allowing argparse.Namespace; other objects are refused unrun."""
    path = Path(path)
    if not path.is_file():
        raise UserFileNotFoundError(f"reference checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals(_ALLOWED):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(f"{path} holds a pickled object{what} that weights-only loading refuses: "
                              "reference checkpoints hold tensors, numbers, strings and argparse.Namespace "
                              "only, and this loader never runs code from a file") from None
    except Exception as e:  # torch raises several types for a truncated or foreign file
        raise CheckpointError(f"{path} is not a readable torch checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(torch.is_tensor(v) for v in obj.values())


def reference_state_dict(obj: Any, path: str | os.PathLike, use_ema: bool = True) -> dict[str, torch.Tensor]:
    """The weights inside a loaded reference file: a bare state dict, or train.py's "ema" ("model" with
    use_ema=False) entry."""
    if _is_state_dict(obj):
        if not use_ema:
            raise CheckpointError(f"{path} is a bare state dict (a released EMA model); use_ema=False needs "
                                  "a train.py checkpoint holding both 'model' and 'ema'")
        return obj
    key = "ema" if use_ema else "model"
    if isinstance(obj, dict) and _is_state_dict(obj.get(key)):
        return obj[key]
    keys = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
    raise CheckpointError(f"{path} is neither a bare state dict nor a train.py dict holding the '{key}' "
                          f"state dict (found {keys})")


def _need(sd: dict[str, torch.Tensor], key: str, path) -> torch.Tensor:
    if key not in sd:
        raise CheckpointError(f"{path} has no '{key}': not a SiT/DiT-style state dict")
    return sd[key]


def infer_config(sd: dict[str, torch.Tensor], path, time_input: str,
                 num_heads: int | None = None) -> tuple[DiTConfig, bool]:
    """(DiTConfig, learn_sigma) from the tensors: width and tokens from pos_embed, patch and channels from
    the patch conv, depth from the block keys, classes from the label table, learn_sigma from the output."""
    conv = _need(sd, "x_embedder.proj.weight", path)  # (D, C, p, p)
    pos = _need(sd, "pos_embed", path)  # (1, N, D)
    table = _need(sd, "y_embedder.embedding_table.weight", path)  # (classes + 1, D): last row = null class
    out = _need(sd, "final_layer.linear.weight", path)  # (p²·C or p²·2C, D)
    fc1 = _need(sd, "blocks.0.mlp.fc1.weight", path)  # (mlp_ratio·D, D)
    if conv.ndim != 4 or conv.shape[2] != conv.shape[3] or pos.ndim != 3:
        raise CheckpointError(f"{path}: x_embedder.proj.weight {tuple(conv.shape)} and pos_embed "
                              f"{tuple(pos.shape)} are not a square-patch 2-D SiT's")
    width, channels, patch = conv.shape[0], conv.shape[1], conv.shape[2]
    side = round(pos.shape[1] ** 0.5)
    if side * side != pos.shape[1] or pos.shape[2] != width:
        raise CheckpointError(f"{path}: pos_embed {tuple(pos.shape)} is not a square grid of width {width}")
    if any(".q_norm." in k or ".k_norm." in k for k in sd):
        raise CheckpointError(f"{path} was trained with --qk-norm (timm's LayerNorm, eps 1e-5), which this "
                              "loader does not map; retrain or load it in the reference code")
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    if any(k.startswith("decoder_blocks.") for k in sd):
        raise CheckpointError(f"{path} uses REPA's legacy 'decoder_blocks' keys; convert it with REPA's "
                              "load_legacy_checkpoints (generate.py --legacy) first")
    out_channels = out.shape[0] // (patch * patch)
    if out_channels not in (channels, 2 * channels) or out.shape[0] % (patch * patch):
        raise CheckpointError(f"{path}: final_layer.linear.weight {tuple(out.shape)} gives neither "
                              f"{channels} nor {2 * channels} (learn_sigma) channels per patch of {patch}²")
    if num_heads is None:
        if width not in HEADS_BY_WIDTH:
            raise CheckpointError(f"{path}: width {width} is not a SiT preset's ({sorted(HEADS_BY_WIDTH)}); "
                                  "pass num_heads")
        num_heads = HEADS_BY_WIDTH[width]
    config = DiTConfig(input_size=(side * patch, side * patch), in_channels=channels, patch_size=patch,
                       depth=depth, hidden_size=width, num_heads=num_heads, mlp_ratio=fc1.shape[0] / width,
                       cond_kind="class", num_classes=table.shape[0] - 1, time_input=time_input)
    return config, out_channels == 2 * channels


def _check_positions(pos: torch.Tensor, model: DiT, path) -> None:
    """Their fixed table must be ours: the positions are rebuilt from the config, never stored here."""
    gap = (pos.double() - model.pos_embed.double()).abs().max().item()
    if gap > _POS_TOLERANCE:
        raise CheckpointError(f"{path}: pos_embed differs from the sin-cos table by {gap:.2e} (> "
                              f"{_POS_TOLERANCE}): not a fixed-position SiT")


def load_reference_checkpoint(path: str | os.PathLike, format: Format, num_heads: int | None = None,
                              use_ema: bool = True) -> DiT:
    """An eval-mode DiT holding a SiT/LayerSync/REPA/SRA checkpoint's weights and predicting the velocity
    in our convention (t = 1 noise, v = ε − x); the architecture comes from the tensors."""
    if format not in FORMATS:
        raise UserValueError(f"format must be one of {FORMATS}, got {format!r}")
    return model_from_reference(reference_state_dict(read_weights_only(path), path, use_ema), format, path,
                                num_heads)


def model_from_reference(sd: dict[str, torch.Tensor], format: Format, path,
                         num_heads: int | None = None) -> DiT:
    """`load_reference_checkpoint` on a state dict already read (`path` names it in errors)."""
    sd = {k: v for k, v in sd.items() if not k.startswith(_TRAINING_ONLY[format])}
    config, learn_sigma = infer_config(sd, path, TIME_INPUT[format], num_heads)
    model = DiT(config)
    _check_positions(sd.pop("pos_embed"), model, path)
    weight, bias = sd["final_layer.linear.weight"], sd["final_layer.linear.bias"]
    if learn_sigma:  # per token the output is (p, p, 2C), channels fastest: keep the first C of each
        p2, c = config.patch_size[0] * config.patch_size[1], config.in_channels
        weight = weight.reshape(p2, 2 * c, -1)[:, :c].reshape(p2 * c, -1)
        bias = bias.reshape(p2, 2 * c)[:, :c].reshape(p2 * c)
    sign = _SIGN[format]
    sd["final_layer.linear.weight"], sd["final_layer.linear.bias"] = weight * sign, bias * sign
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit a {format} SiT of depth {config.depth}, width "
                              f"{config.hidden_size}: missing {missing[:6]}, unexpected {unexpected[:6]}")
    return model.eval()


def reference_export_state(model: DiT, format: Literal["sit", "repa"], learn_sigma: bool = True) -> dict:
    """What `export_reference_checkpoint` writes: SiT's bare state dict (learn_sigma: 2C output channels, σ
    half zero) or REPA's {"ema": state dict with zero projectors}, both with pos_embed."""
    if format not in EXPORT_FORMATS:
        raise UserValueError(f"export format must be one of {EXPORT_FORMATS}, got {format!r}")
    cfg = model.config
    if cfg.time_input != TIME_INPUT[format]:
        other = "sit" if cfg.time_input == "reversed" else "repa" if cfg.time_input == "continuous" else None
        hint = f"; export it with --format {other}" if other else (
            "; train with an sit-* preset (reversed) or a -repa/-sra preset (continuous)")
        raise UserValueError(f"--format {format} needs a model with time_input={TIME_INPUT[format]!r}, this "
                             f"one has {cfg.time_input!r}{hint}")
    if cfg.cond_kind != "class" or len(cfg.input_size) != 2 or len(set(cfg.patch_size)) != 1 \
            or cfg.input_size[0] != cfg.input_size[1] or cfg.qk_norm:
        raise UserValueError(f"{format} holds square 2-D class-conditional SiTs without qk_norm; this model "
                             f"has input {cfg.input_size}, patch {cfg.patch_size}, cond {cfg.cond_kind!r}, "
                             f"qk_norm {cfg.qk_norm}")
    sd = {k: v.detach().float().cpu().clone() for k, v in model.state_dict().items()}
    sd["pos_embed"] = model.pos_embed.detach().float().cpu().clone()
    weight = sd["final_layer.linear.weight"] * _SIGN[format]
    bias = sd["final_layer.linear.bias"] * _SIGN[format]
    if format == "sit" and learn_sigma:
        p2, c = cfg.patch_size[0] * cfg.patch_size[1], cfg.in_channels
        weight = torch.cat([weight.reshape(p2, c, -1), torch.zeros_like(weight).reshape(p2, c, -1)], 1)
        bias = torch.cat([bias.reshape(p2, c), torch.zeros_like(bias).reshape(p2, c)], 1)
        weight, bias = weight.reshape(2 * p2 * c, -1), bias.reshape(2 * p2 * c)
    sd["final_layer.linear.weight"], sd["final_layer.linear.bias"] = weight, bias
    if format == "sit":
        return sd
    hidden, z_dim = REPA_PROJECTOR
    shapes = {"0": (hidden, cfg.hidden_size), "2": (hidden, hidden), "4": (z_dim, hidden)}
    for i, shape in shapes.items():
        sd[f"projectors.0.{i}.weight"] = torch.zeros(shape)
        sd[f"projectors.0.{i}.bias"] = torch.zeros(shape[0])
    return {"ema": sd}


def export_reference_checkpoint(model: DiT, format: Literal["sit", "repa"], path: str | os.PathLike,
                                learn_sigma: bool = True) -> Path:
    """Write `model` as a file the reference's own sampling script loads (SiT's sample.py / sample_ddp.py,
    REPA's generate.py --ckpt with --projector-embed-dims=768)."""
    from ..core.checkpoint import atomic_save

    atomic_save(reference_export_state(model, format, learn_sigma), path)
    return Path(path)
