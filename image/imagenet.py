"""ImageNet-1K on disk, as an ILSVRC-style folder or Hugging Face parquet files, read with ADM's centre crop.

- Folder: `ROOT/<class>/<image>` (e.g. `train/n01440764/n01440764_10026.JPEG`); classes are the sorted
  sub-folder names, labels their positions (torchvision's ImageFolder order, the one DiT/SiT/REPA use).
  The validation set needs the usual rearrangement into class folders first.
- Parquet: files with an `image` column (struct {bytes, path} or binary) and an int `label` column, as the
  `imagenet-1k` dataset ships them; class names come from the Hugging Face metadata when present.

Every image is decoded fully (a truncated file fails here, not later), converted to RGB (CMYK, greyscale
and palette files included) and centre-cropped the way ADM does (Dhariwal & Nichol 2021, `center_crop_arr`).
"""

from __future__ import annotations

import io
import json
import logging
import os
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from layersync.core.errors import UserFileNotFoundError, UserValueError

log = logging.getLogger(__name__)

SourceFormat = Literal["auto", "folder", "parquet"]
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp")


def center_crop_adm(image: Image.Image, size: int) -> np.ndarray:
    """ADM's centre crop: halve with a box filter while the short side is ≥ 2·size, resize bicubically so
    the short side is `size`, then cut the central size×size square. RGB image → uint8 (size, size, 3)."""
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.BICUBIC)
    arr = np.asarray(image)  # (H, W, 3)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return np.ascontiguousarray(arr[top : top + size, left : left + size])


