"""kohya names: the SGM block numbering, and the real SD 1.5 / SDXL architectures built on the meta device.

The UNet configs are those published with runwayml/stable-diffusion-v1-5 and
stabilityai/stable-diffusion-xl-base-1.0 (``unet/config.json``, keys that differ from diffusers' defaults).
Expected names and counts are kohya sd-scripts' (``networks/lora.py`` on its own UNets, one network per
process): SD 1.5 UNet 192 modules, 278 with conv_dim; SDXL 722, 788 with conv_dim; text encoders 72 / 264.
"""

import pytest
import torch

from bespoke_pl.lora.files import kohya_tensors
from bespoke_pl.lora.inject import add_lora, lora_weights, text_encoder_targets, unet_targets
from bespoke_pl.lora.kohya import kohya_name, sgm_block_paths, sgm_module_path, text_encoder_name
from bespoke_pl.offline.architectures import SDXL_UNET, real_text_encoders, real_unet

# kohya name -> (lora_down shape, lora_up shape) at rank 16 / conv rank 8
KNOWN = {
    "sd15": {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": ((16, 320), (320, 16)),
        "lora_unet_down_blocks_0_attentions_0_proj_in": ((16, 320, 1, 1), (320, 16, 1, 1)),
        "lora_unet_down_blocks_2_attentions_1_transformer_blocks_0_attn2_to_k": ((16, 768), (1280, 16)),
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj": ((16, 1280), (10240, 16)),
        "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_out_0": ((16, 320), (320, 16)),
        "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_ff_net_2": ((16, 5120), (1280, 16)),
        "lora_unet_down_blocks_1_resnets_0_conv1": ((8, 320, 3, 3), (640, 8, 1, 1)),
        "lora_unet_down_blocks_1_resnets_0_conv_shortcut": ((16, 320, 1, 1), (640, 16, 1, 1)),
        "lora_unet_mid_block_resnets_0_time_emb_proj": ((16, 1280), (1280, 16)),
        "lora_unet_down_blocks_2_downsamplers_0_conv": ((8, 1280, 3, 3), (1280, 8, 1, 1)),
        "lora_unet_up_blocks_0_upsamplers_0_conv": ((8, 1280, 3, 3), (1280, 8, 1, 1)),
        "lora_te_text_model_encoder_layers_11_mlp_fc1": ((16, 768), (3072, 16)),
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj": ((16, 768), (768, 16)),
    },
    "sdxl": {
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q": ((16, 640), (640, 16)),
        "lora_unet_input_blocks_4_1_proj_in": ((16, 640), (640, 16)),
        "lora_unet_input_blocks_8_1_transformer_blocks_9_attn2_to_k": ((16, 2048), (1280, 16)),
        "lora_unet_input_blocks_7_1_transformer_blocks_0_ff_net_0_proj": ((16, 1280), (10240, 16)),
        "lora_unet_middle_block_1_transformer_blocks_9_attn1_to_out_0": ((16, 1280), (1280, 16)),
        "lora_unet_middle_block_1_transformer_blocks_5_ff_net_2": ((16, 5120), (1280, 16)),
        "lora_unet_output_blocks_0_1_transformer_blocks_9_ff_net_2": ((16, 5120), (1280, 16)),
        "lora_unet_output_blocks_5_1_transformer_blocks_1_attn2_to_v": ((16, 2048), (640, 16)),
        "lora_unet_output_blocks_5_1_proj_out": ((16, 640), (640, 16)),
        "lora_unet_input_blocks_1_0_in_layers_2": ((8, 320, 3, 3), (320, 8, 1, 1)),
        "lora_unet_input_blocks_3_0_op": ((8, 320, 3, 3), (320, 8, 1, 1)),
        "lora_unet_middle_block_2_emb_layers_1": ((16, 1280), (1280, 16)),
        "lora_unet_output_blocks_3_0_out_layers_3": ((8, 640, 3, 3), (640, 8, 1, 1)),
        "lora_unet_output_blocks_8_0_skip_connection": ((16, 640, 1, 1), (320, 16, 1, 1)),
        "lora_unet_output_blocks_2_2_conv": ((8, 1280, 3, 3), (1280, 8, 1, 1)),
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": ((16, 768), (768, 16)),
        "lora_te2_text_model_encoder_layers_31_mlp_fc2": ((16, 5120), (1280, 16)),
    },
}
COUNTS = {"sd15": (192, 278, 72), "sdxl": (722, 788, 264)}


