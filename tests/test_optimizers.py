"""The optimizers users pick (docs/training-options.md: Optimizers) and LoRA+: each docs block trains as written, the
pairings that train badly are refused before anything loads, and LoRA+'s groups follow the paper."""

import importlib.util
import json
import re
import sys
import types
from pathlib import Path

import pytest
import torch
from failing import fails
from peft import LoraConfig, inject_adapter_in_model
from safetensors import safe_open
from safetensors.torch import load_file

from bespoke_pl.commands.cli import main
from bespoke_pl.lora.files import kohya_tensors
from bespoke_pl.lora.inject import lora_weights
from bespoke_pl.training.optim import apply_loraplus, lora_groups, lr_factor

ROOT = Path(__file__).parents[1]


def test_lr_schedules_warm_up_then_hold_or_decay_to_zero():
    """The trainer's schedule, which the tiny bases' recipe (bespoke_pl.tinybases) steps with too."""
    cosine, linear, constant = (lr_factor(kind, 10, 110) for kind in ("cosine", "linear", "constant"))
    assert [cosine(0), cosine(9), cosine(10)] == [0.1, 1.0, 1.0]
    assert cosine(60) == pytest.approx(0.5) and linear(60) == pytest.approx(0.5) and constant(60) == 1.0
    assert cosine(110) == cosine(500) == linear(110) == 0.0  # past the end: the last value


def readme_blocks() -> dict[str, str]:
    """docs/training-options.md's Optimizers section: each ```yaml block by the optimizer's bold name before it."""
    section = (
        ROOT.joinpath("docs", "training-options.md")
        .read_text()
        .split("## Optimizers\n", 1)[1]
        .split("\n## ", 1)[0]
    )
    blocks = {}
    for match in re.finditer(r"```yaml\n(.*?)```", section, re.S):
        name = re.findall(r"\*\*([^*]+)\*\*", section[: match.start()])[-1]
        assert name not in blocks, f"two blocks after **{name}**"
        blocks[name] = match.group(1)
    return blocks


BLOCKS = readme_blocks()


def fit_with(block: str, tmp_path, tiny, data, *extra: str) -> list[str]:
    """``fit --config configs/demo.yaml --config BLOCK`` cut to two steps of one epoch at pixel_scale 1."""
    snippet = tmp_path / "snippet.yaml"
    snippet.write_text(BLOCKS[block])
    return [
        "fit", "--config", str(ROOT / "configs" / "demo.yaml"), "--config", str(snippet),
        "--model.base_model", str(tiny), "--data.root", str(data), "--model.pixel_scale", "1",
        "--model.conv_rank", "null", "--data.num_repeats", "1", "--data.batch_size", "4",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
        "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"),
        "--sample.every_n_epochs", "0", "--sample.sample_at_start", "false",
        "--save_lora.save_dtype", "float32", *extra,
    ]  # fmt: skip


def header(path: Path) -> dict[str, str]:
    with safe_open(str(path), "pt") as file:
        return file.metadata()


def test_the_readme_shows_a_block_per_optimizer_and_lora_plus():
    assert set(BLOCKS) == {"Prodigy", "Schedule-free AdamW", "8-bit AdamW", "LoRA+"}


