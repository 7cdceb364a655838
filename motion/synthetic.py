"""The embedded motion set of the default run: actions synthesised in code on the 22-joint skeleton.

Thirteen actions (walk, run, jump, wave, turn, sit down / stand up, squat, kick, raise arms, jumping jacks,
punch, clap, stand still) with parameters the captions name (speed, direction, side, count, angle), each
clip drawn with its own body size, tempo and small smooth noise. Bone rotations follow HumanML3D's
convention (`skeleton.forward_kinematics`: the rotation stored at joint j turns the bone parent(j) → j;
every chain starts from the root's rotation), angles in radians, the body facing +Z with its left at +X:
a negative x-rotation swings a hanging limb forward, a positive one bends a knee, +z lifts a left arm out.

`write_dataset` writes the clips in the HumanML3D layout (`new_joints/`, `new_joint_vecs/`, `texts/`,
splits, `Mean.npy`/`Std.npy`) through `features.joints_to_features`, retargeting every body onto one
skeleton as HumanML3D does, and adds each clip's mirror image as `M<id>` with left and right swapped in
its captions, so the same loader reads it as it reads HumanML3D.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from layersync.core.errors import UserValueError
from layersync.motion import skeleton as sk
from layersync.motion.features import FPS, feature_mean_std, features_to_joints, joints_to_features

# Rest pose, arms hanging: offset of each joint from its parent, metres (proportions of SMPL's mean body).
REST_OFFSETS = (
    (0, 0, 0), (0.06, -0.09, 0), (-0.06, -0.09, 0), (0, 0.11, -0.02), (0, -0.38, 0), (0, -0.38, 0),
    (0, 0.13, 0.01), (0, -0.40, -0.03), (0, -0.40, -0.03), (0, 0.06, 0), (0, -0.05, 0.12), (0, -0.05, 0.12),
    (0, 0.21, -0.02), (0.07, 0.11, -0.01), (-0.07, 0.11, -0.01), (0, 0.09, 0.04), (0.11, 0.04, -0.01),
    (-0.11, 0.04, -0.01), (0.03, -0.26, 0), (-0.03, -0.26, 0), (0, -0.25, 0), (0, -0.25, 0),
)  # fmt: skip
THIGH, SHIN, FOOT, UPPER_ARM, FOREARM = {"left": 4, "right": 5}, {"left": 7, "right": 8}, \
    {"left": 10, "right": 11}, {"left": 18, "right": 19}, {"left": 20, "right": 21}
SPINE = (3, 6, 9)
OUT = {"left": 1.0, "right": -1.0}  # sign of a z-rotation that moves a limb away from the body
HIP_HEIGHT = 0.09 + 0.38 + 0.40 + 0.05  # pelvis above the floor in the rest pose
ACTIONS = ("walk", "run", "jump", "wave", "turn", "sit", "squat", "kick", "raise_arms", "jumping_jacks",
           "punch", "clap", "stand")
SUBJECTS = (("a person", "their"), ("someone", "their"), ("a man", "his"), ("a woman", "her"),
            ("the person", "their"))
SPLIT_SIZES = {"train": 720, "val": 40, "test": 160}  # clips per split before mirroring


class _Pose:
    """Per-frame local bone rotations (T, 22, 4), heading (T,) and root position (T, 3) under construction."""

    def __init__(self, frames: int, rng: np.random.Generator):
        self.t = torch.arange(frames, dtype=torch.float64) / FPS  # (T,) seconds
        self.q = torch.zeros(frames, sk.NUM_JOINTS, 4, dtype=torch.float64)
        self.q[..., 0] = 1.0
        self.heading = torch.zeros(frames, dtype=torch.float64)
        self.root = torch.zeros(frames, 3, dtype=torch.float64)
        self.root[:, 1] = HIP_HEIGHT
        self.rng = rng
        # Small smooth noise on every bone (an axis-angle per frame, exponential map): no two clips alike.
        freq, phase = rng.uniform(0.2, 1.2, (2, sk.NUM_JOINTS - 1, 3)), rng.uniform(0, 2 * math.pi, (2, 1, 1))
        waves = torch.sin(2 * math.pi * torch.from_numpy(freq)[:, None] * self.t[None, :, None, None]
                          + torch.from_numpy(phase)[:, None])  # (2, T, 21, 3)
        noise = 0.02 * waves.sum(0)  # (T, 21, 3) radians
        angle = noise.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        self.q[:, 1:] = torch.cat([torch.cos(angle / 2), torch.sin(angle / 2) * noise / angle], dim=-1)

    def wobble(self, amplitude: float) -> Tensor:
        """A smooth random signal (two sinusoids of random frequency and phase), (T,)."""
        f, phase = self.rng.uniform(0.2, 1.2, 2), self.rng.uniform(0, 2 * math.pi, 2)
        return amplitude * 0.5 * sum(torch.sin(2 * math.pi * fi * self.t + p) for fi, p in zip(f, phase))

    def rotate(self, joint: int, axis: str, angle: Tensor | float) -> None:
        """Compose a rotation by `angle` (T,) about a parent-frame axis onto the bone ending at `joint`."""
        angle = torch.as_tensor(angle, dtype=torch.float64).expand(len(self.t))
        half = angle / 2
        q = torch.zeros(len(self.t), 4, dtype=torch.float64)
        q[:, 0], q[:, "xyz".index(axis) + 1] = torch.cos(half), torch.sin(half)
        self.q[:, joint] = sk.qmul(q, self.q[:, joint])

    def joints(self, offsets: Tensor) -> Tensor:
        """Forward kinematics: (T, 22, 3); arm chains start at the spine's rotation, not the root's."""
        q = self.q.clone()
        q[:, 0] = sk.y_rotation(self.heading)
        spine = sk.qmul(sk.qmul(q[:, SPINE[0]], q[:, SPINE[1]]), q[:, SPINE[2]])
        for collar in (13, 14):
            q[:, collar] = sk.qmul(spine, q[:, collar])
        return sk.forward_kinematics(q, self.root, offsets)

    def walk_forward(self, speed: Tensor | float) -> None:
        """Move the root along its current heading at `speed` m/s (integrated per frame)."""
        direction = torch.stack([torch.sin(self.heading), torch.zeros_like(self.heading),
                                 torch.cos(self.heading)], -1)  # (T, 3)
        step = direction * torch.as_tensor(speed, dtype=torch.float64).expand(len(self.t))[:, None] / FPS
        self.root = self.root + torch.cumsum(step, 0) - step[0]

    def bend_legs(self, thigh: Tensor, knee: Tensor, sides=("left", "right"), keep_feet: bool = True) -> None:
        """Flex hips forward by `thigh` and knees by `knee`; lower the root so the feet stay on the floor."""
        for side in sides:
            self.rotate(THIGH[side], "x", -thigh)
            self.rotate(SHIN[side], "x", knee)
        if keep_feet:
            l1, l2 = 0.38, 0.40
            self.root[:, 1] -= l1 * (1 - torch.cos(thigh)) + l2 * (1 - torch.cos(knee - thigh))
            self.root[:, 2] -= l1 * torch.sin(thigh) - l2 * torch.sin(knee - thigh)


def smoothstep(x: Tensor) -> Tensor:
    x = x.clamp(0, 1)
    return x * x * (3 - 2 * x)


def bump(t: Tensor, center: float, width: float) -> Tensor:
    """A smooth 0 → 1 → 0 pulse of the given width (s) around `center` (s)."""
    return torch.cos(((t - center) / width).clamp(-0.5, 0.5) * math.pi) ** 2


def _gait(p: _Pose, freq: float, hip: float, knee: float, arm: float, backwards: bool = False) -> None:
    """Alternating legs and counter-swinging arms at `freq` strides per second."""
    phase = 2 * math.pi * freq * p.t * (-1 if backwards else 1) + p.rng.uniform(0, 2 * math.pi)
    for side, shift in (("left", 0.0), ("right", math.pi)):
        swing = torch.sin(phase + shift)
        p.rotate(THIGH[side], "x", -hip * swing)
        p.rotate(SHIN[side], "x", knee * torch.cos(phase + shift).clamp_min(0) ** 1.5)
        p.rotate(UPPER_ARM[side], "x", arm * swing)
    p.root[:, 1] += 0.015 * torch.cos(2 * phase)


def _arms_rest(p: _Pose, elbow: float = 0.25) -> None:
    for side in ("left", "right"):
        p.rotate(FOREARM[side], "x", -elbow)


def make_action(action: str, frames: int, rng: np.random.Generator) -> tuple[_Pose, list[str]]:
    """One clip of `action` with random parameters; returns the pose and caption templates for it.

    Templates use {s} for the subject and {p} for its possessive ("a man … his").
    """
    p = _Pose(frames, rng)
    t, dur = p.t, frames / FPS
    side = rng.choice(("left", "right"))
    if action == "walk":
        pace = rng.choice(("slowly", "normal", "quickly"))
        tempo = {"slowly": 0.7, "normal": 0.9, "quickly": 1.15}[pace]
        backwards = rng.random() < 0.25
        curve = rng.choice(("straight", "straight", "left", "right"))
        if curve != "straight":
            p.heading = p.heading + OUT[curve] * 0.7 * t
        _gait(p, tempo, 0.3 + 0.1 * tempo, 0.9, 0.35, backwards)
        _arms_rest(p)
        p.walk_forward(-1.1 * tempo if backwards else 1.35 * tempo)
        adverb = "" if pace == "normal" else f" {pace}"
        if backwards:
            caps = [f"{{s}} walks backwards{adverb}", f"{{s}} takes a few steps backwards{adverb}",
                    f"{{s}}{adverb} walks backward"]
        elif curve == "straight":
            caps = [f"{{s}} walks forward{adverb}", f"{{s}}{adverb} walks straight ahead",
                    f"{{s}} takes a few steps forward{adverb}"]
        else:
            caps = [f"{{s}} walks forward{adverb} while turning {curve}",
                    f"{{s}} walks in a curve to the {curve}", f"{{s}}{adverb} walks and turns to the {curve}"]
    elif action == "run":
        jog = rng.random() < 0.4
        _gait(p, 1.2 if jog else 1.45, 0.55 if jog else 0.7, 1.5, 0.5)
        for s2 in ("left", "right"):
            p.rotate(FOREARM[s2], "x", -1.4)
        p.rotate(SPINE[0], "x", 0.12)
        p.walk_forward(2.2 if jog else 3.2)
        caps = (["{s} jogs forward", "{s} is jogging", "{s} jogs straight ahead"] if jog else
                ["{s} runs forward", "{s} runs quickly ahead", "{s} is running forward"])
    elif action == "jump":
        count, forward = int(rng.integers(1, 4)), rng.random() < 0.4
        starts = (np.arange(count) + 0.5) * dur / (count + 0.5) - 0.3
        crouch, flight = torch.zeros_like(t), torch.zeros_like(t)
        for c in starts:
            crouch += bump(t, c, 0.5) + bump(t, c + 0.75, 0.4)
            up = ((t - c - 0.25) / 0.45).clamp(0, 1)
            flight += 4 * up * (1 - up)
        p.bend_legs(0.7 * crouch, 1.3 * crouch)
        p.rotate(SPINE[0], "x", 0.35 * crouch)
        for s2 in ("left", "right"):
            p.rotate(UPPER_ARM[s2], "x", 0.6 * crouch - 2.2 * flight)
        p.root[:, 1] += 0.35 * flight
        if forward:
            p.walk_forward(1.6 * flight)
        times = {1: "", 2: " twice", 3: " three times"}[count]
        where = "forward" if forward else "up"
        caps = [f"{{s}} jumps {where}{times}", f"{{s}} jumps {where} and lands{times}",
                f"{{s}} bends {{p}} knees and jumps {where}{times}"]
    elif action == "wave":
        raise_ = smoothstep(t / 0.6) * (1 - smoothstep((t - dur + 0.5) / 0.5))
        p.rotate(UPPER_ARM[side], "z", OUT[side] * 2.4 * raise_)
        p.rotate(FOREARM[side], "z", OUT[side] * raise_ * (0.4 + 0.5 * torch.sin(2 * math.pi * 2.0 * t)))
        _arms_rest(p)
        caps = [f"{{s}} waves with {{p}} {side} hand", f"{{s}} raises {{p}} {side} arm and waves",
                f"{{s}} waves hello with the {side} hand"]
    elif action == "turn":
        angle = float(rng.choice((math.pi / 2, math.pi)))
        p.heading = p.heading + OUT[side] * angle * smoothstep((t - 0.3) / (dur - 0.6))
        _gait(p, 1.2, 0.15, 0.5, 0.1)
        _arms_rest(p)
        if angle < 3:
            caps = [f"{{s}} turns to the {side}", f"{{s}} turns {side} in place",
                    f"{{s}} rotates to {{p}} {side}"]
        else:
            caps = [f"{{s}} turns around to the {side}", "{s} turns around",
                    "{s} spins around to face the other way"]
    elif action == "sit":
        stand_up = rng.random() < 0.4
        prog = smoothstep((t - 0.3) / (0.7 * dur))
        prog = 1 - prog if stand_up else prog
        p.bend_legs(1.45 * prog, 1.5 * prog)
        p.rotate(SPINE[0], "x", 1.1 * prog * (1 - prog) + 0.1 * prog)  # lean in, then sit up
        for s2 in ("left", "right"):
            p.rotate(UPPER_ARM[s2], "x", -0.5 * prog)
        _arms_rest(p, 0.4)
        caps = (["{s} stands up from a chair", "{s} gets up from a seated position", "{s} rises to {p} feet"]
                if stand_up else ["{s} sits down", "{s} sits down on a chair", "{s} lowers down into a seat"])
    elif action == "squat":
        count = int(rng.integers(1, 3))
        depth = sum(bump(t, (k + 0.5) * dur / count, 0.9 * dur / count) for k in range(count))
        p.bend_legs(1.2 * depth, 2.0 * depth)
        p.rotate(SPINE[0], "x", 0.5 * depth)
        for s2 in ("left", "right"):
            p.rotate(UPPER_ARM[s2], "x", -1.4 * depth)
        times = "" if count == 1 else " twice"
        caps = [f"{{s}} squats down and stands back up{times}", f"{{s}} does a squat{times}",
                f"{{s}} bends {{p}} knees deeply{times}"]
    elif action == "kick":
        centre = float(rng.uniform(0.4, 0.6)) * dur
        lift, snap = bump(t, centre, 0.9), bump(t, centre + 0.05, 0.4)
        p.rotate(THIGH[side], "x", -1.3 * lift)
        p.rotate(SHIN[side], "x", 1.3 * lift - 1.2 * snap)
        p.rotate(UPPER_ARM["left" if side == "right" else "right"], "x", -0.5 * lift)
        _arms_rest(p, 0.6)
        caps = [f"{{s}} kicks with {{p}} {side} leg", f"{{s}} kicks forward with the {side} foot",
                f"{{s}} lifts {{p}} {side} leg and kicks"]
    elif action == "raise_arms":
        up = bump(t, dur / 2, dur * 0.8)
        for s2 in ("left", "right"):
            p.rotate(UPPER_ARM[s2], "x", -2.8 * up)
        caps = ["{s} raises both arms above {p} head", "{s} lifts both hands up high",
                "{s} puts {p} arms up in the air"]
    elif action == "jumping_jacks":
        phase = 2 * math.pi * 1.1 * t
        open_ = torch.sin(phase / 2) ** 2
        for s2 in ("left", "right"):
            p.rotate(UPPER_ARM[s2], "z", OUT[s2] * 2.6 * open_)
            p.rotate(THIGH[s2], "z", OUT[s2] * 0.3 * open_)
        p.root[:, 1] += 0.08 * torch.sin(phase).abs()
        caps = ["{s} does jumping jacks", "{s} is doing jumping jacks",
                "{s} jumps while spreading arms and legs"]
    elif action == "punch":
        for k, s2 in enumerate(("left", "right")):
            hit = sum(bump(t, c, 0.35) for c in np.arange(0.4 + 0.3 * k, dur - 0.2, 0.6))
            p.rotate(UPPER_ARM[s2], "x", -0.7 - 0.8 * hit)
            p.rotate(FOREARM[s2], "x", -1.9 + 1.8 * hit)
        caps = ["{s} punches forward with both fists", "{s} throws punches like a boxer",
                "{s} is boxing and punching"]
    elif action == "clap":
        together = torch.sin(2 * math.pi * 1.6 * t) ** 2
        for s2 in ("left", "right"):
            p.rotate(UPPER_ARM[s2], "x", -0.9)
            p.rotate(UPPER_ARM[s2], "z", -OUT[s2] * (0.1 + 0.35 * together))
            p.rotate(FOREARM[s2], "x", -0.9)
        caps = ["{s} claps {p} hands", "{s} is clapping", "{s} claps {p} hands in front of {p} chest"]
    elif action == "stand":
        p.root[:, 0] += p.wobble(0.03)
        _arms_rest(p)
        caps = ["{s} stands still", "{s} stands in place", "{s} is standing and waiting"]
    else:
        raise UserValueError(f"unknown action {action!r}; choose one of {', '.join(ACTIONS)}")
    return p, caps


# word → (lemma, part of speech) for HumanML3D's `word/POS` tokens; every caption word must be here.
_POS = {"a": "DET", "the": "DET", "both": "DET", "person": "NOUN", "someone": "PRON", "man": "NOUN",
        "woman": "NOUN", "his": "DET", "her": "DET", "their": "DET", "forward": "ADV", "backwards": "ADV",
        "backward": "ADV", "slowly": "ADV", "quickly": "ADV", "straight": "ADV", "ahead": "ADV", "few": "ADJ",
        "while": "SCONJ", "and": "CCONJ", "in": "ADP", "to": "ADP", "with": "ADP", "of": "ADP", "from": "ADP",
        "into": "ADP", "above": "ADP", "on": "ADP", "like": "ADP", "up": "ADP", "down": "ADP", "back": "ADV",
        "around": "ADV", "high": "ADV", "deeply": "ADV", "twice": "ADV", "still": "ADV", "other": "ADJ",
        "three": "NUM", "times": "NOUN", "left": "ADJ", "right": "ADJ", "curve": "NOUN", "place": "NOUN",
        "hand": "NOUN", "hands": "NOUN", "arm": "NOUN", "arms": "NOUN", "leg": "NOUN", "legs": "NOUN",
        "foot": "NOUN", "feet": "NOUN", "knees": "NOUN", "head": "NOUN", "chest": "NOUN", "fists": "NOUN",
        "chair": "NOUN", "seat": "NOUN", "position": "NOUN", "air": "NOUN", "boxer": "NOUN", "way": "NOUN",
        "steps": "NOUN", "squat": "NOUN", "front": "NOUN", "hello": "INTJ", "is": "AUX", "seated": "ADJ",
        "jacks": "NOUN", "face": "VERB", "walks": "VERB", "takes": "VERB", "turning": "VERB", "turns": "VERB",
        "runs": "VERB", "jogs": "VERB", "jogging": "VERB", "running": "VERB", "jumps": "VERB",
        "lands": "VERB", "bends": "VERB", "waves": "VERB", "raises": "VERB", "rotates": "VERB",
        "spins": "VERB", "sits": "VERB",
        "lowers": "VERB", "stands": "VERB", "gets": "VERB", "rises": "VERB", "squats": "VERB", "does": "VERB",
        "kicks": "VERB", "lifts": "VERB", "puts": "VERB", "doing": "VERB", "jumping": "VERB",
        "spreading": "VERB", "punches": "VERB", "throws": "VERB", "boxing": "VERB",
        "punching": "VERB", "claps": "VERB", "clapping": "VERB", "standing": "VERB", "waiting": "VERB"}
_LEMMA = {"walks": "walk", "takes": "take", "turning": "turn", "turns": "turn", "runs": "run", "jogs": "jog",
          "jogging": "jog", "running": "run", "jumps": "jump", "lands": "land", "bends": "bend",
          "waves": "wave",
          "raises": "raise", "rotates": "rotate", "spins": "spin", "sits": "sit", "lowers": "lower",
          "stands": "stand", "gets": "get", "rises": "rise", "squats": "squat", "does": "do", "kicks": "kick",
          "lifts": "lift", "puts": "put", "doing": "do", "jumping": "jump", "spreading": "spread",
          "punches": "punch", "throws": "throw", "boxing": "box", "punching": "punch", "claps": "clap",
          "clapping": "clap", "standing": "stand", "waiting": "wait", "is": "be", "steps": "step",
          "hands": "hand", "arms": "arm", "legs": "leg", "knees": "knee", "fists": "fist", "times": "time",
          "jacks": "jack", "feet": "foot"}


def tokens_of(caption: str) -> list[str]:
    """HumanML3D-style `lemma/POS` tokens of a caption made from the templates above."""
    words = caption.lower().replace(".", "").split()
    unknown = [w for w in words if w not in _POS]
    if unknown:
        raise UserValueError(f"caption {caption!r} has words without a part of speech: {unknown}")
    return [f"{_LEMMA.get(w, w)}/{_POS[w]}" for w in words]


def mirror_caption(caption: str) -> str:
    """Swap left and right (and clockwise / counterclockwise), as HumanML3D does for its M clips."""
    swap = {"left": "right", "right": "left", "clockwise": "counterclockwise",
            "counterclockwise": "clockwise"}
    return " ".join(swap.get(w, w) for w in caption.split(" "))


def synth_clip(action: str, frames: int, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """(frames + 1, 22, 3) joints of one clip on a body of random size, and three distinct captions."""
    pose, templates = make_action(action, frames + 1, rng)
    offsets = torch.tensor(REST_OFFSETS, dtype=torch.float64) * rng.uniform(0.88, 1.12)
    joints = pose.joints(offsets)
    captions = []
    for k in rng.permutation(len(templates)):
        subject, possessive = SUBJECTS[rng.integers(len(SUBJECTS))]
        captions.append(" ".join(templates[k].format(s=subject, p=possessive).split()))
    return joints.numpy(), captions


def target_offsets() -> torch.Tensor:
    """The skeleton every embedded clip is retargeted onto: the rest pose's bone lengths, raw directions."""
    return sk.offsets_from_lengths(torch.tensor(REST_OFFSETS, dtype=torch.float64).norm(dim=-1))


