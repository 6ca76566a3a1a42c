"""Hostile and damaged LoRA files given to ``generate``: one ``error:`` line naming the file and the key,
exit status 2, before the base model loads, and nothing written or changed.

Each case is a file a user could be handed (a half download, another tool's export, a diverged run, a
hand edit); the tensors are built by hand so the test needs no training run.
"""

import pickle
import struct
from pathlib import Path

import pytest
import torch
from failing import fails
from safetensors.torch import save_file

from bespoke_pl.lora.loading import read_lora_file

LINEAR = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
CONV = "lora_unet_up_blocks_1_resnets_0_conv1"


def layers(**changes: torch.Tensor) -> dict[str, torch.Tensor]:
    """A well-formed rank-2 kohya LoRA (one Linear, one 3x3 convolution), with ``changes`` swapped in."""
    generator = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    tensors = {
        f"{LINEAR}.lora_down.weight": randn(2, 16),
        f"{LINEAR}.lora_up.weight": randn(16, 2),
        f"{LINEAR}.alpha": torch.tensor(2.0),
        f"{CONV}.lora_down.weight": randn(2, 64, 3, 3),
        f"{CONV}.lora_up.weight": randn(32, 2, 1, 1),
    }
    return tensors | {key.replace("LINEAR", LINEAR): value for key, value in changes.items()}


def safetensors_bytes(tensors: dict[str, torch.Tensor], tmp_path: Path) -> bytes:
    save_file(tensors, tmp_path / "scratch.safetensors")
    return (tmp_path / "scratch.safetensors").read_bytes()


# case -> (the file's bytes from (tmp_path), what the one line must say after the path)
CASES = {
    "empty file": (lambda tmp: b"", "is not a readable safetensors file"),
    "truncated": (
        lambda tmp: safetensors_bytes(layers(), tmp)[:300],
        "is not a readable safetensors file",
    ),
    "header that is not JSON": (
        lambda tmp: struct.pack("<Q", 12) + b"not a header" + bytes(16),
        "is not a readable safetensors file",
    ),
    "header claiming an absurd length": (
        lambda tmp: struct.pack("<Q", 2**62) + b"{}",
        "is not a readable safetensors file",
    ),
    "pickle renamed .safetensors": (
        lambda tmp: pickle.dumps({"lora": [1.0]}),
        "is a pickle (a PyTorch .pt/.ckpt/.bin file), not safetensors",
    ),
    "no tensors": (lambda tmp: safetensors_bytes({}, tmp), "holds no tensors"),
    "transposed pair": (
        lambda tmp: safetensors_bytes(
            layers(
                **{"LINEAR.lora_down.weight": torch.ones(16, 3), "LINEAR.lora_up.weight": torch.ones(3, 16)}
            ),
            tmp,
        ),
        f"{LINEAR} has down 16x3 and up 3x16: rank 16 for a layer of 3 inputs and 3 outputs; the pair looks transposed",
    ),
    "ranks that disagree": (
        lambda tmp: safetensors_bytes(layers(**{"LINEAR.lora_up.weight": torch.ones(16, 3)}), tmp),
        f"{LINEAR} has down 2x16 (rank 2) but up 16x3; up must be out x 2",
    ),
    "rank 0": (
        lambda tmp: safetensors_bytes(
            layers(
                **{"LINEAR.lora_down.weight": torch.ones(0, 16), "LINEAR.lora_up.weight": torch.ones(16, 0)}
            ),
            tmp,
        ),
        f"{LINEAR} has rank 0 (down 0x16); a LoRA layer needs rank >= 1",
    ),
    "1-D lora_down": (
        lambda tmp: safetensors_bytes(layers(**{"LINEAR.lora_down.weight": torch.ones(16)}), tmp),
        f"{LINEAR} has down 16 and up 16x2; a LoRA layer has a 2-D pair",
    ),
    "alpha that is not a scalar": (
        lambda tmp: safetensors_bytes(layers(**{"LINEAR.alpha": torch.ones(3)}), tmp),
        f"{LINEAR}.alpha is 3; alpha must be a single number",
    ),
    "NaN weights": (
        lambda tmp: safetensors_bytes(
            layers(**{"LINEAR.lora_up.weight": torch.full((16, 2), float("nan"))}), tmp
        ),
        f"{LINEAR}.lora_up.weight holds 32 NaN or infinite values of 32",
    ),
    "infinite alpha": (
        lambda tmp: safetensors_bytes(layers(**{"LINEAR.alpha": torch.tensor(float("inf"))}), tmp),
        f"{LINEAR}.alpha holds 1 NaN or infinite values of 1",
    ),
    "int8 weights": (
        lambda tmp: safetensors_bytes(
            layers(**{"LINEAR.lora_down.weight": torch.ones(2, 16, dtype=torch.int8)}), tmp
        ),
        f"{LINEAR}.lora_down.weight is int8; LoRA weights must be floating point",
    ),
    "bool weights": (
        lambda tmp: safetensors_bytes(
            layers(**{"LINEAR.lora_up.weight": torch.ones(16, 2, dtype=torch.bool)}), tmp
        ),
        f"{LINEAR}.lora_up.weight is bool; LoRA weights must be floating point",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_generate_refuses_the_file_in_one_line(case, tmp_path, capsys, monkeypatch):
    make, expected = CASES[case]
    lora = tmp_path / "hostile.safetensors"
    lora.write_bytes(make(tmp_path))
    before = lora.read_bytes()
    # The file is refused before the base loads: a base that cannot be built proves it is never needed.
    monkeypatch.setattr("bespoke_pl.commands.generate.load_base", lambda *a, **k: pytest.fail("base loaded"))
    out = tmp_path / "out"
    line = fails(
        ["generate", "--base_model", "tiny:sd15", "--lora", str(lora), "--prompt", "x", "--out", str(out)],
        capsys,
    )
    assert line.startswith(f"error: {lora}")
    assert expected in line
    assert not out.exists()
    assert lora.read_bytes() == before


def test_the_well_formed_file_of_the_cases_reads(tmp_path):
    """The cases differ from a readable file only in what each one breaks."""
    save_file(layers(), tmp_path / "good.safetensors")
    lora = read_lora_file(tmp_path / "good.safetensors")
    assert {name: weights.rank for name, weights in lora.modules.items()} == {LINEAR: 2, CONV: 2}
    assert lora.modules[LINEAR].alpha == 2.0 and lora.modules[CONV].alpha == 2.0


def test_an_integer_alpha_is_still_a_number(tmp_path):
    save_file(
        layers(**{"LINEAR.alpha": torch.tensor(4, dtype=torch.int32)}), tmp_path / "int_alpha.safetensors"
    )
    assert read_lora_file(tmp_path / "int_alpha.safetensors").modules[LINEAR].alpha == 4.0
