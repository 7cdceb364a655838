"""Motion media: the stick-figure MP4 and the SMPL mesh fit (on a fake SMPL model file made here)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from layersync.core.weights import MissingWeightsError
from layersync.motion import render as R
from layersync.motion import skeleton as sk
from layersync.motion import synthetic as S

SMPL_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)


def test_stick_figure_mp4_has_every_frame_at_20_fps(tmp_path):
    import av

    joints = S.synth_clip("wave", 11, np.random.default_rng(0))[0]  # (12, 22, 3)
    path = tmp_path / "wave.mp4"
    codec = R.write_stick_mp4(joints, path, title="a person waves", size_px=160)
    assert codec in R.CODECS
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(video=0))
        assert len(frames) == 12 and stream.average_rate == 20
        assert (frames[0].width, frames[0].height) == (160, 160)
        assert stream.codec_context.name == ("h264" if codec == "libx264" else codec)
        pixels = frames[5].to_ndarray(format="rgb24")
        assert pixels.std() > 5  # a drawing, not a blank frame
    with pytest.raises(ValueError, match="finite"):
        R.write_stick_mp4(np.full((3, 22, 3), np.nan), path)


@pytest.fixture(scope="module")
def fake_smpl(tmp_path_factory):
    """An SMPL-format model whose 24 joints sit on the embedded skeleton; 6890 vertices, as smplx expects."""
    rng = np.random.default_rng(0)
    vertices = 6890
    q = torch.zeros(1, 22, 4, dtype=torch.float64)
    q[..., 0] = 1
    rest = sk.forward_kinematics(q, torch.tensor([[0.0, 0.92, 0.0]], dtype=torch.float64),
                                 torch.tensor(S.REST_OFFSETS, dtype=torch.float64))[0].numpy()
    joints24 = np.concatenate([rest, rest[20:22] + [[0.0, -0.08, 0.0], [0.0, -0.08, 0.0]]])  # + two hands
    owner = np.arange(vertices) % 24  # each vertex rides on one joint, near it
    template = joints24[owner] + rng.normal(scale=0.02, size=(vertices, 3))
    regressor = np.zeros((24, vertices))
    regressor[owner, np.arange(vertices)] = 1.0
    regressor /= regressor.sum(1, keepdims=True)  # joint = mean of its vertices
    weights = np.zeros((vertices, 24))
    weights[np.arange(vertices), owner] = 1.0
    model = {"v_template": template, "shapedirs": rng.normal(scale=1e-3, size=(vertices, 3, 10)),
             "posedirs": np.zeros((vertices, 3, 207)), "J_regressor": regressor, "weights": weights,
             "kintree_table": np.array([[2**32 - 1 if p < 0 else p for p in SMPL_PARENTS], list(range(24))]),
             "f": np.array([[i, i + 1, i + 2] for i in range(0, 90, 3)])}
    path = tmp_path_factory.mktemp("smpl") / "SMPL_NEUTRAL.pkl"
    with open(path, "wb") as f:
        pickle.dump(model, f)
    return path


def test_smpl_fit_follows_the_joints_and_writes_mesh_files(fake_smpl, tmp_path):
    joints = S.synth_clip("raise_arms", 3, np.random.default_rng(1))[0][[0, 2]]  # (2, 22, 3)
    vertices, faces, error = R.fit_smpl(joints, fake_smpl.parent, iterations=150)
    assert vertices.shape == (2, 6890, 3) and faces.shape == (30, 3)
    assert error < 0.02  # metres, mean over joints: SMPL's tree is the skeleton's, so it can match it
    npz = R.write_mesh(vertices, faces, tmp_path / "mesh")
    assert np.load(npz)["vertices"].shape == (2, 6890, 3)
    obj = (tmp_path / "mesh" / "frame_0001.obj").read_text().splitlines()
    assert sum(line.startswith("v ") for line in obj) == 6890 and obj[-1] == "f 88 89 90"


def test_smpl_without_the_model_file_names_it(tmp_path):
    with pytest.raises(MissingWeightsError, match="SMPL_NEUTRAL.pkl .*smpl.is.tue.mpg.de"):
        R.fit_smpl(np.zeros((1, 22, 3)), tmp_path)
