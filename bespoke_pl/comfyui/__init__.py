"""A ComfyUI node that snaps decoded images to exact pixel art in a bespoke_pl LoRA's training palette.

Link this folder into ``ComfyUI/custom_nodes/`` (docs/snap.md); ComfyUI reads the mappings below.
"""

from bespoke_pl.comfyui.node import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
