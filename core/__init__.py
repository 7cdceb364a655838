"""layersync.core: interpolants, samplers, DiT backbone, regularizers, trainer.

The one-line way in: `layersync_loss(student, teacher, mask=None)` on (B, N, D) block outputs.
"""

from layersync.core.capture import capture_blocks
from layersync.core.checkpoint import CheckpointError
from layersync.core.cli_util import resolve_config, run_main
from layersync.core.config import ConfigError, apply_overrides, load_json, parse_cli_overrides, save_json
from layersync.core.interpolants import Interpolant
from layersync.core.models import PRESETS, DiT, DiTConfig, ModelOutput
from layersync.core.samplers import SampleResult, dopri5, euler, euler_maruyama, guided, heun, time_grid
from layersync.core.regularizers import (
    REPA,
    SRA,
    AlignContext,
    Combined,
    Dispersive,
    LayerSync,
    Regularizer,
    layersync_loss,
)
from layersync.core.runs import load_run_state, load_weights
from layersync.core.trainer import Batch, DataSource, TensorSource, TrainConfig, Trainer

__all__ = ["Interpolant", "PRESETS", "DiT", "DiTConfig", "ModelOutput", "REPA", "SRA", "AlignContext",
           "Combined", "Dispersive", "LayerSync", "Regularizer", "layersync_loss",
           "SampleResult", "dopri5", "euler", "euler_maruyama", "guided", "heun", "time_grid",
           "Batch", "DataSource", "TensorSource", "TrainConfig", "Trainer",
           "CheckpointError", "load_run_state", "load_weights",
           "ConfigError", "apply_overrides", "load_json", "parse_cli_overrides", "resolve_config", "run_main",
           "save_json"]  # the stable surface: docs/api.md
__all__ += ["capture_blocks"]  # issue 19: block hooks on any transformer
