"""Training teaches: a LoRA on a pretrained tiny base learns the neon demo style in a few dozen steps.

The pretrained bases (``tiny-punks:*``) draw base-style punks; the demo set is the same punks in neon
skin tones. After 72 steps of the demo config (LoRA on the UNet and the text encoders) at least 6 of 8
samples' faces must be neon where none of the base's were (the issue of record's bar: at most 10%, at
least 70%), and at least 6 of 8 must keep the background their prompt asks for. The same check fails on
purposely broken trainers (below), so it can tell a working trainer from one that only runs.
"""

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bespoke_pl.commands.cli import main
from bespoke_pl.data.demo import write_demo_dataset

ROOT = Path(__file__).resolve().parents[1]
CLIP_SKIP = {"sdxl": "2", "sd15": "1"}


def train_on_neon(tmp_path: Path, family: str) -> dict[str, list[float]]:
    """Fit the demo config on 24 neon punks (72 steps, one epoch); returns each demo/* scalar by step."""
    data = tmp_path / "neon"
    if not data.exists():
        write_demo_dataset(data, count=24, style="neon")
    logs = tmp_path / "logs"
    main([
        "fit", "--config", str(ROOT / "configs" / "demo.yaml"),
        "--model.base_model", f"tiny-punks:{family}", "--model.family", family,
        "--model.clip_skip", CLIP_SKIP[family],
        "--data.root", str(data), "--data.num_repeats", "24", "--trainer.max_epochs", "1",
        "--trainer.logger.init_args.save_dir", str(logs), "--trainer.enable_progress_bar", "false",
        "--checkpoint.every_n_train_steps", "0", "--roundtrip.enabled", "false",
    ])  # fmt: skip
    (run,) = (logs / "demo").iterdir()
    return demo_scalars(run)


def demo_scalars(run: Path) -> dict[str, list[float]]:
    """Each demo/* scalar of a run folder's TensorBoard events, by step."""
    events = EventAccumulator(str(run), size_guidance={"scalars": 0}).Reload()
    return {
        tag: [e.value for e in sorted(events.Scalars(tag), key=lambda e: e.step)]
        for tag in events.Tags()["scalars"]
        if tag.startswith("demo/")
    }


def failures(values: dict[str, list[float]]) -> list[str]:
    """What a run that learned the style would not show; empty when it learned."""
    before, after = values["demo/neon_share"][0], values["demo/neon_share"][-1]
    background = values["demo/background_match"][-1]
    problems = []
    if before > 0.1:
        problems.append(f"the base already draws neon faces ({before:.2f})")
    if after < 0.75:
        problems.append(f"only {after:.2f} of the trained samples have neon faces (need 0.75)")
    # The style alone is not enough: a LoRA trained towards the latents instead of the noise turns 6 of 8
    # faces neon too, by washing the whole picture in neon (1 of 8 prompted backgrounds left).
    if background < 0.75:
        problems.append(
            f"only {background:.2f} of the trained samples keep the prompted background (need 0.75)"
        )
    return problems


@pytest.mark.slow
def test_the_demo_teaches_the_pretrained_sdxl_base_its_style(demo_workspace):
    """The README's demo run itself (48 neon punks, 3 epochs of 24 steps; shared with the docs test)."""
    values = demo_scalars(demo_workspace[1])
    assert len(values["demo/neon_share"]) == 4  # the base (epoch 0), then each epoch
    assert failures(values) == [], values


@pytest.mark.slow
def test_a_lora_teaches_the_pretrained_sd15_base_the_demo_style(tmp_path):
    values = train_on_neon(tmp_path, "sd15")
    assert failures(values) == [], values


def _targets_are_the_latents(monkeypatch):
    monkeypatch.setattr("bespoke_pl.training.module.training_target", lambda latents, *args: latents)


def _text_conditioning_zeroed(monkeypatch):
    from bespoke_pl.diffusion.conditioning import PromptEmbeds
    from bespoke_pl.training.module import PixelLoRAModule

    compute_loss = PixelLoRAModule.compute_loss

    def zeroed(self, latents, embeds, *args, **kwargs):
        pooled = None if embeds.pooled is None else embeds.pooled * 0
        return compute_loss(self, latents, PromptEmbeds(embeds.sequence * 0, pooled), *args, **kwargs)

    monkeypatch.setattr(PixelLoRAModule, "compute_loss", zeroed)


def _lora_scale_zero(monkeypatch):
    import bespoke_pl.lora.inject
    import bespoke_pl.training.lora_on_base

    add_lora = bespoke_pl.lora.inject.add_lora

    def unscaled(model, *args, **kwargs):
        add_lora(model, *args, **kwargs)
        for layer in model.modules():
            if hasattr(layer, "scaling") and isinstance(layer.scaling, dict):
                # alpha 0 too, so the LoRA files still record the scale the layers use
                layer.lora_alpha = dict.fromkeys(layer.lora_alpha, 0.0)
                layer.scaling = dict.fromkeys(layer.scaling, 0.0)

    # Both names: the UNet's LoRA is added through lora_on_base's, the text encoders' through inject's own.
    monkeypatch.setattr(bespoke_pl.training.lora_on_base, "add_lora", unscaled)
    monkeypatch.setattr(bespoke_pl.lora.inject, "add_lora", unscaled)


BROKEN = {
    "targets_are_the_latents": _targets_are_the_latents,
    "text_conditioning_zeroed": _text_conditioning_zeroed,
    "lora_scale_zero": _lora_scale_zero,
}


@pytest.mark.slow
@pytest.mark.parametrize("broken", BROKEN)
def test_the_learning_check_fails_on_a_broken_trainer(tmp_path, monkeypatch, broken):
    BROKEN[broken](monkeypatch)
    values = train_on_neon(tmp_path, "sdxl")
    assert failures(values), f"a broken trainer passed the learning check: {values}"
