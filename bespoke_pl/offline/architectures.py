"""The real SD 1.5 and SDXL architectures, built without weights, for checks and benchmarks offline.

The configs are the published ones of runwayml/stable-diffusion-v1-5 and
stabilityai/stable-diffusion-xl-base-1.0 (``unet/config.json``, ``text_encoder*/config.json``: the keys
that differ from the library defaults). With ``torch.device("meta")`` the models cost no memory, which is
enough for names, shapes and parameter counts; on a real device they get random weights of the real size
(throughput and memory benchmarks).
"""

from __future__ import annotations

from torch import nn

SD15_UNET = {
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "cross_attention_dim": 768,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "layers_per_block": 2,
    "sample_size": 64,
}
SDXL_UNET = {
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 2,
    "projection_class_embeddings_input_dim": 2816,
    "sample_size": 128,
    "transformer_layers_per_block": [1, 2, 10],
    "use_linear_projection": True,
}
# CLIP ViT-L/14 (SD 1.5, SDXL encoder 1) and OpenCLIP ViT-bigG/14 (SDXL encoder 2, projected to 1280).
CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12}
CLIP_G = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20}
CLIP_G_PROJECTION = 1280


def real_unet(family: str) -> nn.Module:
    """The family's UNet with random weights on the current default device (use ``torch.device("meta")``)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**(SDXL_UNET if family == "sdxl" else SD15_UNET))


def real_text_encoders(family: str) -> dict[str, nn.Module]:
    """The family's text encoders by diffusers component name, random weights, on the default device."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    encoders: dict[str, nn.Module] = {"text_encoder": CLIPTextModel(CLIPTextConfig(**CLIP_L))}
    if family == "sdxl":
        config = CLIPTextConfig(**CLIP_G, projection_dim=CLIP_G_PROJECTION)
        encoders["text_encoder_2"] = CLIPTextModelWithProjection(config)
    return encoders


# The 8x VAE shared by SD 1.5 and SDXL (only the scaling factor differs).
VAE = {
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 2,
    "latent_channels": 4,
}
SCALING_FACTOR = {"sd15": 0.18215, "sdxl": 0.13025}
SCHEDULER = {
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "num_train_timesteps": 1000,
}
