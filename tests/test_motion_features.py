"""The HumanML3D 263-d representation both ways, its skeleton algebra, and the embedded motion generator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter1d

from layersync.motion import features as F
from layersync.motion import skeleton as sk
from layersync.motion import synthetic as S


def clip(action: str, frames: int = 50, seed: int = 0) -> np.ndarray:
    return S.synth_clip(action, frames, np.random.default_rng(seed))[0]  # (frames + 1, 22, 3)


def y_turn(joints: np.ndarray, angle: float, shift=(0.0, 0.0, 0.0)) -> np.ndarray:
    q = sk.y_rotation(torch.tensor(angle, dtype=torch.float64))
    return (sk.qrot(q, torch.from_numpy(joints)) + torch.tensor(shift, dtype=torch.float64)).numpy()


def test_quaternion_rotation_matches_the_matrix_and_composes():
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(6, 4, generator=g, dtype=torch.float64), dim=-1)
    r = torch.nn.functional.normalize(torch.randn(6, 4, generator=g, dtype=torch.float64), dim=-1)
    v = torch.randn(6, 3, generator=g, dtype=torch.float64)
    w, x, y, z = q.unbind(-1)  # the textbook matrix of a unit quaternion
    m = torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
                     2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
                     2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1).reshape(6, 3, 3)
    torch.testing.assert_close(sk.qrot(q, v), (m @ v[..., None])[..., 0], rtol=0, atol=1e-12)
    torch.testing.assert_close(sk.qrot(sk.qmul(q, r), v), sk.qrot(q, sk.qrot(r, v)), rtol=0, atol=1e-12)
    torch.testing.assert_close(sk.qrot(sk.qinv(q), sk.qrot(q, v)), v, rtol=0, atol=1e-12)


def test_qbetween_maps_one_direction_onto_the_other_even_when_opposite():
    a = torch.tensor([[0.3, -1.0, 0.2], [0.0, 0.0, -1.0], [0.0, -1.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    q = sk.qbetween(a, b)
    assert torch.isfinite(q).all()  # HumanML3D's version gives NaN for the two opposite pairs
    torch.testing.assert_close(sk.qrot(q, a / a.norm(dim=-1, keepdim=True)), b / b.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(q[1], torch.tensor([0.0, 0.0, 1.0, 0.0], dtype=torch.float64))  # about y


def test_gaussian_smooth_is_scipys_gaussian_filter1d_nearest():
    x = torch.randn(70, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = gaussian_filter1d(x.numpy(), 20, axis=0, mode="nearest")
    np.testing.assert_allclose(sk.gaussian_smooth(x, 20.0).numpy(), expected, atol=1e-12)


def test_skeleton_tables_describe_the_22_smpl_joints():
    assert sk.PARENTS == (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19)
    assert sk.JOINT_NAMES[sk.MIRROR_PERMUTATION[16]] == "right_shoulder"
    assert sorted(j for chain in sk.KINEMATIC_CHAIN for j in chain[1:]) == list(range(1, 22))


def test_features_have_humanml3d_layout():
    joints = clip("stand", 40)
    feats, processed = F.joints_to_features(joints)
    assert feats.shape == (40, 263) and feats.dtype == np.float32
    assert processed.shape == (41, 22, 3) and processed[..., 1].min() == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(processed[0, 0, [0, 2]], 0.0, atol=1e-12)  # first root above the origin
    np.testing.assert_allclose(feats[:, 3], processed[:-1, 0, 1], atol=1e-6)  # root height
    # ric of frame 0: joints around the root's ground projection, unturned (HumanML3D's identity heading).
    around_root = processed[0, 1:] - processed[0, 0] * [1, 0, 1]
    np.testing.assert_allclose(feats[0, 4:67].reshape(21, 3), around_root, atol=1e-6)
    assert (feats[:, 259:] == 1).mean() > 0.9  # standing still: the feet are in contact


def _rot_y(angle: np.ndarray) -> np.ndarray:
    """(..., 3, 3) matrices turning by `angle` about +y (+z → +x for a positive angle)."""
    c, s, z, o = np.cos(angle), np.sin(angle), np.zeros_like(angle), np.ones_like(angle)
    return np.stack([c, z, s, z, o, z, -s, z, c], -1).reshape(*np.shape(angle), 3, 3)


def _arc(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rodrigues: the shortest-arc matrix taking unit u onto unit v, (..., 3, 3)."""
    k, c = np.cross(u, v), (u * v).sum(-1)[..., None, None]
    kx = np.zeros(k.shape + (3,))
    kx[..., 0, 1], kx[..., 0, 2], kx[..., 1, 2] = -k[..., 2], k[..., 1], -k[..., 0]
    kx = kx - np.swapaxes(kx, -1, -2)
    return np.eye(3) + kx + kx @ kx / (1 + c)


