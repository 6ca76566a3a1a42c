"""EMA of the LoRA weights: the average's formula, its own file per epoch, samples, and exact resume."""

from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from bespoke_pl.callbacks.ema import LoRAEMA, ema_decay, start_average, update_average
from bespoke_pl.callbacks.resume import RunCheckpoint
from bespoke_pl.callbacks.save_lora import SaveLoRAEveryEpoch
from bespoke_pl.data.datamodule import PixelArtDataModule
from bespoke_pl.training.module import PixelLoRAModule


def test_decay_warms_up_to_its_value():
    assert ema_decay(0.999, 0, warmup=True) == pytest.approx(0.1)
    assert ema_decay(0.999, 80, warmup=True) == pytest.approx(0.9)
    assert ema_decay(0.9, 10_000, warmup=True) == 0.9
    assert ema_decay(0.999, 0, warmup=False) == 0.999
    with pytest.raises(ValueError, match=r"ema.decay must be in \(0, 1\)"):
        LoRAEMA(decay=1.0)


def test_the_average_is_the_ema_formula_and_a_copy():
    """The functions LoRAEMA and the tiny bases' recipe (bespoke_pl.tinybases.unet) both average with."""
    weights = [torch.tensor([1.0, 2.0]), torch.tensor([[4.0]], dtype=torch.float64)]
    average = start_average(weights)
    assert all(a.dtype == torch.float32 for a in average)
    weights[0].add_(1.0)  # a copy: the weights moving on leave the start alone
    assert torch.equal(average[0], torch.tensor([1.0, 2.0]))
    update_average(average, [torch.tensor([3.0, 0.0]), torch.tensor([[0.0]])], decay=0.75)
    assert torch.allclose(average[0], torch.tensor([1.5, 1.5])) and torch.allclose(
        average[1], torch.tensor([[3.0]])
    )


class Snapshots(L.Callback):
    """The LoRA parameters after every optimizer step (what the average is made of)."""

    def __init__(self) -> None:
        self.after_step: list[list[torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.after_step.append([p.detach().clone() for p in pl_module.trainable_parameters()])


def _run(root: Path, tiny: Path, demo_data: Path, epochs: int, ckpt_path=None, extra=()) -> L.Trainer:
    L.seed_everything(3, verbose=False)
    module = PixelLoRAModule(
        str(tiny), family="sd15", pixel_scale=1, rank=2, alpha=2,
        optimizer=lambda params: torch.optim.AdamW(params, lr=5e-2),
    )  # fmt: skip
    callbacks = [
        Snapshots(),  # before the EMA: Lightning calls callbacks in order, so it sees the same weights
        LoRAEMA(decay=0.75, warmup=False),
        SaveLoRAEveryEpoch("punk", save_dtype="float32", format="diffusers"),
        RunCheckpoint(dirpath=root / "run" / "version_0" / "checkpoints", save_last=True),
        *extra,
    ]
    trainer = L.Trainer(
        default_root_dir=root, accelerator="cpu", max_epochs=epochs, limit_train_batches=2, callbacks=callbacks,
        enable_progress_bar=False, enable_model_summary=False,
        logger=L.pytorch.loggers.TensorBoardLogger(root, name="run", version=0),
    )  # fmt: skip
    trainer.fit(module, PixelArtDataModule(str(demo_data), batch_size=4), ckpt_path=ckpt_path)
    return trainer


def test_ema_file_holds_the_running_average_and_resume_continues_it(tmp_path, tiny_sd15, demo_data):
    trainer = _run(tmp_path / "straight", tiny_sd15, demo_data, epochs=2)
    folder = tmp_path / "straight" / "run" / "version_0"
    assert sorted(p.name for p in folder.glob("*.safetensors")) == [
        "punk-000001-ema.safetensors", "punk-000001.safetensors",
        "punk-000002-ema.safetensors", "punk-000002.safetensors",
    ]  # fmt: skip
    # the average, computed by hand from the weights after each of the 4 steps (decay 0.75)
    snapshots = trainer.callbacks[0].after_step
    module = trainer.lightning_module
    names = [n for n, p in module.unet.named_parameters() if p.requires_grad]
    ema = trainer.callbacks[1]
    assert ema.updates == 4
    trained = load_file(folder / "punk-000002.safetensors")
    averaged = load_file(folder / "punk-000002-ema.safetensors")
    assert trained.keys() == averaged.keys()
    assert any(not torch.equal(trained[k], averaged[k]) for k in trained), "the EMA file is the trained one"
    # ema_4 = d^4 init + sum_j (1 - d) d^(3-j) w_j over the weights w_0..w_3 after steps 1-4 (d = 0.75);
    # lora_B starts at 0, so its average is the snapshots' alone
    b_rows = [i for i, n in enumerate(names) if "lora_B" in n]
    assert b_rows
    for i in b_rows:
        expected = sum(0.25 * 0.75 ** (3 - j) * snapshots[j][i] for j in range(4))
        key = "unet." + names[i].replace(".default", "")
        assert torch.allclose(averaged[key], expected, atol=1e-6), key
        assert torch.equal(trained[key], snapshots[3][i])
    # a run stopped after epoch 1 and resumed ends with the same average, bit for bit
    _run(tmp_path / "first", tiny_sd15, demo_data, epochs=1)
    last = tmp_path / "first" / "run" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["callbacks"]["LoRAEMA"]["updates"] == 2
    _run(tmp_path / "first", tiny_sd15, demo_data, epochs=2, ckpt_path=last)
    resumed = load_file(tmp_path / "first" / "run" / "version_0" / "punk-000002-ema.safetensors")
    assert all(torch.equal(resumed[k], averaged[k]) for k in averaged)


def test_applied_swaps_the_average_in_and_the_trained_weights_back():
    class Module:
        params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.zeros(2, 2))]

        def trainable_parameters(self):
            return self.params

    module, ema = Module(), LoRAEMA(decay=0.5)
    ema.shadow = [torch.full((3,), 0.25), torch.full((2, 2), -1.0)]
    with ema.applied(module):
        assert torch.equal(module.params[0].data, torch.full((3,), 0.25))
        assert torch.equal(module.params[1].data, torch.full((2, 2), -1.0))
    assert torch.equal(module.params[0].data, torch.ones(3)) and torch.equal(
        module.params[1].data, torch.zeros(2, 2)
    )
    with ema.applied(module, when=False):
        assert torch.equal(module.params[0].data, torch.ones(3))
