"""The embedded T2M evaluator (deterministic, cached) and the T2M protocol runner on a tiny embedded set."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch

from layersync.core.weights import MissingWeightsError
from layersync.motion import evaluator as E
from layersync.motion import synthetic as S
from layersync.motion.humanml3d import load_split
from layersync.motion.t2m_eval import (EVAL_PRESETS, MDM_MM_SHORT, MDM_WO_MM, T2MEvalSpec, T2MPretrained,
                                       _crop, _mdm_multimodality_embeddings, run_protocol)

CONFIG = E.EvaluatorConfig(epochs=25, batch_size=32, embed_dim=8, hidden=32, word_dim=16, frame_dim=16)
QUICK = dataclasses.replace(CONFIG, epochs=2)


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    root = S.write_dataset(tmp_path_factory.mktemp("embedded") / "set", seed=4,
                           sizes={"train": 26, "test": 16}, max_frames=48)
    return load_split(root, "train", max_frames=48), load_split(root, "test", max_frames=48)


@pytest.fixture(scope="module")
def evaluator(splits, tmp_path_factory):
    return E.EmbeddedEvaluator.load_or_train(splits[0], CONFIG, tmp_path_factory.mktemp("cache"))


def test_training_is_deterministic_and_embeddings_are_unit_vectors(splits, evaluator):
    (first, vocab), (again, _) = E.train_evaluator(splits[0], QUICK), E.train_evaluator(splits[0], QUICK)
    assert vocab == evaluator.vocab and "walk/VERB" in vocab
    for key, value in again.state_dict().items():
        assert torch.equal(value, first.state_dict()[key]), key
    items = splits[1].items[:5]
    text = evaluator.encode_text([item.captions[0] for item in items])
    motion = evaluator.encode_motion([item.features for item in items])
    assert text.shape == motion.shape == (5, 8) and text.dtype == np.float64
    np.testing.assert_allclose(np.linalg.norm(motion, axis=1), 1.0, atol=1e-6)


def test_the_cache_is_reused_and_a_corrupt_one_is_retrained(splits, tmp_path, monkeypatch, caplog):
    first = E.EmbeddedEvaluator.load_or_train(splits[0], QUICK, tmp_path)
    monkeypatch.setattr(E, "train_evaluator", lambda *a: (_ for _ in ()).throw(AssertionError("retrained")))
    second = E.EmbeddedEvaluator.load_or_train(splits[0], QUICK, tmp_path)
    assert second.key == first.key
    for key, value in second.model.state_dict().items():
        assert torch.equal(value, first.model.state_dict()[key])
    path = tmp_path / f"motion_evaluator-{first.key}.pt"
    path.write_bytes(path.read_bytes()[:-100])
    monkeypatch.undo()
    with caplog.at_level(logging.WARNING, logger="layersync"):
        E.EmbeddedEvaluator.load_or_train(splits[0], QUICK, tmp_path)
    assert "unusable" in caplog.text and "retraining" in caplog.text


def real_motions(test):
    def generate_fn(captions, lengths, seed, keep_padding=False):  # the items' own Caption objects come in
        assert not keep_padding
        by_caption = {id(c): item for item in test.items for c in item.captions}
        return [by_caption[id(c)].features[:n] for c, n in zip(captions, lengths)]
    return generate_fn


def test_protocol_on_the_real_motions_matches_ground_truth(splits, evaluator):
    spec = T2MEvalSpec(replications=3, num_texts=32, mm_texts=4, mm_repeats=3, mm_pairs=2, diversity_pairs=20)
    result = run_protocol(splits[1], evaluator, real_motions(splits[1]), spec, max_frames=48)
    for key in ("r_precision_top1", "r_precision_top2", "r_precision_top3", "matching_score", "diversity"):
        assert result[key] == pytest.approx(result[f"gt_{key}"], abs=1e-12), key
    assert result["fid"] == pytest.approx(0.0, abs=1e-6)
    assert result["multimodality"] == pytest.approx(0.0, abs=1e-12)  # the "generator" repeats itself
    assert result["r_precision_top3"] > 0.3  # far above chance (3/32) for the trained evaluator
    assert result["r_precision_top1"] <= result["r_precision_top2"] <= result["r_precision_top3"]
    assert result["protocol"]["num_texts"] == 32 and result["replications"] == 3
    assert "embedded text-motion contrastive evaluator" in result["evaluator"]


def test_mismatched_motions_score_worse_than_ground_truth(splits, evaluator):
    spec = T2MEvalSpec(replications=2, num_texts=32, mm_texts=0, diversity_pairs=20)

    def shifted(captions, lengths, seed, keep_padding=False):  # each caption gets the next caption's motion
        motions = real_motions(splits[1])(captions, lengths, seed, keep_padding)
        return motions[1:] + motions[:1]

    result = run_protocol(splits[1], evaluator, shifted, spec, max_frames=48)
    assert result["r_precision_top3"] < result["gt_r_precision_top3"]
    assert result["matching_score"] > result["gt_matching_score"] and "multimodality" not in result
    assert result["fid"] == pytest.approx(0.0, abs=1e-6)  # same motions, so the same distribution


def test_mdm_crops_are_whole_units_one_shorter_with_probability_one_third_from_a_uniform_start():
    rng = np.random.default_rng(0)
    draws = [_crop(59, 196, rng, mdm=True) for _ in range(3000)]  # 14 units of 4 frames (+3 left over)
    frames = np.array([n for _, n in draws])
    assert set(frames) == {56, 52} and 0.30 < (frames == 52).mean() < 0.37  # MDM: choice(single×2, double)
    starts = np.array([s for s, n in draws if n == 52])
    assert set(starts) == set(range(59 - 52 + 1))  # random.randint(0, len − m), every start drawn
    assert _crop(59, 48, rng, mdm=True)[1] <= 48 and _crop(59, 196, rng, mdm=False) == (0, 56)


def test_mdm_presets_are_eval_humanml_modes():
    assert (MDM_WO_MM.protocol, MDM_WO_MM.replications, MDM_WO_MM.num_texts, MDM_WO_MM.mm_texts) == (
        "mdm", 20, 1024, 0)  # wo_mm: num_samples_limit 1000 → 32 batches of 32
    mm = MDM_MM_SHORT
    assert (mm.replications, mm.num_texts, mm.mm_texts, mm.mm_repeats, mm.mm_pairs) == (5, 1024, 128, 30, 10)
    assert EVAL_PRESETS == {"mdm": MDM_WO_MM, "mdm-mm": MDM_MM_SHORT}
    assert T2MEvalSpec().protocol == "layersync"
    with pytest.raises(ValueError, match="eval.protocol='t2m'"):
        T2MEvalSpec(protocol="t2m")


def test_mdm_protocol_keeps_frames_past_the_length_and_compares_with_the_whole_test_split(splits, evaluator):
    calls = []

    def generate_fn(captions, lengths, seed, keep_padding=False):
        calls.append((list(lengths), keep_padding))
        by_caption = {id(c): item for item in splits[1].items for c in item.captions}
        out = []
        for c, n in zip(captions, lengths):
            padded = np.full((48, 263), 50.0, np.float32)  # garbage past the length
            padded[:n] = by_caption[id(c)].features[:n]
            out.append(padded)
        return out

    spec = dataclasses.replace(MDM_WO_MM, replications=2, num_texts=32, diversity_pairs=20)
    result = run_protocol(splits[1], evaluator, generate_fn, spec, max_frames=48)
    assert all(keep for _, keep in calls) and len(calls) == 2
    assert all(n % 4 == 0 and n <= 48 for n in calls[0][0])
    assert calls[0][0] != calls[1][0]  # crops are drawn anew per replication
    assert result["protocol"]["num_real"] == len(splits[1].items) // 32 * 32
    # The embedded evaluator masks frames past lengths[i], so the garbage there does not count.
    garbage = generate_fn([splits[1].items[0].captions[0]], [40], 0, True)
    zeros = [np.concatenate([garbage[0][:40], np.zeros((8, 263), np.float32)])]
    mean = evaluator.mean  # zero after normalisation, as T2M pads
    zeros[0][40:] = mean
    np.testing.assert_allclose(evaluator.encode_motion(garbage, [40]), evaluator.encode_motion(zeros, [40]),
                               atol=1e-12)
    assert result["r_precision_top3"] > 0.3 and np.isfinite(result["fid"])


def test_mdm_multimodality_reuses_whole_generated_batches_and_their_main_set_motion():
    # MDM's CompMDMGeneratedDataset: mm_num_samples // 32 + 1 random batches (4 for 100) of the generated set;
    # each keeps its captions and lengths, and generation 0 of the 30 is the main-set sample.
    class Stub:
        def encode_motion(self, motions, lengths=None):
            return np.stack([m[:1, :2].ravel() for m in motions])  # (N, 2): what the generator wrote

    captions = [f"caption {i}" for i in range(96)]
    lengths = [40 + i % 5 * 4 for i in range(96)]
    gen_emb = np.stack([np.arange(96.0), -np.arange(96.0)], 1)  # (96, 2)
    calls = []

    def generate_fn(caps, lens, seed, keep_padding):
        calls.append((caps, lens, keep_padding))
        return [np.full((48, 263), 1000.0 + k, np.float32) for k in range(len(caps))]

    spec = dataclasses.replace(MDM_MM_SHORT, mm_texts=64, mm_repeats=3, mm_pairs=2)
    out = _mdm_multimodality_embeddings(captions, lengths, gen_emb, Stub(), generate_fn, spec,
                                        np.random.default_rng(0), seed=7)
    assert out.shape == (64, 3, 2)
    first = out[:, 0, 0].astype(int)  # the main-set items the 64 captions are
    batches = sorted({i // 32 for i in first})
    assert len(batches) == 2 and list(first) == [b * 32 + i for b in batches for i in range(32)]
    np.testing.assert_array_equal(out[:, 0], gen_emb[first])
    (caps, lens, keep), = calls
    assert keep and caps == [captions[i] for i in first for _ in range(2)]
    assert lens == [lengths[i] for i in first for _ in range(2)]
    np.testing.assert_array_equal(out[:, 1:, 0].ravel(), 1000.0 + np.arange(128))  # new generations, in order
    with pytest.raises(ValueError, match="whole batches of 32"):
        T2MEvalSpec(protocol="mdm", mm_texts=100)


def test_mdm_mm_protocol_takes_multimodality_captions_from_the_generated_set(splits, evaluator):
    calls = []

    def generate_fn(captions, lengths, seed, keep_padding=False):
        calls.append((list(captions), list(lengths)))
        by_caption = {id(c): item for item in splits[1].items for c in item.captions}
        return [by_caption[id(c)].features[:n] for c, n in zip(captions, lengths)]

    spec = dataclasses.replace(MDM_MM_SHORT, replications=1, num_texts=32, mm_texts=32, mm_repeats=3,
                               mm_pairs=2, diversity_pairs=20)
    result = run_protocol(splits[1], evaluator, generate_fn, spec, max_frames=48)
    (main_caps, main_lens), (mm_caps, mm_lens) = calls
    assert [id(c) for c in mm_caps] == [id(c) for c in main_caps for _ in range(2)]
    assert mm_lens == [n for n in main_lens for _ in range(2)]
    assert np.isfinite(result["multimodality"])
    with pytest.raises(ValueError, match="mm_texts=64 exceeds the 32"):
        run_protocol(splits[1], evaluator, generate_fn, dataclasses.replace(spec, mm_texts=64), 48)


def test_protocol_refuses_sizes_it_cannot_measure(splits, evaluator):
    with pytest.raises(ValueError, match="whole batches of 32 test items"):
        run_protocol(splits[1], evaluator, real_motions(splits[1]), T2MEvalSpec(num_texts=10_016), 48)
    with pytest.raises(ValueError, match="diversity_pairs=300"):
        run_protocol(splits[1], evaluator, real_motions(splits[1]), T2MEvalSpec(), 48)
    # what the settings alone rule out is refused when the spec is built (so by --dry-run too)
    with pytest.raises(ValueError, match="num_texts=16 is too few.*whole batches of 32.*num_texts ≥ 32 "):
        T2MEvalSpec(num_texts=16, diversity_pairs=20)
    with pytest.raises(ValueError, match="num_texts=32 is too few.*num_texts ≥ 320 "):
        T2MEvalSpec(num_texts=32)
    with pytest.raises(ValueError, match="mm_repeats"):
        T2MEvalSpec(mm_repeats=10, mm_pairs=10)


def test_t2m_evaluator_without_its_files_names_them(tmp_path, monkeypatch):
    monkeypatch.delenv("LAYERSYNC_WEIGHTS", raising=False)
    with pytest.raises(MissingWeightsError, match="finest.tar"):
        T2MPretrained("", "", "")
    with pytest.raises(MissingWeightsError, match="finest.tar"):
        T2MPretrained(str(tmp_path), str(tmp_path), str(tmp_path))
