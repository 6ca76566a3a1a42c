"""kohya's output options as ``fit`` options: where the run's files go, LoRA files, checkpoints, logging and
sample images.
"""

from __future__ import annotations

from pathlib import Path

from bespoke_pl.kohya.prompts import convert_prompts, set_sampler
from bespoke_pl.kohya.record import Conversion, KohyaArgs

LOGGER = "lightning.pytorch.loggers.TensorBoardLogger"
SAVE_DTYPES = {"fp16": "float16", "bf16": "bfloat16", "float": "float32"}  # kohya's save_precision


def convert_outputs(args: KohyaArgs, conv: Conversion) -> None:
    """The run folder, the LoRA files and their saving, checkpoints and logging."""
    folder, name = args.text("output_dir"), args.text("output_name")
    if folder or name:
        conv.set("trainer.logger.class_path", LOGGER, "bespoke_pl's logger: TensorBoard, in the run folder")
    if folder:
        why = (
            "kohya writes output_dir/output_name-000001.safetensors; bespoke_pl writes one folder per run, "
            "output_dir/output_name/version_N/, with the LoRA files, samples, checkpoints and events"
        )
        conv.set("trainer.logger.init_args.save_dir", folder, args.source("output_dir"), why)
    if name:
        conv.set("trainer.logger.init_args.name", name, args.source("output_name"))
        conv.set("save_lora.output_name", name, args.source("output_name"))
    if "logging_dir" in args:
        conv.note(
            "trainer",
            f"{args.source('logging_dir')}: TensorBoard events go into the run folder, beside the LoRA files",
        )
    tracker = args.text("log_with")
    if tracker in ("wandb", "all"):
        conv.skip(args.source("log_with").removeprefix("kohya "), "bespoke_pl logs to TensorBoard only")
    elif tracker:
        conv.note("trainer", f"{args.source('log_with')}: as bespoke_pl")
    every = args.number("save_every_n_epochs", int)
    if every:
        conv.set("save_lora.every_n_epochs", every, args.source("save_every_n_epochs"))
    steps = args.number("save_every_n_steps", int)
    if steps:
        why = "LoRA files are written per epoch; this keeps a resumable checkpoint (last.ckpt) every N steps"
        conv.set("checkpoint.every_n_train_steps", steps, args.source("save_every_n_steps"), why)
    form = args.text("save_model_as")
    if form is not None:
        why = (
            ""
            if form == "safetensors"
            else "LoRA files are safetensors only: a pickle can run code when loaded"
        )
        conv.set("save_lora.format", "kohya", args.source("save_model_as"), why)
    precision = args.text("save_precision")
    if precision is not None:
        if precision not in SAVE_DTYPES:
            conv.skip(
                args.source("save_precision").removeprefix("kohya "), "not one of kohya's fp16, bf16, float"
            )
        else:
            conv.set("save_lora.save_dtype", SAVE_DTYPES[precision], args.source("save_precision"))
    for key in ("save_state", "save_state_on_train_end"):
        if key in args:
            args.raw(key)
            conv.note(
                "checkpoint",
                f"{args.source(key)}: bespoke_pl always keeps a resumable checkpoints/last.ckpt "
                "(fit --ckpt_path last resumes)",
            )


def convert_sampling(args: KohyaArgs, conv: Conversion, prompts_file: Path) -> None:
    """``sample.*``: the prompts file, how often, the sampler; kohya's per-prompt options (prompts.py)."""
    if "sample_sampler" in args:
        set_sampler(args.text("sample_sampler"), args.source("sample_sampler"), conv)
    elif "sample_prompts" in args:
        conv.set("sample.sampler", "ddim", "kohya default (sample_sampler not set)")
    if "sample_prompts" in args:
        side = conv.get("data.resolution") * conv.get("model.pixel_scale")
        convert_prompts(Path(args.text("sample_prompts")).expanduser(), "kohya sample_prompts", conv, side)
        conv.set("sample.prompts_file", str(prompts_file), f"{args.source('sample_prompts')}, converted")
    every = args.number("sample_every_n_epochs", int)
    epochs = conv.get("trainer.max_epochs")
    if every is not None and epochs and epochs > 0 and every > epochs:
        why = f"beyond max_train_epochs {epochs}: kohya would never sample"
        conv.set("sample.every_n_epochs", 0, args.source("sample_every_n_epochs"), why)
    elif every is not None:
        conv.set("sample.every_n_epochs", every, args.source("sample_every_n_epochs"))
    if "sample_at_first" in args:
        conv.set("sample.sample_at_start", args.flag("sample_at_first"), args.source("sample_at_first"))
