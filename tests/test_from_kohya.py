"""``from-kohya``: kohya sd-scripts TOMLs become ``fit`` configs that parse, every kohya key accounted for
(converted, changed with a reason, or in the warning), kohya's sample prompts carried over, and each
mistake one ``error:`` line."""

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from failing import run
from PIL import Image

from bespoke_pl.commands.cli import BespokeCLI, main
from bespoke_pl.kohya.keys import KOHYA_OPTIONS

ROOT = Path(__file__).resolve().parents[1]
SEEDS = sorted((ROOT / "configs" / "kohya").glob("*.toml"))
PARSER_OPTIONS = [
    line.strip()
    for line in (ROOT / "tests" / "kohya_options.txt").read_text().splitlines()
    if line[:1] != "#"
]


def write_art(folder: Path, count: int = 3, side: int = 24) -> Path:
    folder.mkdir(parents=True)
    for i in range(count):
        Image.new("RGB", (side, side), (10 * i, 80, 120)).save(folder / f"punk_{i}.png")
        (folder / f"punk_{i}.txt").write_text(f"pixel art, 24x24, portrait of bespoke punk, number {i}")
    return folder


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    """A kohya user's folder: train/10_bespokepunks/ with three 24x24 punks, the shipped configs beside."""
    write_art(tmp_path / "train" / "10_bespokepunks")
    shutil.copytree(ROOT / "configs" / "kohya", tmp_path / "configs" / "kohya")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


class Checked(Exception):
    """fit got through parsing and its config check to building the model."""


def fit_check(config: Path, capsys) -> str:
    """fit --config CONFIG up to building the model (parsing, then the checks of before_instantiate_classes):
    the stderr line of a refusal, or "" when fit accepts the config."""

    def stop(self):
        raise Checked

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(BespokeCLI, "instantiate_classes", stop)
        try:
            main(["fit", "--config", str(config)])
        except Checked:
            return ""
        except SystemExit:
            return capsys.readouterr().err
    raise AssertionError("fit returned without building the model")


def convert(toml: Path, capsys, *extra: str, accepted: bool = True) -> tuple[str, str, dict]:
    """from-kohya TOML --out TOML.yaml, then fit --print_config of it and fit's own checks (which must pass,
    unless not ``accepted``): (YAML text, warnings, printed config)."""
    out = toml.with_suffix(".yaml")
    code, printed, err = run(["from-kohya", str(toml), "--out", str(out), *extra], capsys)
    assert code == 0, err
    assert f"wrote {out}" in printed and "Traceback" not in err
    code, config, err_fit = run(["fit", "--config", str(out), "--print_config"], capsys)
    assert code == 0, err_fit
    if accepted:
        refusal = fit_check(out, capsys)
        assert not refusal, refusal
    return out.read_text(), err, yaml.safe_load(config)


def said(needle: str, text: str) -> bool:
    """Whether the YAML or warning says ``needle``, comment wrapping and ``#`` aside."""
    return " ".join(needle.split()) in " ".join(text.replace("#", " ").split())


def fails(args: list[str], capsys) -> str:
    code, out, err = run(args, capsys)
    assert code == 2 and "Traceback" not in out + err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ------------------------------------------------------------------------------------- the seed configs
