"""HumanML3D loading on a tiny folder made here (with a NaN file and a bad caption segment), the trainer's
data source, and the embedded set written in the same layout."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from layersync.core.sample_rng import sample_keys
from layersync.motion import humanml3d as H
from layersync.motion import synthetic as S
from layersync.motion.features import FEATURE_DIM, feature_mean_std


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A HumanML3D-shaped folder: random features, hand-written captions, the awkward cases included."""
    root = tmp_path_factory.mktemp("humanml3d")
    for sub in ("new_joint_vecs", "new_joints", "texts"):
        (root / sub).mkdir()
    rng = np.random.default_rng(0)
    lengths = {"000000": 120, "000001": 60, "M000001": 60, "000002": 80, "000003": 30, "000004": 200,
               "000005": 70, "000006": 90}
    for clip_id, frames in lengths.items():
        feats = rng.normal(size=(frames, FEATURE_DIM)).astype(np.float32)
        if clip_id == "000002":
            feats[10, 5] = np.nan  # HumanML3D has a few such files; they are dropped, not trained on
        np.save(root / "new_joint_vecs" / f"{clip_id}.npy", feats)
        np.save(root / "new_joints" / f"{clip_id}.npy", rng.normal(size=(frames, 22, 3)).astype(np.float32))
    texts = {
        "000000": ["a person walks forward#a/DET person/NOUN walk/VERB forward/ADV#0.0#0.0",
                   "then the person waves#the/DET person/NOUN wave/VERB#3.0#5.5",  # frames 60..110
                   "a broken segment#a/DET broken/ADJ segment/NOUN#4.0#2.0",  # end before start
                   "a person strolls#a/DET person/NOUN stroll/VERB#nan#nan"],  # NaN times: the whole clip
        "000001": ["a person turns left#a/DET person/NOUN turn/VERB left/ADJ#0.0#0.0"],
        "M000001": ["a person turns right#a/DET person/NOUN turn/VERB right/ADJ#0.0#0.0"],
        "000002": ["nan clip#nan/NOUN clip/NOUN#0.0#0.0"],
        "000003": ["too short#too/ADV short/ADJ#0.0#0.0"],
        "000004": ["too long#too/ADV long/ADJ#0.0#0.0"],
        "000005": ["only a short segment#only/ADV#0.0#1.0"],  # 20 frames < 40: nothing left of the clip
        "000006": ["someone jumps#someone/PRON jump/VERB#0.0#0.0", ""],
    }
    for clip_id, lines in texts.items():
        (root / "texts" / f"{clip_id}.txt").write_text("\n".join(lines) + "\n")
    (root / "train.txt").write_text("\n".join(lengths) + "\n")
    (root / "test.txt").write_text("000001\nM000001\n")
    (root / "val.txt").write_text("000006\n")
    np.save(root / "Mean.npy", np.zeros(FEATURE_DIM, np.float32))
    np.save(root / "Std.npy", np.full(FEATURE_DIM, 2.0, np.float32))
    return root


def test_load_split_keeps_good_clips_and_segments_and_logs_every_drop(folder, caplog):
    with caplog.at_level(logging.WARNING, logger="layersync"):
        data = H.load_split(folder, "train")
    names = [item.name for item in data.items]
    assert names == ["000000:60-110", "000000", "000001", "M000001", "000006"]
    whole = data.items[1]
    assert [c.text for c in whole.captions] == ["a person walks forward", "a person strolls"]
    assert whole.captions[0].tokens == ("a/DET", "person/NOUN", "walk/VERB", "forward/ADV")
    clip = np.load(folder / "new_joint_vecs" / "000000.npy")
    np.testing.assert_array_equal(data.items[0].features, clip[60:110])
    message = caplog.text
    for reason, example in (("NaN or inf in features", "000002"), ("bad caption segment", "000000.txt:3"),
                            ("2 × clip length out of range", "000003"),
                            ("segment length out of range", "000005.txt:1"),
                            ("no usable caption", "000005")):
        assert reason in message and example in message, (reason, message)
    assert "kept 5 items" in message and "000004" not in names  # 200 frames ≥ 196 + 4: dropped as in T2M


