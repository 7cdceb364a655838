"""The T2M-style evaluator of the embedded set: a small text–motion contrastive model trained here.

T2M's evaluator (Guo et al. 2022) embeds captions and motions into one space where a caption lies near its
motion; R-precision, matching score, FID, diversity and multimodality are then read in that space. Its
weights fit HumanML3D only, so the embedded default trains its own, as the digits run trains its own CNN:

- text: the caption's `word/POS` tokens (like T2M's, and independent of the generator's text encoder) →
  learned 64-d word vectors → mean and max over the tokens → MLP → 64-d;
- motion: normalised 263-d features → Linear to 64 per frame → two strided temporal convolutions (kernel 4,
  stride 2, GELU: one step per 4 frames, as T2M's movement encoder) → mean and max over the steps inside
  the motion → MLP → 64-d;
- both L2-normalised, so Euclidean distances (the protocol's) order pairs as cosines do; trained with the
  symmetric InfoNCE loss (CLIP, Radford et al. 2021) at temperature 0.07 on the train split, with captions
  identical to the positive's removed from the negatives, on T2M's random multiple-of-4 crops.

Training is deterministic (seeded, one CPU thread, deterministic algorithms, fixed batch order), takes
about half a minute, and is cached in `$LAYERSYNC_CACHE` under a key of the config, the source of this file
and of core/cached.py, and the data (split ids, Mean.npy, Std.npy), written atomically and checked by sha256
when read back.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core import cached
from ..core.config import checked
from ..core.determinism import deterministic_cpu
from .features import FEATURE_DIM
from .humanml3d import Caption, MotionSet, crop_length, pad_batch

log = logging.getLogger("layersync")
CACHE_FORMAT = 1
UNK = "<unk>"


@dataclass(frozen=True)
@checked(seed=">= 0", epochs=">= 1", batch_size=">= 2", lr="> 0", weight_decay=">= 0",
         temperature="> 0", word_dim=">= 1", frame_dim=">= 1", hidden=">= 1", embed_dim=">= 1")
class EvaluatorConfig:
    """Training recipe of the embedded evaluator; hashed into its cache key."""

    seed: int = 0
    epochs: int = 12
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    temperature: float = 0.07
    word_dim: int = 64
    frame_dim: int = 64
    hidden: int = 96
    embed_dim: int = 64


class TextMotionEncoders(nn.Module):
    """Caption tokens → (B, E) and motion features → (B, E), both on the unit sphere."""

    def __init__(self, vocab_size: int, config: EvaluatorConfig):
        super().__init__()
        h, e = config.hidden, config.embed_dim
        self.words = nn.Embedding(vocab_size, config.word_dim, padding_idx=0)
        self.text_head = nn.Sequential(nn.Linear(2 * config.word_dim, h), nn.GELU(), nn.Linear(h, e))
        self.frame = nn.Linear(FEATURE_DIM, config.frame_dim)
        self.conv1 = nn.Conv1d(config.frame_dim, h, 4, stride=2, padding=1)
        self.conv2 = nn.Conv1d(h, h, 4, stride=2, padding=1)
        self.motion_head = nn.Sequential(nn.Linear(2 * h, h), nn.GELU(), nn.Linear(h, e))

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, W) token ids, 0 = padding → (B, E)."""
        mask = (ids > 0)[..., None].float()  # (B, W, 1)
        w = self.words(ids)  # (B, W, word_dim)
        mean = (w * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        peak = w.masked_fill(mask == 0, -1e4).amax(1)
        return F.normalize(self.text_head(torch.cat([mean, peak], -1)), dim=-1)

    def encode_motion(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, 263, L) normalised features, (B, L) bool real frames → (B, E)."""
        frames = F.gelu(self.frame(x.transpose(1, 2))).transpose(1, 2) * mask[:, None]  # (B, F, L)
        h = F.gelu(self.conv2(F.gelu(self.conv1(frames))))  # (B, H, L/4)
        lengths = mask.sum(1)  # (B,)
        m = (torch.arange(h.shape[-1]) * 4 < lengths[:, None])[:, None].float()  # (B, 1, L/4): steps inside
        h = h * m
        mean = h.sum(-1) / m.sum(-1).clamp_min(1.0)
        peak = h.masked_fill(m == 0, -1e4).amax(-1)
        return F.normalize(self.motion_head(torch.cat([mean, peak], -1)), dim=-1)


def _token_ids(captions: list[Caption], vocab: dict[str, int]) -> torch.Tensor:
    width = max(len(c.tokens) for c in captions)
    ids = torch.zeros(len(captions), max(width, 1), dtype=torch.long)
    for i, c in enumerate(captions):
        ids[i, : len(c.tokens)] = torch.tensor([vocab.get(tok, vocab[UNK]) for tok in c.tokens])
    return ids


def data_fingerprint(data: MotionSet) -> str:
    """Hash of what the evaluator learns from: the split's clip names, Mean.npy and Std.npy."""
    h = hashlib.sha256("\n".join(item.name for item in data.items).encode())
    h.update(data.mean.tobytes())
    h.update(data.std.tobytes())
    return h.hexdigest()[:16]


class EmbeddedEvaluator:
    """Scores generated motions against captions in the contrastive model's space (numpy float64 out)."""

    name = "embedded text-motion contrastive evaluator"

    def __init__(self, model: TextMotionEncoders, vocab: dict[str, int], config: EvaluatorConfig,
                 mean: np.ndarray, std: np.ndarray, key: str):
        self.model, self.vocab, self.config = model.eval(), vocab, config
        self.mean, self.std, self.key = mean, std, key

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    def describe(self) -> str:
        return f"{self.name} ({self.config.embed_dim}-d, motion_evaluator-{self.key})"

    @torch.no_grad()
    def encode_text(self, captions: list[Caption]) -> np.ndarray:
        return self.model.encode_text(_token_ids(captions, self.vocab)).double().numpy()

    @torch.no_grad()
    def encode_motion(self, motions: list[np.ndarray], lengths: list[int] | None = None,
                      batch_size: int = 512) -> np.ndarray:
        """HumanML3D features (T_i, 263), not normalised, the first lengths[i] frames real → (N, E)."""
        out = []
        for lo in range(0, len(motions), batch_size):
            chunk = [(m - self.mean) / self.std for m in motions[lo:lo + batch_size]]
            x, mask = pad_batch(chunk, max(len(m) for m in chunk))
            if lengths is not None:  # frames past the length are not read
                real = torch.as_tensor(lengths[lo:lo + batch_size])
                mask = torch.arange(mask.shape[1])[None] < real[:, None]
            out.append(self.model.encode_motion(x, mask).double())
        return torch.cat(out).numpy()

    @classmethod
    def load_or_train(cls, train: MotionSet, config: EvaluatorConfig = EvaluatorConfig(),
                      cache_dir: str | os.PathLike | None = None) -> EmbeddedEvaluator:
        """The cached evaluator for (config, code, data), trained on `train` when absent or corrupt."""
        key = cached.cache_key(config, CACHE_FORMAT, (__file__,), f"data={data_fingerprint(train)}")

        def from_payload(state: dict) -> EmbeddedEvaluator:
            model = TextMotionEncoders(len(state["vocab"]), config)
            model.load_state_dict(state["state_dict"])
            return cls(model, state["vocab"], config, train.mean, train.std, key)

        return cached.load_or_build(
            "motion_evaluator", key, CACHE_FORMAT,
            lambda: cls(*train_evaluator(train, config), config, train.mean, train.std, key),
            lambda ev: {"state_dict": ev.model.state_dict(), "vocab": ev.vocab}, from_payload, cache_dir)


def train_evaluator(train: MotionSet, config: EvaluatorConfig) -> tuple[TextMotionEncoders, dict[str, int]]:
    """Contrastive training on every (item, caption) pair of `train`, bit for bit reproducible on a build."""
    tokens = sorted({tok for item in train.items for c in item.captions for tok in c.tokens})
    vocab = {"<pad>": 0, UNK: 1, **{tok: i + 2 for i, tok in enumerate(tokens)}}
    pairs = [(i, c) for i, item in enumerate(train.items) for c in item.captions]
    normalized = [train.normalize(item.features) for item in train.items]
    max_frames = max(len(f) for f in normalized)
    start = time.perf_counter()
    with deterministic_cpu(config.seed):  # the seeded CPU generator draws everything: init, order, crops
        model = TextMotionEncoders(len(vocab), config)
        opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        steps = config.epochs * (len(pairs) // config.batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=max(steps, 1))
        model.train()
        for _ in range(config.epochs):
            perm = torch.randperm(len(pairs)).tolist()
            for lo in range(0, len(pairs) - config.batch_size + 1, config.batch_size):
                batch = [pairs[k] for k in perm[lo:lo + config.batch_size]]
                clips = []
                for item, _ in batch:
                    feats = normalized[item]
                    length = crop_length(len(feats), max_frames, random=True)
                    first = int(torch.randint(len(feats) - length + 1, (1,)))
                    clips.append(feats[first:first + length])
                x, mask = pad_batch(clips, max_frames)
                text = model.encode_text(_token_ids([c for _, c in batch], vocab))  # (B, E)
                motion = model.encode_motion(x, mask)  # (B, E)
                logits = text @ motion.T / config.temperature  # (B, B)
                texts = [c.text for _, c in batch]
                same = torch.tensor([[a == b for b in texts] for a in texts])
                logits = logits.masked_fill(same & ~torch.eye(len(batch), dtype=torch.bool), -1e4)
                target = torch.arange(len(batch))
                loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    log.info("trained the embedded motion evaluator in %.1f s (%d epochs, %d pairs)",
             time.perf_counter() - start, config.epochs, len(pairs))
    return model.eval(), vocab
