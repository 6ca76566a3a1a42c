"""load_base on single original-format (LDM/SGM) checkpoint files, built from the tiny SD 1.5 and SDXL models.

Real users pass civitai-style ``.safetensors`` / ``.ckpt`` files; this runs diffusers' ``from_single_file``
through ``load_base`` offline and checks every tensor arrives where the diffusers folder has it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from bespoke_pl.diffusion.base import load_base
from bespoke_pl.errors import BaseModelError
from tests.ldm_checkpoint import ldm_state_dict


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def original_file(request, tmp_path_factory) -> tuple[str, Path, Path]:
    """(family, the diffusers folder, that model saved as one original-format .safetensors file)."""
    family = request.param
    folder = request.getfixturevalue(f"tiny_{family}")
    path = tmp_path_factory.mktemp(f"single-{family}") / f"tiny-{family}.safetensors"
    save_file(ldm_state_dict(folder), str(path))
    return family, folder, path


def _assert_same_weights(loaded: torch.nn.Module, expected: torch.nn.Module, what: str) -> None:
    got, want = loaded.state_dict(), expected.state_dict()
    assert sorted(got) == sorted(want), f"{what}: different parameter names"
    # Same shapes too: diffusers must undo LDM's 1x1-conv VAE attention weights, not keep them 4-D.
    mismatched = [key for key in want if got[key].shape != want[key].shape]
    assert not mismatched, f"{what}: shapes differ for {mismatched[:3]}"
    different = [key for key in want if not torch.equal(got[key], want[key])]
    assert not different, f"{what}: {len(different)} tensors differ, e.g. {different[:3]}"


def _check_matches_folder(path: Path, folder: Path, family: str) -> None:
    base = load_base(str(path), "auto", config_source=str(folder))
    assert base.family == family
    assert base.source == str(path)
    _assert_same_weights(base.unet, UNet2DConditionModel.from_pretrained(folder, subfolder="unet"), "unet")
    _assert_same_weights(base.vae, AutoencoderKL.from_pretrained(folder, subfolder="vae"), "vae")
    expected = [CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")]
    if family == "sdxl":
        expected.append(CLIPTextModelWithProjection.from_pretrained(folder, subfolder="text_encoder_2"))
    assert len(base.text_encoders) == len(expected) == len(base.tokenizers)
    for index, (encoder, want) in enumerate(zip(base.text_encoders, expected, strict=True)):
        _assert_same_weights(encoder, want, f"text encoder {index + 1}")
    modules = (base.unet, base.vae, *base.text_encoders)
    assert all(not p.requires_grad for m in modules for p in m.parameters())
    assert base.scheduler_config["num_train_timesteps"] == 1000


def test_original_safetensors_loads_as_the_folder_it_came_from(original_file):
    family, folder, path = original_file
    _check_matches_folder(path, folder, family)


def test_original_ckpt_loads_as_the_folder_it_came_from(tmp_path, tiny_sd15):
    path = tmp_path / "tiny-sd15.ckpt"
    torch.save({"state_dict": ldm_state_dict(tiny_sd15)}, path)  # plain tensors: loads with weights_only
    _check_matches_folder(path, tiny_sd15, "sd15")


def test_a_file_requested_as_the_other_family_is_refused(original_file):
    family, folder, path = original_file
    other = "sdxl" if family == "sd15" else "sd15"
    with pytest.raises(BaseModelError, match=rf"family {other} but base model .*{path.name} is {family}"):
        load_base(str(path), other, config_source=str(folder))


def test_a_file_missing_weights_is_refused_by_name(tmp_path, tiny_sdxl):
    state = ldm_state_dict(tiny_sdxl)
    del state["conditioner.embedders.1.model.ln_final.bias"]  # diffusers would leave it on the meta device
    path = tmp_path / "pruned.safetensors"
    save_file(state, str(path))
    with pytest.raises(
        BaseModelError, match=r"pruned\.safetensors lacks 1 text_encoder_2 weights .*final_layer_norm"
    ):
        load_base(str(path), "auto", config_source=str(tiny_sdxl))


def test_a_file_missing_a_unet_weight_is_refused_by_name(tmp_path, tiny_sd15):
    state = ldm_state_dict(tiny_sd15)
    del state["model.diffusion_model.out.2.bias"]
    path = tmp_path / "unet-pruned.safetensors"
    save_file(state, str(path))
    with pytest.raises(BaseModelError, match=r"cannot load .*unet-pruned\.safetensors as an sd15 checkpoint"):
        load_base(str(path), "auto", config_source=str(tiny_sd15))
