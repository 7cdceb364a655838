"""The HumanML3D 22-joint skeleton (the first 22 SMPL joints) and the quaternion algebra on it.

Joints, Y up, the body facing +Z in its rest frame, +X to its left (SMPL's axes):

     0 pelvis      1 left_hip      2 right_hip     3 spine1       4 left_knee     5 right_knee
     6 spine2      7 left_ankle    8 right_ankle   9 spine3      10 left_foot    11 right_foot
    12 neck       13 left_collar  14 right_collar 15 head        16 left_shoulder 17 right_shoulder
    18 left_elbow 19 right_elbow  20 left_wrist   21 right_wrist

`KINEMATIC_CHAIN` and `RAW_OFFSETS` (unit bone directions of the IK reference pose) are HumanML3D's
`t2m_kinematic_chain` and `t2m_raw_offsets`. Quaternions are (w, x, y, z), Hamilton product, and
`qrot(q, v)` rotates v by q; everything runs in the caller's dtype (float64 for data processing).
"""

from __future__ import annotations

import torch
from torch import Tensor

NUM_JOINTS = 22
JOINT_NAMES = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle",
    "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
)  # fmt: skip
KINEMATIC_CHAIN = (
    (0, 2, 5, 8, 11),  # right leg
    (0, 1, 4, 7, 10),  # left leg
    (0, 3, 6, 9, 12, 15),  # spine and head
    (9, 14, 17, 19, 21),  # right arm
    (9, 13, 16, 18, 20),  # left arm
)
RAW_OFFSETS = (
    (0, 0, 0), (1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, -1, 0), (0, 1, 0), (0, -1, 0), (0, -1, 0),
    (0, 1, 0), (0, 0, 1), (0, 0, 1), (0, 1, 0), (1, 0, 0), (-1, 0, 0), (0, 0, 1), (0, -1, 0), (0, -1, 0),
    (0, -1, 0), (0, -1, 0), (0, -1, 0), (0, -1, 0),
)  # fmt: skip
PARENTS = tuple([-1] + [next(c[i - 1] for c in KINEMATIC_CHAIN for i in range(1, len(c)) if c[i] == j)
                        for j in range(1, NUM_JOINTS)])
FACE_JOINTS = (2, 1, 17, 16)  # right hip, left hip, right shoulder, left shoulder: the facing direction
FOOT_LEFT, FOOT_RIGHT = (7, 10), (8, 11)  # ankle and toe joints whose velocity gives foot contact
LEG_BONES = (5, 8)  # right thigh (hip→knee) and shin (knee→ankle): they set the retargeting scale
# Mirroring (HumanML3D's "M" clips) swaps these joints left ↔ right and negates x.
MIRROR_PERMUTATION = tuple(
    JOINT_NAMES.index(n.replace("left", "@").replace("right", "left").replace("@", "right"))
    for n in JOINT_NAMES
)


def _hamilton(q: tuple, r: tuple) -> tuple:
    """The Hamilton product written out once, for building the bilinear tables below."""
    w1, x1, y1, z1 = q
    w2, x2, y2, z2 = r
    return (w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2)


def _tables() -> tuple[Tensor, Tensor]:
    """Bilinear forms: qmul(q, r) = (q ⊗ r) @ MUL (16, 4); matrix(q) = (q ⊗ q) @ MAT (16, 9), unit q.

    One outer product and one matmul instead of ~30 element-wise ops: these run per joint in Python
    loops over short clips, where the per-op overhead dominates.
    """
    eye = torch.eye(4, dtype=torch.float64)
    mul = torch.stack([torch.tensor(_hamilton(eye[j], eye[k])) for j in range(4) for k in range(4)])
    mat = torch.zeros(16, 9, dtype=torch.float64)
    for j in range(4):
        for k in range(4):
            for col in range(3):  # column c of R is q·e_c·q* (e_c the c-th unit vector as a pure quaternion)
                e = torch.zeros(4, dtype=torch.float64)
                e[col + 1] = 1.0
                image = _hamilton(_hamilton(eye[j], e), eye[k] * torch.tensor([1.0, -1, -1, -1]))
                for row in range(3):
                    mat[4 * j + k, 3 * row + col] += image[row + 1]
    return mul, mat


_MUL, _MAT = _tables()


def _outer(q: Tensor, r: Tensor) -> Tensor:
    q, r = torch.broadcast_tensors(q, r)
    return (q[..., :, None] * r[..., None, :]).reshape(*q.shape[:-1], 16)


