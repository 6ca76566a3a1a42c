"""bespoke_pl: LoRA training of SDXL and SD 1.5 on 24x24 pixel-art portraits."""

__version__ = "0.1.0"