def test_the_sdxl_seed_config_converts_to_the_native_sdxl_run(work, capsys):
    text, warnings, config = convert(work / "configs" / "kohya" / "kohya_config_sdxl_24x24.toml", capsys)
    model, data, trainer = config["model"], config["data"], config["trainer"]
    assert (model["family"], model["pixel_scale"], model["clip_skip"], data["resolution"]) == (
        "sdxl",
        40,
        2,
        24,
    )
    assert model["base_model"] == "stabilityai/stable-diffusion-xl-base-1.0"
    assert (model["rank"], model["alpha"], model["train_text_encoder"]) == (16, 16.0, False)
    assert model["optimizer"]["class_path"] == "torch.optim.AdamW"  # AdamW8bit: no bitsandbytes for a LoRA
    assert (
        model["optimizer"]["init_args"]["lr"] == 1e-4
        and model["optimizer"]["init_args"]["weight_decay"] == 0.01
    )
    assert (model["lr_schedule"], model["lr_warmup_steps"], model["min_snr_gamma"]) == ("cosine", 20, 5.0)
    assert model["gradient_checkpointing"] and model["cache_latents"] and model["cache_text"]
    assert (data["root"], data["num_repeats"], data["batch_size"]) == ("train/10_bespokepunks", 10, 4)
    assert data["caption_extension"] == ".txt"
    assert (
        trainer["max_epochs"] == 10 and trainer["gradient_clip_val"] == 1.0
    )  # kohya's max_grad_norm default
    assert trainer["precision"] is None  # kohya's bf16: bespoke_pl's own choice per device
    assert trainer["logger"]["init_args"]["save_dir"] == "kohya_output_sdxl"
    assert trainer["logger"]["init_args"]["name"] == config["save_lora"]["output_name"] == "bespoke_sdxl"
    assert config["save_lora"]["save_dtype"] == "float16" and config["seed_everything"] == 42
    sample = config["sample"]
    assert (sample["sampler"], sample["steps"], sample["guidance_scale"], sample["seed"]) == (
        "euler_a",
        30,
        5.0,
        42,
    )
    assert sample["negative_prompt"] == "blurry, torso"
    prompts = Path(sample["prompts_file"]).read_text().splitlines()
    assert [p for p in prompts if not p.startswith("#")] == [
        "pixel art, 24x24, portrait of bespoke punk, female, albino skin, orange background, bald, nerd glasses",
        "pixel art, 24x24, portrait of bespoke punk, male, dark skin, purple background, pink mohawk",
    ]
    # the deliberate changes say why; kohya's 1024 px sample size is named in the warning
    assert 'pixel_scale: 40  # kohya resolution = "24,24"' in text and said("a 3x3 latent", text)
    assert said("changed: 8-bit", text) and said("kohya flip_aug = false: bespoke_pl never flips", text)
    assert "warning: 1 kohya settings" in warnings and "--w/--h 1024x1024" in warnings
    excerpt = re.search(r"```yaml\n(.*?)```", (ROOT / "docs" / "kohya.md").read_text(), re.S)[1]
    assert excerpt in text  # the docs show what the command writes


def test_the_sd15_seed_config_converts_to_the_native_sd15_run(work, capsys):
    text, warnings, config = convert(work / "configs" / "kohya" / "kohya_config_sd15_24x24.toml", capsys)
    model, trainer = config["model"], config["trainer"]
    assert (model["family"], model["pixel_scale"], model["clip_skip"], model["alpha"]) == ("sd15", 24, 1, 8.0)
    # kohya trains the text encoders unless network_train_unet_only; their rate is text_encoder_lr
    assert model["train_text_encoder"] and model["text_encoder_lr"] == 5e-5
    assert model["optimizer"]["init_args"]["lr"] == 1e-4
    assert model["lr_schedule"] == "constant" and model["lr_warmup_steps"] == 20  # constant_with_warmup
    assert (trainer["precision"], model["weight_dtype"]) == ("16-mixed", "float16")
    assert model["attention"] == "sdpa" and "xformers" in text
    assert config["sample"]["prompts_file"] is None and not warnings


def test_the_docs_show_the_shipped_kohya_configs():
    readme = (ROOT / "docs" / "kohya.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", readme, re.S)
    assert sorted(blocks) == sorted(path.read_text() for path in SEEDS)


# ----------------------------------------------------------------- dataset config, LyCORIS, unsupported
def test_a_dataset_config_gives_the_data_the_most_specific_place_wins(work, capsys):
    images = write_art(work / "punks")
    write_toml(work / "dataset.toml", f"""
[general]
shuffle_caption = true
keep_tokens = 1
caption_extension = ".txt"

[[datasets]]
resolution = 24
batch_size = 2

  [[datasets.subsets]]
  image_dir = "{images}"
  num_repeats = 5
  class_tokens = "bespoke punk"
  caption_dropout_rate = 0.1
  keep_tokens = 2

  [[datasets.subsets]]
  image_dir = "{work / 'train'}"
  is_reg = true
""")  # fmt: skip
    toml = write_toml(work / "kohya.toml", """
pretrained_model_name_or_path = "runwayml/stable-diffusion-v1-5"
dataset_config = "dataset.toml"
train_data_dir = "train"
train_batch_size = 8
network_module = "networks.lora"
network_dim = 8
""")  # fmt: skip
    text, warnings, config = convert(toml, capsys)
    data = config["data"]
    assert (data["root"], data["num_repeats"], data["batch_size"], data["resolution"]) == (
        str(images),
        5,
        2,
        24,
    )
    assert data["shuffle_captions"] and data["keep_tokens"] == 2 and data["caption_dropout"] == 0.1
    assert data["default_caption"] == "bespoke punk" and data["caption_extension"] == ".txt"
    assert said(
        "kohya train_batch_size = 8 (overridden by kohya dataset_config dataset.toml [[datasets]] batch_size",
        text,
    )
    assert said('kohya train_data_dir = "train": ignored with a dataset_config', text)
    assert "is_reg = true: regularization images" in warnings


