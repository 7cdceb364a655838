"""layersync.image: ImageNet latents, SiT recipes, FID evaluation, and the field's SiT checkpoints in and out.

`load_reference_checkpoint` and `export_reference_checkpoint` (image/reference.py) are loaded on first use, so
that `layersync --help` does not import torch.
"""

__all__ = ["export_reference_checkpoint", "load_reference_checkpoint"]


def __getattr__(name: str):
    if name in __all__:
        from . import reference

        return getattr(reference, name)
    raise AttributeError(f"module 'layersync.image' has no attribute {name!r}")
