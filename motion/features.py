"""The HumanML3D 263-d motion representation (Guo et al., CVPR 2022, §3 and `motion_representation.ipynb`).

Per frame, for the 22-joint skeleton (`skeleton.py`), in the body's own heading frame:

    [0:1]     root angular velocity about y (radians of half-angle per frame, arcsin of the quaternion's y)
    [1:3]     root linear velocity in the ground plane (x, z), rotated into the heading frame
    [3:4]     root height
    [4:67]    21 joint positions relative to the root's ground projection, heading-aligned ("ric")
    [67:193]  21 joint rotations (continuous 6-D) from inverse kinematics
    [193:259] 22 joint velocities, heading-aligned
    [259:263] foot contacts (left ankle, left toe, right ankle, right toe): squared speed < 0.002

`joints_to_features` follows HumanML3D's `process_file` (EricGuo5513/HumanML3D @ 9176e8f,
`motion_representation.ipynb`): retarget to a target skeleton (optional), put the lowest joint on the floor,
move the first root to the origin, turn the first frame to face +Z, then read the features in the heading
frame that its inverse kinematics gives (`skeleton.inverse_kinematics`: hips unpacked in its order, the
identity heading on frame 0); T frames of joints give T − 1 frames of features. `features_to_joints` is
`recover_from_ric`: it integrates the root's angular and linear velocity from a zero heading at frame 0,
the heading the features give frame 0, so the round trip returns the processed joints.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from layersync.core.errors import UserValueError
from layersync.motion import skeleton as sk

FEATURE_DIM = 263
FPS = 20  # HumanML3D resamples every clip to 20 frames per second
FEET_THRESHOLD = 0.002  # squared displacement per frame (m²) below which a foot is in contact
# Feature groups; Std.npy shares one std per group (HumanML3D's cal_mean_variance).
GROUPS = {
    "root_rot_velocity": slice(0, 1),
    "root_linear_velocity": slice(1, 3),
    "root_y": slice(3, 4),
    "ric": slice(4, 67),
    "rotation_6d": slice(67, 193),
    "local_velocity": slice(193, 259),
    "foot_contact": slice(259, 263),
}


def _as_joints(joints) -> Tensor:
    x = torch.as_tensor(np.asarray(joints), dtype=torch.float64)
    if x.ndim < 3 or x.shape[-2:] != (sk.NUM_JOINTS, 3):
        raise UserValueError(f"joints must be (..., T, {sk.NUM_JOINTS}, 3), got {tuple(x.shape)}")
    if x.shape[-3] < 2:
        raise UserValueError(f"need at least 2 frames of joints to take velocities, got {x.shape[-3]}")
    if not torch.isfinite(x).all():
        raise UserValueError("joints contain NaN or inf values")
    return x


def retarget(joints: Tensor, target_offsets: Tensor) -> Tensor:
    """HumanML3D's `uniform_skeleton`: the same bone directions on the target bone lengths, (..., T, 22, 3).

    Local rotations come from inverse kinematics; the root path is scaled by the ratio of the leg lengths
    (thigh + shin) of target and source, the source measured on its first frame.
    """
    bones = list(sk.LEG_BONES)
    src_leg = sk.bone_lengths(joints[..., 0, :, :])[..., bones].sum(-1)  # (...,)
    scale = target_offsets.norm(dim=-1)[bones].sum() / src_leg
    quats = sk.inverse_kinematics(joints, smooth_forward=False)  # (..., T, 22, 4)
    return sk.forward_kinematics(quats, joints[..., 0, :] * scale[..., None, None], target_offsets)


def normalize_placement(joints: Tensor) -> Tensor:
    """Floor at y = 0, first root above the origin, first frame facing +Z: (..., T, 22, 3), same shape."""
    j = joints.clone()
    j[..., 1] -= j[..., 1].amin(dim=(-2, -1))[..., None, None]
    j = j - j[..., :1, :1, :] * j.new_tensor([1.0, 0.0, 1.0])
    up = j.new_tensor([0.0, 1.0, 0.0])
    across = sk.across_direction(j[..., 0, :, :], ik_order=False)  # (..., 3), process_file's order
    forward = torch.linalg.cross(up.expand_as(across), across, dim=-1)
    forward = forward / forward.norm(dim=-1, keepdim=True)
    turn = sk.qbetween(forward, j.new_tensor([0.0, 0.0, 1.0]).expand_as(forward))  # (..., 4)
    return sk.qrot(turn[..., None, None, :], j)


def foot_contacts(joints: Tensor, threshold: float = FEET_THRESHOLD) -> tuple[Tensor, Tensor]:
    """(..., T−1, 2) left and right contacts: squared displacement per frame of ankle and toe < threshold."""
    step = (joints[..., 1:, :, :] - joints[..., :-1, :, :]).square().sum(-1)  # (..., T-1, 22)
    left = (step[..., list(sk.FOOT_LEFT)] < threshold).to(joints.dtype)
    right = (step[..., list(sk.FOOT_RIGHT)] < threshold).to(joints.dtype)
    return left, right


def joints_to_features(joints, target_offsets: Tensor | np.ndarray | None = None,
                       feet_threshold: float = FEET_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """(..., T, 22, 3) joints in metres, y up → ((..., T−1, 263) float32 features, processed joints).

    target_offsets: (22, 3) bone offsets of the skeleton to retarget onto (HumanML3D uses those of clip
    000021's first frame); None keeps the clip's own bone lengths. Leading dims batch clips of one length.
    """
    j = _as_joints(joints)
    if target_offsets is not None:
        j = retarget(j, torch.as_tensor(np.asarray(target_offsets), dtype=torch.float64))
    j = normalize_placement(j)  # (..., T, 22, 3): the "global positions"
    feet_l, feet_r = foot_contacts(j, feet_threshold)

    quats = sk.inverse_kinematics(j, smooth_forward=True)  # (..., T, 22, 4)
    r_rot = quats[..., 0, :]  # (..., T, 4): world → heading frame
    root = j[..., 0, :]  # (..., T, 3)
    velocity = sk.qrot(r_rot[..., 1:, :], root[..., 1:, :] - root[..., :-1, :])  # (..., T-1, 3)
    r_velocity = sk.qmul(r_rot[..., 1:, :], sk.qinv(r_rot[..., :-1, :]))  # (..., T-1, 4): about y

    local = j - root[..., None, :] * j.new_tensor([1.0, 0.0, 1.0])
    local = sk.qrot(r_rot[..., None, :], local)  # (..., T, 22, 3), heading-aligned around the root

    root_feats = [torch.arcsin(r_velocity[..., 2:3]), velocity[..., [0, 2]], local[..., :-1, 0, 1:2]]
    ric = local[..., :-1, 1:, :].flatten(-2)  # (..., T-1, 63)
    rot6d = sk.quat_to_cont6d(quats[..., :-1, 1:, :]).flatten(-2)  # (..., T-1, 126)
    local_vel = sk.qrot(r_rot[..., :-1, None, :], j[..., 1:, :, :] - j[..., :-1, :, :]).flatten(-2)  # 66
    feats = torch.cat([*root_feats, ric, rot6d, local_vel, feet_l, feet_r], dim=-1)  # (..., T-1, 263)
    return feats.float().numpy(), j.numpy()


def root_trajectory(features: Tensor) -> tuple[Tensor, Tensor]:
    """Integrate the root: heading quaternions (..., T, 4) and positions (..., T, 3) from features."""
    half_angle = torch.zeros_like(features[..., 0])
    half_angle[..., 1:] = features[..., :-1, 0]
    half_angle = torch.cumsum(half_angle, dim=-1)  # (..., T): heading 0 at frame 0
    r_rot = sk.y_rotation(2 * half_angle)  # (..., T, 4)
    step = torch.zeros(*features.shape[:-1], 3, dtype=features.dtype, device=features.device)
    step[..., 1:, 0] = features[..., :-1, 1]
    step[..., 1:, 2] = features[..., :-1, 2]
    pos = torch.cumsum(sk.qrot(sk.qinv(r_rot), step), dim=-2)  # (..., T, 3)
    pos[..., 1] = features[..., 3]
    return r_rot, pos


def features_to_joints(features) -> Tensor:
    """HumanML3D's `recover_from_ric`: (..., T, 263) features → (..., T, 22, 3) joints, in their dtype."""
    f = torch.as_tensor(features)
    if f.shape[-1] != FEATURE_DIM:
        raise UserValueError(f"features must end in {FEATURE_DIM}, got shape {tuple(f.shape)}")
    if not f.is_floating_point():
        f = f.double()
    r_rot, r_pos = root_trajectory(f)
    ric = f[..., GROUPS["ric"]].reshape(*f.shape[:-1], sk.NUM_JOINTS - 1, 3)  # (..., T, 21, 3)
    ric = sk.qrot(sk.qinv(r_rot)[..., None, :], ric)
    ric = ric + torch.stack([r_pos[..., 0], torch.zeros_like(r_pos[..., 0]), r_pos[..., 2]], -1)[..., None, :]
    return torch.cat([r_pos[..., None, :], ric], dim=-2)


def feature_mean_std(clips: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean.npy / Std.npy over every frame of `clips` (each (T, 263)); std shared within each group.

    Clips with NaN or inf are skipped, as in HumanML3D's cal_mean_variance.
    """
    finite = [np.asarray(c, dtype=np.float64) for c in clips if np.isfinite(c).all()]
    if not finite:
        raise UserValueError("no finite clip to compute the feature mean and std from")
    data = np.concatenate(finite, axis=0)  # (frames, 263)
    if data.shape[1] != FEATURE_DIM:
        raise UserValueError(f"clips must be (T, {FEATURE_DIM}), got (·, {data.shape[1]})")
    mean, std = data.mean(0), data.std(0)
    for name, sl in GROUPS.items():
        std[sl] = std[sl].mean()
        if std[sl][0] <= 0:
            raise UserValueError(f"feature group {name} is constant over all {len(data)} frames; its std is "
                                 "0 and it cannot be normalised: use more varied motions")
    return mean.astype(np.float32), std.astype(np.float32)
