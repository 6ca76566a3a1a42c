"""Load a base model (SD 1.5 or SDXL) from a hub id, a local diffusers folder or a single checkpoint file.

Components are loaded one by one with ``from_pretrained(..., subfolder=...)``: the trainer needs the UNet,
VAE, tokenizers, text encoders and the scheduler's config, never the pipeline's safety checker.
``tiny:sd15`` and ``tiny:sdxl`` name the project's tiny offline models with random weights (built on first
use), ``tiny-punks:sd15`` and ``tiny-punks:sdxl`` the pretrained tiny bases shipped in the package.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from bespoke_pl.errors import BaseModelError

log = logging.getLogger(__name__)

FAMILIES = ("sd15", "sdxl")
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")


@dataclass
class BaseModel:
    """The frozen parts of a Stable Diffusion model that LoRA training needs."""

    family: str
    unet: nn.Module
    vae: nn.Module
    tokenizers: list
    text_encoders: list[nn.Module]
    scheduler_config: dict = field(default_factory=dict)
    source: str = ""


def resolve_spec(spec: str) -> str:
    from bespoke_pl.offline.pretrained import resolve_tiny_punks
    from bespoke_pl.offline.tiny import resolve_tiny

    try:
        return resolve_tiny(spec) or resolve_tiny_punks(spec) or spec
    except ValueError as error:
        raise BaseModelError(str(error)) from error


def family_of_folder(folder: Path) -> str:
    """Detect the family of a local diffusers folder from its files."""
    index = folder / "model_index.json"
    if index.is_file():
        names = json.loads(index.read_text())
        if "text_encoder_2" in names or "XL" in str(names.get("_class_name", "")):
            return "sdxl"
        return "sd15"
    unet_config = folder / "unet" / "config.json"
    if unet_config.is_file():
        config = json.loads(unet_config.read_text())
        return "sdxl" if config.get("addition_embed_type") == "text_time" else "sd15"
    raise BaseModelError(
        f"{folder} is not a diffusers model folder (no model_index.json or unet/config.json)"
    )


def family_of_hub(repo_id: str) -> str:
    """The family of a hub model from its ``model_index.json``: the local cache first, then the hub.

    Raises:
        BaseModelError: Not cached and the hub cannot be reached (one line, at once), or the hub refused.
    """
    from diffusers import DiffusionPipeline

    try:
        config = DiffusionPipeline.load_config(repo_id, local_files_only=True)
    except OSError:  # not in the cache
        # Asked for a file it has not cached, huggingface_hub retries an unreachable hub five times over
        # about 25 s and logs each try; one probe without retries tells the same in a moment.
        unreachable = _hub_unreachable()
        if unreachable:
            raise BaseModelError(
                f"base model {repo_id} is not in the Hugging Face cache and the hub cannot be reached "
                f"({unreachable}), so it cannot be read offline; give a local diffusers folder or a single "
                ".safetensors file"
            ) from None
        try:
            config = DiffusionPipeline.load_config(repo_id)
        except Exception as error:  # hub errors come in many classes; say what failed and why
            raise BaseModelError(f"cannot read base model {repo_id} from the hub: {error}") from error
    return "sdxl" if "text_encoder_2" in config else "sd15"


def _hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be reached (offline mode, no network), or None when it answers."""
    from huggingface_hub import constants, get_session

    if constants.is_offline_mode():
        return "HF_HUB_OFFLINE is set"
    try:
        get_session().head(constants.ENDPOINT, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    # Any failure of this one request (DNS, refused, timeout, proxy) means the hub is out of reach; the
    # HTTP client's error classes are not huggingface_hub's to name, so the message names the class.
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return None


def family_of_file(path: Path) -> str:
    """Detect the family of a single-file checkpoint from its key names (original SGM/LDM layout).

    A ``.ckpt`` is read with ``weights_only=True`` (here and in diffusers' loader): a file that needs
    arbitrary pickled Python objects is refused, never executed.
    """
    import pickle

    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                keys = list(f.keys())
        else:
            state = torch.load(path, map_location="meta", weights_only=True)
            keys = list(state.get("state_dict", state).keys())
    except pickle.UnpicklingError as error:
        first = str(error).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
        raise BaseModelError(
            f"{path} holds pickled Python objects besides tensors ({first}); refusing to load it. "
            "Use a .safetensors file or a diffusers folder"
        ) from error
    except Exception as error:  # truncated or not a checkpoint at all
        raise BaseModelError(f"cannot read base model {path}: {error}") from error
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return "sdxl"
    if any(k.startswith("cond_stage_model.") for k in keys):
        return "sd15"
    raise BaseModelError(f"{path} does not look like an SD 1.5 or SDXL checkpoint")


def detect_family(spec: str) -> str:
    path = Path(spec).expanduser()
    if path.is_file():
        return family_of_file(path)
    if path.is_dir():
        return family_of_folder(path)
    if path.suffix in SINGLE_FILE_SUFFIXES or spec.startswith((".", "/", "~")):
        raise BaseModelError(f"base model {spec} does not exist")
    return family_of_hub(spec)


def check_family(spec: str, detected: str, requested: str) -> str:
    if requested not in ("auto", *FAMILIES):
        raise BaseModelError(f"family must be auto, sd15 or sdxl, got {requested!r}")
    if requested != "auto" and requested != detected:
        raise BaseModelError(f"the config says family {requested} but base model {spec} is {detected}")
    return detected


def load_base(spec: str, family: str = "auto", config_source: str | None = None) -> BaseModel:
    """Load a base model's components in float32, frozen and in eval mode.

    Args:
        spec: Hub id, local diffusers folder, single ``.safetensors``/``.ckpt`` file, or ``tiny:<family>``.
        family: ``auto`` to detect, or ``sd15`` / ``sdxl`` to insist (a mismatch is an error).
        config_source: For single files: a diffusers folder or hub id to take component configs from
            (needed offline; online, diffusers picks the matching official repo).
    """
    source = resolve_spec(spec)
    detected = check_family(spec, detect_family(source), family)
    path = Path(source).expanduser()
    if path.is_file():
        base = _load_single_file(path, detected, config_source)
    else:
        base = _load_components(str(path) if path.is_dir() else source, detected)
    for module in (base.unet, base.vae, *base.text_encoders):
        module.requires_grad_(False).eval()
    base.source = spec
    return base


def _load_components(source: str, family: str) -> BaseModel:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    log.info("loading %s base model from %s", family, source)
    tokenizers = [CLIPTokenizer.from_pretrained(source, subfolder="tokenizer")]
    encoders: list[nn.Module] = [CLIPTextModel.from_pretrained(source, subfolder="text_encoder")]
    if family == "sdxl":
        tokenizers.append(CLIPTokenizer.from_pretrained(source, subfolder="tokenizer_2"))
        encoders.append(CLIPTextModelWithProjection.from_pretrained(source, subfolder="text_encoder_2"))
    return BaseModel(
        family=family,
        unet=UNet2DConditionModel.from_pretrained(source, subfolder="unet"),
        vae=AutoencoderKL.from_pretrained(source, subfolder="vae"),
        tokenizers=tokenizers,
        text_encoders=encoders,
        scheduler_config=dict(DDPMScheduler.load_config(source, subfolder="scheduler")),
    )


def _load_single_file(path: Path, family: str, config_source: str | None) -> BaseModel:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    pipeline_class = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    kwargs = {"config": resolve_spec(config_source)} if config_source else {}
    if family == "sd15":
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    log.info("loading %s single-file checkpoint %s", family, path)
    # diffusers' own errors lack the path (a missing UNet weight reads "Cannot copy out of meta tensor").
    try:
        pipe = pipeline_class.from_single_file(str(path), **kwargs)
    except Exception as error:
        raise BaseModelError(f"cannot load {path} as an {family} checkpoint: {error}") from error
    tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if family == "sdxl" else [])
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if family == "sdxl" else [])
    components = {"unet": pipe.unet, "vae": pipe.vae, "text_encoder": encoders[0]}
    if family == "sdxl":
        components["text_encoder_2"] = encoders[1]
    for name, module in components.items():
        # diffusers leaves weights the file lacks on the meta device instead of failing; training would
        # then die much later with an unrelated-looking error.
        missing = [key for key, tensor in module.state_dict().items() if tensor.is_meta]
        if missing:
            raise BaseModelError(
                f"{path} lacks {len(missing)} {name} weights (e.g. {', '.join(missing[:3])}); "
                "is it truncated, pruned or a single component rather than a whole model?"
            )
    return BaseModel(
        family=family,
        unet=pipe.unet,
        vae=pipe.vae,
        tokenizers=tokenizers,
        text_encoders=encoders,
        scheduler_config=dict(pipe.scheduler.config),
    )