def qmul(q: Tensor, r: Tensor) -> Tensor:
    """Hamilton product q·r of (..., 4) quaternions (broadcasting)."""
    return _outer(q, r) @ _MUL.to(q)


def qinv(q: Tensor) -> Tensor:
    """Conjugate (the inverse of a unit quaternion)."""
    return q * q.new_tensor([1.0, -1.0, -1.0, -1.0])


def quat_to_matrix(q: Tensor) -> Tensor:
    """(..., 4) unit quaternions → (..., 3, 3) rotation matrices."""
    return (_outer(q, q) @ _MAT.to(q)).reshape(*q.shape[:-1], 3, 3)


def qrot(q: Tensor, v: Tensor) -> Tensor:
    """Rotate (..., 3) vectors by (..., 4) unit quaternions (broadcasting): R(q)·v."""
    return (quat_to_matrix(q) @ v[..., None])[..., 0]


def qbetween(v0: Tensor, v1: Tensor) -> Tensor:
    """The shortest-arc unit quaternion rotating direction v0 onto v1 (both (..., 3)).

    q ∝ (|v0||v1| + v0·v1, v0 × v1). HumanML3D's version returns NaN for opposite vectors; here those get a
    half turn about the y axis when it is perpendicular to v0 (a heading reversal), else about x or z.
    """
    cross = torch.linalg.cross(v0, v1, dim=-1)
    lengths = (v0.square().sum(-1, keepdim=True) * v1.square().sum(-1, keepdim=True)).sqrt()
    w = lengths + (v0 * v1).sum(-1, keepdim=True)
    q = torch.cat([w, cross], dim=-1)
    norm = q.norm(dim=-1, keepdim=True)
    opposite = norm[..., 0] <= 1e-9 * (v0.norm(dim=-1) * v1.norm(dim=-1)).clamp_min(1e-30)
    if opposite.any():
        axes = torch.eye(3, dtype=v0.dtype, device=v0.device)[[1, 0, 2]]  # y first, then x, z
        d = v0[opposite] / v0[opposite].norm(dim=-1, keepdim=True)
        perp = (d @ axes.T).abs() < 0.5  # (K, 3): candidate axes not along v0
        axis = axes[perp.int().argmax(-1)]
        axis = axis - (axis * d).sum(-1, keepdim=True) * d
        q = q.clone()
        q[opposite] = torch.cat([torch.zeros_like(axis[:, :1]), axis / axis.norm(dim=-1, keepdim=True)], -1)
        norm = q.norm(dim=-1, keepdim=True)
    return q / norm


def quat_to_cont6d(q: Tensor) -> Tensor:
    """Continuous 6-D rotation (Zhou et al. 2019): the first two columns of the matrix, (..., 6)."""
    m = quat_to_matrix(q)
    return torch.cat([m[..., 0], m[..., 1]], dim=-1)


def y_rotation(angle: Tensor) -> Tensor:
    """Quaternions of rotations by `angle` radians about +y: (..., 4)."""
    zero = torch.zeros_like(angle)
    return torch.stack([torch.cos(angle / 2), zero, torch.sin(angle / 2), zero], dim=-1)


def bone_lengths(joints: Tensor) -> Tensor:
    """(..., 22, 3) joints → (..., 22) distance of each joint to its parent (0 for the pelvis)."""
    parents = torch.tensor([0] + list(PARENTS[1:]), device=joints.device)
    return (joints - joints[..., parents, :]).norm(dim=-1)


def offsets_from_lengths(lengths: Tensor) -> Tensor:
    """(22,) bone lengths → (22, 3) offsets along the raw IK directions (HumanML3D's target skeleton)."""
    return torch.tensor(RAW_OFFSETS, dtype=lengths.dtype, device=lengths.device) * lengths[:, None]


def across_direction(joints: Tensor, ik_order: bool) -> Tensor:
    """Unit left-right vector (..., 3) of (..., 22, 3) joints, from the hips plus the shoulders.

    HumanML3D (EricGuo5513/HumanML3D @ 9176e8f) computes it two ways from `face_joint_indx = [2, 1, 17, 16]`:
    `process_file` unpacks it as (r_hip, l_hip, r_sdr, l_sdr), giving (r_hip − l_hip) + (r_sdr − l_sdr);
    `Skeleton.inverse_kinematics_np` unpacks it as (l_hip, r_hip, sdr_r, sdr_l), giving
    (l_hip − r_hip) + (r_sdr − l_sdr), the hip term reversed (`ik_order`). Its features are built with the
    latter, so reproducing them needs both; the shoulders are wider than the hips, so both point to the right.
    """
    r_hip, l_hip, r_sdr, l_sdr = FACE_JOINTS
    hips = joints[..., r_hip, :] - joints[..., l_hip, :]
    across = (-hips if ik_order else hips) + (joints[..., r_sdr, :] - joints[..., l_sdr, :])
    return across / across.norm(dim=-1, keepdim=True)


