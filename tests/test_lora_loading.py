"""Reading LoRA files: other tools' kohya variants, DoRA, and clear refusals of everything else."""

import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from safetensors import safe_open
from safetensors.torch import save_file

from bespoke_pl.diffusion.base import load_base
from bespoke_pl.lora.files import save_lora_file
from bespoke_pl.lora.inject import add_lora, lora_weights, unet_targets
from bespoke_pl.lora.loading import LoRAFileError, apply_lora, read_lora_file


def unet_output(unet) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 8, generator=generator)
    context = torch.randn(1, 77, unet.config.cross_attention_dim, generator=generator)
    with torch.no_grad():
        return unet(latents, torch.tensor([500]), encoder_hidden_states=context).sample


def components(base) -> dict:
    names = ["text_encoder", "text_encoder_2"][: len(base.text_encoders)]
    return {"unet": base.unet, **dict(zip(names, base.text_encoders, strict=True))}


def test_kohya_file_from_another_tool_loads(tmp_path, tiny_sd15):
    """SGM-style UNet names for SD 1.5, a text-encoder name without ``text_model_``, no alpha (= rank)."""
    base = load_base(str(tiny_sd15), "sd15")
    layers = {
        "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q": base.unet.down_blocks[0]
        .attentions[0]
        .transformer_blocks[0]
        .attn1.to_q,
        "lora_unet_up_blocks_1_resnets_0_conv1": base.unet.up_blocks[1].resnets[0].conv1,
        "lora_te_encoder_layers_1_mlp_fc2": base.text_encoders[0].encoder.layers[1].mlp.fc2,
    }
    generator = torch.Generator().manual_seed(3)
    tensors, expected = {}, {}
    for name, layer in layers.items():
        out_ch, in_ch, *kernel = layer.weight.shape
        down = torch.randn(3, in_ch, *kernel, generator=generator)
        up = torch.randn(out_ch, 3, *([1, 1] if kernel else []), generator=generator)
        tensors |= {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up}
        expected[name] = layer.weight + (up.flatten(1) @ down.flatten(1)).view_as(layer.weight) * 0.5
    path = tmp_path / "other.safetensors"
    save_file(tensors, path)
    counts = apply_lora(components(base), read_lora_file(path), "sd15", scale=0.5)
    assert counts == {"unet": 2, "text_encoder": 1}
    for name, layer in layers.items():
        torch.testing.assert_close(layer.weight, expected[name], atol=1e-5, rtol=1e-5)


def test_dora_round_trips_through_both_formats(tmp_path, tiny_sd15):
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_pretrained(tiny_sd15, subfolder="unet")
    before = unet_output(unet)
    linear, conv = unet_targets(unet, include_conv=True)
    add_lora(unet, linear, 4, 2, use_dora=True, conv_targets=conv, conv_rank=2, conv_alpha=1)
    with torch.no_grad():  # a trained-looking DoRA: non-zero up weights, magnitudes off the base norms
        for name, parameter in unet.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
            elif "lora_magnitude" in name:
                parameter.mul_(1 + 0.1 * torch.rand_like(parameter))
    expected = unet_output(unet)
    assert (expected - before).abs().max() > 1e-2
    parts = {"unet": lora_weights(unet)}
    for lora_format in ("kohya", "diffusers"):  # kohya: LyCORIS' dora_scale beside lora_down / lora_up
        path = save_lora_file(
            tmp_path / f"{lora_format}.safetensors",
            parts,
            "sd15",
            unet.config,
            {},
            lora_format,
            torch.float32,
        )
        fresh = UNet2DConditionModel.from_pretrained(tiny_sd15, subfolder="unet")
        apply_lora({"unet": fresh}, read_lora_file(path), "sd15")
        torch.testing.assert_close(unet_output(fresh), expected, atol=1e-5, rtol=0)
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd15)
    pipe.load_lora_weights(str(path))
    torch.testing.assert_close(unet_output(pipe.unet), expected, atol=1e-5, rtol=0)


def test_pickles_and_other_non_safetensors_are_refused(tmp_path):
    zipped, legacy, junk = tmp_path / "a.safetensors", tmp_path / "b.ckpt", tmp_path / "c.safetensors"
    torch.save({"lora_unet_x.lora_down.weight": torch.zeros(1)}, zipped)
    torch.save({"x": torch.zeros(1)}, legacy, _use_new_zipfile_serialization=False)
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all")
    for path in (zipped, legacy):
        with pytest.raises(LoRAFileError, match=f"{path.name} is a pickle .*refuses them"):
            read_lora_file(path)
    with pytest.raises(LoRAFileError, match="c.safetensors is not a readable safetensors file"):
        read_lora_file(junk)
    with pytest.raises(LoRAFileError, match="does not exist"):
        read_lora_file(tmp_path / "missing.safetensors")