def _heading(across: np.ndarray) -> np.ndarray:
    """Heading ψ (radians, ψ = 0 facing +z) of the forward direction up × across."""
    forward = np.cross([0.0, 1.0, 0.0], across / np.linalg.norm(across, axis=-1, keepdims=True))
    return np.arctan2(forward[..., 0], forward[..., 2]), forward


def humanml3d_steps(joints: np.ndarray) -> np.ndarray:
    """The 263 features from the steps HumanML3D documents (process_file @ 9176e8f), written with angles and
    matrices in numpy rather than quaternions: no retargeting, float64."""
    j = joints - [0.0, joints[..., 1].min(), 0.0]
    j = j - j[0, 0] * [1.0, 0.0, 1.0]
    psi0, _ = _heading(j[0, 2] - j[0, 1] + j[0, 17] - j[0, 16])  # first frame: r_hip − l_hip + r_sdr − l_sdr
    j = j @ _rot_y(-psi0).T  # turn the body by −ψ0 so that it faces +z
    _, forward = _heading(j[:, 1] - j[:, 2] + j[:, 17] - j[:, 16])  # IK: l_hip − r_hip + r_sdr − l_sdr
    forward = gaussian_filter1d(forward, 20, axis=0, mode="nearest")
    psi = np.arctan2(forward[:, 0], forward[:, 2])
    psi[0] = 0.0  # HumanML3D's IK gives frame 0 the identity heading
    heading = _rot_y(-psi)  # (T, 3, 3): world → body frame
    root = j[:, 0]
    vel = np.einsum("tij,tj->ti", heading[1:], root[1:] - root[:-1])
    half_turn = np.arcsin(np.sin(-(psi[1:] - psi[:-1]) / 2))
    ric = np.einsum("tij,tkj->tki", heading, j - root[:, None] * [1.0, 0.0, 1.0])
    # Each chain starts from the root's rotation (HumanML3D's, the world → body turn); later links are
    # relative to the parent bone's arc.
    arcs = {c: _arc(np.array(sk.RAW_OFFSETS[c], float), (j[:, c] - j[:, p]) /
                    np.linalg.norm(j[:, c] - j[:, p], axis=-1, keepdims=True))
            for chain in sk.KINEMATIC_CHAIN for p, c in zip(chain[:-1], chain[1:])}
    local = {}
    for chain in sk.KINEMATIC_CHAIN:
        parent_rot = heading
        for c in chain[1:]:
            local[c] = np.swapaxes(parent_rot, -1, -2) @ arcs[c]
            parent_rot = arcs[c]
    rot6d = np.concatenate([np.concatenate([local[c][..., 0], local[c][..., 1]], -1)
                            for c in range(1, 22)], -1)
    local_vel = np.einsum("tij,tkj->tki", heading[:-1], j[1:] - j[:-1])
    step = ((j[1:] - j[:-1]) ** 2).sum(-1)
    contacts = (step[:, [7, 10, 8, 11]] < 0.002).astype(float)
    return np.concatenate([half_turn[:, None], vel[:, [0, 2]], root[:-1, 1:2], ric[:-1, 1:].reshape(-1, 63),
                           rot6d[:-1], local_vel.reshape(-1, 66), contacts], -1)