@pytest.mark.parametrize(
    ("network_args", "expected", "warned"),
    [
        # LoCon: the convolutions at their own rank and alpha; LyCORIS' dropout is the LoRA input's
        (["algo=locon", "conv_dim=8", "conv_alpha=4", "dropout=0.1"],
         {"network": "lora", "conv_rank": 8, "conv_alpha": 4.0, "lora_dropout": 0.1, "use_dora": False},
         None),
        # LyCORIS adapts the convolutions even without conv_dim: at the network's rank and alpha; DoRA is
        # saved in the kohya format like the rest
        (["algo=lora", "dora_wd=True", "wd_on_output=True"],
         {"network": "lora", "conv_rank": 32, "conv_alpha": 16.0, "use_dora": True}, None),
        # LoHa on the same layers; LyCORIS' LoHa ignores dropout, and so does the converted config
        (["algo=loha", "conv_dim=8", "dropout=0.1"],
         {"network": "loha", "conv_rank": 8, "conv_alpha": 16.0, "lora_dropout": 0.0}, None),
        # LoKr with its factor; DoRA only on plain LoRA here
        (["algo=lokr", "factor=8", "dora_wd=True"],
         {"network": "lokr", "lokr_factor": 8, "use_dora": False},
         "network_args dora_wd=True: bespoke_pl's DoRA is on plain LoRA only"),
    ],
)  # fmt: skip
def test_lycoris_networks_become_lora_loha_or_lokr(work, capsys, network_args, expected, warned):
    toml = write_toml(work / "kohya.toml", f"""
pretrained_model_name_or_path = "stabilityai/stable-diffusion-xl-base-1.0"
train_data_dir = "train"
network_module = "lycoris.kohya"
network_dim = 32
network_alpha = 16
network_args = {json.dumps(network_args)}
network_train_unet_only = true
""")  # fmt: skip
    text, warnings, config = convert(toml, capsys)
    assert (config["model"]["rank"], config["model"]["alpha"]) == (32, 16.0)
    assert {key: config["model"][key] for key in expected} == expected
    assert config["save_lora"]["format"] == "kohya"  # LoHa, LoKr and DoRA files are kohya/LyCORIS ones
    assert said("LyCORIS' default preset also adapts conv_in", text)
    for arg in network_args:
        assert arg.split("=")[0] in text
    assert (warned in warnings) if warned else not warnings


@pytest.mark.parametrize(
    ("network_args", "unet_only", "ratio", "warned"),
    [
        (["loraplus_lr_ratio=16"], False, 16.0, None),
        # kohya's part-specific ratios: the UNet's is the one ratio; a different text-encoder one is warned
        (["loraplus_unet_lr_ratio=16", "loraplus_text_encoder_lr_ratio=4"], False, 16.0,
         "network_args loraplus_text_encoder_lr_ratio=4: one LoRA+ ratio for the UNet and the text encoders"),
        (["loraplus_unet_lr_ratio=16", "loraplus_text_encoder_lr_ratio=4"], True, 16.0, None),
        (["loraplus_text_encoder_lr_ratio=4"], False, None, "LoRA+ on the text encoders alone"),
    ],
)  # fmt: skip
def test_loraplus_ratios_become_the_one_ratio(work, capsys, network_args, unet_only, ratio, warned):
    toml = write_toml(work / "kohya.toml", f"""
pretrained_model_name_or_path = "runwayml/stable-diffusion-v1-5"
train_data_dir = "train"
network_module = "networks.lora"
network_args = {json.dumps(network_args)}
network_train_unet_only = {json.dumps(unet_only)}
""")  # fmt: skip
    text, warnings, config = convert(toml, capsys)
    assert config["model"]["loraplus_lr_ratio"] == ratio
    assert (warned in warnings) if warned else not warnings
    for arg in network_args:
        assert arg in text


