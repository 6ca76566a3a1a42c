"""The objective options, each against its paper's (or kohya's) formula on tiny tensors, then one short
run through the CLI with several of them at once that writes its LoRA file with them recorded."""

import json
import logging
import math

import pytest
import torch
from diffusers import DDPMScheduler, EulerDiscreteScheduler
from failing import fails
from lightning.fabric.utilities.data import AttributeDict
from safetensors import safe_open

from bespoke_pl.diffusion.losses import (
    debiased_weights,
    elementwise_loss,
    huber_threshold,
    min_snr_weights,
    snr,
)
from bespoke_pl.diffusion.objective import (
    add_noise,
    alphas_cumprod_from_config,
    make_noise,
    perturb_noise,
    zero_terminal_snr_config,
)
from bespoke_pl.diffusion.sampling import make_scheduler
from bespoke_pl.diffusion.timesteps import sample_training_timesteps, shift_time, to_discrete
from bespoke_pl.lora.metadata import recorded_settings
from bespoke_pl.training.module import PixelLoRAModule
from bespoke_pl.training.options import check_objective

SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000}
A = alphas_cumprod_from_config(SD)
ZERO = alphas_cumprod_from_config(zero_terminal_snr_config(SD))


# ------------------------------------------------------------------------------------------ timesteps
def test_uniform_draws_what_randint_drew_before_the_options():
    torch.manual_seed(3)
    ours = sample_training_timesteps(64, 1000)
    torch.manual_seed(3)
    assert torch.equal(ours, torch.randint(0, 1000, (64,)))


def test_a_range_is_kept_and_reached_at_both_ends():
    for sampling, shift in (("uniform", 1.0), ("uniform", 3.0), ("logit_normal", 1.0)):
        t = sample_training_timesteps(
            20000, 1000, sampling, 200, 400, shift, generator=torch.Generator().manual_seed(0)
        )
        assert t.min() >= 200 and t.max() <= 399, sampling
        assert sampling == "logit_normal" or (t.min(), t.max()) == (200, 399)  # its tails are thin
    assert torch.equal(
        to_discrete(torch.tensor([0.0, 0.4999, 0.5, 1.0]), 10, 12), torch.tensor([10, 10, 11, 11])
    )
    with pytest.raises(ValueError, match=r"\[5, 5\) is not inside"):
        sample_training_timesteps(1, 1000, t_min=5, t_max=5)


def test_shift_is_sd3s_formula_and_moves_draws_to_the_noisy_end():
    u = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    assert torch.allclose(shift_time(u, 3.0), 3 * u / (1 + 2 * u))
    assert shift_time(u, 3.0)[2] == 0.75 and torch.equal(shift_time(u, 1.0), u)
    # The shifted draw's distribution: P(t' < x) = P(u < x / (s - (s - 1) x)), the inverse of the shift.
    t = sample_training_timesteps(50000, 1000, shift=3.0, generator=torch.Generator().manual_seed(1))
    for x in (0.25, 0.5, 0.75):
        expected = x / (3 - 2 * x)
        assert abs((t < x * 1000).double().mean().item() - expected) < 0.01


