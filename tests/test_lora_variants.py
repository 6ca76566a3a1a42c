"""LoHa, LoKr and DoRA: their update maths against peft's layers, the kohya/LyCORIS file, our loader, fits.

The formulas (LyCORIS' and ComfyUI's, see bespoke_pl/lora/lycoris.py) are written out here by hand and
checked against what peft's injected layers compute; the files must then merge back onto a fresh model to
the injected model's outputs.
"""

import copy
import json
import re

import lightning as L
import pytest
import torch
from failing import fails
from lightning.pytorch.callbacks import ModelCheckpoint
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.nn import functional as F

from bespoke_pl.callbacks.save_lora import SaveLoRAEveryEpoch
from bespoke_pl.data.datamodule import PixelArtDataModule
from bespoke_pl.diffusion.base import load_base
from bespoke_pl.lora.files import save_lora_file
from bespoke_pl.lora.inject import add_lora, lora_weights
from bespoke_pl.lora.loading import LoRAFileError, apply_lora, read_lora_file
from bespoke_pl.training.module import PixelLoRAModule

TOLERANCE = 1e-5
RANK, ALPHA, CONV_ALPHA = 2, 3.0, 1.0


class Toy(nn.Module):
    """A Linear and a 3x3 convolution: big enough that LoKr at factor 2 decomposes both w2 factors."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(12, 8)
        self.conv = nn.Conv2d(8, 16, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (B, 12, 5, 5)
        return self.conv(self.lin(x.movedim(1, -1)).movedim(-1, 1))


def trained_toy(**network) -> tuple[Toy, Toy]:
    """(base, copy with the adapter injected and every adapter weight moved off its zero init)."""
    torch.manual_seed(0)
    base = Toy()
    model = copy.deepcopy(base)
    add_lora(
        model, ["lin"], RANK, ALPHA, conv_targets=["conv"], conv_rank=RANK, conv_alpha=CONV_ALPHA, **network
    )
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:  # DoRA's magnitudes a little off the base norms, the rest random
                parameter.mul_(1.1) if "magnitude" in name else parameter.normal_(0, 0.3)
    return base, model


def hand_update(layer: nn.Module, base_weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """The adapted weight from peft's raw parameters, by the formulas of LoHa, LoKr and DoRA."""
    p = {
        name.split(".")[0]: value.detach()
        for name, value in layer.named_parameters()
        if "base_layer" not in name
    }
    scale = alpha / RANK
    if "hada_w1_a" in p:  # (w1a @ w1b) * (w2a @ w2b) * alpha / r
        delta = (p["hada_w1_a"] @ p["hada_w1_b"]) * (p["hada_w2_a"] @ p["hada_w2_b"]) * scale
    elif "lokr_w1" in p:  # kron(w1, w2) * alpha / r
        w2 = p["lokr_w2"] if "lokr_w2" in p else p["lokr_w2_a"] @ p["lokr_w2_b"]
        w1 = p["lokr_w1"][:, :, None, None] if w2.dim() == 4 else p["lokr_w1"]
        delta = torch.kron(w1, w2) * scale
    else:
        delta = (p["lora_B"].flatten(1) @ p["lora_A"].flatten(1)) * scale
    adapted = base_weight + delta.reshape(base_weight.shape)
    if "lora_magnitude_vector" in p:  # DoRA: magnitude * (W + dW) / ||W + dW||, one norm per output row
        rows = adapted.flatten(1).norm(dim=1)
        adapted = adapted * (p["lora_magnitude_vector"].reshape(-1) / rows).view(
            -1, *[1] * (adapted.dim() - 1)
        )
    return adapted


