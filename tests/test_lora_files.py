"""Saved LoRA files, checked with diffusers' own loader and ours on tiny SD 1.5 / SDXL runs.

The runs train UNet (with conv) and text-encoder LoRA for a few steps at a high learning rate, so every
layer's LoRA is non-trivial, with alpha != rank so a loader that ignores alpha would be caught. Files saved in
float32 must reproduce the trained module's outputs to TOLERANCE; the LoRA itself moves them far more.
"""

import json
import logging
import re

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from peft.tuners.lora import LoraLayer
from safetensors import safe_open

from bespoke_pl.diffusion.base import load_base
from bespoke_pl.lora.inject import lora_weights
from bespoke_pl.lora.loading import apply_lora, read_lora_file
from bespoke_pl.pixelart.palette import palette_of, palette_to_hex

TOLERANCE = 1e-5  # float32 files: only summation order differs
MIN_EFFECT = 1e-2  # how far the trained LoRA moves the outputs at the least; far above TOLERANCE
PIPELINES = {"sd15": StableDiffusionPipeline, "sdxl": StableDiffusionXLPipeline}
KOHYA_KEY = re.compile(r"^lora_(unet|te|te1|te2)_[a-z0-9_]+\.(lora_down\.weight|lora_up\.weight|alpha)$")
DIFFUSERS_KEY = re.compile(r"^(unet|text_encoder|text_encoder_2)\.[\w.]+\.lora_[AB]\.weight$")


