"""LAION-CLAP's audio tower (Wu et al. 2023): HTSAT on 10 s of 48 kHz audio → 512-d L2-normalised embeddings.

This runs laion-clap's own HTSAT code (`laion_clap/clap_module/htsat.py` from the installed package) and the
`audio_projection` MLP of its `CLAP` model, with the checkpoint's `audio_branch.*` / `audio_projection.*`
tensors. The text tower is not built: `laion_clap.CLAP_Module` would fetch RoBERTa from the hub, and the
package's `__init__` builds three tokenizers from the hub at import (and pulls transformers and sklearn,
~30 s). So the HTSAT module is imported from the package folder without running that `__init__`
(`_import_htsat`); `HF_HUB_OFFLINE=1` is still set first in case anything reaches for the hub.

Input preparation equals `CLAP_Module.get_audio_embedding_from_data` for audio of at most 10 s (int16
quantisation, `repeatpad` filling); windowing of longer audio is the FAD preset's business (`fad.py`), so the
random 10 s crop laion-clap takes of longer input never happens here.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
import types
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from layersync.core.errors import UserKeyError, UserValueError
from layersync.core.weights import WeightFile, resolve

SAMPLE_RATE_HZ = 48_000
CLIP_SAMPLES = 480_000  # 10 s, HTSAT's fixed input length
EMBEDDING_DIM = 512  # CLAP's joint audio-text space
_HTSAT_PACKAGE = "_layersync_laion_clap_module"

CLAP_MUSIC_WEIGHTS = WeightFile(
    filename="music_audioset_epoch_15_esc_90.14.pt",
    sha256="fae3e9c087f2909c28a09dc31c8dfcdacbc42ba44c70e972b58c1bd1caf6dedd",
    source="https://huggingface.co/lukewys/laion_clap/resolve/main/music_audioset_epoch_15_esc_90.14.pt",
    description="LAION-CLAP HTSAT-base trained on music + AudioSet (laion-clap README: best for music)",
)
CLAP_AUDIO_WEIGHTS = WeightFile(
    filename="630k-audioset-best.pt",
    sha256=None,  # no published checksum found; results record the file's sha256 (metrics.weight_ids)
    source="https://huggingface.co/lukewys/laion_clap/resolve/main/630k-audioset-best.pt",
    description="LAION-CLAP HTSAT-tiny trained on LAION-Audio-630K + AudioSet (laion-clap's default)",
)


@dataclass(frozen=True)
class HtsatConfig:
    """HTSAT Swin sizes; HTSAT-base = embed 128, depths 2/2/12/2, heads 4/8/16/32 (laion-clap's factory)."""

    embed_dim: int = 128
    depths: tuple[int, ...] = (2, 2, 12, 2)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)

    @property
    def num_features(self) -> int:
        """Width of the pooled embedding: embed_dim · 2^(stages − 1) (1024 for HTSAT-base)."""
        return self.embed_dim * 2 ** (len(self.depths) - 1)


HTSAT_BASE = HtsatConfig()
HTSAT_TINY = HtsatConfig(embed_dim=96, depths=(2, 2, 6, 2))  # laion-clap's "tiny": 768-d pooled


def _clap_module_dir() -> Path:
    spec = importlib.util.find_spec("laion_clap")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("laion_clap is not installed; `pip install laion-clap` (a dependency)")
    return Path(next(iter(spec.submodule_search_locations))) / "clap_module"


def _import_htsat() -> types.ModuleType:
    """laion-clap's htsat.py as a submodule of a bare package over its folder (skipping both `__init__`s)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if _HTSAT_PACKAGE not in sys.modules:
        package = types.ModuleType(_HTSAT_PACKAGE)
        package.__path__ = [str(_clap_module_dir())]  # htsat.py imports `.utils` and `.feature_fusion`
        sys.modules[_HTSAT_PACKAGE] = package
    return importlib.import_module(f"{_HTSAT_PACKAGE}.htsat")


def _audio_cfg() -> types.SimpleNamespace:
    """The front-end settings of laion-clap's HTSAT-base config (48 kHz, 1024-pt window, hop 480, 64 mels);
    HTSAT-tiny.json's audio settings are the same but for the model name, which HTSAT does not read."""
    cfg = json.loads((_clap_module_dir() / "model_configs" / "HTSAT-base.json").read_text())["audio_cfg"]
    if cfg["sample_rate"] != SAMPLE_RATE_HZ or cfg["clip_samples"] != CLIP_SAMPLES:
        raise RuntimeError(f"unexpected laion-clap HTSAT-base audio config {cfg}; expected 48 kHz, 10 s")
    return types.SimpleNamespace(**cfg)