def inverse_kinematics(joints: Tensor, smooth_forward: bool) -> Tensor:
    """Local rotations (..., T, 22, 4) that turn the raw offsets into the bones of `joints` (..., T, 22, 3).

    As HumanML3D's `Skeleton.inverse_kinematics_np`: the root rotation maps the body's forward direction
    (⊥ to `across_direction(ik_order=True)`, in the ground plane) onto +Z, except on frame 0, which gets
    the identity whatever the body faces (so the features of frame 0 are read in the world frame);
    `smooth_forward` first smooths that direction over time with a Gaussian of σ = 20 frames, as
    HumanML3D does for its features. Each other joint's rotation is the shortest arc from its raw offset
    to its bone, in its chain's frame (so twist about a bone is not recovered).
    """
    up = joints.new_tensor([0.0, 1.0, 0.0])
    across = across_direction(joints, ik_order=True)  # (..., T, 3)
    forward = torch.linalg.cross(up.expand_as(across), across, dim=-1)  # (..., T, 3), in the ground plane
    if smooth_forward:
        forward = gaussian_smooth(forward, sigma=20.0)
    forward = forward / forward.norm(dim=-1, keepdim=True)
    root = qbetween(forward, joints.new_tensor([0.0, 0.0, 1.0]).expand_as(forward))  # (..., T, 4)
    root = root.clone()
    root[..., 0, :] = root.new_tensor([1.0, 0.0, 0.0, 0.0])  # HumanML3D: `root_quat[0] = [1, 0, 0, 0]`
    raw = joints.new_tensor(RAW_OFFSETS)
    quats = torch.zeros(*joints.shape[:-1], 4, dtype=joints.dtype, device=joints.device)
    quats[..., 0, :] = root
    for chain in KINEMATIC_CHAIN:
        global_rot = root
        for parent, child in zip(chain[:-1], chain[1:]):
            bone = joints[..., child, :] - joints[..., parent, :]  # (..., T, 3)
            arc = qbetween(raw[child].expand_as(bone), bone / bone.norm(dim=-1, keepdim=True))
            local = qmul(qinv(global_rot), arc)
            quats[..., child, :] = local
            global_rot = qmul(global_rot, local)
    return quats


def forward_kinematics(quats: Tensor, root_pos: Tensor, offsets: Tensor) -> Tensor:
    """Joints (..., 22, 3) from local rotations (..., 22, 4), root positions (..., 3), offsets (22, 3).

    Every chain starts from the root's rotation (HumanML3D's convention, which its IK mirrors).
    """
    joints = torch.zeros(*quats.shape[:-1], 3, dtype=quats.dtype, device=quats.device)
    joints[..., 0, :] = root_pos
    for chain in KINEMATIC_CHAIN:
        global_rot = quats[..., 0, :]
        for parent, child in zip(chain[:-1], chain[1:]):
            global_rot = qmul(global_rot, quats[..., child, :])
            joints[..., child, :] = qrot(global_rot, offsets[child]) + joints[..., parent, :]
    return joints


def gaussian_smooth(x: Tensor, sigma: float, truncate: float = 4.0) -> Tensor:
    """Gaussian filter of (..., T, C) along T with edge replication (scipy's gaussian_filter1d, 'nearest')."""
    radius = int(truncate * sigma + 0.5)
    taps = torch.arange(-radius, radius + 1, device=x.device)
    kernel = torch.exp(-0.5 * (taps.to(x.dtype) / sigma) ** 2)
    kernel = kernel / kernel.sum()  # (2r+1,)
    frames = x.shape[-2]
    idx = (torch.arange(frames, device=x.device)[:, None] + taps[None]).clamp(0, frames - 1)  # (T, 2r+1)
    return (x[..., idx, :] * kernel[:, None]).sum(-2)  # (..., T, C)


def mirror_joints(joints: Tensor) -> Tensor:
    """Left ↔ right mirror image of (..., 22, 3) joints: x negated, left and right joints swapped."""
    out = joints[..., list(MIRROR_PERMUTATION), :].clone()
    out[..., 0] = -out[..., 0]
    return out