def test_features_match_an_independent_implementation_of_humanml3d_steps():
    joints = y_turn(clip("turn", 70, seed=2), 0.8)  # a body that does not start facing +z
    # Twist the upper body against the hips, so that the hips' order in the facing direction matters.
    twist = 0.5 * np.sin(np.linspace(0.0, 3.0, len(joints)))
    upper = [3, 6, 9] + list(range(12, 22))
    pelvis = joints[:, :1]
    joints[:, upper] = np.einsum("tij,tkj->tki", _rot_y(twist), joints[:, upper] - pelvis) + pelvis
    feats, _ = F.joints_to_features(joints)
    expected = humanml3d_steps(joints)
    for name, sl in F.GROUPS.items():
        np.testing.assert_allclose(feats[:, sl], expected[:, sl], atol=2e-6, err_msg=name)


def test_running_feet_leave_the_ground_and_contacts_follow_the_threshold():
    feats, processed = F.joints_to_features(clip("run", 60))
    assert 0.2 < (feats[:, 259:] == 0).mean() < 1.0
    step = ((processed[1:, 7] - processed[:-1, 7]) ** 2).sum(-1)  # left ankle, squared m per frame
    np.testing.assert_array_equal(feats[:, 259], (step < F.FEET_THRESHOLD).astype(np.float32))


def test_round_trip_joints_features_joints_with_constant_heading_is_exact():
    frames = 50  # legs swing about x, the root moves forward and bobs: hips and shoulders keep one heading
    t = torch.arange(frames, dtype=torch.float64) / 20
    quats = torch.zeros(frames, 22, 4, dtype=torch.float64)
    quats[..., 0] = 1.0
    for joint, sign in ((4, 1.0), (5, -1.0)):  # thighs
        half = 0.2 * sign * torch.sin(2 * math.pi * t)
        quats[:, joint, 0], quats[:, joint, 1] = torch.cos(half), torch.sin(half)
    root = torch.stack([torch.zeros_like(t), 0.92 + 0.02 * torch.cos(4 * math.pi * t), 1.3 * t], -1)
    joints = sk.forward_kinematics(quats, root, torch.tensor(S.REST_OFFSETS, dtype=torch.float64))
    feats, processed = F.joints_to_features(joints.numpy())
    recovered = F.features_to_joints(torch.from_numpy(feats).double()).numpy()
    np.testing.assert_allclose(recovered, processed[:-1], atol=1e-6)
    np.testing.assert_allclose(feats[:, 2], 1.3 / 20, atol=1e-6)  # forward speed, metres per frame


@pytest.mark.parametrize("action", ["turn", "walk", "jump"])
def test_round_trip_recovers_the_processed_joints(action):
    # Frame 0 has the identity heading in the features and in the recovery, so nothing is left over.
    feats, processed = F.joints_to_features(clip(action, 60, seed=3))
    recovered = F.features_to_joints(torch.from_numpy(feats).double())
    torch.testing.assert_close(recovered, torch.from_numpy(processed[:-1]), rtol=0, atol=1e-5)  # float32 sums


def test_features_ignore_where_the_clip_starts_and_which_way_it_faces():
    joints = clip("walk", 45, seed=5)
    moved = y_turn(joints, 2.1, shift=(3.0, 0.7, -1.0))
    np.testing.assert_allclose(F.joints_to_features(moved)[0], F.joints_to_features(joints)[0], atol=2e-5)