def test_unsupported_and_refused_keys_are_one_warning_and_named_in_the_yaml(work, capsys):
    toml = write_toml(work / "kohya.toml", """
[model_arguments]
pretrained_model_name_or_path = "runwayml/stable-diffusion-v1-5"
vae = "stabilityai/sd-vae-ft-mse"
[dataset_arguments]
train_data_dir = "train"
resolution = "24,24"
flip_aug = true
random_crop = true
enable_bucket = true
bucket_reso_steps = 64
caption_prefix = "pixel art, "
[training_arguments]
adaptive_noise_scale = 0.1
multires_noise_iterations = 6
wandb_api_key = "do-not-print-me"
log_with = "wandb"
network_dimm = 8
[additional_network_arguments]
network_module = "networks.lora"
network_args = ["conv_dim=4", "block_dims=2,4,8", "rank_dropout=0"]
network_train_text_encoder_only = true
""")  # fmt: skip
    text, warnings, config = convert(toml, capsys)
    assert (
        config["model"]["conv_rank"] == 4 and config["model"]["conv_alpha"] == 1.0
    )  # kohya's conv_alpha default
    block = warnings.splitlines()
    assert block[0].startswith("warning: ") and all(line.startswith("  ") for line in block[1:])
    for item, reason in [
        ("flip_aug = true", "refused: bespoke_pl never flips pixel art"),
        ("random_crop = true", "refused: bespoke_pl never crops pixel art"),
        ("enable_bucket = true", "refused: bespoke_pl never buckets pixel art"),
        ("adaptive_noise_scale = 0.1", "loss and noise variants bespoke_pl does not have"),
        ('vae = "stabilityai/sd-vae-ft-mse"', "the VAE and the tokenizers from the base model"),
        ("network_dimm = 8", "not an option of kohya's train_network.py"),
        ('log_with = "wandb"', "TensorBoard only"),
        ("network_args block_dims=2,4,8", "one rank for every block"),
        ("network_train_text_encoder_only = true", "always trains the UNet's LoRA"),
    ]:
        assert any(item in line and reason in line for line in block), (item, warnings)
    for key in ("adaptive_noise_scale", "multires_noise_iterations", "caption_prefix", "wandb_api_key"):
        assert key in warnings and key in text
    assert "do-not-print-me" not in warnings + text
    assert said("refused: kohya flip_aug = true", text) and said("rank_dropout=0: off", text)
    assert said("kohya bucket_reso_steps = 64: unused, as there are no buckets", text)


# ------------------------------------------------------------------- objective, validation, optimizers
SD15 = (
    'pretrained_model_name_or_path = "runwayml/stable-diffusion-v1-5"\ntrain_data_dir = "train"\n'
    'network_module = "networks.lora"\n'
)


@pytest.mark.parametrize(
    ("toml", "expected", "warned"),
    [
        # kohya's constant Huber threshold is huber_c x huber_scale: one huber_c here
        ('loss_type = "huber"\nhuber_schedule = "constant"\nhuber_c = 0.2\nhuber_scale = 2.0\n'
         "debiased_estimation_loss = true\nzero_terminal_snr = true\n"
         "ip_noise_gamma = 0.1\nip_noise_gamma_random_strength = true\n"
         "min_timestep = 100\nmax_timestep = 900\n",
         {"loss_type": "huber", "huber_schedule": "constant", "huber_c": 0.4, "debiased_estimation": True,
          "zero_terminal_snr": True, "ip_noise_gamma": 0.1, "timestep_min": 100, "timestep_max": 900},
         "ip_noise_gamma_random_strength = true: no equivalent"),
        # an exponential threshold cannot take huber_scale in; kohya's empty range trains at max_timestep
        ('loss_type = "smooth_l1"\nhuber_schedule = "exponential"\nhuber_scale = 2.0\n'
         "min_timestep = 500\nmax_timestep = 500\n",
         {"loss_type": "smooth_l1", "huber_schedule": "exponential", "huber_c": 0.1, "timestep_min": 500,
          "timestep_max": 501}, "huber_scale = 2.0: no equivalent"),
        # Huber settings without a Huber loss do nothing in kohya: left at the defaults fit requires then
        ('loss_type = "l1"\nhuber_c = 0.3\nhuber_schedule = "constant"\nmax_timestep = 1000\n',
         {"loss_type": "l1", "huber_schedule": "snr", "huber_c": 0.1, "timestep_min": 0,
          "timestep_max": 1000},
         None),
    ],
)  # fmt: skip
def test_kohyas_objective_options_carry_over(work, capsys, toml, expected, warned):
    text, warnings, config = convert(write_toml(work / "kohya.toml", SD15 + toml), capsys)
    assert {key: pytest.approx(config["model"][key]) for key in expected} == expected
    assert (warned in warnings) if warned else not warnings
    for line in toml.splitlines():
        assert line.split(" =")[0] in text