# ------------------------------------------------------------------------------------------------ LoRA+
def peft_linear(seed: int) -> torch.nn.Module:
    """Two Linear layers with rank-2 LoRA, B made non-zero (peft starts it at 0: A would get no gradient)."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    model = inject_adapter_in_model(LoraConfig(r=2, lora_alpha=2, target_modules=["0", "1"]), model)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
        if "lora_B" in name:
            torch.nn.init.normal_(p)
    return model


def trained_values(parts: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    return {
        f"{part}.{name}": p.detach().clone()
        for part, model in parts.items()
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def test_loraplus_trains_b_at_ratio_times_the_rate_and_a_at_the_rate():
    # The paper's update: eta_B = ratio * eta_A. With plain SGD, B moves ratio times as far as without LoRA+.
    steps = {}
    for ratio in (None, 16.0):
        unet, encoder = peft_linear(0), peft_linear(1)
        groups = lora_groups("unet", [unet], None, ratio) + lora_groups("te", [encoder], 1e-3, ratio)
        optimizer = torch.optim.SGD(groups, lr=1e-2)
        apply_loraplus(optimizer)
        before = trained_values({"unet": unet, "te": encoder})
        (unet(torch.ones(1, 4)).sum() + encoder(torch.ones(1, 4)).sum()).backward()
        optimizer.step()
        after = trained_values({"unet": unet, "te": encoder})
        steps[ratio] = {k: after[k] - before[k] for k in before}
        rates = {g["name"]: g["lr"] for g in optimizer.param_groups}
        sizes = {g["name"]: len(g["params"]) for g in optimizer.param_groups}
    assert rates == pytest.approx({"unet": 1e-2, "unet_plus": 16e-2, "te": 1e-3, "te_plus": 16e-3})
    assert sizes == {"unet": 2, "unet_plus": 2, "te": 2, "te_plus": 2}  # A in the part's group, B in _plus
    for key, step in steps[16.0].items():
        factor = 16.0 if ".lora_B." in key else 1.0
        torch.testing.assert_close(step, factor * steps[None][key])
    assert all(step.abs().sum() > 0 for step in steps[None].values())


def test_loraplus_end_to_end_groups_and_header(tmp_path, tiny_sdxl, demo_data):
    args = fit_with("LoRA+", tmp_path, tiny_sdxl, demo_data, "--model.train_text_encoder", "true",
                    "--model.text_encoder_lr", "1e-3")  # fmt: skip
    cli = main(args)
    optimizer = cli.trainer.optimizers[0]
    rates = {g["name"]: g["initial_lr"] for g in optimizer.param_groups}
    assert rates == pytest.approx(
        {"unet": 6e-3, "unet_plus": 96e-3, "te": 1e-3, "te_plus": 16e-3}
    )  # demo.yaml: 6e-3
    grouped = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in cli.model.trainable_parameters())  # each exactly once
    b_ids = {id(p) for g in optimizer.param_groups if g["name"].endswith("_plus") for p in g["params"]}
    named = [(n, p) for m in (cli.model.unet, *cli.model.text_encoders) for n, p in m.named_parameters()]
    assert b_ids == {id(p) for n, p in named if "lora_B" in n and p.requires_grad}
    meta = header(Path(cli.trainer.log_dir) / "demo-000001.safetensors")
    assert json.loads(meta["ss_network_args"]) == {"loraplus_lr_ratio": "16.0"}
    assert float(meta["ss_unet_lr"]) == pytest.approx(6e-3) and float(meta["ss_text_encoder_lr"]) == 1e-3


# ------------------------------------------------------------------------------------------ optimizers
def test_prodigy_block_trains_and_writes_its_lora(tmp_path, tiny_sdxl, demo_data):
    cli = main(fit_with("Prodigy", tmp_path, tiny_sdxl, demo_data))
    assert type(cli.trainer.optimizers[0]).__name__ == "Prodigy" and cli.trainer.global_step == 2
    path = Path(cli.trainer.log_dir) / "demo-000001.safetensors"
    up = [v for k, v in load_file(path).items() if k.endswith("lora_up.weight")]
    assert up and all(v.abs().sum() > 0 for v in up)  # B starts at 0: Prodigy's steps moved it
    meta = header(path)
    described = meta["ss_optimizer"]
    assert described.startswith("prodigyopt.prodigy.Prodigy(") and "d_coef=1.0" in described
    assert ",k=" not in described and "d_numerator" not in described  # its running state, not settings
    assert float(meta["ss_learning_rate"]) == 1.0


def test_schedule_free_block_saves_the_averaged_weights_not_the_training_point(
    tmp_path, tiny_sdxl, demo_data
):
    # A checkpoint after each step: the first is written in the first batch's on_train_batch_end.
    steps = ["--checkpoint.every_n_train_steps", "1", "--checkpoint.save_top_k", "-1"]
    cli = main(fit_with("Schedule-free AdamW", tmp_path, tiny_sdxl, demo_data, *steps))
    module, optimizer = cli.model, cli.trainer.optimizers[0]
    assert cli.trainer.global_step == 2 and optimizer.param_groups[0]["k"] == 2
    # After the run the weights are x, the optimizer in eval mode; the epoch's file was written at x.
    assert not any(g["train_mode"] for g in optimizer.param_groups)
    run = Path(cli.trainer.log_dir)

    def as_saved() -> dict[str, torch.Tensor]:
        parts = {name: lora_weights(model) for name, model in module.lora_components().items()}
        tensors = kohya_tensors(parts, module.family, module.unet.config, torch.float32)
        return {k: v.clone() for k, v in tensors.items()}  # copies: the modes move the weights in place

    saved, x = load_file(run / "demo-000001.safetensors"), as_saved()
    assert saved.keys() == x.keys() and all(torch.equal(saved[k], x[k]) for k in x)
    names = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))
    assert names == ["epoch0001-step000001.ckpt", "last.ckpt"]
    for name in names:  # each saved at x (eval mode), the one mid-epoch too
        checkpoint = torch.load(run / "checkpoints" / name, weights_only=False, map_location="cpu")
        assert not any(g["train_mode"] for g in checkpoint["optimizer_states"][0]["param_groups"]), name
    live = module.state_dict()
    assert checkpoint["state_dict"] and all(
        torch.equal(v, live[k]) for k, v in checkpoint["state_dict"].items()
    )
    optimizer.train()  # y = (1 - beta1) z + beta1 x, where the gradients were taken: not what is kept
    y = as_saved()
    optimizer.eval()
    ups = [k for k in x if k.endswith("lora_up.weight")]
    # y - x = (1 - beta1)(z - x): a few percent of the weights after two steps (some are ~1e-7: no atol)
    assert ups and all(not torch.allclose(saved[k], y[k], rtol=1e-3, atol=0) for k in ups)


def test_eight_bit_block_runs_on_cuda_only_and_says_so_before_loading(tmp_path, tiny_sdxl, demo_data, capsys,
                                                                      monkeypatch):  # fmt: skip
    args = fit_with("8-bit AdamW", tmp_path, tiny_sdxl, demo_data)
    if importlib.util.find_spec("bitsandbytes") and torch.cuda.is_available():
        cli = main(args)  # a CUDA machine with the package: the block trains as written
        assert (Path(cli.trainer.log_dir) / "demo-000001.safetensors").is_file()
        return
    monkeypatch.setattr(
        "bespoke_pl.commands.cli.check_base", lambda *a: pytest.fail("the base was looked at")
    )
    logs = tmp_path / "logs"
    if importlib.util.find_spec("bitsandbytes") is None:
        assert fails(args, capsys) == (
            "error: model.optimizer bitsandbytes.optim.AdamW8bit: the package bitsandbytes is not installed "
            "here (pip install bitsandbytes; its 8-bit optimizers need a CUDA GPU)"
        )
        assert not logs.exists()
        # Installed but without CUDA (a stand-in package: the real one is not installed in CI).
        package, optim = types.ModuleType("bitsandbytes"), types.ModuleType("bitsandbytes.optim")
        optim.AdamW8bit = type("AdamW8bit", (torch.optim.AdamW,), {"__module__": "bitsandbytes.optim"})
        package.optim = optim
        monkeypatch.setitem(sys.modules, "bitsandbytes", package)
        monkeypatch.setitem(sys.modules, "bitsandbytes.optim", optim)
    for accelerator, why in (
        ("gpu", "PyTorch finds no CUDA device here"),
        ("cpu", "trainer.accelerator is cpu"),
    ):
        if accelerator == "gpu" and torch.cuda.is_available():
            continue
        line = fails([*args, "--trainer.accelerator", accelerator], capsys)
        assert (
            line.startswith("error: model.optimizer bitsandbytes.optim.AdamW8bit needs a CUDA GPU ")
            and why in line
        )
        assert "use torch.optim.AdamW" in line and not logs.exists()


# ----------------------------------------------------------------------------------------- refusals
PRODIGY_LR = (
    "model.optimizer.lr 0.0001 with Prodigy: Prodigy's lr multiplies the step size it estimates itself, 1.0 is "
    "intended; set model.optimizer.init_args.lr 1.0"
)
PRODIGY_LINEAR = (
    "model.lr_schedule linear with Prodigy: Prodigy's authors recommend no schedule or cosine annealing; set "
    "model.lr_schedule constant or cosine"
)
PRODIGY_WARMUP = (
    "model.lr_warmup_steps 5 with Prodigy: a warmup's small first rates make Prodigy overestimate its step "
    "size; set model.optimizer.init_args.safeguard_warmup true"
)
FREE_COSINE = (
    "model.lr_schedule cosine with AdamWScheduleFree: a schedule-free optimizer replaces the schedule (its "
    "averaging is the decay); set model.lr_schedule constant"
)
FREE_WARMUP = (
    "model.lr_warmup_steps 5 with AdamWScheduleFree: a schedule-free optimizer warms up itself; set "
    "model.lr_warmup_steps 0 and model.optimizer.init_args.warmup_steps 5 instead"
)
REFUSED = [  # (docs block, what is added after it, the start of the error)
    ("Prodigy", ["--model.optimizer.lr=1e-4"], PRODIGY_LR),
    ("Prodigy", ["--model.lr_schedule=linear"], PRODIGY_LINEAR),
    ("Prodigy", ["--model.lr_warmup_steps=5", "--model.optimizer.safeguard_warmup=false"], PRODIGY_WARMUP),
    ("Schedule-free AdamW", ["--model.lr_schedule=cosine"], FREE_COSINE),
    ("Schedule-free AdamW", ["--model.lr_warmup_steps=5"], FREE_WARMUP),
    ("LoRA+", ["--model.loraplus_lr_ratio=-2"], "model.loraplus_lr_ratio must be > 0 or null"),
]


@pytest.mark.parametrize(("block", "values", "error"), REFUSED, ids=[" ".join(r[1]) for r in REFUSED])
def test_a_pairing_that_trains_badly_is_refused_before_anything_loads(
    block, values, error, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(
        "bespoke_pl.commands.cli.check_base", lambda *a: pytest.fail("the base was looked at")
    )
    snippet = tmp_path / "snippet.yaml"
    snippet.write_text(BLOCKS[block])
    logs = tmp_path / "logs"
    args = ["fit", "--config", "configs/demo.yaml", "--config", str(snippet),
            "--trainer.logger.init_args.save_dir", str(logs), *values]  # fmt: skip
    assert fails(args, capsys).startswith(f"error: {error}")
    assert not logs.exists()
