"""A diffusers transformer behind this project's backbone call, with LoRA, so the Trainer drives it unchanged.

    backbone = DiffusersBackbone(DiTTransformer2DModel.from_pretrained(path), "dit")
    add_lora(backbone, 16, 16.0, ("to_q", "to_k", "to_v", "to_out.0"))   # peft LoRA; the base frozen
    out = backbone(x_t, t, labels, capture=(8, 16))           # ModelOutput(pred, hidden={8: …, 16: …})

The blocks' outputs are read with `capture_blocks` (no change to diffusers' code). Time follows DESIGN §2
(t ∈ [0, 1], t = 1 is noise) and reaches the transformer as 1000·t: Wan was trained on flow-matching σ·1000
(our linear path, velocity v = ε − x), DiT-XL-2 on DDPM steps 0…999 of the linear-β schedule, whose continuous
limit is our "vp" path (noise prediction: `--path.path=vp --path.prediction=noise`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from .capture import capture_blocks
from .errors import UserFileNotFoundError, UserValueError
from .models import ModelOutput

Family = Literal["dit", "wan"]
TIME_SCALE = 1000.0  # diffusers transformers embed timesteps on a 0…1000 scale


@dataclass(frozen=True)
class FamilySpec:
    """Where a diffusers family keeps its blocks (numbered from 1 in this order) and how it is conditioned."""

    class_name: str
    blocks: str  # attribute holding the nn.ModuleList of blocks
    cond: Literal["class", "text"]


FAMILIES: dict[str, FamilySpec] = {
    "dit": FamilySpec("DiTTransformer2DModel", "transformer_blocks", "class"),  # blocks return (B, N, D)
    "wan": FamilySpec("WanTransformer3DModel", "blocks", "text"),  # blocks return (B, F·H·W tokens, D)
}


@dataclass(frozen=True)
class BackboneConfig:
    """What the Trainer and `build_regularizer` read from a backbone's `config`."""

    family: str
    depth: int
    hidden_size: int
    cond_dropout: float  # probability the Trainer drops a condition (drawn per sample, replayed on resume)


def family_spec(family: str) -> FamilySpec:
    if family not in FAMILIES:
        raise UserValueError(f"unknown diffusers family {family!r}; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[family]


class DiffusersBackbone(nn.Module):
    """`model(x_t, t, cond, capture=(), force_drop=None)` over a diffusers transformer of a known family.

    cond: class labels (B,) for DiT; text embeddings (B, L, text_dim) or None (the null text) for Wan.
    force_drop: (B,) bool, True = replace the condition by the null one (DiT's extra label, Wan's null text),
    which the Trainer draws with probability `cond_dropout` and classifier-free guidance uses.
    """

    def __init__(self, transformer: nn.Module, family: Family, cond_dropout: float = 0.1,
                 null_text_tokens: int = 1):
        super().__init__()
        spec = family_spec(family)
        if type(transformer).__name__ != spec.class_name:
            raise UserValueError(f"family {family!r} expects a {spec.class_name}, got "
                                 f"{type(transformer).__name__}")
        self.transformer, self.family = transformer, family
        cfg = transformer.config
        width = cfg.num_attention_heads * cfg.attention_head_dim
        self.config = BackboneConfig(family, len(self.blocks), width, cond_dropout)
        self.in_channels = cfg.in_channels
        if spec.cond == "class":
            self.num_classes = cfg.num_embeds_ada_norm
            for module in transformer.modules():
                if type(module).__name__ == "LabelEmbedding":
                    if module.embedding_table.num_embeddings <= self.num_classes:
                        raise UserValueError("this DiT has no null-class embedding (class_dropout_prob was "
                                             "0): classifier-free dropout cannot be trained on it")
                    # diffusers would drop labels again, independently in every block; the drop is ours.
                    module.dropout_prob = 0.0
        else:
            # The null text: zeros, i.e. no prompt. Wan's own null prompt is umT5("") (precompute it with the
            # text encoder and pass it as a condition when prompts matter).
            null = torch.zeros(1, null_text_tokens, cfg.text_dim)
            self.register_buffer("null_text", null, persistent=False)

    @property
    def blocks(self) -> nn.ModuleList:
        """The transformer's blocks; block k of `capture` is blocks[k − 1]."""
        return getattr(self.transformer, family_spec(self.family).blocks)

    def _condition(self, cond, force_drop, batch: int, device):
        if self.family == "dit":
            if cond is None:
                raise UserValueError("the DiT family is class-conditional: give labels (B,) as cond")
            labels = cond.long()
            return labels if force_drop is None else torch.where(force_drop, self.num_classes, labels)
        text = self.null_text.expand(batch, -1, -1) if cond is None else cond
        if force_drop is not None and cond is not None:
            null = self.null_text.expand(batch, -1, -1)
            if null.shape[1] != text.shape[1]:
                raise UserValueError(f"text conditions have {text.shape[1]} tokens but the null text has "
                                     f"{null.shape[1]}; build the backbone with "
                                     f"null_text_tokens={text.shape[1]}")
            text = torch.where(force_drop[:, None, None], null, text)
        return text.to(device)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond=None, capture: tuple[int, ...] = (),
                force_drop: torch.Tensor | None = None):
        timestep = t.float() * TIME_SCALE  # (B,)
        condition = self._condition(cond, force_drop, x_t.shape[0], x_t.device)
        if not capture:
            return self._predict(x_t, timestep, condition)
        with capture_blocks(self.blocks, capture) as hidden:
            pred = self._predict(x_t, timestep, condition)
        return ModelOutput(pred, hidden)

    def _predict(self, x_t: torch.Tensor, timestep: torch.Tensor, condition) -> torch.Tensor:
        out = self.transformer(x_t, timestep, condition, return_dict=False)[0]
        # DiT-XL-2 also predicts the variance (learn_sigma: 2C channels); the flow loss reads the first C.
        return out[:, : self.in_channels]


