"""The T2M evaluation protocol (Guo et al. 2022) over a generator and an evaluator, in two variants.

Each replication draws the test items in a fresh random order with one random caption each, keeps whole
batches of 32, generates a motion per caption at a length cut from the item's, and embeds captions,
generated and real motions with the evaluator. It then reads R-precision top-1/2/3 and the matching score
(generated and real), FID (generated vs real), diversity (300 pairs) and multimodality (`mm_repeats`
generations for each of `mm_texts` captions, `mm_pairs` pairs). The numbers are the mean over replications
± 1.96·std/√n (`metrics.text_motion`, T2M: 20 replications).

- `layersync`: deterministic crops (the first ⌊length/4⌋·4 frames), the real motions are the same items as
  the generated ones (`num_texts` of them), generated motions are cut to their length.
- `mdm`: MDM's `eval/eval_humanml.py` (GuyTevet/motion-diffusion-model @ d4fd88c, with
  `data_loaders/humanml/data/dataset.py` and `motion_loaders/comp_v6_model_dataset.py`): every crop, per
  replication, is ⌊length/4⌋ units, one unit fewer with probability 1/3, from a uniformly random start; the
  generated set is `num_texts` items (MDM: 1024, its `num_samples_limit` 1000 rounded up to whole batches);
  the real set is the whole test split in whole batches of 32, with its own captions and crops for the real
  R-precision, matching score and diversity, and fresh crops again for FID (its `evaluate_fid` iterates the
  loader anew); generated motions keep the frames the model made past their length, which the evaluator's
  convolutions read at the boundary (real ones are zero there). `MDM_WO_MM` is its `wo_mm` mode
  (20 replications), `MDM_MM_SHORT` its `mm_short` mode (5 replications, multimodality on 4 random whole
  batches of the generated set with their captions and crops, 30 generations each of which the main set's
  is the first, 10 pairs).

Evaluators: `EmbeddedEvaluator` (the embedded set) or `T2MPretrained` (T2M's released `text_mot_match`
with its GloVe vectors, for HumanML3D); both map captions and HumanML3D features to embeddings.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Callable, Literal, Protocol

import numpy as np
import torch

from layersync.core.config import checked
from layersync.core.errors import UserFileNotFoundError, UserValueError
from layersync.metrics.text_motion import (T2M_PROTOCOL, diversity, matching_score, mean_ci95, motion_fid,
                                           multimodality, r_precision)
from layersync.motion.humanml3d import UNIT_LENGTH, Caption, MotionSet, crop_length

log = logging.getLogger("layersync")
# captions, lengths, seed, keep_padding → features (lengths[i] frames, or max_frames with keep_padding)
GenerateFn = Callable[[list[Caption], list[int], int, bool], list[np.ndarray]]


@dataclass(frozen=True)
@checked(replications=">= 1", num_texts=">= 0", mm_texts=">= 0", mm_repeats=">= 1", mm_pairs=">= 1",
         diversity_pairs=">= 1", seed=">= 0")
class T2MEvalSpec:
    """Which variant of the protocol (module docstring) and how much of it; the defaults are T2M's counts (the
    whole test split, 20 replications) under the `layersync` variant."""

    protocol: Literal["layersync", "mdm"] = "layersync"
    replications: int = 20
    num_texts: int = 0  # captions per replication; 0 = every test item once (rounded down to whole batches)
    mm_texts: int = 100  # multimodality: captions, generations of each, pairs per caption
    mm_repeats: int = 30
    mm_pairs: int = 10
    diversity_pairs: int = 300
    seed: int = 0

    def __post_init__(self):
        if self.protocol not in ("layersync", "mdm"):
            raise UserValueError(f"eval.protocol={self.protocol!r}; choose layersync or mdm")
        batch = T2M_PROTOCOL.r_precision_batch_size
        used = self.num_texts // batch * batch  # whole R-precision batches
        if self.num_texts and used <= self.diversity_pairs:
            raise UserValueError(f"num_texts={self.num_texts} is too few: diversity draws "
                                 f"{self.diversity_pairs} "
                                 f"pairs from whole batches of {batch}, so use num_texts ≥ "
                                 f"{(self.diversity_pairs // batch + 1) * batch} (or 0 = the whole test "
                                 "split)")
        if self.mm_texts and self.mm_repeats <= self.mm_pairs:
            raise UserValueError(f"mm_repeats ({self.mm_repeats}) must exceed mm_pairs ({self.mm_pairs})")
        if self.protocol == "mdm" and self.mm_texts % T2M_PROTOCOL.r_precision_batch_size:
            raise UserValueError(f"mm_texts={self.mm_texts}: the mdm protocol takes multimodality captions "
                                 "in "
                                 f"whole batches of {T2M_PROTOCOL.r_precision_batch_size} of the generated "
                                 "set")


MDM_WO_MM = T2MEvalSpec(protocol="mdm", replications=20, num_texts=1024, mm_texts=0)
MDM_MM_SHORT = T2MEvalSpec(protocol="mdm", replications=5, num_texts=1024, mm_texts=128, mm_repeats=30,
                           mm_pairs=10)
EVAL_PRESETS = {"mdm": MDM_WO_MM, "mdm-mm": MDM_MM_SHORT}


class MotionEvaluator(Protocol):
    """Captions and HumanML3D features (not normalised) → embeddings in one space, numpy (N, E)."""

    embed_dim: int

    def describe(self) -> str: ...

    def encode_text(self, captions: list[Caption]) -> np.ndarray: ...

    def encode_motion(self, motions: list[np.ndarray], lengths: list[int] | None = None) -> np.ndarray:
        """Embeddings of motions whose first lengths[i] frames are real (all of them when None)."""


class T2MPretrained:
    """T2M's released evaluator (`metrics.t2m_evaluator`) with its GloVe vectors and motion statistics."""

    embed_dim = 512

    def __init__(self, evaluator_path: str, glove_path: str, meta_path: str):
        from layersync.metrics.t2m_evaluator import WordVectorizer, load_motion_stats, load_t2m_evaluator

        self.model = load_t2m_evaluator(evaluator_path or None)
        self.words = WordVectorizer.from_files(glove_path or None)
        if not meta_path:
            raise UserFileNotFoundError("the T2M evaluator needs its motion statistics: pass --t2m_meta, the "
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

    def encode_motion(self, motions: list[np.ndarray], lengths: list[int] | None = None) -> np.ndarray:
        longest = max(len(m) for m in motions)
        x = torch.zeros(len(motions), longest, self.model.motion_dim)  # zeros past each clip, as T2M pads
        for i, m in enumerate(motions):
            x[i, : len(m)] = torch.from_numpy((m - self.mean) / self.std)
        lengths = [len(m) for m in motions] if lengths is None else lengths
        return self.model.encode_motion(x, torch.tensor(lengths)).double().numpy()


def _metrics(text: np.ndarray, motion: np.ndarray, batch: int, pairs: int, seed: int) -> dict[str, float]:
    top = r_precision(text, motion, batch, T2M_PROTOCOL.top_k)
    return {"r_precision_top1": top[0], "r_precision_top2": top[1], "r_precision_top3": top[2],
            "matching_score": matching_score(text, motion, batch),
            "diversity": diversity(motion, pairs, seed)}


def _crop(length: int, max_frames: int, rng: np.random.Generator, mdm: bool) -> tuple[int, int]:
    """(start, frames) of one crop: the first ⌊length/4⌋·4 frames, or MDM's random crop (module docstring)."""
    if not mdm:
        return 0, crop_length(length, max_frames, random=False)
    units = length // UNIT_LENGTH - (1 if rng.integers(3) == 2 else 0)  # np.random.choice(single×2, double)
    frames = min(units * UNIT_LENGTH, max_frames)
    return int(rng.integers(length - frames + 1)), frames


def _draw(items, chosen, max_frames: int, rng: np.random.Generator, mdm: bool):
    """One random caption and one crop of each chosen item: (captions, lengths, real clips)."""
    captions = [items[i].captions[rng.integers(len(items[i].captions))] for i in chosen]
    crops = [_crop(items[i].length, max_frames, rng, mdm) for i in chosen]
    real = [items[i].features[start : start + n] for i, (start, n) in zip(chosen, crops)]
    return captions, [n for _, n in crops], real


def _mdm_multimodality_embeddings(captions, lengths, gen_emb: np.ndarray, evaluator: MotionEvaluator,
                                  generate_fn: GenerateFn, spec: T2MEvalSpec, rng: np.random.Generator,
                                  seed: int) -> np.ndarray:
    """(mm_texts, mm_repeats, E) as MDM's `CompMDMGeneratedDataset`: `mm_texts / 32` random whole batches of
    the generated set keep their captions and crops, and each item's motion of the main set is the first of
    its `mm_repeats` generations."""
    batch = T2M_PROTOCOL.r_precision_batch_size
    picks = np.sort(rng.choice(len(captions) // batch, spec.mm_texts // batch, replace=False))
    chosen = [b * batch + i for b in picks for i in range(batch)]
    more = range(spec.mm_repeats - 1)
    lens = [lengths[i] for i in chosen for _ in more]
    repeated = generate_fn([captions[i] for i in chosen for _ in more], lens, seed, True)
    rest = evaluator.encode_motion(repeated, lens).reshape(len(chosen), spec.mm_repeats - 1, -1)
    return np.concatenate([gen_emb[chosen][:, None], rest], axis=1)  # (mm_texts, mm_repeats, E)


def run_protocol(test: MotionSet, evaluator: MotionEvaluator, generate_fn: GenerateFn, spec: T2MEvalSpec,
                 max_frames: int) -> dict:
    """Every metric of the protocol as `name` (mean) and `name_ci95`, real-data values as `gt_<name>`."""
    batch = T2M_PROTOCOL.r_precision_batch_size
    items = test.items
    mdm = spec.protocol == "mdm"
    n = (spec.num_texts or len(items)) // batch * batch
    if n < batch or n > len(items):
        raise UserValueError(f"the protocol needs whole batches of {batch} test items: "
                             f"num_texts={spec.num_texts} with {len(items)} items in "
                             f"{test.root}/{test.split}")
    if n <= spec.diversity_pairs:
        raise UserValueError(f"diversity_pairs={spec.diversity_pairs} needs more than that many texts, got "
                             f"{n}")
    if n <= evaluator.embed_dim:
        raise UserValueError(f"FID on {evaluator.embed_dim}-d embeddings needs more than "
                             f"{evaluator.embed_dim} "
                         f"texts per replication, got {n}")
    if mdm and spec.mm_texts > n:
        raise UserValueError(f"mm_texts={spec.mm_texts} exceeds the {n} generated texts the mdm protocol "
                             "draws multimodality captions from")
    n_real = len(items) // batch * batch if mdm else n
    runs = []
    for r in range(spec.replications):
        rng = np.random.default_rng(spec.seed * 1_000 + r)
        captions, lengths, real = _draw(items, rng.permutation(len(items))[:n], max_frames, rng, mdm)
        generated = generate_fn(captions, lengths, spec.seed * 1_000 + r, mdm)
        text_emb = evaluator.encode_text(captions)
        gen_emb = evaluator.encode_motion(generated, lengths if mdm else None)  # mdm: frames past the length
        row = _metrics(text_emb, gen_emb, batch, spec.diversity_pairs, r)
        if mdm:  # the whole test split, its own captions and crops; FID on a fresh pass of the loader
            real_caps, _, real = _draw(items, rng.permutation(len(items))[:n_real], max_frames, rng, True)
            text_emb, real_emb = evaluator.encode_text(real_caps), evaluator.encode_motion(real)
            _, _, fid_real = _draw(items, rng.permutation(len(items))[:n_real], max_frames, rng, True)
            row["fid"] = motion_fid(gen_emb, evaluator.encode_motion(fid_real))
        else:
            real_emb = evaluator.encode_motion(real)
            row["fid"] = motion_fid(gen_emb, real_emb)
        gt = _metrics(text_emb, real_emb, batch, spec.diversity_pairs, r)
        row.update({f"gt_{k}": v for k, v in gt.items()})
        if spec.mm_texts and mdm:
            mm_emb = _mdm_multimodality_embeddings(captions, lengths, gen_emb, evaluator, generate_fn, spec,
                                                   rng, spec.seed * 1_000 + r + 500)
            row["multimodality"] = multimodality(mm_emb, spec.mm_pairs, r)
        elif spec.mm_texts:
            picks = rng.choice(len(items), spec.mm_texts, replace=False)
            mm_caps, mm_lens, _ = _draw(items, picks, max_frames, rng, mdm)
            repeat = range(spec.mm_repeats)
            repeated = generate_fn([c for c in mm_caps for _ in repeat], [k for k in mm_lens for _ in repeat],
                                   spec.seed * 1_000 + r + 500, mdm)
            mm_emb = evaluator.encode_motion(repeated)
            row["multimodality"] = multimodality(mm_emb.reshape(spec.mm_texts, spec.mm_repeats, -1),
                                                 spec.mm_pairs, r)
        runs.append(row)
        log.info("T2M replication %d/%d: %s", r + 1, spec.replications,
                 ", ".join(f"{k} {v:.4g}" for k, v in row.items() if not k.startswith("gt_")))
    result: dict = {}
    for key in runs[0]:
        mean, half = mean_ci95([row[key] for row in runs])
        result[key], result[f"{key}_ci95"] = float(mean), float(half)
    result.update(protocol={**asdict(spec), "num_texts": n, "num_real": n_real, "ci": T2M_PROTOCOL.ci,
                            "r_precision_batch_size": batch},
                  evaluator=evaluator.describe(), replications=len(runs))
    return result