def unet_output(unet, family: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    width = unet.config.cross_attention_dim
    added = None
    if family == "sdxl":
        added = {
            "text_embeds": torch.randn(2, 32, generator=generator),
            "time_ids": torch.rand(2, 6, generator=generator) * 192,
        }
    latents = torch.randn(2, 4, 8, 8, generator=generator)
    context = torch.randn(2, 77, width, generator=generator)
    with torch.no_grad():
        return unet(
            latents, torch.tensor([10, 700]), encoder_hidden_states=context, added_cond_kwargs=added
        ).sample


def encoder_states(encoder) -> torch.Tensor:
    ids = torch.randint(0, 100, (2, 77), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.stack(encoder(ids, output_hidden_states=True).hidden_states)


def lora_layer_count(model) -> int:
    return sum(isinstance(m, LoraLayer) for m in model.modules())


class DiffusersWarnings(logging.Handler):
    """Collects diffusers' warnings (its loggers do not propagate to pytest's caplog)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("lora_format", ["kohya", "diffusers"])
def test_diffusers_load_lora_weights_reproduces_the_trained_model(request, family, lora_format):
    run = request.getfixturevalue(f"trained_{family}")
    pipe = PIPELINES[family].from_pretrained(run.tiny)
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if family == "sdxl" else [])
    base_unet = unet_output(pipe.unet, family)
    base_text = [encoder_states(e) for e in encoders]
    warnings = DiffusersWarnings()
    logging.getLogger("diffusers").addHandler(warnings)
    try:
        pipe.load_lora_weights(str(run.files[lora_format]))
    finally:
        logging.getLogger("diffusers").removeHandler(warnings)
    assert not [m for m in warnings.messages if re.search("unexpected|missing|no lora|dora", m, re.I)]

    # every layer in the file became a LoRA layer in diffusers: none dropped, none extra
    trained = run.module
    assert lora_layer_count(pipe.unet) == len(lora_weights(trained.unet))
    for ours, theirs in zip(trained.text_encoders, encoders, strict=True):
        assert lora_layer_count(theirs) == len(lora_weights(ours)) > 0

    expected = unet_output(trained.unet, family)
    assert (expected - base_unet).abs().max() > MIN_EFFECT
    torch.testing.assert_close(unet_output(pipe.unet, family), expected, atol=TOLERANCE, rtol=0)
    for ours, theirs, before in zip(trained.text_encoders, encoders, base_text, strict=True):
        expected = encoder_states(ours)
        assert (expected - before).abs().max() > MIN_EFFECT
        torch.testing.assert_close(encoder_states(theirs), expected, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("lora_format", ["kohya", "diffusers"])
def test_our_loader_merges_the_file_onto_a_fresh_base(request, family, lora_format):
    run = request.getfixturevalue(f"trained_{family}")
    base = load_base(str(run.tiny), family)
    names = ["text_encoder", "text_encoder_2"][: len(base.text_encoders)]
    components = {"unet": base.unet, **dict(zip(names, base.text_encoders, strict=True))}
    counts = apply_lora(components, read_lora_file(run.files[lora_format]), family)

    trained = run.module
    assert counts == {name: len(lora_weights(model)) for name, model in trained.lora_components().items()}
    torch.testing.assert_close(unet_output(base.unet, family), unet_output(trained.unet, family), atol=TOLERANCE, rtol=0)  # fmt: skip
    for ours, merged in zip(trained.text_encoders, base.text_encoders, strict=True):
        torch.testing.assert_close(encoder_states(merged), encoder_states(ours), atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_every_key_is_a_lora_key_with_the_real_alpha(request, family):
    run = request.getfixturevalue(f"trained_{family}")
    with safe_open(run.files["kohya"], "pt") as f:
        kohya = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    with safe_open(run.files["diffusers"], "pt") as f:
        diffusers_keys = list(f.keys())  # noqa: SIM118
    assert kohya and all(KOHYA_KEY.match(k) for k in kohya)
    assert diffusers_keys and all(DIFFUSERS_KEY.match(k) for k in diffusers_keys)
    assert len(kohya) == 3 * len(diffusers_keys) // 2  # down, up and alpha per layer
    te_prefixes = (
        ("lora_te1_text_model_", "lora_te2_text_model_") if family == "sdxl" else ("lora_te_text_model_",)
    )
    for prefix in te_prefixes:
        assert any(k.startswith(prefix) for k in kohya), prefix
    if family == "sdxl":  # SGM block names, not diffusers'
        assert not any(re.search("down_blocks|up_blocks|mid_block", k) for k in kohya)
        assert any(k.startswith("lora_unet_middle_block_1_transformer_blocks_0_attn2_to_k.") for k in kohya)
        # the tiny layout (one ResNet per level): conv1 of level 1, its downsampler, an upsampler
        for name in ("input_blocks_3_0_in_layers_2", "input_blocks_2_0_op", "output_blocks_3_2_conv"):
            assert f"lora_unet_{name}.lora_down.weight" in kohya, name
    else:
        assert any(
            k.startswith("lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_2.") for k in kohya
        )
    alphas = {k: v.item() for k, v in kohya.items() if k.endswith(".alpha")}
    conv = {k for k, v in kohya.items() if k.endswith("lora_down.weight") and v.shape[-1] == 3}
    assert conv and all(
        kohya[k].shape[0] == 2 and alphas[k.replace("lora_down.weight", "alpha")] == 1 for k in conv
    )
    assert sorted(set(alphas.values())) == [1.0, 2.0]  # conv_alpha and alpha, not the ranks


def test_default_file_is_float16_kohya(trained_sd15):
    lora = read_lora_file(trained_sd15.files["default"])
    assert lora.format == "kohya" and lora.family == "sd15"
    assert {w.down.dtype for w in lora.modules.values()} == {torch.float16}


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_metadata_parses_and_records_training_facts(request, demo_data, family):
    run = request.getfixturevalue(f"trained_{family}")
    with safe_open(run.files["kohya"], "pt") as f:
        metadata = f.metadata()
    assert all(isinstance(v, str) for v in metadata.values())
    for key in (
        "ss_network_args",
        "ss_tag_frequency",
        "ss_dataset_dirs",
        "bespoke_pl.palette",
        "bespoke_pl.hparams",
    ):
        json.loads(metadata[key])
    assert metadata["ss_clip_skip"] == metadata["modelspec.encoder_layer"] == metadata["bespoke_pl.clip_skip"]
    assert int(metadata["ss_clip_skip"]) == run.module.hparams.clip_skip == 2
    assert metadata["ss_network_module"] == "networks.lora"
    assert (metadata["ss_network_dim"], metadata["ss_network_alpha"]) == ("4", "2.0")
    assert json.loads(metadata["ss_network_args"]) == {"conv_dim": "2", "conv_alpha": "1.0"}
    assert (
        metadata["ss_v2"] == "False"
        and metadata["ss_epoch"] == "1"
        and float(metadata["ss_learning_rate"]) == 0.05
    )
    assert metadata["modelspec.sai_model_spec"] == "1.0.1"
    pixel_scale = run.module.hparams.pixel_scale
    assert metadata["bespoke_pl.pixel_scale"] == str(pixel_scale)
    assert metadata["modelspec.resolution"] == f"{24 * pixel_scale}x{24 * pixel_scale}"
    architecture = {"sd15": "stable-diffusion-v1/lora", "sdxl": "stable-diffusion-xl-v1-base/lora"}[family]
    assert metadata["modelspec.architecture"] == architecture
    ((folder, tags),) = json.loads(metadata["ss_tag_frequency"]).items()
    assert folder == demo_data.name and tags["pixel art"] == int(metadata["ss_num_train_images"])
    images = run.module.trainer.datamodule.pairs.images
    assert json.loads(metadata["bespoke_pl.palette"]) == palette_to_hex(palette_of(images))


def test_atomic_write_leaves_a_readable_file_and_no_temporary(tmp_path):
    import os
    import stat

    from safetensors.torch import load_file

    from bespoke_pl.lora.files import atomic_save_safetensors

    umask = os.umask(0o022)
    try:
        path = atomic_save_safetensors({"a": torch.ones(2)}, tmp_path / "x.safetensors", {"format": "pt"})
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's 0600: other tools and users read it
    assert torch.equal(load_file(path)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]