def test_sgm_blocks_of_real_sdxl():
    blocks = sgm_block_paths(SDXL_UNET)
    assert blocks["down_blocks.0.resnets.0"] == "input_blocks.1.0"
    assert blocks["down_blocks.0.downsamplers.0"] == "input_blocks.3.0"
    assert blocks["down_blocks.1.attentions.1"] == "input_blocks.5.1"
    assert blocks["down_blocks.2.resnets.1"] == "input_blocks.8.0"
    assert "down_blocks.2.downsamplers.0" not in blocks
    assert (blocks["mid_block.resnets.0"], blocks["mid_block.attentions.0"]) == (
        "middle_block.0",
        "middle_block.1",
    )
    assert blocks["mid_block.resnets.1"] == "middle_block.2"
    assert blocks["up_blocks.0.attentions.2"] == "output_blocks.2.1"
    assert blocks["up_blocks.1.upsamplers.0"] == "output_blocks.5.2"
    assert blocks["up_blocks.2.resnets.2"] == "output_blocks.8.0"
    assert "up_blocks.2.upsamplers.0" not in blocks
    assert sgm_module_path("conv_in", blocks) == "input_blocks.0.0"
    assert (
        sgm_module_path("down_blocks.1.resnets.0.conv_shortcut", blocks) == "input_blocks.4.0.skip_connection"
    )


def test_sgm_blocks_follow_a_per_level_layout():
    # an upsampler after ResNets without attention sits at index 1 of its output block
    config = {
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        "layers_per_block": [1, 3],
    }
    blocks = sgm_block_paths(config)
    assert blocks["down_blocks.0.attentions.0"] == "input_blocks.1.1"
    assert blocks["down_blocks.0.downsamplers.0"] == "input_blocks.2.0"
    assert blocks["down_blocks.1.resnets.2"] == "input_blocks.5.0"
    assert blocks["up_blocks.0.resnets.3"] == "output_blocks.3.0"
    assert blocks["up_blocks.0.upsamplers.0"] == "output_blocks.3.1"
    assert blocks["up_blocks.1.attentions.1"] == "output_blocks.5.1"


def test_text_encoder_names_keep_kohyas_text_model_root():
    # transformers 5's CLIPTextModel paths lack "text_model."; kohya's names (and ComfyUI's keys) have it
    expected = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
    assert text_encoder_name("text_encoder", "encoder.layers.0.self_attn.q_proj", "sdxl") == expected
    assert (
        text_encoder_name("text_encoder", "text_model.encoder.layers.0.self_attn.q_proj", "sdxl") == expected
    )
    assert (
        kohya_name("text_encoder", "encoder.layers.3.mlp.fc2", "sd15")
        == "lora_te_text_model_encoder_layers_3_mlp_fc2"
    )
    with pytest.raises(ValueError, match="no text encoder component"):
        text_encoder_name("text_encoder_2", "encoder.layers.0.mlp.fc1", "sd15")


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_real_architectures_get_kohyas_names_and_counts(family):
    unet_count, unet_conv_count, te_count = COUNTS[family]
    with torch.device("meta"):
        unet = real_unet(family)
        encoders = real_text_encoders(family)
        assert len(unet_targets(unet)[0]) == unet_count and not unet_targets(unet)[1]
        linear, conv = unet_targets(unet, include_conv=True)
        add_lora(unet, linear, 16, 8, conv_targets=conv, conv_rank=8, conv_alpha=4)
        for encoder in encoders.values():
            add_lora(encoder, text_encoder_targets(encoder), 16, 8)
    parts = {"unet": lora_weights(unet)} | {name: lora_weights(e) for name, e in encoders.items()}
    assert len(parts["unet"]) == unet_conv_count
    assert sum(len(parts[name]) for name in encoders) == te_count
    tensors = kohya_tensors(parts, family, unet.config, torch.float16)
    names = {key.rsplit(".", 2)[0] if key.endswith(".weight") else key.rsplit(".", 1)[0] for key in tensors}
    assert len(names) == unet_conv_count + te_count and len(tensors) == 3 * len(names)
    for name, (down, up) in KNOWN[family].items():
        assert tuple(tensors[f"{name}.lora_down.weight"].shape) == down, name
        assert tuple(tensors[f"{name}.lora_up.weight"].shape) == up, name
        assert tensors[f"{name}.alpha"].item() == (4 if len(down) == 4 and down[-1] == 3 else 8), name
    if family == "sdxl":
        assert sum(n.startswith("lora_unet_input_blocks_8_1_transformer_blocks_") for n in names) == 10 * 10