def decode_rgb(data: bytes) -> Image.Image:
    """Decode image bytes completely (truncation raises OSError) into an RGB PIL image."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.convert("RGB")


def load_and_crop(data: bytes, size: int) -> np.ndarray:
    """Image bytes → ADM-cropped uint8 (size, size, 3); raises what PIL raises on unreadable data."""
    return center_crop_adm(decode_rgb(data), size)


@dataclass(frozen=True)
class Listing:
    """What a source holds: item keys (in a fixed order), their labels and the class names."""

    keys: list[str]
    labels: np.ndarray  # (N,) int64
    class_names: list[str]


class FolderSource:
    """An ILSVRC-style folder of class sub-folders."""

    format = "folder"

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def list(self) -> Listing:
        classes = sorted(d.name for d in self.root.iterdir() if d.is_dir() and _has_images(d))
        if not classes:
            raise UserFileNotFoundError(f"{self.root} has no class sub-folders with images "
                                        f"({', '.join(IMAGE_EXTENSIONS)}); expected ROOT/<class>/<image>")
        keys, labels = [], []
        for label, name in enumerate(classes):
            files = sorted(e.name for e in os.scandir(self.root / name)
                           if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))
            keys += [f"{name}/{f}" for f in files]
            labels += [label] * len(files)
        return Listing(keys, np.asarray(labels, dtype=np.int64), classes)

    def read(self, keys: list[str]) -> list[bytes | Exception]:
        """The raw bytes of each item, or the exception that reading it raised."""
        out: list[bytes | Exception] = []
        for key in keys:
            try:
                out.append((self.root / key).read_bytes())
            except OSError as e:
                out.append(e)
        return out


class ParquetSource:
    """Parquet files with `image` and `label` columns (Hugging Face's imagenet-1k layout)."""

    format = "parquet"

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.files = [self.root] if self.root.is_file() else sorted(self.root.rglob("*.parquet"))
        if not self.files:
            raise UserFileNotFoundError(f"{self.root} holds no .parquet files")
        self._row_group_starts: dict[str, list[int]] = {}
        self._cache: tuple[tuple[str, int], list] | None = None  # last row group read

    def _name(self, file: Path) -> str:
        return file.name if self.root.is_file() else str(file.relative_to(self.root))

    def list(self) -> Listing:
        import pyarrow.parquet as pq

        keys, labels, names = [], [], None
        for file in self.files:
            parquet = pq.ParquetFile(file)
            columns = parquet.schema_arrow.names
            if "image" not in columns or "label" not in columns:
                raise UserValueError(f"{file} has columns {columns}; expected 'image' and 'label' "
                                     "(imagenet-1k)")
            file_labels = parquet.read(columns=["label"]).column("label").to_numpy()
            keys += [f"{self._name(file)}#{row}" for row in range(len(file_labels))]
            labels.append(file_labels.astype(np.int64))
            names = names or _hf_class_names(parquet.schema_arrow.metadata)
        labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
        if names is None:
            names = [str(i) for i in range(int(labels.max()) + 1 if len(labels) else 0)]
            log.warning("%s: no class names in the parquet metadata; assuming %d classes (0..max label)",
                        self.root, len(names))
        if len(labels) and not 0 <= labels.min() <= labels.max() < len(names):
            raise UserValueError(f"{self.root} has labels in [{labels.min()}, {labels.max()}] outside the "
                                 f"{len(names)} classes (imagenet-1k's test split is unlabelled: use train)")
        return Listing(keys, labels, names)

    def _row_group(self, name: str, row: int) -> tuple[int, int]:
        import pyarrow.parquet as pq

        if name not in self._row_group_starts:
            meta = pq.ParquetFile(self._path(name)).metadata
            starts = np.cumsum([0] + [meta.row_group(i).num_rows for i in range(meta.num_row_groups)])
            self._row_group_starts[name] = starts.tolist()
        starts = self._row_group_starts[name]
        group = bisect_right(starts, row) - 1
        return group, row - starts[group]

    def _path(self, name: str) -> Path:
        return self.root if self.root.is_file() else self.root / name

    def read(self, keys: list[str]) -> list[bytes | Exception]:
        """The image bytes of each `file#row` item (row groups are read once and cached in turn)."""
        import pyarrow.parquet as pq

        out: list[bytes | Exception] = []
        for key in keys:
            name, row = key.rsplit("#", 1)
            group, offset = self._row_group(name, int(row))
            if self._cache is None or self._cache[0] != (name, group):
                table = pq.ParquetFile(self._path(name)).read_row_group(group, columns=["image"])
                self._cache = ((name, group), table.column("image").to_pylist())
            value = self._cache[1][offset]
            data = value.get("bytes") if isinstance(value, dict) else value
            out.append(data if isinstance(data, bytes) else ValueError(f"no image bytes in {key}"))
        return out


def _has_images(folder: Path) -> bool:
    return any(e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS) for e in os.scandir(folder))


def _hf_class_names(metadata: dict | None) -> list[str] | None:
    """Class names from the `huggingface` schema metadata (`features.label.names`), if any."""
    if not metadata or b"huggingface" not in metadata:
        return None
    info = json.loads(metadata[b"huggingface"])
    label = info.get("info", {}).get("features", {}).get("label", {})
    return list(label["names"]) if isinstance(label, dict) and "names" in label else None


def open_source(path: str | os.PathLike, source_format: SourceFormat = "auto"):
    """The source at `path`: a parquet file or folder of them, or a folder of class folders."""
    path = Path(path)
    if not path.exists():
        raise UserFileNotFoundError(f"image source {path} does not exist")
    if source_format == "auto":
        has_parquet = path.suffix == ".parquet" if path.is_file() else any(path.rglob("*.parquet"))
        has_classes = path.is_dir() and any(d.is_dir() and _has_images(d) for d in path.iterdir())
        if has_parquet and has_classes:
            raise UserValueError(f"{path} holds both parquet files and class folders; pick with "
                                 "--source-format")
        if not has_parquet and not has_classes:
            raise UserFileNotFoundError(f"{path} holds neither parquet files nor class folders of images "
                                        "(ROOT/<class>/<image>)")
        source_format = "parquet" if has_parquet else "folder"
    if source_format == "parquet":
        return ParquetSource(path)
    if source_format == "folder":
        return FolderSource(path)
    raise UserValueError(f"source format must be auto, folder or parquet, got {source_format!r}")
