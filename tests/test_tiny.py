"""The tiny models load and run through the same diffusers/transformers code as real ones."""

from pathlib import Path

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import load_file
from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from bespoke_pl.offline import tiny
from bespoke_pl.offline.tiny import resolve_tiny, tiny_model_path, write_tiny_model

CAPTION = (
    "pixel art, 24x24, portrait of bespoke punk, male, light skin, blue background, red mohawk, sunglasses"
)


def _prompt(folder: Path, family: str, batch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Encodes CAPTION as the trainers do: penultimate hidden states, concatenated for SDXL."""
    names = ["text_encoder"] if family == "sd15" else ["text_encoder", "text_encoder_2"]
    states, added = [], {}
    for i, name in enumerate(names):
        tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer" + name[len("text_encoder") :])
        ids = tokenizer(
            [CAPTION] * batch, padding="max_length", truncation=True, return_tensors="pt"
        ).input_ids
        model_class = CLIPTextModelWithProjection if i == 1 else CLIPTextModel
        out = model_class.from_pretrained(folder, subfolder=name)(ids, output_hidden_states=True)
        states.append(out.hidden_states[-2])
        if i == 1:
            side = 24.0
            added = {
                "text_embeds": out.text_embeds,
                "time_ids": torch.tensor([[side, side, 0, 0, side, side]] * batch),
            }
    return torch.cat(states, dim=-1), added


def test_sd15_loads_through_pipeline(tiny_sd15: Path) -> None:
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd15)
    assert pipe.safety_checker is None
    assert pipe.vae.config.scaling_factor == 0.18215
    assert pipe.vae_scale_factor == 8
    assert pipe.text_encoder.config.hidden_act == "quick_gelu"
    assert pipe.text_encoder.config.vocab_size == len(pipe.tokenizer)
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert pipe.unet.config.down_block_types[0] == "CrossAttnDownBlock2D"
    sched = pipe.scheduler.config
    assert (sched.beta_schedule, sched.beta_start, sched.beta_end) == ("scaled_linear", 0.00085, 0.012)
    assert (sched.num_train_timesteps, sched.prediction_type) == (1000, "epsilon")


def test_sdxl_loads_through_pipeline(tiny_sdxl: Path) -> None:
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    te1, te2, unet = pipe.text_encoder.config, pipe.text_encoder_2.config, pipe.unet.config
    assert isinstance(pipe.text_encoder_2, CLIPTextModelWithProjection)
    assert unet.cross_attention_dim == te1.hidden_size + te2.hidden_size
    assert unet.projection_class_embeddings_input_dim == 6 * unet.addition_time_embed_dim + te2.projection_dim
    assert unet.addition_embed_type == "text_time" and unet.use_linear_projection
    assert unet.down_block_types[0] == "DownBlock2D"
    assert pipe.vae.config.scaling_factor == 0.13025 and pipe.vae.config.force_upcast
    assert (pipe.tokenizer.pad_token, pipe.tokenizer_2.pad_token) == ("<|endoftext|>", "!")
    assert te1.vocab_size == te2.vocab_size == len(pipe.tokenizer) == len(pipe.tokenizer_2)
    assert pipe.scheduler.config.prediction_type == "epsilon"


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_components_load_one_by_one(family: str, tiny_sd15: Path, tiny_sdxl: Path) -> None:
    folder = tiny_sd15 if family == "sd15" else tiny_sdxl
    assert isinstance(UNet2DConditionModel.from_pretrained(folder, subfolder="unet"), UNet2DConditionModel)
    assert DDPMScheduler.from_pretrained(folder, subfolder="scheduler").config.num_train_timesteps == 1000
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    with torch.no_grad():
        for side in (24, 192):
            latents = vae.encode(torch.zeros(1, 3, side, side)).latent_dist.mean
            assert latents.shape == (1, 4, side // 8, side // 8)


@pytest.mark.parametrize("side", [3, 24])
@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_unet_trains_on_both_latent_sizes(family: str, side: int, tiny_sd15: Path, tiny_sdxl: Path) -> None:
    folder = tiny_sd15 if family == "sd15" else tiny_sdxl
    with torch.no_grad():
        prompt, added = _prompt(folder, family, batch=2)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    latents = torch.randn(2, 4, side, side)
    kwargs = {"added_cond_kwargs": added} if added else {}
    out = unet(latents, torch.tensor([10, 900]), prompt, **kwargs).sample
    assert out.shape == latents.shape and torch.isfinite(out).all()
    out.square().mean().backward()
    assert unet.conv_in.weight.grad is not None


def test_text_encoder_hidden_states_allow_clip_skip(tiny_sdxl: Path) -> None:
    tokenizer = CLIPTokenizer.from_pretrained(tiny_sdxl, subfolder="tokenizer")
    ids = tokenizer([CAPTION], padding="max_length", return_tensors="pt").input_ids
    te = CLIPTextModel.from_pretrained(tiny_sdxl, subfolder="text_encoder")
    with torch.no_grad():
        out = te(ids, output_hidden_states=True)
    assert len(out.hidden_states) == te.config.num_hidden_layers + 1  # embeddings, then each layer
    assert te.config.num_hidden_layers >= 3
    assert not torch.allclose(out.hidden_states[-2], out.hidden_states[-1])


@pytest.mark.parametrize("subfolder", ["tokenizer", "tokenizer_2"])
def test_tokenizer_round_trips_and_pads(tiny_sdxl: Path, subfolder: str) -> None:
    tokenizer = CLIPTokenizer.from_pretrained(tiny_sdxl, subfolder=subfolder)
    assert tokenizer.model_max_length == 77
    assert type(AutoTokenizer.from_pretrained(tiny_sdxl, subfolder=subfolder)) is type(tokenizer)
    text = CAPTION + ", ünïcødé ☺"
    ids = tokenizer(text, padding="max_length", truncation=True).input_ids
    assert len(ids) == 77 and ids[0] == tokenizer.bos_token_id
    # CLIP lowercases and decodes with spaces between words and digits.
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    assert decoded.replace(" ", "") == text.lower().replace(" ", "")
    # Caption words are single tokens; nothing falls back to the unknown token (= eos).
    assert tokenizer.tokenize("mohawk") == ["mohawk</w>"]
    assert tokenizer(text).input_ids.count(tokenizer.eos_token_id) == 1
    long = tokenizer("punk " * 200, padding="max_length", truncation=True).input_ids
    assert len(long) == 77 and long[-1] == tokenizer.eos_token_id


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_pipeline_generates(family: str, tiny_sd15: Path, tiny_sdxl: Path) -> None:
    pipe_class = StableDiffusionPipeline if family == "sd15" else StableDiffusionXLPipeline
    pipe = pipe_class.from_pretrained(tiny_sd15 if family == "sd15" else tiny_sdxl)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(CAPTION, num_inference_steps=2, height=24, width=24, output_type="np").images
    assert images.shape == (1, 24, 24, 3)


def test_same_seed_same_weights(tmp_path: Path, tiny_sd15: Path) -> None:
    again = write_tiny_model("sd15", tmp_path / "again", seed=0)
    other = write_tiny_model("sd15", tmp_path / "other", seed=1)
    for name in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        assert (again / name).read_bytes() == (tiny_sd15 / name).read_bytes()
    weights, changed = (
        load_file(again / "vae/diffusion_pytorch_model.safetensors"),
        load_file(other / "vae/diffusion_pytorch_model.safetensors"),
    )
    assert any(not torch.equal(weights[k], changed[k]) for k in weights)


def test_building_leaves_global_rng_alone(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    write_tiny_model("sd15", tmp_path / "m")
    assert torch.equal(torch.rand(3), expected)


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="taken"):
        write_tiny_model("sd15", tmp_path / "taken")
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    (tmp_path / "empty").mkdir()
    assert (write_tiny_model("sd15", tmp_path / "empty") / "model_index.json").is_file()


def test_failed_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object) -> None:
        raise RuntimeError("killed")

    monkeypatch.setattr(tiny, "_write_components", fail)
    with pytest.raises(RuntimeError, match="killed"):
        write_tiny_model("sdxl", tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_cached_path_and_resolve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BESPOKE_PL_CACHE", str(tmp_path))
    path = tiny_model_path("sd15")
    assert path == tmp_path / "tiny-sd15" and (path / "model_index.json").is_file()
    monkeypatch.setattr(tiny, "write_tiny_model", lambda *a, **k: pytest.fail("rebuilt a cached model"))
    assert resolve_tiny("tiny:sd15") == str(path)
    assert resolve_tiny("runwayml/stable-diffusion-v1-5") is None
    with pytest.raises(ValueError, match="tiny:sd15, tiny:sdxl"):
        resolve_tiny("tiny:sd3")
    with pytest.raises(ValueError, match="sd15, sdxl"):
        write_tiny_model("sd3", tmp_path / "x")  # type: ignore[arg-type]


def test_cached_path_when_another_process_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = tiny.write_tiny_model

    def lose_race(family: str, out: Path) -> Path:
        real_write(family, out)  # the other process renames its folder into place first
        raise FileExistsError(out)

    monkeypatch.setattr(tiny, "write_tiny_model", lose_race)
    assert (tiny_model_path("sd15", cache_dir=tmp_path) / "model_index.json").is_file()