def test_files_that_are_not_plain_sd_loras_are_refused(tmp_path, tiny_sd15):
    cases = {
        "model weights": (None, "is not an SD 1.5 / SDXL LoRA in kohya or diffusers format"),
        "full": ({"model.diffusion_model.out.2.weight": torch.zeros(2)}, "is a full model checkpoint"),
        "loha": ({"lora_unet_a_b.hada_t1": torch.zeros(2)}, "LyCORIS LoHa with Tucker decomposition"),
        "oft": ({"lora_unet_a.oft_blocks": torch.zeros(1, 2, 2)}, "uses OFT, which bespoke_pl does not load"),
        "half": (
            {"lora_unet_a.lora_down.weight": torch.zeros(1, 2)},
            "layer lora_unet_a has .*needs both down and up",
        ),
        "odd": (
            {"lora_unet_a.lora_down.weight": torch.zeros(1, 2), "lora_unet_a.scale": torch.zeros(1)},
            "key lora_unet_a.scale is not a LoRA",
        ),  # fmt: skip
    }
    for name, (tensors, message) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        if tensors is None:
            path = tiny_sd15 / "unet" / "diffusion_pytorch_model.safetensors"
        else:
            save_file(tensors, path)
        with pytest.raises(LoRAFileError, match=message):
            read_lora_file(path)
    flux = tmp_path / "flux.safetensors"
    save_file({"lora_unet_double_blocks_0_img_attn_proj.lora_down.weight": torch.zeros(1, 2)}, flux,
              metadata={"modelspec.architecture": "flux-1-dev/lora"})  # fmt: skip
    with pytest.raises(
        LoRAFileError, match="is a LoRA for flux-1-dev/lora; bespoke_pl loads SD 1.5 and SDXL"
    ):
        read_lora_file(flux)


def test_wrong_family_is_refused(tmp_path, tiny_sd15, trained_sdxl):
    base = load_base(str(tiny_sd15), "sd15")
    with pytest.raises(LoRAFileError, match="is a LoRA for SDXL, but the base model is SD 1.5"):
        apply_lora(components(base), read_lora_file(trained_sdxl.files["kohya"]), "sd15")
    # without a header and text-encoder layers nothing declares the family; the layers themselves misfit
    with safe_open(trained_sdxl.files["kohya"], "pt") as f:
        unet_only = {k: f.get_tensor(k) for k in f.keys() if k.startswith("lora_unet_")}  # noqa: SIM118
    save_file(unet_only, tmp_path / "bare.safetensors")
    bare = read_lora_file(tmp_path / "bare.safetensors")
    assert bare.family is None
    with pytest.raises(LoRAFileError, match="bare.safetensors: .*(for another model|on another base model)"):
        apply_lora(components(base), bare, "sd15")


def test_safetensors_whose_header_length_starts_like_a_pickle_still_loads(tmp_path):
    tensors = {
        "lora_unet_a.lora_down.weight": torch.zeros(1, 2),
        "lora_unet_a.lora_up.weight": torch.zeros(2, 1),
    }
    path = tmp_path / "lora.safetensors"
    for pad in range(256):  # grow the header until its length's first byte is 0x80, a pickle's opcode
        save_file(tensors, path, metadata={"note": "x" * pad})
        if path.read_bytes()[:1] == b"\x80":
            break
    assert path.read_bytes()[:1] == b"\x80"
    assert read_lora_file(path).format == "kohya"


def test_two_names_for_one_layer_are_refused(tmp_path, tiny_sd15):
    base = load_base(str(tiny_sd15), "sd15")
    down, up = torch.zeros(2, 16), torch.zeros(16, 2)  # level 0 of the tiny UNet is 16 channels wide
    names = ["lora_unet_down_blocks_0_attentions_0_proj_out", "lora_unet_input_blocks_1_1_proj_out"]
    tensors = {f"{n}.lora_{r}.weight": t.clone() for n in names for r, t in (("down", down), ("up", up))}
    save_file(tensors, tmp_path / "twice.safetensors")
    with pytest.raises(LoRAFileError, match="both name the unet layer down_blocks.0.attentions.0.proj_out"):
        apply_lora(components(base), read_lora_file(tmp_path / "twice.safetensors"), "sd15")