def test_bad_features_and_captions_files_are_skipped_counted_and_named(folder, tmp_path, caplog):
    import shutil

    root = tmp_path / "h"
    shutil.copytree(folder, root)
    feats = root / "new_joint_vecs"
    good = (feats / "000001.npy").read_bytes()
    bad = {"000010": good[: len(good) // 2],  # truncated: "cannot reshape array of size …"
           "000011": b"\x00garbage" * 50,  # not a .npy file
           "000012": b""}  # 0 bytes: EOFError
    for clip_id, data in bad.items():
        (feats / f"{clip_id}.npy").write_bytes(data)
        (root / "texts" / f"{clip_id}.txt").write_text("a person walks#a/DET#0.0#0.0\n")
    np.save(feats / "000013.npy", np.zeros((60, 7), np.float32))  # wrong feature width
    (root / "texts" / "000013.txt").write_text("a person walks#a/DET#0.0#0.0\n")
    for clip_id, encoding in (("000014", "latin-1"), ("000015", "utf-16")):
        (feats / f"{clip_id}.npy").write_bytes(good)
        (root / "texts" / f"{clip_id}.txt").write_bytes("a person sautés#a/DET#0.0#0.0\n".encode(encoding))
    (feats / "000016.npy").write_bytes(good)
    (root / "texts" / "000016.txt").write_text("no separators here\nsomeone runs#someone/PRON#0.0#0.0\n")
    ids = ["000001", *bad, "000013", "000014", "000015", "000016"]
    (root / "train.txt").write_text("\n".join(ids) + "\n")
    with caplog.at_level(logging.WARNING, logger="layersync"):
        data = H.load_split(root, "train")
    assert [item.name for item in data.items] == ["000001", "000016"]  # the good line of 000016 is kept
    message = caplog.text
    for expected in ("3 × unreadable features file (000010.npy: ValueError, 000011.npy: ValueError, "
                     "000012.npy: EOFError)", "1 × features not (T, 263) (000013.npy: (60, 7))",
                     "2 × captions file not UTF-8 (000014.txt: byte", "000015.txt: byte",
                     "1 × malformed caption line (000016.txt:1)", "kept 2 items"):
        assert expected in message, (expected, message)


def test_malformed_caption_line_and_missing_stats_are_clear_errors(folder, tmp_path):
    with pytest.raises(ValueError, match=r"000009\.txt:1: expected 'caption#tokens#start#end'"):
        H.parse_caption_line("just a caption", "texts/000009.txt:1")
    with pytest.raises(ValueError, match="are not numbers"):
        H.parse_caption_line("a#b#zero#1", "x.txt:2")
    with pytest.raises(FileNotFoundError, match="Mean.npy"):
        H.load_split(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="no such HumanML3D folder"):
        H.load_split(tmp_path / "nope", "train")


def test_source_batches_are_normalised_padded_masked_and_cropped_to_multiples_of_four(folder):
    data = H.load_split(folder, "train")
    texts = sorted({c.text for item in data.items for c in item.captions})
    table = torch.arange(len(texts), dtype=torch.float32)[:, None].repeat(1, 3)  # row i = (i, i, i)
    source = H.MotionSource(data, {t: i for i, t in enumerate(texts)}, table, max_frames=196)
    assert len(source) == 6  # (item, caption) pairs: segment 1, 000000 2, 000001, M000001, 000006 1 each
    keys = sample_keys(0, 0, torch.arange(6))
    batch = source.batch(torch.arange(6), keys)
    assert batch.x.shape == (6, FEATURE_DIM, 196) and batch.token_mask.shape == (6, 196)
    assert batch.loss_mask.shape == (6, 1, 196)
    lengths = batch.token_mask.sum(1)
    assert all(int(n) % 4 == 0 for n in lengths)
    assert int(lengths[1]) in (116, 120) and int(lengths[0]) in (44, 48)  # 120 → 120 or one unit less
    assert (batch.x[~batch.token_mask[:, None].expand_as(batch.x)] == 0).all()
    assert batch.cond[2, 0] == texts.index("a person strolls")
    raw = np.load(folder / "new_joint_vecs" / "000001.npy")
    x3 = batch.x[3, :, : int(lengths[3])].T.numpy()  # a crop of 000001 normalised by (x − 0) / 2
    start = next(s for s in range(61 - len(x3)) if np.allclose(raw[s:s + len(x3)] / 2, x3))
    assert 0 <= start <= 60 - len(x3)
    again = source.batch(torch.arange(6), keys)  # same keys, same crops
    assert torch.equal(again.x, batch.x)
    assert torch.equal(source.batch(torch.arange(2, 4), keys[2:4]).x, batch.x[2:4])  # whatever the batch
    fixed = H.MotionSource(data, {t: i for i, t in enumerate(texts)}, table, 196, random_crop=False)
    assert fixed.batch(torch.tensor([1]), keys[:1]).token_mask.sum() == 120


def test_embedded_set_is_written_in_the_humanml3d_layout_with_mirrored_clips(tmp_path):
    root = S.write_dataset(tmp_path / "synthetic", seed=2, sizes={"train": 13, "test": 2}, max_frames=48)
    train = H.load_split(root, "train", max_frames=48)
    assert len(train.items) == 26 and {item.name[0] for item in train.items} >= {"0", "M"}
    for item in train.items:
        assert 40 <= item.length <= 48 and len(item.captions) == 3
    original = {item.name: item for item in train.items}
    for name, item in original.items():
        if name.startswith("M"):
            twin = original[name[1:]]
            assert item.length == twin.length
            np.testing.assert_allclose(item.features[:, 0], -twin.features[:, 0], atol=1e-5)  # turns mirror
            assert [S.mirror_caption(c.text) for c in twin.captions] == [c.text for c in item.captions]
    mean, std = feature_mean_std([item.features for item in train.items])
    np.testing.assert_allclose(np.load(root / "Mean.npy"), mean, rtol=1e-6)
    np.testing.assert_allclose(np.load(root / "Std.npy"), std, rtol=1e-6)
    joints = np.load(root / "new_joints" / f"{train.items[0].name}.npy")
    assert joints.shape == (train.items[0].length, 22, 3)
