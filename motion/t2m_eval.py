"""The T2M evaluation protocol (Guo et al. 2022, as MDM runs it) over a generator and an evaluator.

Each replication draws the test items in a fresh random order with one random caption each, keeps whole
batches of 32, generates a motion per caption at the item's length (cut to a multiple of 4 frames, at most
`max_frames`), and embeds captions, generated and real motions with the evaluator. It then reads
R-precision top-1/2/3 and the matching score (generated and real), FID (generated vs real), diversity
(300 pairs) and multimodality (30 generations for each of 100 captions, 10 pairs). The numbers are the
mean over replications ± 1.96·std/√n (`metrics.text_motion`, T2M: 20 replications).

Evaluators: `EmbeddedEvaluator` (the embedded set) or `T2MPretrained` (T2M's released `text_mot_match`
with its GloVe vectors, for HumanML3D); both map captions and HumanML3D features to embeddings.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Callable, Protocol

import numpy as np
import torch

from layersync.metrics.text_motion import (T2M_PROTOCOL, diversity, matching_score, mean_ci95, motion_fid,
                                           multimodality, r_precision)
from layersync.motion.humanml3d import Caption, MotionSet, crop_length

log = logging.getLogger("layersync")
GenerateFn = Callable[[list[Caption], list[int], int], list[np.ndarray]]  # captions, lengths, seed → features


@dataclass(frozen=True)
class T2MEvalSpec:
    """How much of the protocol to run; the defaults are T2M's (the whole test split, 20 replications)."""

    replications: int = 20
    num_texts: int = 0  # captions per replication; 0 = every test item once (rounded down to whole batches)
    mm_texts: int = 100  # multimodality: captions, generations of each, pairs per caption
    mm_repeats: int = 30
    mm_pairs: int = 10
    diversity_pairs: int = 300
    seed: int = 0

    def __post_init__(self):
        if self.replications < 1 or self.num_texts < 0 or self.mm_texts < 0:
            raise ValueError("replications must be ≥ 1; num_texts and mm_texts ≥ 0")
        if self.mm_texts and self.mm_repeats <= self.mm_pairs:
            raise ValueError(f"mm_repeats ({self.mm_repeats}) must exceed mm_pairs ({self.mm_pairs})")


class MotionEvaluator(Protocol):
    """Captions and HumanML3D features (not normalised) → embeddings in one space, numpy (N, E)."""

    embed_dim: int

    def describe(self) -> str: ...

    def encode_text(self, captions: list[Caption]) -> np.ndarray: ...

    def encode_motion(self, motions: list[np.ndarray]) -> np.ndarray: ...


class T2MPretrained:
    """T2M's released evaluator (`metrics.t2m_evaluator`) with its GloVe vectors and motion statistics."""

    embed_dim = 512

    def __init__(self, evaluator_path: str, glove_path: str, meta_path: str):
        from layersync.metrics.t2m_evaluator import WordVectorizer, load_motion_stats, load_t2m_evaluator

        self.model = load_t2m_evaluator(evaluator_path or None)
        self.words = WordVectorizer.from_files(glove_path or None)
        if not meta_path:
            raise FileNotFoundError("the T2M evaluator needs its motion statistics: pass --t2m_meta, the "
                                    "folder holding mean.npy and std.npy (checkpoints/t2m/*/meta/)")
        self.mean, self.std = load_motion_stats(meta_path)

    def describe(self) -> str:
        return "T2M text_mot_match evaluator (Guo et al. 2022), GloVe word vectors, 512-d"

    def encode_text(self, captions: list[Caption]) -> np.ndarray:
        enc = [self.words.encode(list(c.tokens)) for c in captions]
        words = torch.from_numpy(np.stack([e[0] for e in enc]))  # (N, 22, 300)
        pos = torch.from_numpy(np.stack([e[1] for e in enc]))  # (N, 22, 15)
        lengths = torch.tensor([e[2] for e in enc])
        return self.model.encode_text(words, pos, lengths).double().numpy()

    def encode_motion(self, motions: list[np.ndarray]) -> np.ndarray:
        longest = max(len(m) for m in motions)
        x = torch.zeros(len(motions), longest, self.model.motion_dim)
        for i, m in enumerate(motions):
            x[i, : len(m)] = torch.from_numpy((m - self.mean) / self.std)
        return self.model.encode_motion(x, torch.tensor([len(m) for m in motions])).double().numpy()


