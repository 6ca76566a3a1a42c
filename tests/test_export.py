"""``export``: DoRA, LoHa and LoKr files as plain kohya LoRA, the rank each layer needs, and its refusals.

The maths on tiny tensors with known spectra; then files trained on the tiny demo, exported by the save
callback (DoRA) and by the command (LoHa, LoKr), loaded by diffusers and merged within the reported error.
"""

import json
import logging
import re

import lightning as L
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from bespoke_pl.callbacks.save_lora import SaveLoRAEveryEpoch
from bespoke_pl.commands.cli import main
from bespoke_pl.data.datamodule import PixelArtDataModule
from bespoke_pl.diffusion.base import load_base
from bespoke_pl.lora.export import EXPORT_KEY
from bespoke_pl.lora.inject import LoRAWeights
from bespoke_pl.lora.loading import apply_lora, layer_table, merged_weight, read_lora_file
from bespoke_pl.lora.lowrank import low_rank, rank_for_error
from bespoke_pl.lora.lycoris import LoHaWeights
from bespoke_pl.training.module import PixelLoRAModule


def with_spectrum(singular: list[float], out: int = 12, n: int = 9) -> torch.Tensor:
    """A matrix (out, n) with exactly these singular values."""
    g = torch.Generator().manual_seed(0)
    u = torch.linalg.qr(torch.randn(out, len(singular), generator=g)).Q
    v = torch.linalg.qr(torch.randn(n, len(singular), generator=g)).Q
    return (u * torch.tensor(singular)) @ v.T


def test_the_rank_is_the_smallest_within_the_bound_and_the_error_is_measured():
    s = [10.0, 5.0, 1.0, 0.1, 0.01]
    delta = with_spectrum(s)
    tail = lambda r: (sum(x * x for x in s[r:]) / sum(x * x for x in s)) ** 0.5  # noqa: E731
    assert tail(3) < 0.01 < tail(2)
    fit = low_rank(delta, 0.01)
    assert fit.rank == 3 and fit.error == pytest.approx(tail(3), rel=1e-3)
    assert fit.down.shape == (3, 9) and fit.up.shape == (12, 3)
    capped = low_rank(delta, 0.01, max_rank=2)  # over the bound at the cap: written, error as measured
    assert capped.rank == 2 and capped.error == pytest.approx(tail(2), rel=1e-3)
    assert low_rank(delta, 1e-5).rank == 5 and low_rank(delta, 0.0).rank == 9  # float32 noise: 0 is full
    assert low_rank(delta, 0.5).rank == 1
    half = low_rank(delta, 0.01, dtype=torch.float16)  # measured on the stored factors
    assert half.up.dtype == torch.float16 and half.error <= 0.01
    assert rank_for_error(torch.zeros(4), 0.01) == 1  # a zero update still gets one (zero) component
    with pytest.raises(ValueError, match="max_rank must be >= 1"):
        low_rank(delta, 0.01, max_rank=0)


def test_dora_row_rescale_needs_a_high_rank_and_loha_more_than_its_factors():
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(64, 48, generator=g) / 48**0.5
    lora = LoRAWeights(torch.randn(2, 48, generator=g) * 0.1, torch.randn(64, 2, generator=g) * 0.1, 2.0)
    rows = (weight + lora.delta()).norm(dim=1)
    # DoRA whose magnitudes are the adapted rows' norms is plain LoRA: rank 2
    exact = LoRAWeights(lora.down, lora.up, 2.0, rows)
    assert low_rank(merged_weight(weight, exact) - weight, 0.01).rank == 2
    # magnitudes 1% off those norms (one training step's worth) rescale whole rows of W: near full rank
    moved = LoRAWeights(lora.down, lora.up, 2.0, rows * (1 + 0.01 * torch.randn(64, generator=g)))
    fit = low_rank(merged_weight(weight, moved) - weight, 0.01)
    assert fit.rank > 30 and fit.error <= 0.01
    # LoHa rank 3: (w1a w1b) * (w2a w2b) has rank up to 3 * 3 = 9, and a random one needs all of them
    loha = LoHaWeights(*(torch.randn(*s, generator=g) for s in ((64, 3), (3, 48), (64, 3), (3, 48))), 3.0)
    fit = low_rank(loha.delta(), 0.01)
    assert 3 < fit.rank <= 9 and fit.error <= 0.01
    assert low_rank(loha.delta(), 1e-5).rank == 9