def load_transformer(family: Family, path: str | Path) -> nn.Module:
    """A pretrained transformer from a local folder (a pipeline's, with `transformer/`, or the model's)."""
    import diffusers

    folder = Path(path)
    if not (folder / "config.json").is_file() and not (folder / "transformer" / "config.json").is_file():
        raise UserFileNotFoundError(f"model_path={path}: no config.json in it or in its transformer/ "
                                    "subfolder (a diffusers save_pretrained folder)")
    cls = getattr(diffusers, family_spec(family).class_name)
    sub = "transformer" if (folder / "transformer" / "config.json").is_file() else None
    return cls.from_pretrained(folder, subfolder=sub, local_files_only=True)


def add_lora(backbone: DiffusersBackbone, rank: int, alpha: float, targets: tuple[str, ...],
             dropout: float = 0.0) -> int:
    """Freeze the transformer and add trainable LoRA weights (peft) to the `targets` Linear layers of its
    blocks; returns the number of trainable parameters."""
    from peft import LoraConfig, inject_adapter_in_model

    if rank < 1:
        raise UserValueError(f"lora_rank must be ≥ 1, got {rank}")
    backbone.requires_grad_(False)
    attr = family_spec(backbone.family).blocks
    # Only inside the blocks: `blocks.0.attn1.to_q`, not a projection elsewhere that ends the same way.
    names = "|".join(re.escape(t) for t in targets)
    pattern = rf"{attr}\.\d+\..*\.({names})$"
    linears = [n for n, m in backbone.transformer.named_modules() if isinstance(m, nn.Linear)]
    if not any(re.fullmatch(pattern, n) for n in linears):
        raise UserValueError(f"lora_targets={','.join(targets)} matched no Linear layer in the "
                             f"{backbone.family} blocks (e.g. to_q,to_k,to_v,to_out.0)")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=pattern)
    inject_adapter_in_model(config, backbone.transformer)
    lora = [p for n, p in backbone.named_parameters() if "lora_" in n]
    for p in lora:
        p.requires_grad_(True)
    return sum(p.numel() for p in lora)


def tiny_transformer(family: Family, in_channels: int, sample_size: int = 8, num_classes: int = 10,
                     depth: int = 8) -> nn.Module:
    """A small random-weights model of the family, for the embedded data on a CPU (and the tests)."""
    import diffusers

    if family == "dit":
        return diffusers.DiTTransformer2DModel(
            num_attention_heads=4, attention_head_dim=16, in_channels=in_channels, out_channels=in_channels,
            num_layers=depth, sample_size=sample_size, patch_size=2, num_embeds_ada_norm=num_classes)
    family_spec(family)
    # Wan's rotary split needs head_dim with 2·⌊head_dim/6⌋ channels per spatial axis: 24 → 8/8/8.
    return diffusers.WanTransformer3DModel(
        patch_size=(2, 4, 4), num_attention_heads=4, attention_head_dim=24, in_channels=in_channels,
        out_channels=in_channels, text_dim=16, freq_dim=32, ffn_dim=192, num_layers=depth,
        rope_max_seq_len=64)


def describe(backbone: DiffusersBackbone) -> str:
    total = sum(p.numel() for p in backbone.parameters())
    trainable = sum(p.numel() for p in backbone.parameters() if p.requires_grad)
    return (f"{type(backbone.transformer).__name__}: {backbone.config.depth} blocks, width "
            f"{backbone.config.hidden_size}, {total / 1e6:.2f}M parameters, {trainable / 1e6:.3f}M trainable")


__all__ = ["BackboneConfig", "DiffusersBackbone", "FAMILIES", "add_lora", "describe", "load_transformer",
           "tiny_transformer"]
