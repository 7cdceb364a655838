"""layersync.core: interpolants, samplers, DiT backbone, regularizers, trainer.

The one-line way in: `layersync_loss(student, teacher, mask=None)` on (B, N, D) block outputs.
"""

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

__all__ = ["Interpolant", "PRESETS", "DiT", "DiTConfig", "ModelOutput", "REPA", "SRA", "AlignContext",
           "Combined", "Dispersive", "LayerSync", "Regularizer", "layersync_loss",
           "SampleResult", "dopri5", "euler", "euler_maruyama", "guided", "heun", "time_grid"]
