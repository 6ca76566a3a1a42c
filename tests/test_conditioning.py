import pytest
import torch

from bespoke_pl.diffusion.base import load_base
from bespoke_pl.diffusion.conditioning import encode_prompts, final_layer_norm, sdxl_time_ids, tokenize

CAPTIONS = ["pixel art, 24x24, portrait of bespoke punk, mohawk", ""]


@pytest.fixture(scope="module")
def sd15(tiny_sd15):
    return load_base(str(tiny_sd15))


@pytest.fixture(scope="module")
def sdxl(tiny_sdxl):
    return load_base(str(tiny_sdxl))


@torch.no_grad()
def test_sd15_clip_skip_1_is_the_last_hidden_state(sd15):
    (encoder,) = sd15.text_encoders
    ids = tokenize(sd15.tokenizers[0], CAPTIONS)
    out = encoder(ids, output_hidden_states=True)
    embeds = encode_prompts(CAPTIONS, sd15.tokenizers, sd15.text_encoders, clip_skip=1)
    assert embeds.pooled is None
    assert embeds.sequence.shape == (2, 77, encoder.config.hidden_size)
    assert torch.allclose(embeds.sequence, out.last_hidden_state, atol=1e-6)


@torch.no_grad()
def test_sd15_clip_skip_2_is_penultimate_then_final_norm(sd15):
    (encoder,) = sd15.text_encoders
    out = encoder(tokenize(sd15.tokenizers[0], CAPTIONS), output_hidden_states=True)
    embeds = encode_prompts(CAPTIONS, sd15.tokenizers, sd15.text_encoders, clip_skip=2)
    expected = final_layer_norm(encoder)(out.hidden_states[-2])
    assert torch.allclose(embeds.sequence, expected, atol=1e-6)
    assert not torch.allclose(embeds.sequence, out.last_hidden_state, atol=1e-3)
    # (diffusers' own SD 1.5 clip_skip path reaches for `text_model`, gone in transformers 5, so no
    # side-by-side with it here; the SDXL test below compares with diffusers' default.)


@torch.no_grad()
def test_sdxl_clip_skip_2_is_penultimate_of_both_encoders_and_pooled_from_encoder_2(sdxl):
    te1, te2 = sdxl.text_encoders
    out1 = te1(tokenize(sdxl.tokenizers[0], CAPTIONS), output_hidden_states=True)
    out2 = te2(tokenize(sdxl.tokenizers[1], CAPTIONS), output_hidden_states=True)
    embeds = encode_prompts(CAPTIONS, sdxl.tokenizers, sdxl.text_encoders, clip_skip=2)
    width = te1.config.hidden_size + te2.config.hidden_size
    assert embeds.sequence.shape == (2, 77, width)
    expected = torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1)
    assert torch.allclose(embeds.sequence, expected, atol=1e-6)
    assert torch.allclose(embeds.pooled, out2.text_embeds, atol=1e-6)
    # clip skip 1: last layer of both, still without the final norm; pooled unchanged
    last = encode_prompts(CAPTIONS, sdxl.tokenizers, sdxl.text_encoders, clip_skip=1)
    assert torch.allclose(
        last.sequence, torch.cat([out1.hidden_states[-1], out2.hidden_states[-1]], -1), atol=1e-6
    )
    assert torch.allclose(last.pooled, embeds.pooled)


@torch.no_grad()
def test_sdxl_clip_skip_2_equals_diffusers_default(sdxl):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(
        vae=sdxl.vae, text_encoder=sdxl.text_encoders[0], text_encoder_2=sdxl.text_encoders[1],
        tokenizer=sdxl.tokenizers[0], tokenizer_2=sdxl.tokenizers[1], unet=sdxl.unet, scheduler=None,
    )  # fmt: skip
    theirs, _, pooled, _ = pipe.encode_prompt(CAPTIONS, device="cpu", do_classifier_free_guidance=False)
    ours = encode_prompts(CAPTIONS, sdxl.tokenizers, sdxl.text_encoders, clip_skip=2)
    assert torch.allclose(ours.sequence, theirs, atol=1e-5)
    assert torch.allclose(ours.pooled, pooled, atol=1e-5)


def test_clip_skip_out_of_range(sd15):
    with pytest.raises(ValueError, match="clip_skip must be between 1 and"):
        encode_prompts(CAPTIONS, sd15.tokenizers, sd15.text_encoders, clip_skip=99)


def test_time_ids_are_the_upscaled_size():
    assert sdxl_time_ids(192, 2).tolist() == [[192, 192, 0, 0, 192, 192]] * 2
