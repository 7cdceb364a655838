"""layersync.core: interpolants, samplers, DiT backbone, regularizers, trainer."""