def test_validation_and_alpha_masks_carry_over(work, capsys):
    write_art(work / "more")
    toml = write_toml(work / "kohya.toml", SD15 + """max_train_steps = 50
seed = 7
alpha_mask = true
masked_loss = true
validation_split = 0.34
validate_every_n_epochs = 2
validate_every_n_steps = 10
max_validation_steps = 1
""")  # fmt: skip
    text, warnings, config = convert(toml, capsys)
    data, trainer = config["data"], config["trainer"]
    # kohya holds out round(3 x 0.34) = 1 image, where a fraction here would round up to 2
    assert (data["val_split"], data["alpha_mask"], config["model"]["validation_seed"]) == (1, True, 7)
    assert (trainer["check_val_every_n_epoch"], trainer["limit_val_batches"]) == (2, 1)
    # 50 steps are 3 epochs of the 2 training images x 10 repeats (kohya counts without the held-out one)
    assert (trainer["max_steps"], trainer["max_epochs"]) == (50, 3)
    assert said("kohya holds out round(3 x 0.34) = 1 of the 3 images", text)
    assert said("masked_loss = true: the loss mask is the images' alpha", text)
    assert "validate_every_n_steps = 10: bespoke_pl measures val/loss once per epoch" in warnings
    # a dataset's own split and seed win; too few images for kohya's round() means no validation
    write_toml(work / "dataset.toml", f'[[datasets]]\nvalidation_split = 0.1\nvalidation_seed = 3\n'
               f'[[datasets.subsets]]\nimage_dir = "{work / "more"}"\n')  # fmt: skip
    toml = write_toml(work / "kohya2.toml", SD15 + 'dataset_config = "dataset.toml"\nvalidation_split = 0.5\n'
                      "max_validation_steps = 1\n")  # fmt: skip
    text, warnings, config = convert(toml, capsys)
    assert config["data"]["val_split"] == 0.0 and config["trainer"]["limit_val_batches"] is None
    assert said("validation_split = 0.1: kohya holds out round(3 x 0.1) = 0 images: no validation", text)
    assert said("validation_seed = 3: unused without a validation_split", text)


@pytest.mark.parametrize(
    ("toml", "expected", "refused"),
    [
        # schedule-free: kohya ignores the scheduler and its warmup; the optimizer's own warmup_steps stays
        ('optimizer_type = "AdamWScheduleFree"\nlearning_rate = 2e-3\nlr_scheduler = "cosine"\n'
         'lr_warmup_steps = 20\noptimizer_args = ["warmup_steps=20"]\n',
         {"class_path": "schedulefree.AdamWScheduleFree", "lr_schedule": "constant", "lr_warmup_steps": 0,
          "init_args": {"lr": 2e-3, "warmup_steps": 20}}, None),
        ('optimizer_type = "Prodigy"\nlearning_rate = 1.0\nlr_scheduler = "cosine"\nlr_warmup_steps = 20\n'
         'optimizer_args = ["safeguard_warmup=True", "d_coef=2"]\n',
         {"class_path": "prodigyopt.Prodigy", "lr_schedule": "cosine", "lr_warmup_steps": 20,
          "init_args": {"lr": 1.0, "safeguard_warmup": True, "d_coef": 2}}, None),
        # kept as kohya had it, and the warning says what fit will refuse (and fit does)
        ('optimizer_type = "Prodigy"\nlearning_rate = 1e-4\nlr_scheduler = "linear"\n',
         {"class_path": "prodigyopt.Prodigy", "lr_schedule": "linear", "init_args": {"lr": 1e-4}},
         "model.optimizer.lr 0.0001 with Prodigy"),
    ],
)  # fmt: skip
def test_prodigy_and_schedule_free_carry_over(work, capsys, toml, expected, refused):
    path = write_toml(work / "kohya.toml", SD15 + toml)
    text, warnings, config = convert(path, capsys, accepted=refused is None)
    model = config["model"]
    init_args = model["optimizer"]["init_args"]
    optimizer = {
        "class_path": model["optimizer"]["class_path"],
        "lr_schedule": model["lr_schedule"],
        "lr_warmup_steps": model["lr_warmup_steps"],
        "init_args": {key: init_args[key] for key in expected["init_args"]},
    }
    assert optimizer == {"lr_warmup_steps": 0, **expected}
    if refused:
        assert f"fit will refuse this until it is changed: {refused}" in warnings
        assert "with Prodigy: Prodigy's lr multiplies" in fit_check(path.with_suffix(".yaml"), capsys)
        assert "model.lr_schedule linear with Prodigy" in warnings
    else:
        assert not warnings


