import pytest
import torch
from diffusers import DDPMScheduler

from bespoke_pl.diffusion.losses import min_snr_weights, snr
from bespoke_pl.diffusion.objective import (
    add_noise,
    alphas_cumprod_from_config,
    diffusion_loss,
    make_noise,
    training_target,
)

SD_CONFIG = {
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "num_train_timesteps": 1000,
}


@pytest.fixture
def reference():
    return DDPMScheduler(**SD_CONFIG)


def test_schedule_matches_diffusers(reference):
    ours = alphas_cumprod_from_config(SD_CONFIG)
    assert torch.allclose(ours, reference.alphas_cumprod, atol=1e-6)
    linear = alphas_cumprod_from_config({**SD_CONFIG, "beta_schedule": "linear"})
    assert torch.allclose(
        linear, DDPMScheduler(**{**SD_CONFIG, "beta_schedule": "linear"}).alphas_cumprod, atol=1e-6
    )


def test_noising_and_v_target_match_diffusers(reference):
    a = alphas_cumprod_from_config(SD_CONFIG)
    x, eps = torch.randn(3, 4, 3, 3), torch.randn(3, 4, 3, 3)
    t = torch.tensor([0, 500, 999])
    assert torch.allclose(add_noise(x, eps, t, a), reference.add_noise(x, eps, t), atol=1e-5)
    assert torch.equal(training_target(x, eps, t, a, "epsilon"), eps)
    assert torch.allclose(
        training_target(x, eps, t, a, "v_prediction"), reference.get_velocity(x, eps, t), atol=1e-5
    )
    with pytest.raises(ValueError, match="prediction_type"):
        training_target(x, eps, t, a, "sample")


def test_min_snr_weights():
    a = alphas_cumprod_from_config(SD_CONFIG)
    t = torch.tensor([0, 999])  # very high and very low SNR
    ratio = snr(t, a)
    assert ratio[0] > 5 > ratio[1]
    w = min_snr_weights(t, a, 5.0, "epsilon")
    assert torch.allclose(w, torch.stack([5 / ratio[0], torch.tensor(1.0)]))
    wv = min_snr_weights(t, a, 5.0, "v_prediction")
    assert torch.allclose(wv, torch.stack([5 / (ratio[0] + 1), ratio[1] / (ratio[1] + 1)]))


def test_noise_offset_shifts_channels():
    latents = torch.zeros(64, 4, 8, 8)
    plain = make_noise(latents, 0.0, torch.Generator().manual_seed(0))
    offset = make_noise(latents, 1.0, torch.Generator().manual_seed(0))
    per_channel = (offset - plain).flatten(2)
    assert torch.allclose(
        per_channel, per_channel[..., :1].expand_as(per_channel), atol=1e-5
    )  # constant per channel
    assert per_channel[..., 0].std() > 0.5


def test_loss_weighting():
    pred, target = torch.zeros(2, 4, 3, 3), torch.ones(2, 4, 3, 3)
    target[1] = 2
    assert diffusion_loss(pred, target).item() == pytest.approx(2.5)
    assert diffusion_loss(pred, target, torch.tensor([1.0, 0.0])).item() == pytest.approx(0.5)
