"""T2M protocol: golden R-precision and matching score, FID, diversity, multimodality, CI, evaluator port."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import layersync
from layersync.core.weights import MissingWeightsError
from layersync.metrics.frechet import frechet_distance
from layersync.metrics.t2m_evaluator import (
    POS_CLASSES,
    T2MEvaluator,
    WordVectorizer,
    load_t2m_evaluator,
)
from layersync.metrics.text_motion import (
    diversity,
    matching_score,
    mean_ci95,
    motion_fid,
    multimodality,
    r_precision,
)

GOLDEN = Path(__file__).resolve().parent / "golden" / "metrics_golden.npz"  # see golden/README.md


def test_r_precision_and_matching_score_equal_the_golden_values():
    golden = np.load(GOLDEN)
    text, motion = golden["text_embeddings"], golden["motion_embeddings"]
    top123 = r_precision(text, motion, batch_size=32, top_k=3)
    np.testing.assert_array_equal(top123, golden["r_precision_top123"])
    assert matching_score(text, motion) == pytest.approx(float(golden["matching_score"]), rel=1e-12)


def test_r_precision_counts_ranks_within_each_batch_of_32():
    # Batch 1: every text sits on its motion (top-1). Batch 2: motions on the axes, 10·e_j; text i is
    # 0.6·m_(i+1) + 0.5·m_i, at 6.4 from the next motion, 7.8 from its own, 12.7 from the others (top-2).
    # The 10 pairs of the incomplete third batch are dropped.
    rng = np.random.default_rng(0)
    motion = rng.standard_normal((74, 32)) * 10
    motion[32:64] = 10 * np.eye(32)
    text = motion.copy()
    text[32:64] = 0.6 * np.roll(motion[32:64], -1, axis=0) + 0.5 * motion[32:64]
    text[64:] = rng.standard_normal((10, 32)) * 100
    np.testing.assert_allclose(r_precision(text, motion, top_k=3), [0.5, 1.0, 1.0])
    full_batches = np.linalg.norm(text[:64] - motion[:64], axis=1).mean()
    assert matching_score(text, motion) == pytest.approx(full_batches)
    assert matching_score(text, motion, batch_size=None) == pytest.approx(
        np.linalg.norm(text - motion, axis=1).mean()
    )


def test_r_precision_needs_one_full_batch():
    with pytest.raises(ValueError, match="full batch"):
        r_precision(np.zeros((31, 4)), np.zeros((31, 4)))


def test_motion_fid_is_the_frechet_distance_of_the_embeddings():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((300, 8)), rng.standard_normal((300, 8)) + 1.0
    assert motion_fid(a, b) == frechet_distance(a, b)
    assert motion_fid(a, b) == pytest.approx(8.0, abs=1.0)  # ‖Δμ‖² = 8, covariances near I


def test_diversity_of_two_points_is_their_distance_and_follows_the_seed():
    # With only two distinct rows, a pair is either equal (0) or the two points (5): 3-4-5 triangle.
    x = np.array([[0.0, 0.0]] * 400 + [[3.0, 4.0]] * 400)
    first, second = diversity(x, seed=0), diversity(x, seed=1)
    assert 0 < first < 5 and first == diversity(x, seed=0) and first != second
    assert np.isclose(first / 5 * 300, round(first / 5 * 300))  # a whole number of unequal pairs
    with pytest.raises(ValueError, match="N > 300"):
        diversity(x[:300])


def test_multimodality_is_zero_for_identical_generations_and_the_spread_otherwise():
    same = np.repeat(np.random.default_rng(2).standard_normal((5, 1, 8)), 30, axis=1)
    assert multimodality(same) == 0.0
    # Generations on a circle of radius 1 around each text's centre: pair distances ≤ 2, mean ≈ 4/π.
    angles = np.random.default_rng(3).uniform(0, 2 * np.pi, (200, 30))
    circle = np.stack([np.cos(angles), np.sin(angles)], -1)
    assert multimodality(circle) == pytest.approx(4 / np.pi, rel=0.05)


def test_mean_ci95_uses_population_std_over_repeats():
    mean, half = mean_ci95([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert half == pytest.approx(1.96 * np.sqrt(1.25) / 2)  # np.std ddof 0 = sqrt(1.25)
    means, halves = mean_ci95(np.array([[0.5, 0.6, 0.7], [0.7, 0.8, 0.9]]))  # e.g. R-precision top-1..3
    np.testing.assert_allclose(means, [0.6, 0.7, 0.8])
    np.testing.assert_allclose(halves, [1.96 * 0.1 / np.sqrt(2)] * 3)


def tiny_vectorizer() -> WordVectorizer:
    words = ["sos", "eos", "unk", "a", "man", "walks", "left"]
    vectors = np.arange(len(words) * 300, dtype=np.float64).reshape(len(words), 300)
    return WordVectorizer(vectors, {w: i for i, w in enumerate(words)})


def test_word_vectorizer_maps_vip_words_pos_tags_and_unknown_words():
    vec = tiny_vectorizer()
    word, pos = vec["left/ADV"]
    assert word[0] == 6 * 300 and POS_CLASSES[pos.argmax()] == "Loc_VIP" and pos.sum() == 1
    word, pos = vec["man/NOUN"]
    assert word[0] == 4 * 300 and POS_CLASSES[pos.argmax()] == "NOUN"
    word, pos = vec["zebra/NOUN"]
    assert word[0] == 2 * 300 and POS_CLASSES[pos.argmax()] == "OTHER"  # unk
    assert POS_CLASSES[vec["a/SCONJ"][1].argmax()] == "OTHER"  # tag outside the 15 classes


def test_word_vectorizer_wraps_in_sos_eos_and_pads_to_22():
    words, pos, length = tiny_vectorizer().encode(["a/DET", "man/NOUN", "walks/VERB"])
    assert words.shape == (22, 300) and pos.shape == (22, 15) and length == 5
    assert [w[0] // 300 for w in words[:6]] == [0, 3, 4, 5, 1, 2]  # sos a man walks eos unk
    _, _, long_length = tiny_vectorizer().encode(["a/DET"] * 30)
    assert long_length == 22  # truncated to 20 tokens


def test_word_vectorizer_reads_the_glove_files(tmp_path):
    vec = tiny_vectorizer()
    np.save(tmp_path / "our_vab_data.npy", vec.vectors)
    for name, obj in (("our_vab_words.pkl", list(vec.word_to_row)), ("our_vab_idx.pkl", vec.word_to_row)):
        with open(tmp_path / name, "wb") as f:
            pickle.dump(obj, f)
    with pytest.raises(MissingWeightsError, match="fac88da1"):  # our pickles are not T2M's (sha256)
        WordVectorizer.from_files(tmp_path)


def evaluator_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    words, lengths = torch.randn(3, 22, 300, generator=g), torch.tensor([5, 22, 9])
    pos = torch.zeros(3, 22, 15)
    pos[..., 1] = 1
    motions, frames = torch.randn(3, 64, 263, generator=g), torch.tensor([40, 64, 33])
    return words, pos, lengths, motions, frames


def test_evaluator_gives_512_d_embeddings_in_input_order():
    torch.manual_seed(0)
    model = T2MEvaluator().eval()
    words, pos, lengths, motions, frames = evaluator_inputs()
    text, motion = model.encode_text(words, pos, lengths), model.encode_motion(motions, frames)
    assert text.shape == motion.shape == (3, 512)
    # Each row depends only on its own sample (unsorted packing keeps the order) and its valid prefix.
    np.testing.assert_allclose(model.encode_text(words[1:2], pos[1:2], lengths[1:2])[0], text[1], atol=1e-5)
    padded = motions.clone()
    padded[0, 43:] = 1e3  # the 10 steps of motion 0 see frames < 4·9 + 7 = 43 (two k4 s2 p1 convs)
    np.testing.assert_allclose(model.encode_motion(padded, frames)[0], motion[0], atol=1e-5)
    np.testing.assert_array_equal(model.encode_motion(motions, frames), motion)  # deterministic
    with pytest.raises(ValueError, match="at least 4 frames"):
        model.encode_motion(motions, torch.tensor([3, 8, 8]))


def test_evaluator_checkpoint_round_trip_in_the_t2m_layout(tmp_path):
    torch.manual_seed(1)
    model = T2MEvaluator().eval()
    ckpt = model.checkpoint()
    assert set(ckpt) == {"text_encoder", "movement_encoder", "motion_encoder"}
    assert ckpt["movement_encoder"]["main.3.weight"].shape == (512, 512, 4)  # Sequential index of T2M
    assert ckpt["motion_encoder"]["gru.weight_hh_l0_reverse"].shape == (3 * 1024, 1024)
    assert ckpt["text_encoder"]["hidden"].shape == (2, 1, 512)
    torch.save({**ckpt, "epoch": 7}, tmp_path / "finest.tar")
    loaded = load_t2m_evaluator(tmp_path)
    words, pos, lengths, motions, frames = evaluator_inputs(seed=2)
    text = model.encode_text(words, pos, lengths)
    torch.testing.assert_close(loaded.encode_text(words, pos, lengths), text)
    torch.testing.assert_close(loaded.encode_motion(motions, frames), model.encode_motion(motions, frames))


def test_missing_evaluator_names_file_and_source(tmp_path):
    with pytest.raises(MissingWeightsError, match="finest.tar.*text-to-motion"):
        load_t2m_evaluator(tmp_path)