# ------------------------------------------------------------------------------ every key, accounted for
EVERY_OPTION = {  # values the converter reads as kohya does; any other option gets True
    "pretrained_model_name_or_path": "stabilityai/stable-diffusion-xl-base-1.0",
    "v2": False,
    "train_data_dir": "train",
    "dataset_config": "dataset.toml",
    "resolution": "24,24",
    "caption_extension": ".txt",
    "caption_extention": ".txt",
    "caption_separator": ",",
    "keep_tokens": 1,
    "caption_dropout_rate": 0.05,
    "min_bucket_reso": 256,
    "max_bucket_reso": 1024,
    "bucket_reso_steps": 64,
    "face_crop_aug_range": "2.0,4.0",
    "resize_interpolation": "lanczos",
    "max_data_loader_n_workers": 2,
    "network_module": "networks.lora",
    "network_dim": 16,
    "network_alpha": 8,
    "network_dropout": 0.1,
    "network_args": ["conv_dim=4", "conv_alpha=2", "loraplus_lr_ratio=16"],
    "network_train_unet_only": False,
    "learning_rate": 1e-4,
    "unet_lr": 2e-4,
    "text_encoder_lr": [5e-5, 5e-5],
    "optimizer_type": "AdamW8bit",
    "optimizer_args": ["weight_decay=0.1", "betas=0.9,0.99"],
    "max_grad_norm": 0.5,
    "lr_scheduler": "cosine_with_restarts",
    "lr_warmup_steps": 0.1,
    "lr_scheduler_num_cycles": 1,
    "lr_scheduler_power": 1.0,
    "max_train_epochs": 4,
    "max_train_steps": 500,
    "train_batch_size": 2,
    "gradient_accumulation_steps": 2,
    "mixed_precision": "bf16",
    "clip_skip": 2,
    "noise_offset": 0.05,
    "min_snr_gamma": 5.0,
    "loss_type": "huber",
    "huber_schedule": "snr",
    "huber_c": 0.1,
    "huber_scale": 1.0,
    "ip_noise_gamma": 0.1,
    "min_timestep": 0,
    "max_timestep": 1000,
    "validation_split": 0.34,
    "validation_seed": 1,
    "validate_every_n_epochs": 2,
    "validate_every_n_steps": 10,
    "max_validation_steps": 1,
    "seed": 7,
    "dynamo_backend": "inductor",
    "torch_compile": False,
    "output_dir": "out",
    "output_name": "every",
    "logging_dir": "out/logs",
    "log_with": "tensorboard",
    "save_every_n_epochs": 1,
    "save_every_n_steps": 50,
    "save_model_as": "safetensors",
    "save_precision": "bf16",
    "sample_prompts": "prompts.txt",
    "sample_every_n_epochs": 2,
    "sample_sampler": "ddim",
    "huggingface_token": "hf_not_for_the_yaml",
}


