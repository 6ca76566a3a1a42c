"""The optimizers users pick besides AdamW, and what each needs from the rest of a ``fit`` config.

Checked before anything loads (:func:`~bespoke_pl.training.preflight.value_problems`), since a wrong pairing
trains, only badly:

- **Prodigy** (``prodigyopt.Prodigy``, Mishchenko & Defazio 2024) estimates the step size itself; its
  ``lr`` multiplies that estimate and 1.0 is intended (``d_coef`` is the knob for a smaller or larger
  one). An AdamW rate such as 1e-4, which a config switching ``class_path`` keeps, would all but stop
  training. Its authors recommend a constant schedule or cosine annealing, and ``safeguard_warmup`` with
  a warmup (whose small first rates make it overestimate the step size).
- **Schedule-free** (``schedulefree.AdamWScheduleFree`` and kin, Defazio et al. 2024) replaces the
  schedule: its average of the iterates is the decay, so ``lr_schedule`` must be constant, and its warmup
  is its own ``warmup_steps`` (kohya likewise ignores ``lr_scheduler`` for them). Its train/eval modes are
  switched by the module (training/schedule_free.py).
- **8-bit AdamW** (``bitsandbytes.optim.AdamW8bit``) runs on CUDA only; elsewhere the run is refused, and
  a missing package is named with its install command (:func:`missing_package`).
"""

from __future__ import annotations

import re

import torch

OPTIM_EXTRA = 'pip install "bespoke_pl[optim]"'
INSTALL = {
    "prodigyopt": OPTIM_EXTRA,
    "schedulefree": OPTIM_EXTRA,
    "bitsandbytes": "pip install bitsandbytes; its 8-bit optimizers need a CUDA GPU",
}
PRODIGY_MIN_LR = 0.1  # below this, an lr meant for AdamW, not a multiplier of Prodigy's own estimate
NO_CUDA_ACCELERATORS = {"cpu", "mps", "tpu", "hpu", "xla"}


def class_path(optimizer) -> str:
    """``model.optimizer``'s class as ``module.Class`` (a parsed ``class_path`` or the default class)."""
    path = getattr(optimizer, "class_path", None)
    if path:
        return str(path)
    return f"{optimizer.__module__}.{optimizer.__qualname__}" if isinstance(optimizer, type) else ""


def is_prodigy(path: str) -> bool:
    return path.rpartition(".")[2].startswith("Prodigy")


def is_schedule_free(path: str) -> bool:
    return path.startswith("schedulefree.") or "ScheduleFree" in path.rpartition(".")[2]


def is_eight_bit(path: str) -> bool:
    return path.startswith("bitsandbytes.")


def _cuda_for(accelerator) -> bool:
    name = str(accelerator or "auto").lower()
    return name not in NO_CUDA_ACCELERATORS and torch.cuda.is_available()


def optimizer_problems(model, trainer) -> list[str]:
    """What the chosen optimizer cannot work with in this config, one message each (parsed ``fit``
    ``model`` and ``trainer`` sections)."""
    path = class_path(getattr(model, "optimizer", None))
    init = getattr(getattr(model, "optimizer", None), "init_args", None)
    lr = getattr(init, "lr", None)
    name = path.rpartition(".")[2]
    problems = []
    if is_prodigy(path) and isinstance(lr, int | float) and 0 < lr < PRODIGY_MIN_LR:
        problems.append(
            f"model.optimizer.lr {lr} with {name}: Prodigy's lr multiplies the step size it estimates "
            "itself, 1.0 is intended; set model.optimizer.init_args.lr 1.0 (for a smaller or larger "
            "estimate, model.optimizer.init_args.d_coef, e.g. 0.5 or 2)"
        )
    if is_schedule_free(path):
        if model.lr_schedule != "constant":
            problems.append(
                f"model.lr_schedule {model.lr_schedule} with {name}: a schedule-free optimizer replaces the "
                "schedule (its averaging is the decay); set model.lr_schedule constant"
            )
        if model.lr_warmup_steps > 0:
            problems.append(
                f"model.lr_warmup_steps {model.lr_warmup_steps} with {name}: a schedule-free optimizer warms "
                "up itself; set model.lr_warmup_steps 0 and model.optimizer.init_args.warmup_steps "
                f"{model.lr_warmup_steps} instead"
            )
    elif is_prodigy(path):
        if model.lr_schedule == "linear":
            problems.append(
                f"model.lr_schedule linear with {name}: Prodigy's authors recommend no schedule or cosine "
                "annealing; set model.lr_schedule constant or cosine"
            )
        if model.lr_warmup_steps > 0 and not getattr(init, "safeguard_warmup", False):
            problems.append(
                f"model.lr_warmup_steps {model.lr_warmup_steps} with {name}: a warmup's small first rates "
                "make Prodigy overestimate its step size; set model.optimizer.init_args.safeguard_warmup "
                "true (or model.lr_warmup_steps 0)"
            )
    if is_eight_bit(path) and not _cuda_for(trainer.accelerator):
        accelerator = str(trainer.accelerator or "auto")
        why = (
            f"trainer.accelerator is {accelerator}"
            if accelerator.lower() in NO_CUDA_ACCELERATORS
            else "PyTorch finds no CUDA device here"
        )
        problems.append(
            f"model.optimizer {path} needs a CUDA GPU (bitsandbytes' 8-bit optimizers run on CUDA) and {why}; "
            "use torch.optim.AdamW (a LoRA's optimizer state is a few MB: 8 bits save little)"
        )
    return problems


def missing_package(message: str) -> str | None:
    """A parser error about a ``class_path`` whose module is not installed, as one line naming the option,
    the package and how to install it; None for any other message."""
    missing = re.search(r"No module named '([\w.]+)'", message)
    if missing is None:
        return None
    package = missing.group(1).split(".")[0]
    key = re.search(r'Parser key "([\w.]+)"', message)
    # The class path as given: on the command line "Got value: a.B", in a config a Namespace(class_path='a.B')
    value = re.search(r"class_path='([\w.]+)'", message) or re.search(r"Got value: ([\w.]+)", message)
    option = " ".join(m.group(1) for m in (key, value) if m) or "a class_path"
    install = INSTALL.get(package, f"pip install {package}, or the package that provides it")
    return f"{option}: the package {package} is not installed here ({install})"