def _metrics(text: np.ndarray, motion: np.ndarray, batch: int, pairs: int, seed: int) -> dict[str, float]:
    top = r_precision(text, motion, batch, T2M_PROTOCOL.top_k)
    return {"r_precision_top1": top[0], "r_precision_top2": top[1], "r_precision_top3": top[2],
            "matching_score": matching_score(text, motion, batch),
            "diversity": diversity(motion, pairs, seed)}


def run_protocol(test: MotionSet, evaluator: MotionEvaluator, generate_fn: GenerateFn, spec: T2MEvalSpec,
                 max_frames: int) -> dict:
    """Every metric of the protocol as `name` (mean) and `name_ci95`, real-data values as `gt_<name>`."""
    batch = T2M_PROTOCOL.r_precision_batch_size
    items = test.items
    n = (spec.num_texts or len(items)) // batch * batch
    if n < batch or n > len(items):
        raise ValueError(f"the protocol needs whole batches of {batch} test items: "
                         f"num_texts={spec.num_texts} with {len(items)} items in {test.root}/{test.split}")
    if n <= spec.diversity_pairs:
        raise ValueError(f"diversity_pairs={spec.diversity_pairs} needs more than that many texts, got {n}")
    if n <= evaluator.embed_dim:
        raise ValueError(f"FID on {evaluator.embed_dim}-d embeddings needs more than {evaluator.embed_dim} "
                         f"texts per replication, got {n}")
    runs = []
    for r in range(spec.replications):
        rng = np.random.default_rng(spec.seed * 1_000 + r)
        chosen = rng.permutation(len(items))[:n]
        captions = [items[i].captions[rng.integers(len(items[i].captions))] for i in chosen]
        lengths = [crop_length(items[i].length, max_frames, random=False) for i in chosen]
        real = [items[i].features[:length] for i, length in zip(chosen, lengths)]
        generated = generate_fn(captions, lengths, spec.seed * 1_000 + r)
        text_emb = evaluator.encode_text(captions)
        gen_emb, real_emb = evaluator.encode_motion(generated), evaluator.encode_motion(real)
        row = _metrics(text_emb, gen_emb, batch, spec.diversity_pairs, r)
        row["fid"] = motion_fid(gen_emb, real_emb)
        gt = _metrics(text_emb, real_emb, batch, spec.diversity_pairs, r)
        row.update({f"gt_{k}": v for k, v in gt.items()})
        if spec.mm_texts:
            picks = rng.choice(len(items), spec.mm_texts, replace=False)
            mm_caps = [items[i].captions[rng.integers(len(items[i].captions))] for i in picks]
            mm_lens = [crop_length(items[i].length, max_frames, random=False) for i in picks]
            repeat = range(spec.mm_repeats)
            repeated = generate_fn([c for c in mm_caps for _ in repeat], [k for k in mm_lens for _ in repeat],
                                   spec.seed * 1_000 + r + 500)
            mm_emb = evaluator.encode_motion(repeated).reshape(spec.mm_texts, spec.mm_repeats, -1)
            row["multimodality"] = multimodality(mm_emb, spec.mm_pairs, r)
        runs.append(row)
        log.info("T2M replication %d/%d: %s", r + 1, spec.replications,
                 ", ".join(f"{k} {v:.4g}" for k, v in row.items() if not k.startswith("gt_")))
    result: dict = {}
    for key in runs[0]:
        mean, half = mean_ci95([row[key] for row in runs])
        result[key], result[f"{key}_ci95"] = float(mean), float(half)
    result.update(protocol={**asdict(spec), "num_texts": n, "r_precision_batch_size": batch,
                            "ci": T2M_PROTOCOL.ci}, evaluator=evaluator.describe(), replications=len(runs))
    return result