def test_every_kohya_option_in_the_input_is_converted_changed_or_warned(work, capsys):
    write_toml(
        work / "dataset.toml",
        f'[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{work / "train" / "10_bespokepunks"}"\n',
    )
    (work / "prompts.txt").write_text("pixel art, a punk --n blurry --w 960 --h 960 --s 20 --l 4 --d 1\n")
    values = {key: EVERY_OPTION.get(key, True) for key in PARSER_OPTIONS}
    lines = [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    text, warnings, config = convert(write_toml(work / "every.toml", "\n".join(lines) + "\n"), capsys)
    comments = "\n".join(line for line in text.splitlines() if "#" in line)
    missing = [key for key in PARSER_OPTIONS if not re.search(rf"(?<![\w.]){key}(?![\w])", comments)]
    assert not missing, f"kohya options the YAML does not name: {missing}"
    assert "did not convert" not in text and "not an option of kohya" not in text
    assert "hf_not_for_the_yaml" not in text + warnings and "keep_tokens: 1  # kohya keep_tokens = 1" in text
    # what is not carried over is in the warning, and nothing converted is
    footer = text.split("# Not carried over")[1]
    for key in PARSER_OPTIONS:
        in_footer = re.search(rf"(?<![\w.]){key} = ", footer) is not None
        assert in_footer == (re.search(rf"(?<![\w.]){key} = ", warnings) is not None), key
    model = config["model"]
    assert (model["rank"], model["alpha"], model["conv_rank"], model["conv_alpha"]) == (16, 8.0, 4, 2.0)
    assert model["optimizer"]["init_args"] == {
        **model["optimizer"]["init_args"],
        "lr": 2e-4,
        "betas": [0.9, 0.99],
    }
    assert model["text_encoder_lr"] == 5e-5 and model["lr_schedule"] == "cosine"
    # lr_warmup_steps 0.1 of 4 epochs x ceil(3 images / batch 2) / accumulate 2 = 4 optimizer steps
    assert model["lr_warmup_steps"] == 0
    assert config["trainer"]["max_epochs"] == 4 and config["trainer"]["gradient_clip_val"] == 0.5
    objective = ("loss_type", "debiased_estimation", "zero_terminal_snr", "ip_noise_gamma", "timestep_max")
    assert [model[key] for key in objective] == ["huber", True, True, 0.1, 1000]
    assert (model["loraplus_lr_ratio"], model["validation_seed"], config["data"]["val_split"]) == (16.0, 1, 1)
    assert config["data"]["alpha_mask"] and config["trainer"]["check_val_every_n_epoch"] == 2


def test_the_table_covers_exactly_kohyas_parser():
    assert set(PARSER_OPTIONS) == KOHYA_OPTIONS


# ------------------------------------------------------------------------------------------ sample prompts
def test_per_prompt_options_carry_over_when_the_prompts_agree(work, capsys):
    (work / "prompts.txt").write_text(
        "# kohya prompts\n"
        "a punk, green background --n blurry --s 24 --l 6.5 --d 3 --ss k_euler --g 3.5\n"
        "\n"
        "a punk, red background --n smooth --s 24 --l 6.5 --d 9 --ss k_euler --x 1\n"
    )
    toml = write_toml(work / "kohya.toml", """
pretrained_model_name_or_path = "runwayml/stable-diffusion-v1-5"
train_data_dir = "train"
network_module = "networks.lora"
sample_prompts = "prompts.txt"
sample_sampler = "heun"
""")  # fmt: skip
    text, warnings, config = convert(toml, capsys)
    sample = config["sample"]
    assert (sample["steps"], sample["guidance_scale"], sample["sampler"]) == (24, 6.5, "euler")  # k_euler
    assert sample["negative_prompt"] == "blurry" and sample["seed"] == 3
    prompts = [p for p in Path(sample["prompts_file"]).read_text().splitlines() if not p.startswith("#")]
    assert prompts == ["a punk, green background", "a punk, red background"]
    for item in (
        "--n blurry, smooth",
        "--d 3, 9",
        "--g 3.5",
        "--x 1",
        "--w/--h not given (kohya's default 512x512)",
    ):
        assert item in warnings, item
    assert 'sample_sampler = "heun"' in warnings  # overridden by --ss, and bespoke_pl has no heun anyway


@pytest.mark.parametrize("kind", ["toml", "json"])
def test_kohyas_toml_and_json_prompt_files(work, capsys, kind):
    entries = [{"prompt": "a punk", "seed": 5, "width": 576, "height": 576}, {"prompt": "b punk", "seed": 6}]
    if kind == "json":
        (work / "prompts.json").write_text(json.dumps(entries))
    else:
        (work / "prompts.toml").write_text(
            '[prompt]\nwidth = 576\nheight = 576\nscale = 3.0\n[[prompt.subset]]\nprompt = "a punk"\nseed = 5\n'
            '[[prompt.subset]]\nprompt = "b punk"\nseed = 6\n'
        )
    toml = write_toml(work / "kohya.toml", f"""
pretrained_model_name_or_path = "runwayml/stable-diffusion-v1-5"
train_data_dir = "train"
network_module = "networks.lora"
sample_prompts = "prompts.{kind}"
""")  # fmt: skip
    text, warnings, config = convert(toml, capsys)
    assert config["sample"]["seed"] == 5 and config["sample"]["sampler"] == "ddim"  # kohya's default sampler
    assert config["sample"]["guidance_scale"] == (3.0 if kind == "toml" else 7.5)
    assert ("--w/--h" in warnings) == (kind == "json")  # the second JSON prompt has kohya's 512 px


# -------------------------------------------------------------------------------------- sizes and scale
@pytest.mark.parametrize(
    ("resolution", "side", "scale", "says"),
    [
        ("960,960", 24, 40, "upscaled 40x by nearest neighbour is 960 px too"),
        ("1024", 24, 40, "is no multiple of the 24 px art"),
        ("192,192", 192, 8, "192x192 px images"),  # upscaled copies: the warning asks for the originals
    ],
)
def test_a_kohya_training_size_becomes_the_art_and_its_scale(work, capsys, resolution, side, scale, says):
    write_art(work / "big" / "1_punks", side=side)
    toml = write_toml(work / "kohya.toml", f"""
pretrained_model_name_or_path = "stabilityai/stable-diffusion-xl-base-1.0"
train_data_dir = "big"
resolution = "{resolution}"
network_module = "networks.lora"
""")  # fmt: skip
    text, warnings, config = convert(toml, capsys)
    assert (config["data"]["resolution"], config["model"]["pixel_scale"]) == (24, scale)
    assert said(says, text + warnings)


# ---------------------------------------------------------------------------------------------- mistakes
@pytest.mark.parametrize(
    ("toml", "says"),
    [
        ('pretrained_model_name_or_path = "x"\nnetwork_dim = \n', "is not valid TOML: Invalid value (at line 2"),
        ('pretrained_model_name_or_path = "m"\ntrain_data_dir = "train"\nnetwork_module = "networks.dylora"\n',
         "kohya network_module 'networks.dylora' is not one bespoke_pl trains"),
        ('pretrained_model_name_or_path = "m"\ntrain_data_dir = "nowhere"\nnetwork_module = "networks.lora"\n',
         "kohya train_data_dir nowhere does not exist or is not a folder"),
        ('pretrained_model_name_or_path = "m"\ntrain_data_dir = "train"\nnetwork_module = "lycoris.kohya"\n'
         'network_args = ["algo=ia3"]\n', "LyCORIS ia3 is not one bespoke_pl trains"),
        ('pretrained_model_name_or_path = "m"\ntrain_data_dir = "train"\nnetwork_module = "lycoris.kohya"\n'
         'network_args = ["algo=lokr", "factor=0"]\n', "LoKr's factor is -1 or a whole number >= 1"),
        ('pretrained_model_name_or_path = "m"\ntrain_data_dir = "train"\nnetwork_module = "networks.lora"\n'
         'loss_type = "mse"\n', 'kohya loss_type = "mse" is not one of kohya\'s l2, l1, huber, smooth_l1'),
        ('pretrained_model_name_or_path = "m"\ntrain_data_dir = "train"\nnetwork_module = "networks.lora"\n'
         'validation_split = 1.0\n', "kohya validation_split = 1.0 holds out every image"),
        ('v2 = true\npretrained_model_name_or_path = "m"\n', "an SD 2.x base"),
        ('pretrained_model_name_or_path = "m"\ntrain_data_dir = "train"\nnetwork_module = "networks.lora"\n'
         'resolution = "24,32"\n', 'kohya resolution = "24,32" is not square'),
        ('pretrained_model_name_or_path = "m"\ntrain_data_dir = "train"\nnetwork_module = "networks.lora"\n'
         'network_dim = "sixteen"\n', 'kohya network_dim = "sixteen" is not an integer'),
    ],
)  # fmt: skip
def test_mistakes_are_one_line(work, capsys, toml, says):
    path = write_toml(work / "kohya.toml", toml)
    line = fails(["from-kohya", str(path), "--out", str(work / "out.yaml")], capsys)
    assert says in line, line
    assert not (work / "out.yaml").exists()


def test_several_kohya_image_folders_and_a_missing_file_are_refused(work, capsys):
    write_art(work / "train" / "5_more")
    toml = 'pretrained_model_name_or_path = "m"\ntrain_data_dir = "train"\nnetwork_module = "networks.lora"\n'
    line = fails(["from-kohya", str(write_toml(work / "kohya.toml", toml))], capsys)
    assert "has 2 image folders (10_bespokepunks, 5_more)" in line
    assert "kohya config missing.toml does not exist" in fails(["from-kohya", "missing.toml"], capsys)


def test_an_existing_output_is_never_replaced(work, capsys):
    source = work / "configs" / "kohya" / "kohya_config_sd15_24x24.toml"
    (work / "mine.yaml").write_text("mine\n")
    line = fails(["from-kohya", str(source), "--out", "mine.yaml"], capsys)
    assert line == "error: mine.yaml exists; from-kohya never replaces a file: give another --out"
    assert (work / "mine.yaml").read_text() == "mine\n"


def test_a_converted_config_trains(work, capsys, tiny_sdxl):
    """fit instantiates what from-kohya wrote (optimizer, logger, checks) and trains a step on it."""
    shutil.copy(ROOT / "configs" / "kohya" / "kohya_config_sdxl_24x24.toml", work / "kohya.toml")
    convert(work / "kohya.toml", capsys)
    cli = main([
        "fit", "--config", "kohya.yaml", "--model.base_model", str(tiny_sdxl), "--model.pixel_scale", "8",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1", "--trainer.accelerator", "cpu",
        "--sample.every_n_epochs", "0", "--roundtrip.enabled", "false", "--trainer.enable_progress_bar", "false",
    ])  # fmt: skip
    run_dir = Path(cli.trainer.log_dir).resolve()  # kohya's relative output_dir, read from the current folder
    assert run_dir.parent == (work / "kohya_output_sdxl" / "bespoke_sdxl").resolve()
    assert (run_dir / "bespoke_sdxl-000001.safetensors").is_file()
