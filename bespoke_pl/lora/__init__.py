"""LoRA: peft injection into the UNet and text encoders, kohya's module names, and the ``.safetensors``
files (writing, reading onto a base, header metadata) that ComfyUI, A1111/Forge and diffusers load.
"""