VARIANTS = {
    "loha": {"network": "loha"},
    "lokr-full": {"network": "lokr"},  # factor -1 on these sizes: w1 and w2 both full matrices
    "lokr-decomposed": {"network": "lokr", "lokr_factor": 2},
    "dora": {"use_dora": True},
}
KEYS = {
    "loha": {"lin": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"}},
    "lokr-full": {"lin": {"lokr_w1", "lokr_w2", "alpha"}, "conv": {"lokr_w1", "lokr_w2", "alpha"}},
    "lokr-decomposed": {
        "lin": {"lokr_w1", "lokr_w2_a", "lokr_w2_b", "alpha"},
        "conv": {"lokr_w1", "lokr_w2_a", "lokr_w2_b", "alpha"},
    },
    "dora": {"lin": {"lora_down.weight", "lora_up.weight", "alpha", "dora_scale"}},
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_update_maths_matches_peft_and_the_file_merges_back(tmp_path, variant):
    base, model = trained_toy(**VARIANTS[variant])
    x = torch.randn(2, 12, 5, 5)
    for name, alpha in (("lin", ALPHA), ("conv", CONV_ALPHA)):
        layer, weight = getattr(model, name), getattr(base, name).weight.detach()
        adapted = hand_update(layer, weight, alpha)
        inputs = x.movedim(1, -1) if name == "lin" else torch.randn(2, 8, 5, 5)
        ours = F.linear(inputs, adapted, layer.base_layer.bias) if name == "lin" else F.conv2d(
            inputs, adapted, layer.base_layer.bias, padding=1
        )  # fmt: skip
        with torch.no_grad():
            torch.testing.assert_close(layer(inputs), ours, atol=TOLERANCE, rtol=0)
    with torch.no_grad():
        expected = model(x)
        assert (expected - base(x)).abs().max() > 1e-1

    path = save_lora_file(tmp_path / "v.safetensors", {"unet": lora_weights(model)}, "sd15", None, {}, "kohya", torch.float32)  # fmt: skip
    with safe_open(path, "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    for name, suffixes in KEYS[variant].items():
        assert {
            k.removeprefix(f"lora_unet_{name}.") for k in tensors if k.startswith(f"lora_unet_{name}.")
        } == suffixes
    if variant == "lokr-full":  # no reader scales two full factors: peft's alpha / r rides in lokr_w1
        assert tensors["lora_unet_lin.alpha"].item() == RANK
        torch.testing.assert_close(
            tensors["lora_unet_lin.lokr_w1"], model.lin.lokr_w1["default"] * ALPHA / RANK
        )
    elif variant == "dora":  # LyCORIS' output-axis layout: one magnitude per output row
        assert tensors["lora_unet_lin.dora_scale"].shape == (8, 1)
        assert tensors["lora_unet_conv.dora_scale"].shape == (16, 1, 1, 1)
    else:
        assert tensors["lora_unet_conv.alpha"].item() == CONV_ALPHA

    fresh = copy.deepcopy(base)
    assert apply_lora({"unet": fresh}, read_lora_file(path), "sd15") == {"unet": 2}
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), expected, atol=TOLERANCE, rtol=0)


def test_input_axis_dora_scale_and_lycoris_files_without_alpha(tmp_path):
    """Older LyCORIS DoRA (dora_scale 1 x in: norms per input channel) and a LoHa with no alpha (scale 1)."""
    base = Toy()
    g = torch.Generator().manual_seed(1)
    down, up = torch.randn(2, 8, 3, 3, generator=g), torch.randn(16, 2, 1, 1, generator=g)
    scale = torch.rand(1, 8, 1, 1, generator=g) + 1
    w1a, w1b, w2a, w2b = (torch.randn(*s, generator=g) for s in ((8, 2), (2, 12), (8, 2), (2, 12)))
    save_file({
        "lora_unet_conv.lora_down.weight": down, "lora_unet_conv.lora_up.weight": up,
        "lora_unet_conv.alpha": torch.tensor(1.0), "lora_unet_conv.dora_scale": scale,
        "lora_unet_lin.hada_w1_a": w1a, "lora_unet_lin.hada_w1_b": w1b,
        "lora_unet_lin.hada_w2_a": w2a, "lora_unet_lin.hada_w2_b": w2b,
    }, tmp_path / "old.safetensors")  # fmt: skip
    conv = base.conv.weight.detach() + (up.flatten(1) @ down.flatten(1)).view(16, 8, 3, 3) / 2
    columns = conv.transpose(0, 1).flatten(1).norm(dim=1)  # one per input channel, over outputs and kernel
    expected_conv = conv * (scale.reshape(-1) / columns).view(1, -1, 1, 1)
    expected_lin = base.lin.weight.detach() + (w1a @ w1b) * (w2a @ w2b)
    apply_lora({"unet": base}, read_lora_file(tmp_path / "old.safetensors"), "sd15")
    torch.testing.assert_close(base.conv.weight, expected_conv, atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(base.lin.weight, expected_lin, atol=TOLERANCE, rtol=0)


def test_broken_and_unsupported_lycoris_layers_are_refused(tmp_path):
    z = torch.zeros
    loha = {f"lora_unet_lin.hada_{k}": v for k, v in
            {"w1_a": z(8, 2), "w1_b": z(2, 12), "w2_a": z(8, 2), "w2_b": z(2, 12)}.items()}  # fmt: skip
    cases = {
        "tucker": ({**loha, "lora_unet_lin.hada_t1": z(2, 2, 3, 3)}, "LoHa with Tucker decomposition"),
        "lokr tucker": ({"lora_unet_lin.lokr_t2": z(2, 2, 3, 3)}, "LoKr with Tucker decomposition"),
        "ranks": ({**loha, "lora_unet_lin.hada_w2_a": z(8, 3), "lora_unet_lin.hada_w2_b": z(3, 12)},
                  "LoHa layer lora_unet_lin has ranks 2 .hada_w1. and 3 .hada_w2."),
        "incomplete": ({"lora_unet_lin.hada_w1_a": z(8, 2)}, "LoHa layer lora_unet_lin lacks hada_w1_b"),
        "transposed": ({**loha, "lora_unet_lin.hada_w1_b": z(12, 2)}, "hada_w1_a 8x2 and hada_w1_b 12x2"),
        "no w2": ({"lora_unet_lin.lokr_w1": z(2, 3)}, "needs lokr_w2, or lokr_w2_a and lokr_w2_b; it has none"),
        "both": ({"lora_unet_lin.lokr_w1": z(2, 3), "lora_unet_lin.lokr_w1_a": z(2, 1),
                  "lora_unet_lin.lokr_w1_b": z(1, 3), "lora_unet_lin.lokr_w2": z(4, 4)}, "needs lokr_w1, or"),
        "mixed": ({**loha, "lora_unet_lin.lokr_w1": z(2, 3)}, "mixes LoHa and LoKr keys"),
        "stray": ({**loha, "lora_unet_lin.lora_up.weight": z(8, 2)}, "LoHa layer lora_unet_lin also has"),
        "dora shape": ({**loha, "lora_unet_lin.dora_scale": z(8, 12)}, "dora_scale is 8x12"),
    }  # fmt: skip
    for name, (tensors, message) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save_file(tensors, path)
        with pytest.raises(LoRAFileError, match=message):
            read_lora_file(path)
    save_file({**loha, "lora_unet_lin.dora_scale": z(1, 7)}, tmp_path / "inputs.safetensors")
    with pytest.raises(LoRAFileError, match="7 magnitudes per input channel, but .* has 12 input channels"):
        apply_lora({"unet": Toy()}, read_lora_file(tmp_path / "inputs.safetensors"), "sd15")


def test_options_that_do_not_combine_are_refused_before_anything_loads(tmp_path, capsys):
    args = ["fit", "--config", "configs/demo.yaml", "--trainer.logger.init_args.save_dir", str(tmp_path)]
    line = fails([*args, "--model.network=loha", "--model.use_dora=true", "--model.lora_dropout=0.1",
                  "--model.lokr_factor=0"], capsys)  # fmt: skip
    for problem in ("model.lokr_factor must be >= 1 or -1", "model.lokr_factor is set but model.network is not lokr",
                    "model.use_dora applies to model.network lora only, not loha",
                    "model.lora_dropout applies to model.network lora only"):  # fmt: skip
        assert problem in line
    module = PixelLoRAModule("tiny:sd15", network="lokr")
    with pytest.raises(ValueError, match="cannot hold LoHa / LoKr .*--save_lora.format kohya"):
        SaveLoRAEveryEpoch(format="diffusers").on_fit_start(None, module)


def unet_output(unet, family: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    added = None
    if family == "sdxl":
        added = {"text_embeds": torch.randn(1, 32, generator=generator), "time_ids": torch.full((1, 6), 24.0)}
    latents = torch.randn(1, 4, 8, 8, generator=generator)
    context = torch.randn(1, 77, unet.config.cross_attention_dim, generator=generator)
    with torch.no_grad():
        return unet(
            latents, torch.tensor([500]), encoder_hidden_states=context, added_cond_kwargs=added
        ).sample


def encoder_states(encoder) -> torch.Tensor:
    ids = torch.randint(0, 100, (1, 77), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return encoder(ids, output_hidden_states=True).hidden_states[-2]


def fit(root, tiny, family, demo_data, callbacks, ckpt_path=None, **variant):
    module = PixelLoRAModule(
        str(tiny), family=family, pixel_scale=1, clip_skip=2, rank=2, alpha=1, conv_rank=2,
        optimizer=lambda p: torch.optim.AdamW(p, lr=5e-2), **variant,
    )  # fmt: skip
    trainer = L.Trainer(
        default_root_dir=root, accelerator="cpu", max_epochs=1, limit_train_batches=1, callbacks=callbacks,
        logger=L.pytorch.loggers.TensorBoardLogger(root, name="run", version=0),
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, PixelArtDataModule(str(demo_data), batch_size=2), ckpt_path=ckpt_path)
    return module.eval()


def trainable(module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


FITS = {  # variant -> (family, model options, the key suffixes of every layer in the file, network args)
    "lokr": ("sd15", {"network": "lokr", "train_text_encoder": True}, r"lokr_w1|lokr_w2(_a|_b)?|alpha",
             {"algo": "lokr", "factor": "-1"}),
    "loha": ("sdxl", {"network": "loha"}, r"hada_w[12]_[ab]|alpha", {"algo": "loha"}),
    "dora": ("sd15", {"use_dora": True}, r"lora_(down|up)\.weight|alpha|dora_scale",
             {"algo": "lora", "dora_wd": "True", "wd_on_output": "True"}),
}  # fmt: skip


@pytest.mark.parametrize("variant", FITS)
def test_a_fit_writes_a_lycoris_file_that_merges_to_the_trained_model(request, tmp_path, demo_data, variant):
    family, options, suffixes, network_args = FITS[variant]
    tiny = request.getfixturevalue(f"tiny_{family}")
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    module = fit(tmp_path, tiny, family, demo_data, [SaveLoRAEveryEpoch(variant, save_dtype="float32"), checkpoint], **options)  # fmt: skip
    path = tmp_path / "run" / "version_0" / f"{variant}-000001.safetensors"
    with safe_open(path, "pt") as f:
        keys, metadata = list(f.keys()), f.metadata()  # noqa: SIM118
    assert keys and all(re.fullmatch(rf"lora_(unet|te|te1|te2)_\w+\.({suffixes})", k) for k in keys)
    assert metadata["ss_network_module"] == "lycoris.kohya"
    assert json.loads(metadata["ss_network_args"]) == {**network_args, "conv_dim": "2", "conv_alpha": "2.0"}

    base = load_base(str(tiny), family)
    names = ["text_encoder", "text_encoder_2"][: len(base.text_encoders)]
    components = {"unet": base.unet, **dict(zip(names, base.text_encoders, strict=True))}
    counts = apply_lora(components, read_lora_file(path), family)
    assert counts == {name: len(lora_weights(model)) for name, model in module.lora_components().items()}
    trained = unet_output(module.unet, family)
    assert (trained - unet_output(load_base(str(tiny), family).unet, family)).abs().max() > 1e-2
    torch.testing.assert_close(unet_output(base.unet, family), trained, atol=TOLERANCE, rtol=0)
    if options.get("train_text_encoder"):
        merged, ours = encoder_states(base.text_encoders[0]), encoder_states(module.text_encoders[0])
        torch.testing.assert_close(merged, ours, atol=TOLERANCE, rtol=0)
    if variant != "lokr":
        return
    # the checkpoint holds exactly the trained LoKr weights, and resuming from it restores them
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    weights = trainable(module)
    assert saved.keys() == weights.keys() and all("lokr_" in k for k in saved)
    assert all(torch.equal(saved[k], v) for k, v in weights.items())
    resumed = fit(
        tmp_path / "again", tiny, family, demo_data, [], str(tmp_path / "ckpt" / "last.ckpt"), **options
    )
    assert trainable(resumed).keys() == weights.keys()
    assert all(torch.equal(trainable(resumed)[k], v) for k, v in weights.items())