def write_dataset(root: str | Path, seed: int = 0, sizes: dict[str, int] | None = None,
                  min_frames: int = 40, max_frames: int = 64) -> Path:
    """Synthesise clips into a HumanML3D-layout folder at `root` (see the module docstring); returns it.

    Clip k of a split performs action k mod 13 for a random number of feature frames in [min, max].
    """
    root = Path(root)
    sizes = SPLIT_SIZES if sizes is None else sizes
    for sub in ("new_joints", "new_joint_vecs", "texts"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    clips = []  # (split, id, joints, captions)
    for split, count in sizes.items():
        for k in range(count):
            frames = int(rng.integers(min_frames, max_frames + 1))
            joints, captions = synth_clip(ACTIONS[k % len(ACTIONS)], frames, rng)
            clip_id = f"{len(clips) // 2:06d}"
            mirrored = sk.mirror_joints(torch.from_numpy(joints)).numpy()
            clips.append((split, clip_id, joints, captions))
            clips.append((split, "M" + clip_id, mirrored, [mirror_caption(c) for c in captions]))
    features: dict[str, np.ndarray] = {}
    for length in sorted({len(c[2]) for c in clips}):  # one batched pass per clip length
        group = [c for c in clips if len(c[2]) == length]
        feats, _ = joints_to_features(np.stack([c[2] for c in group]), target_offsets=target_offsets())
        joints = features_to_joints(torch.from_numpy(feats).double()).float().numpy()
        for c, f, j in zip(group, feats, joints):
            features[c[1]] = f
            np.save(root / "new_joint_vecs" / f"{c[1]}.npy", f)  # (frames, 263)
            np.save(root / "new_joints" / f"{c[1]}.npy", j)  # (frames, 22, 3)
    for split in sizes:
        (root / f"{split}.txt").write_text("".join(f"{c[1]}\n" for c in clips if c[0] == split))
    for _, clip_id, _, captions in clips:
        lines = [f"{c}#{' '.join(tokens_of(c))}#0.0#0.0\n" for c in captions]
        (root / "texts" / f"{clip_id}.txt").write_text("".join(lines))
    mean, std = feature_mean_std([features[c[1]] for c in clips if c[0] == "train"])
    np.save(root / "Mean.npy", mean)
    np.save(root / "Std.npy", std)
    return root
