"""Writing clips: MP4 through PyAV and a PNG strip of frames per clip.

MP4s use H.264 (libx264) when PyAV's bundled FFmpeg has it, else MPEG-4 Part 2 (`mpeg4`); the choice is
logged and returned, never made silently. Both need even frame sizes (4:2:0 chroma), so small clips are
upscaled by pixel repetition (`upscale`) before encoding; strips use the same nearest-neighbour upscale.
"""

from __future__ import annotations

import logging
import os
from fractions import Fraction
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from layersync.core.errors import UserValueError

log = logging.getLogger(__name__)

Codec = Literal["auto", "libx264", "mpeg4"]
CODECS: tuple[str, ...] = ("libx264", "mpeg4")  # in order of preference for "auto"


def to_uint8(clips: torch.Tensor) -> np.ndarray:
    """Clips (N, 3, T, H, W) in [-1, 1] → uint8 (N, T, H, W, 3): round((x + 1) · 127.5), clamped."""
    if clips.ndim != 5 or clips.shape[1] != 3:
        raise UserValueError(f"clips must be (N, 3, T, H, W) RGB, got {tuple(clips.shape)}")
    if not torch.isfinite(clips).all():
        raise UserValueError("clips contain NaN or inf values; the sampler diverged")
    u8 = ((clips.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return u8.permute(0, 2, 3, 4, 1).numpy()  # (N, T, H, W, 3)


def from_uint8(frames: np.ndarray) -> torch.Tensor:
    """uint8 (N, T, H, W, 3) → float32 (N, 3, T, H, W) in [-1, 1], the inverse of `to_uint8`."""
    if frames.ndim != 5 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise UserValueError(f"expected uint8 (N, T, H, W, 3) clips, got {frames.dtype} {frames.shape}")
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1


def available_codecs() -> list[str]:
    """Which of `CODECS` this PyAV build can encode."""
    import av

    found = []
    for name in CODECS:
        try:
            av.codec.Codec(name, "w")
        except Exception:  # PyAV raises UnknownCodecError (or ValueError in older builds) when absent
            continue
        found.append(name)
    return found


def choose_codec(codec: Codec = "auto") -> str:
    """The encoder to use: `codec` itself (checked), or for "auto" libx264 if present, else mpeg4 (logged)."""
    found = available_codecs()
    if codec != "auto":
        if codec not in CODECS:
            raise UserValueError(f"codec must be one of auto, {', '.join(CODECS)}; got {codec!r}")
        if codec not in found:
            raise UserValueError(f"this PyAV build cannot encode {codec}; "
                                 f"available: {', '.join(found) or 'none'}")
        return codec
    if not found:
        raise UserValueError(f"this PyAV build can encode none of {', '.join(CODECS)}; install a PyAV wheel "
                             "with FFmpeg encoders (pip install av)")
    if found[0] != CODECS[0]:
        log.warning("PyAV has no %s encoder; writing MP4s with %s instead", CODECS[0], found[0])
    return found[0]


def _upscale(frames: np.ndarray, upscale: int) -> np.ndarray:
    """(T, H, W, 3) → (T, H·u, W·u, 3) by pixel repetition."""
    if upscale < 1:
        raise UserValueError(f"upscale must be ≥ 1, got {upscale}")
    return frames.repeat(upscale, 1).repeat(upscale, 2) if upscale > 1 else frames


def _check_frames(frames: np.ndarray) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise UserValueError(f"expected uint8 (T, H, W, 3) frames with T ≥ 1, got {frames.dtype} "
                             f"{frames.shape}")


def write_mp4(frames: np.ndarray, path: str | os.PathLike, fps: int = 8, codec: Codec = "auto",
              upscale: int = 1) -> str:
    """Encode uint8 frames (T, H, W, 3) as an MP4 at `fps`; returns the codec used (see `choose_codec`).

    Quality is set near-lossless (x264 CRF 12; mpeg4 quantiser 2) because the clips are small.
    """
    import av

    _check_frames(frames)
    frames = _upscale(frames, upscale)
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise UserValueError(f"MP4 (4:2:0) needs even frame sizes, got {h}×{w}; pass an even upscale, e.g. 2")
    name = choose_codec(codec)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        options = {"crf": "12"} if name == "libx264" else {"qscale": "2"}
        stream = container.add_stream(name, rate=Fraction(fps), options=options)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for frame in frames:
            picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            container.mux(stream.encode(picture))
        container.mux(stream.encode())  # flush the encoder
    return name


def read_mp4(path: str | os.PathLike) -> np.ndarray:
    """Decode every frame of a video file: uint8 (T, H, W, 3). Raises what PyAV raises on a bad file."""
    import av

    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not frames:
        raise UserValueError(f"{path}: no video frames")
    return np.stack(frames)


def strip_canvas(frames: np.ndarray, upscale: int = 4, pad: int = 1, pad_value: int = 128) -> np.ndarray:
    """Frames (T, H, W, 3) side by side with `pad` grey pixels between and around them:
    (H·u + 2p, T·(W·u + p) + p, 3)."""
    _check_frames(frames)
    if pad < 0 or not 0 <= pad_value <= 255:
        raise UserValueError(f"need pad ≥ 0 and 0 ≤ pad_value ≤ 255, got {pad}, {pad_value}")
    big = _upscale(frames, upscale)  # (T, h, w, 3)
    t, h, w, _ = big.shape
    canvas = np.full((h + 2 * pad, t * (w + pad) + pad, 3), pad_value, np.uint8)
    for i, frame in enumerate(big):
        x0 = pad + i * (w + pad)
        canvas[pad : pad + h, x0 : x0 + w] = frame
    return canvas


def save_png(canvas: np.ndarray, path: str | os.PathLike) -> Path:
    """An RGB uint8 canvas (H, W, 3) as a PNG, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(path, format="PNG")
    return path


def write_clips(clips: np.ndarray, out_dir: str | os.PathLike, fps: int = 8, codec: Codec = "auto",
                upscale: int = 4) -> tuple[str, list[Path]]:
    """Per clip i: `clip_{i:03d}.mp4` and its strip `clip_{i:03d}.png`; plus `strips.png`, one clip per row.

    `clips` is uint8 (N, T, H, W, 3); returns (codec used, written paths).
    """
    if clips.ndim != 5 or len(clips) == 0:
        raise UserValueError(f"expected uint8 (N, T, H, W, 3) clips with N ≥ 1, got {clips.shape}")
    out = Path(out_dir)
    name = choose_codec(codec)
    paths: list[Path] = []
    strips = []
    for i, clip in enumerate(clips):
        write_mp4(clip, out / f"clip_{i:03d}.mp4", fps=fps, codec=name, upscale=upscale)
        strips.append(strip_canvas(clip, upscale=upscale))
        paths += [out / f"clip_{i:03d}.mp4", save_png(strips[-1], out / f"clip_{i:03d}.png")]
    rows = np.concatenate([s if i == 0 else s[1:] for i, s in enumerate(strips)])  # share the separators
    paths.append(save_png(rows, out / "strips.png"))
    return name, paths