def test_logit_normal_is_the_sigmoid_of_a_normal():
    t = sample_training_timesteps(
        8, 1000, "logit_normal", logit_mean=0.5, logit_std=2.0, generator=torch.Generator().manual_seed(5)
    )
    normal = torch.randn(8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert torch.equal(t, (torch.sigmoid(normal * 2 + 0.5) * 1000).floor().long())
    # Its distribution, SD3's (Esser et al. 2024, eq. 19): P(t < x T) = Phi((logit(x) - m) / s).
    t = sample_training_timesteps(50000, 1000, "logit_normal", generator=torch.Generator().manual_seed(2))
    for x in (0.1, 0.3, 0.5, 0.9):
        expected = 0.5 * (1 + math.erf(math.log(x / (1 - x)) / math.sqrt(2)))
        assert abs((t < x * 1000).double().mean().item() - expected) < 0.01


# ------------------------------------------------------------------------------- zero terminal SNR
def test_zero_terminal_snr_is_lin_et_als_algorithm_1():
    root, rescaled = A.double().sqrt(), ZERO.double().sqrt()
    # Algorithm 1: sqrt(alpha_bar) shifted so the last is 0, scaled so the first is as before.
    expected = (root - root[-1]) * root[0] / (root[0] - root[-1])
    assert torch.allclose(rescaled, expected, atol=1e-6)
    assert ZERO[-1] == 0 and torch.isclose(ZERO[0], A[0]) and snr(torch.tensor([999]), ZERO) == 0
    reference = DDPMScheduler(**SD, rescale_betas_zero_snr=True).alphas_cumprod
    assert torch.allclose(ZERO, reference, atol=1e-6)
    # Sampling uses the same schedule, from the last (pure-noise) timestep on.
    scheduler = make_scheduler("euler", zero_terminal_snr_config(SD))
    assert isinstance(scheduler, EulerDiscreteScheduler) and scheduler.config.rescale_betas_zero_snr
    scheduler.set_timesteps(4)
    assert scheduler.timesteps[0] == 999


def test_every_beta_schedule_that_samples_also_trains():
    """Training's schedule is the one the sampling scheduler builds from the same config, to the last bit."""
    for schedule in ("scaled_linear", "linear", "squaredcos_cap_v2"):
        config = {**SD, "beta_schedule": schedule}
        sampling = make_scheduler("euler", config)
        assert torch.equal(alphas_cumprod_from_config(config), sampling.alphas_cumprod), schedule
        zero = zero_terminal_snr_config(config)
        assert torch.equal(
            alphas_cumprod_from_config(zero)[:-1], make_scheduler("ddim", zero).alphas_cumprod[:-1]
        )


def test_ddim_from_an_euler_config_does_not_clip_the_latents():
    # SDXL's (and the tiny SDXL's) Euler config may lack clip_sample; DDIM's default would clip x_0 to
    # [-1, 1], which latents of unit std overshoot all the time.
    scheduler = make_scheduler("ddim", {**SD, "steps_offset": 1, "timestep_spacing": "leading"})
    scheduler.set_timesteps(2)
    t, previous = scheduler.timesteps
    latents = torch.full((1, 4, 2, 2), 3.0)
    step = scheduler.step(torch.zeros_like(latents), t, latents).prev_sample
    # With no predicted noise x_0 = x_t / sqrt(alpha_bar_t), and DDIM moves it to sqrt(alpha_bar_prev) x_0.
    expected = latents * (A[previous] / A[t]).sqrt()
    assert torch.allclose(step, expected, rtol=1e-4), (step.flatten()[0], expected.flatten()[0])
    assert make_scheduler("ddim", {**SD, "clip_sample": True}).config.clip_sample  # asked for: kept


def test_weights_stay_finite_at_snr_zero():
    t = torch.tensor([999, 500])
    eps, v = min_snr_weights(t, ZERO, 5.0, "epsilon"), min_snr_weights(t, ZERO, 5.0, "v_prediction")
    ratio = snr(torch.tensor([500]), ZERO)
    assert torch.allclose(
        eps, torch.tensor([1.0, min(ratio.item(), 5) / ratio.item()])
    )  # min(SNR, g) / SNR, limit 1
    assert torch.allclose(v, torch.tensor([0.0, min(ratio.item(), 5) / (ratio.item() + 1)]))
    for kind in ("epsilon", "v_prediction"):
        assert torch.isfinite(debiased_weights(t, ZERO, kind)).all()
    for schedule in ("constant", "exponential", "snr"):
        assert torch.isfinite(huber_threshold(t, ZERO, 0.1, schedule)).all()


# ----------------------------------------------------------------------------------------- losses
def test_debiased_estimation_is_kohyas():
    t = torch.tensor([0, 300, 999])
    ratio = (A[t] / (1 - A[t])).clamp(max=1000)
    assert torch.allclose(debiased_weights(t, A, "epsilon"), 1 / ratio.sqrt())
    assert torch.allclose(debiased_weights(t, A, "v_prediction"), 1 / (ratio + 1))


def test_pseudo_huber_and_smooth_l1():
    prediction, target = torch.tensor([[0.0, 0.001, 3.0]]), torch.zeros(1, 3)
    c = torch.tensor([0.1])
    huber = elementwise_loss(prediction, target, "huber", c)
    assert torch.allclose(huber, 2 * 0.1 * (torch.sqrt(prediction**2 + 0.01) - 0.1))
    assert torch.allclose(huber[0, 1], torch.tensor(1e-6), rtol=1e-3)  # quadratic (d^2) for small errors
    assert abs(huber[0, 2] - 2 * 0.1 * (3 - 0.1)) < 1e-3  # linear (2c|d|) for large ones
    assert torch.allclose(elementwise_loss(prediction, target, "smooth_l1", c), huber / 0.1)
    assert torch.equal(elementwise_loss(prediction, target, "l1"), prediction.abs())
    with pytest.raises(ValueError, match="needs huber_c"):
        elementwise_loss(prediction, target, "huber")


def test_huber_schedules_are_kohyas():
    t = torch.tensor([0, 500, 999])
    assert torch.equal(huber_threshold(t, A, 0.1, "constant"), torch.full((3,), 0.1))
    assert torch.allclose(huber_threshold(t, A, 0.1, "exponential"), 0.1 ** (t / 1000))  # exp(log(c) t / T)
    sigma = ((1 - A[t]) / A[t]).sqrt()
    assert torch.allclose(huber_threshold(t, A, 0.1, "snr"), 0.9 / (1 + sigma) ** 2 + 0.1)
    assert huber_threshold(t, A, 0.1, "snr")[0] > 0.9  # almost MSE where the image is clear


def test_input_perturbation_noises_the_input_and_keeps_the_target():
    """The real compute_loss, on a stand-in for the UNet: records the noisy input, predicts zeros."""
    seen = {}
    latents = torch.randn(2, 4, 3, 3)

    def predict(noisy, timesteps, embeds):
        seen["noisy"], seen["t"] = noisy, timesteps
        return torch.zeros_like(noisy)

    hparams = dict(noise_offset=0.0, timestep_sampling="uniform", timestep_min=0, timestep_max=None, timestep_shift=1.0,
                   logit_mean=0.0, logit_std=1.0, ip_noise_gamma=0.5, min_snr_gamma=None, debiased_estimation=False,
                   loss_type="l2", huber_c=0.1, huber_schedule="snr")  # fmt: skip
    stand_in = type("Module", (), {"hparams": AttributeDict(hparams), "alphas_cumprod": A,
                                   "prediction_type": "epsilon", "predict": staticmethod(predict)})()  # fmt: skip
    torch.manual_seed(7)
    loss = PixelLoRAModule.compute_loss(stand_in, latents, None)
    torch.manual_seed(7)
    noise = make_noise(latents)
    t = torch.randint(0, 1000, (2,))
    fresh = torch.randn(latents.shape)
    assert torch.equal(seen["t"], t)
    assert torch.allclose(seen["noisy"], add_noise(latents, noise + 0.5 * fresh, t, A))
    assert torch.allclose(loss, (noise**2).mean())  # the target is the original noise
    assert torch.equal(perturb_noise(noise, 0.0), noise)
    # Fixed timesteps and noise (validation): used as given, nothing random added.
    PixelLoRAModule.compute_loss(stand_in, latents, None, t, noise)
    assert torch.allclose(seen["noisy"], add_noise(latents, noise, t, A))


# -------------------------------------------------------------------------------------- preflight
BAD = {
    "--model.timestep_min=-1": "model.timestep_min must be >= 0, got -1",
    "--model.timestep_max=100": "model.timestep_max 100 must be > model.timestep_min 200",
    "--model.huber_c=0": "model.huber_c must be > 0, got 0.0",
    "--model.ip_noise_gamma=-0.1": "model.ip_noise_gamma must be >= 0 (0: off), got -0.1",
    "--model.logit_std=0": "model.logit_std must be > 0, got 0.0",
    "--model.huber_c=0.3": "model.huber_c / huber_schedule only apply with model.loss_type huber or smooth_l1, not l2",
    "--model.logit_mean=1": "model.logit_mean / logit_std only apply with model.timestep_sampling: logit_normal",
}


@pytest.mark.parametrize("value", BAD)
def test_objective_values_that_cannot_work_are_refused(value, capsys):
    args = ["fit", "--config", "configs/demo.yaml", "--model.timestep_min=200", value]
    assert fails(args, capsys).startswith(f"error: {BAD[value]}")


def test_a_range_beyond_a_local_bases_schedule_is_refused_before_loading(tmp_path, tiny_sd15, capsys):
    logs = tmp_path / "logs"
    args = ["fit", "--config", "configs/demo.yaml", "--model.base_model", str(tiny_sd15), "--model.family", "sd15",
            "--model.timestep_max=1001", "--trainer.logger.init_args.save_dir", str(logs)]  # fmt: skip
    assert (
        fails(args, capsys) == "error: model.timestep_max 1001 is beyond the base's 1000 training timesteps"
    )
    assert not logs.exists()


def test_the_bases_schedule_bounds_the_range_and_an_epsilon_base_is_warned(caplog):
    h = AttributeDict(timestep_min=0, timestep_max=1001, zero_terminal_snr=False)
    with pytest.raises(ValueError, match="timestep_max 1001 is beyond the base's 1000 training timesteps"):
        check_objective(h, "epsilon", 1000)
    with caplog.at_level(logging.WARNING):
        check_objective(
            AttributeDict(timestep_min=0, timestep_max=None, zero_terminal_snr=True), "epsilon", 1000
        )
    assert "zero_terminal_snr on an epsilon-prediction base" in caplog.text
    caplog.clear()
    check_objective(
        AttributeDict(timestep_min=0, timestep_max=None, zero_terminal_snr=True), "v_prediction", 1000
    )
    assert not caplog.text


# ------------------------------------------------------------------------------------- end to end
def test_a_run_with_several_options_trains_records_them_and_generate_uses_its_schedule(
    tmp_path, tiny_sd15, demo_data, capsys, monkeypatch
):
    from bespoke_pl.commands import generate as generate_command
    from bespoke_pl.commands.cli import main

    cli = main(
        ["fit", "--model.base_model", str(tiny_sd15), "--model.family", "sd15", "--model.rank", "2",
         "--model.pixel_scale", "1", "--data.root", str(demo_data), "--data.batch_size", "4",
         "--trainer.accelerator", "cpu", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
         "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"), "--trainer.enable_progress_bar", "false",
         "--sample.every_n_epochs", "0", "--roundtrip.enabled", "false",
         "--model.loss_type", "huber", "--model.huber_schedule", "exponential", "--model.huber_c", "0.2",
         "--model.debiased_estimation", "true", "--model.min_snr_gamma", "5", "--model.ip_noise_gamma", "0.1",
         "--model.timestep_sampling", "logit_normal", "--model.logit_mean", "0.3", "--model.timestep_shift", "2",
         "--model.timestep_min", "50", "--model.timestep_max", "950", "--model.zero_terminal_snr", "true"]
    )  # fmt: skip
    module = cli.model
    assert module.alphas_cumprod[-1] == 0 and module.scheduler_config["timestep_spacing"] == "trailing"
    losses = cli.trainer.callback_metrics
    assert torch.isfinite(losses["train/loss_epoch"])
    (lora,) = (tmp_path / "logs").rglob("*-000001.safetensors")
    with safe_open(lora, "pt") as f:
        metadata = f.metadata()
    assert {k: metadata[k] for k in metadata if k.startswith(("ss_loss", "ss_huber", "ss_debiased", "ss_ip",
            "ss_zero", "ss_timestep", "ss_logit", "ss_discrete", "bespoke_pl.timestep"))} == {
        "ss_loss_type": "huber", "ss_huber_schedule": "exponential", "ss_huber_c": "0.2",
        "ss_debiased_estimation": "True", "ss_ip_noise_gamma": "0.1", "ss_zero_terminal_snr": "True",
        "ss_timestep_sampling": "logit_normal", "ss_logit_mean": "0.3", "ss_logit_std": "1.0",
        "ss_discrete_flow_shift": "2.0", "bespoke_pl.timestep_min": "50", "bespoke_pl.timestep_max": "950",
    }  # fmt: skip
    assert json.loads(metadata["bespoke_pl.hparams"])["loss_type"] == "huber"
    assert recorded_settings(metadata).zero_terminal_snr

    schedules = []
    real = generate_command.build_pipeline
    monkeypatch.setattr(generate_command, "build_pipeline", lambda *a: schedules.append(a[5]) or real(*a))
    generate_command.generate_images(
        str(tiny_sd15), str(lora), prompt="pixel art", out=str(tmp_path / "out"), steps=1
    )
    assert schedules[0]["rescale_betas_zero_snr"] and schedules[0]["timestep_spacing"] == "trailing"