def repeat_pad(waveforms: torch.Tensor) -> torch.Tensor:
    """laion-clap's `repeatpad`: tile a clip shorter than 10 s as often as it fits whole, then zero-pad."""
    length = waveforms.shape[-1]
    if length > CLIP_SAMPLES:
        raise UserValueError(f"clips longer than {CLIP_SAMPLES} samples must be windowed first, got {length}")
    if length == 0:
        raise UserValueError("cannot embed an empty clip")
    tiled = waveforms.repeat(1, CLIP_SAMPLES // length)  # (B, k·T)
    return F.pad(tiled, (0, CLIP_SAMPLES - tiled.shape[-1]))  # (B, 480000)


def quantize_int16(waveforms: torch.Tensor) -> torch.Tensor:
    """Round-trip through int16 as laion-clap does before embedding: clip to [-1, 1], ·32767, truncate."""
    return (waveforms.clamp(-1.0, 1.0) * 32767.0).to(torch.int16).float() / 32767.0


class ClapAudioEncoder(nn.Module):
    """HTSAT + audio projection: (B, ≤480000) 48 kHz mono waveforms → (B, 512) unit-norm CLAP embeddings."""

    def __init__(self, config: HtsatConfig = HTSAT_BASE):
        super().__init__()
        htsat = _import_htsat()
        self.config = config
        # Same constructor arguments as laion-clap's create_htsat_model, sizes from `config`.
        self.audio_branch = htsat.HTSAT_Swin_Transformer(
            spec_size=256,
            patch_size=4,
            patch_stride=(4, 4),
            num_classes=527,
            embed_dim=config.embed_dim,
            depths=list(config.depths),
            num_heads=list(config.num_heads),
            window_size=8,
            config=_audio_cfg(),
            enable_fusion=False,
            fusion_type="None",
        )
        # CLAP.audio_projection with its default mlp_act "relu" (laion_clap/clap_module/model.py).
        self.audio_projection = nn.Sequential(
            nn.Linear(config.num_features, EMBEDDING_DIM), nn.ReLU(), nn.Linear(EMBEDDING_DIM, EMBEDDING_DIM)
        )

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        if waveforms.ndim != 2:
            raise UserValueError(f"expected (B, T) mono 48 kHz waveforms, got {tuple(waveforms.shape)}")
        x = repeat_pad(quantize_int16(waveforms.float()))  # (B, 480000)
        longer = torch.zeros(x.shape[0], 1, dtype=torch.bool, device=x.device)  # non-fusion: unused
        out = self.audio_branch({"waveform": x, "longer": longer}, device=x.device)
        return F.normalize(self.audio_projection(out["embedding"]), dim=-1)  # (B, 512)

    def extra_repr(self) -> str:
        return f"config={asdict(self.config)}"


def load_clap_audio(path: str | os.PathLike | None = None, weights: WeightFile = CLAP_MUSIC_WEIGHTS,
                    verify: bool = True) -> ClapAudioEncoder:
    """The audio tower of `weights` (`path` or `$LAYERSYNC_WEIGHTS`), eval mode: HTSAT-base for the music
    checkpoint, HTSAT-tiny for `630k-audioset-best.pt` (fadtk's clap-laion-audio)."""
    file = resolve(weights, path, verify=verify)
    # The checkpoints pickle numpy scalars (their epoch, …) beside the tensors: allowing just those
    # constructors keeps the load weights-only, so even an unverified file cannot run code.
    numeric = [type(np.dtype(code)) for code in "?bhilqBHILQefd"]  # bool, ints, floats: no object dtype
    with torch.serialization.safe_globals([np.core.multiarray.scalar, np.dtype, *numeric]):
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict", checkpoint)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    audio = {k: v for k, v in state.items() if k.startswith(("audio_branch.", "audio_projection."))}
    if not audio:
        raise UserKeyError(f"{file} holds no audio_branch.* / audio_projection.* tensors; not a CLAP "
                           "checkpoint?")
    model = ClapAudioEncoder(HTSAT_TINY if weights is CLAP_AUDIO_WEIGHTS else HTSAT_BASE)
    model.load_state_dict(audio)
    return model.eval()
