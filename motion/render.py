"""Motion to media: a stick-figure MP4 (PIL + PyAV) and, with the SMPL files, a body mesh (smplx).

The stick figure draws the five kinematic chains over a floor grid with the root's ground path, seen by an
orthographic camera that follows the root. Frames are encoded with H.264 (libx264, yuv420p) when
FFmpeg has it, else MPEG-4 Part 2; the codec used is returned and logged.

The mesh: SMPL (Loper et al. 2015) has no inverse for joints, so its pose is fitted per frame, as MDM's
`joints2smpl` does with SMPLify: Adam on global orientation, body pose (axis-angle), translation and
shared shape, minimising the squared distance of SMPL's first 22 joints to the motion's joints with a
small pose prior and temporal smoothness. The SMPL model file (SMPL_NEUTRAL.pkl, from smpl.is.tue.mpg.de
under its licence) is never downloaded: pass its path.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from layersync.core.errors import UserValueError
from layersync.core.weights import WeightFile, resolve
from layersync.motion import skeleton as sk
from layersync.motion.features import FPS

log = logging.getLogger("layersync")
CODECS = ("libx264", "mpeg4")  # preference order
SMPL_WEIGHTS = WeightFile("SMPL_NEUTRAL.pkl", None, "https://smpl.is.tue.mpg.de (registration, SMPL licence)",
                          "SMPL neutral body model")
CHAIN_COLORS = ("#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd")  # right leg, left leg, spine, arms


def pick_codec() -> str:
    import av

    for codec in CODECS:
        if codec in av.codecs_available:
            return codec
    raise RuntimeError(f"FFmpeg in PyAV offers none of the video codecs {CODECS}; reinstall av")


def _camera(azimuth_deg: float, elevation_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Screen right and up vectors of an orthographic camera orbiting the y axis (y up, z forward)."""
    az, el = np.radians(azimuth_deg), np.radians(elevation_deg)
    to_camera = np.array([np.sin(az) * np.cos(el), np.sin(el), np.cos(az) * np.cos(el)])
    right = np.array([to_camera[2], 0.0, -to_camera[0]]) / np.hypot(to_camera[0], to_camera[2])
    return right, np.cross(to_camera, right)


