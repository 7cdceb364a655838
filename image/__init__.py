"""layersync.image: ImageNet latents, SiT recipes, FID evaluation, and the field's SiT checkpoints in and out."""

from .reference import export_reference_checkpoint, load_reference_checkpoint

__all__ = ["export_reference_checkpoint", "load_reference_checkpoint"]