VARIANTS = {"dora": {"use_dora": True}, "loha": {"network": "loha"}, "lokr": {"network": "lokr"}}


@pytest.fixture(scope="module")
def variant_files(tmp_path_factory, tiny_sd15, demo_data) -> dict:
    """One training step of each variant on tiny SD 1.5 (UNet with conv, and text encoder), float16 files;
    ``log``: what the save callback logged."""
    files, handler, logger = {}, Collect(), logging.getLogger("bespoke_pl.callbacks.save_lora")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    for name, options in VARIANTS.items():
        root = tmp_path_factory.mktemp(name)
        module = PixelLoRAModule(
            str(tiny_sd15), family="sd15", pixel_scale=1, clip_skip=2, rank=2, alpha=1, conv_rank=2,
            train_text_encoder=True, optimizer=lambda p: torch.optim.AdamW(p, lr=5e-2), **options,
        )  # fmt: skip
        trainer = L.Trainer(
            default_root_dir=root, accelerator="cpu", max_epochs=1, limit_train_batches=1,
            callbacks=[SaveLoRAEveryEpoch(name)], enable_progress_bar=False, enable_model_summary=False,
            logger=L.pytorch.loggers.TensorBoardLogger(root, name="run", version=0),
        )  # fmt: skip
        trainer.fit(module, PixelArtDataModule(str(demo_data), batch_size=2))
        files[name] = root / "run" / "version_0" / f"{name}-000001.safetensors"
    logger.removeHandler(handler)
    logger.setLevel(level)
    return files | {"log": handler.messages}


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def merged_layers(tiny, path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each layer of the file by its name -> (base weight, weight merged by our loader, generate's merge)."""
    base = load_base(str(tiny), "sd15")
    components = {"unet": base.unet, "text_encoder": base.text_encoders[0]}
    table = layer_table(components, "sd15")
    lora = read_lora_file(path)
    before = {name: table[name][2].weight.detach().clone() for name in lora.modules}
    apply_lora(components, lora, "sd15")
    return {name: (before[name], table[name][2].weight.detach()) for name in lora.modules}


@pytest.mark.parametrize("variant", VARIANTS)
def test_exports_load_in_diffusers_and_merge_within_the_reported_error(
    variant, variant_files, tiny_sd15, tmp_path, caplog
):
    source = variant_files[variant]
    if variant == "dora":  # the save callback wrote it beside the epoch's file
        plain = source.with_name("dora-000001-plain.safetensors")
    else:  # the command, with the base model its header records
        plain = tmp_path / f"{variant}.safetensors"
        main(["export", str(source), "--to", "lora", "--out", str(plain)])
    assert plain.is_file()
    with safe_open(plain, "pt") as f:
        keys, header = list(f.keys()), f.metadata()  # noqa: SIM118
    assert all(re.fullmatch(r"lora_(unet|te)_\w+\.(lora_down\.weight|lora_up\.weight)", k) for k in keys)
    source_header = read_lora_file(source).metadata
    for key in ("bespoke_pl.palette", "bespoke_pl.pixel_scale", "bespoke_pl.family", "ss_clip_skip"):
        assert header[key] == source_header[key]
    assert header["ss_network_module"] == "networks.lora"
    record = json.loads(header[EXPORT_KEY])
    tensors = load_file(plain)
    assert len(record["layers"]) == len(read_lora_file(source).modules) == len(keys) // 2
    for name, layer in record["layers"].items():
        assert tensors[f"{name}.lora_down.weight"].shape[0] == layer["rank"]
        assert tensors[f"{name}.lora_down.weight"].dtype == torch.float16  # the source's dtype
        assert layer["error"] <= 0.01

    # each layer's merged weight is within its reported error of the original file's, on our loader
    original, exported = merged_layers(tiny_sd15, source), merged_layers(tiny_sd15, plain)
    assert original.keys() == exported.keys() == record["layers"].keys()
    for name, (base, merged) in original.items():
        # in norms, so that a layer the step left unchanged (update 0, error 0) is checked too; float32 merges
        # round at about 1e-7 of the weight, which is not small next to a tiny update
        off, update = (exported[name][1] - merged).norm(), (merged - base).norm()
        assert off <= record["layers"][name]["error"] * 1.001 * update + 1e-6 * merged.norm(), name

    # diffusers takes the export without a dropped or unexpected key and applies what our loader applies
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd15, safety_checker=None)
    with caplog.at_level(logging.WARNING):
        pipe.load_lora_weights(str(plain))
    assert not [r for r in caplog.records if re.search("unexpected|missing|dora", r.getMessage(), re.I)]
    pipe.fuse_lora()
    pipe.unload_lora_weights()  # keeps the fused weights
    theirs = layer_table({"unet": pipe.unet, "text_encoder": pipe.text_encoder}, "sd15")
    for name, (_, merged) in exported.items():
        torch.testing.assert_close(theirs[name][2].weight.detach(), merged, atol=1e-5, rtol=1e-4)


def test_dora_save_says_which_loaders_misapply_it(variant_files, caplog):
    said = [m for m in variant_files["log"] if "is DoRA" in m]
    assert len(said) == 1 and "for them use dora-000001-plain.safetensors (" in said[0]
    assert "A1111 and InvokeAI up to 10x the update, diffusers drops dora_scale" in said[0]
    callback = SaveLoRAEveryEpoch("again", export_plain=False)
    with caplog.at_level(logging.INFO):
        callback.write_plain(type("M", (), {})(), variant_files["dora"])
    line = caplog.records[-1].getMessage()
    assert "dora-000001.safetensors is DoRA: ComfyUI and Forge apply DoRA up to 11% off" in line
    assert "diffusers drops dora_scale" in line and "bespoke_pl export" in line


def test_refusals_write_nothing(variant_files, tiny_sd15, tmp_path, capsys):
    def refused(*args: str) -> str:
        with pytest.raises(SystemExit) as stop:
            main(["export", *args])
        assert stop.value.code == 2
        return capsys.readouterr().err.strip()

    plain = variant_files["dora"].with_name("dora-000001-plain.safetensors")
    assert "is a plain LoRA already: nothing to export" in refused(
        str(plain), "--out", str(tmp_path / "a.safetensors")
    )
    source = str(variant_files["loha"])
    assert "is a LoRA for SD 1.5, but base model tiny:sdxl is SDXL" in refused(
        source, "--base_model", "tiny:sdxl", "--out", str(tmp_path / "b.safetensors")
    )
    # a layer one input wider than the base's: refused after the base loads, before anything is written
    tensors, header = load_file(source), read_lora_file(source).metadata
    key = next(k for k in tensors if k.endswith("hada_w1_b") and tensors[k].dim() == 2)
    for part in ("hada_w1_b", "hada_w2_b"):
        name = key.replace("hada_w1_b", part)
        tensors[name] = torch.cat([tensors[name], tensors[name][:, :1]], dim=1)
    save_file(tensors, tmp_path / "wide.safetensors", header)
    message = refused(str(tmp_path / "wide.safetensors"), "--base_model", str(tiny_sd15))
    assert "features, but the base model's" in message and "was trained on another base model" in message
    taken = tmp_path / "taken.safetensors"
    taken.write_bytes(b"mine")
    assert "exists; export never replaces a file" in refused(source, "--out", str(taken))
    assert taken.read_bytes() == b"mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.safetensors", "wide.safetensors"]