def write_stick_mp4(joints: np.ndarray, path: str | Path, title: str = "", fps: int = FPS,
                    size_px: int = 480, azimuth_deg: float = 35.0, elevation_deg: float = 20.0,
                    half_width_m: float = 1.5, grid_m: float = 0.5) -> str:
    """(T, 22, 3) joints, y up, metres → an MP4 at `path`; returns the codec used.

    An orthographic camera follows the root over a floor grid fixed in the world (so travel shows as the
    grid sliding by), framing a 2·half_width_m square of floor; the root's ground path is drawn in grey.
    Drawn with PIL: a few milliseconds a frame.
    """
    import av
    from PIL import Image, ImageDraw, ImageFont

    joints = np.asarray(joints, dtype=np.float64)
    if joints.ndim != 3 or joints.shape[1:] != (sk.NUM_JOINTS, 3) or not np.isfinite(joints).all():
        raise UserValueError(f"joints must be finite (T, {sk.NUM_JOINTS}, 3), got {joints.shape}")
    right, up = _camera(azimuth_deg, elevation_deg)
    height = max(2.0, joints[..., 1].max() + 0.2)
    box = np.array([[x, y, z] for x in (-half_width_m, half_width_m) for y in (0.0, height)
                    for z in (-half_width_m, half_width_m)])  # the framed volume around the root
    s_lo = np.array([(box @ right).min(), (box @ up).min()])
    s_hi = np.array([(box @ right).max(), (box @ up).max()])
    title_px = 24 if title else 0
    scale = (size_px - 20 - title_px) / (s_hi - s_lo).max()

    def project(p: np.ndarray, centre: np.ndarray) -> list[tuple[float, float]]:
        q = p - centre
        return [(10 + (x - s_lo[0]) * scale, size_px - 10 - (y - s_lo[1]) * scale)
                for x, y in zip(q @ right, q @ up)]

    font = ImageFont.load_default(size=14)
    ground = joints[:, 0] * np.array([1.0, 0.0, 1.0])  # (T, 3) root path on the floor
    codec = pick_codec()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width = stream.height = size_px
        stream.pix_fmt = "yuv420p"
        for frame, centre in zip(joints, ground):
            image = Image.new("RGB", (size_px, size_px), "white")
            draw = ImageDraw.Draw(image)
            for axis in (0, 2):  # world grid lines crossing the framed square
                other = 2 - axis
                first = np.ceil((centre[axis] - half_width_m) / grid_m) * grid_m
                for v in np.arange(first, centre[axis] + half_width_m + 1e-9, grid_m):
                    ends = np.zeros((2, 3))
                    ends[:, axis] = v
                    ends[:, other] = centre[other] + np.array([-half_width_m, half_width_m])
                    draw.line(project(ends, centre), fill=(215, 215, 215), width=1)
            if len(ground) > 1:
                draw.line(project(ground, centre), fill=(150, 150, 150), width=2)
            for color, chain in zip(CHAIN_COLORS, sk.KINEMATIC_CHAIN):
                xy = project(frame[list(chain)], centre)
                draw.line(xy, fill=color, width=4, joint="curve")
                for x, y in xy:
                    draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=color)
            if title:
                draw.text((8, 4), title, fill=(0, 0, 0), font=font)
            for packet in stream.encode(av.VideoFrame.from_image(image)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    log.info("wrote %s (%d frames, %s)", path, len(joints), codec)
    return codec


def fit_smpl(joints: np.ndarray, model_path: str | Path, iterations: int = 200, lr: float = 0.05,
             smooth_weight: float = 1.0, prior_weight: float = 1e-3) -> tuple[np.ndarray, np.ndarray, float]:
    """Fit SMPL to (T, 22, 3) joints → (vertices (T, V, 3) float32, faces (F, 3) int64, mean joint error m).

    The loop poses only SMPL's joints (its joint regressor on the shaped template, then the kinematic
    chain), which is all the loss needs; the mesh is skinned once at the end.
    """
    import smplx
    from smplx.lbs import batch_rigid_transform, batch_rodrigues

    model_file = resolve(SMPL_WEIGHTS, model_path)
    target = torch.as_tensor(np.asarray(joints), dtype=torch.float32)  # (T, 22, 3)
    frames = len(target)
    body = smplx.SMPL(model_path=str(model_file), batch_size=frames)
    with torch.no_grad():
        j_template = body.J_regressor @ body.v_template  # (24, 3)
        j_dirs = torch.einsum("jv,vcb->jcb", body.J_regressor, body.shapedirs)  # (24, 3, betas)
    orient = torch.zeros(frames, 3, requires_grad=True)
    pose = torch.zeros(frames, 69, requires_grad=True)
    transl = (target[:, 0] - j_template[0]).clone().requires_grad_(True)
    betas = torch.zeros(body.num_betas, requires_grad=True)
    opt = torch.optim.Adam([orient, pose, transl, betas], lr=lr)
    for _ in range(iterations):
        rest = (j_template + j_dirs @ betas).expand(frames, -1, -1)  # (T, 24, 3)
        rot = batch_rodrigues(torch.cat([orient, pose], 1).reshape(-1, 3)).reshape(frames, 24, 3, 3)
        posed, _ = batch_rigid_transform(rot, rest, body.parents)  # (T, 24, 3)
        fitted = posed[:, : sk.NUM_JOINTS] + transl[:, None]
        loss = (fitted - target).square().sum(-1).mean() + prior_weight * pose.square().mean()
        if frames > 1:
            velocity_error = (fitted[1:] - fitted[:-1]) - (target[1:] - target[:-1])
            loss = loss + smooth_weight * velocity_error.square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = body(global_orient=orient, body_pose=pose, transl=transl, betas=betas.expand(frames, -1))
        error = float((out.joints[:, : sk.NUM_JOINTS] - target).norm(dim=-1).mean())
    return out.vertices.numpy().astype(np.float32), np.asarray(body.faces, dtype=np.int64), error


def write_mesh(vertices: np.ndarray, faces: np.ndarray, folder: str | Path) -> Path:
    """`mesh.npz` (vertices, faces) and one Wavefront OBJ per frame under `folder`; returns the npz path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / "mesh.npz", vertices=vertices, faces=faces)
    face_lines = "".join(f"f {a + 1} {b + 1} {c + 1}\n" for a, b, c in faces)
    for t, verts in enumerate(vertices):
        body = "".join(f"v {x:.5f} {y:.5f} {z:.5f}\n" for x, y, z in verts)
        (folder / f"frame_{t:04d}.obj").write_text(body + face_lines)
    return folder / "mesh.npz"
