"""layersync: align a diffusion/flow transformer's own layers (LayerSync, ICLR 2026) and its peers."""

__version__ = "0.1.0"