def caption_tokenizer(base_model: str | None, base_config: str | None = None):
    """The base model's first CLIP tokenizer, if it can be read without a download; else None."""
    if not base_model:
        return None
    source = resolve_spec(base_config or base_model)
    if Path(source).expanduser().is_file():
        return None  # a single checkpoint file carries no tokenizer files
    try:
        from transformers import CLIPTokenizer

        return CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", local_files_only=True)
    except Exception as error:  # not cached, not a diffusers layout...: the estimate will do
        log.debug("no tokenizer from %s (%s); estimating caption lengths", source, error)
        return None


def real_base(family: str, tokenizers: list, dtype: torch.dtype = torch.float32):
    """A :class:`~bespoke_pl.diffusion.base.BaseModel` of the real architecture with random weights.

    For throughput and memory measurements only: the tokenizers are borrowed (e.g. a tiny model's; their
    ids fit the real vocabulary), the weights are noise. The UNet and text encoders are built in ``dtype``
    (as ``from_pretrained(torch_dtype=...)`` loads them: a float32 build cast afterwards holds both copies,
    10.3 + 5.1 GB for SDXL's UNet); the VAE stays float32, as it runs everywhere.
    """
    from diffusers import AutoencoderKL

    from bespoke_pl.offline.architectures import SCALING_FACTOR, SCHEDULER, VAE, real_text_encoders, real_unet

    vae = AutoencoderKL(**VAE, scaling_factor=SCALING_FACTOR[family])
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        unet, encoders = real_unet(family), list(real_text_encoders(family).values())
    finally:
        torch.set_default_dtype(default)
    return BaseModel(family, unet, vae, tokenizers, encoders, dict(SCHEDULER), f"random:{family}")