def test_turning_left_integrates_to_a_left_turn_and_its_mirror_to_a_right_turn():
    rng = np.random.default_rng(7)
    while True:  # draw until the turn clip turns by 90° to the left
        pose, captions = S.make_action("turn", 81, rng)
        if "left" in captions[0] and "around" not in " ".join(captions):
            break
    joints = pose.joints(torch.tensor(S.REST_OFFSETS, dtype=torch.float64)).numpy()
    feats, processed = F.joints_to_features(joints)
    mirrored, _ = F.joints_to_features(sk.mirror_joints(torch.from_numpy(joints)).numpy())
    # Heading ψ = atan2(forward_x, forward_z) of the smoothed forward direction (⊥ to hips + shoulders,
    # the hips in HumanML3D's IK order), ψ = 0 on frame 0.
    across = processed[:, 1] - processed[:, 2] + processed[:, 17] - processed[:, 16]
    across /= np.linalg.norm(across, axis=-1, keepdims=True)
    forward = gaussian_filter1d(np.cross([0.0, 1.0, 0.0], across), 20, axis=0, mode="nearest")
    heading = np.unwrap(np.arctan2(forward[:, 0], forward[:, 2]))
    # The feature is the half-angle per frame of the world → body rotation: a left turn (ψ up) sums negative.
    turned = -2 * feats[:, 0].astype(np.float64).sum()
    assert heading[-1] - heading[0] > 1.0  # a clear left turn, softened by the σ = 20 frames smoothing
    assert turned == pytest.approx(heading[-1], abs=1e-4)  # from ψ = 0 on frame 0 to the last frame
    np.testing.assert_allclose(mirrored[:, 0], -feats[:, 0], atol=1e-5)


def test_retargeting_keeps_bone_directions_and_takes_the_target_lengths():
    joints = clip("wave", 30)
    same = F.joints_to_features(joints, target_offsets=sk.offsets_from_lengths(sk.bone_lengths(
        torch.from_numpy(joints[0]))))[0]
    np.testing.assert_allclose(same, F.joints_to_features(joints)[0], atol=1e-5)
    target = S.target_offsets() * 1.2
    _, processed = F.joints_to_features(joints, target_offsets=target)
    lengths = sk.bone_lengths(torch.from_numpy(processed))  # (T, 22)
    torch.testing.assert_close(lengths, target.norm(dim=-1).expand_as(lengths), rtol=0, atol=1e-9)


def test_batched_clips_give_the_features_of_each_clip():
    batch = np.stack([clip("kick", 40, seed=s) for s in range(3)])
    feats, _ = F.joints_to_features(batch)
    for k in range(3):
        np.testing.assert_allclose(feats[k], F.joints_to_features(batch[k])[0], atol=1e-6)


def test_mean_std_share_one_std_per_group_and_skip_clips_with_nans():
    rng = np.random.default_rng(0)
    clips = [rng.normal(size=(30, 263)).astype(np.float32) * np.linspace(0.5, 2, 263) for _ in range(3)]
    bad = clips[0].copy()
    bad[3, 7] = np.nan
    mean, std = F.feature_mean_std(clips + [bad])
    data = np.concatenate(clips).astype(np.float64)
    np.testing.assert_allclose(mean, data.mean(0), rtol=1e-6)
    for sl in F.GROUPS.values():
        np.testing.assert_allclose(std[sl], data.std(0)[sl].mean(), rtol=1e-6)
    flat = [c.copy() for c in clips]
    for c in flat:
        c[:, 0] = 1.0
    with pytest.raises(ValueError, match="root_rot_velocity is constant"):
        F.feature_mean_std(flat)


def test_features_reject_bad_joints():
    with pytest.raises(ValueError, match=r"\(\.\.\., T, 22, 3\)"):
        F.joints_to_features(np.zeros((10, 21, 3)))
    nan = clip("stand", 10)
    nan[2, 3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        F.joints_to_features(nan)


def test_every_action_makes_tokenised_captions_and_mirroring_swaps_sides():
    rng = np.random.default_rng(11)
    for action in S.ACTIONS:
        joints, captions = S.synth_clip(action, 40, rng)
        assert joints.shape == (41, 22, 3) and np.isfinite(joints).all() and len(set(captions)) == 3
        for caption in captions:
            assert all("/" in t for t in S.tokens_of(caption))
    assert S.mirror_caption("a man waves with his left hand") == "a man waves with his right hand"
    assert S.tokens_of("someone kicks")[1] == "kick/VERB"
    with pytest.raises(ValueError, match="without a part of speech"):
        S.tokens_of("a person moonwalks")
