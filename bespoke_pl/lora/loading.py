"""Loading a LoRA file (kohya or diffusers format, ours or another tool's) onto an SD 1.5 / SDXL base model.

:func:`read_lora_file` reads and checks a file on its own; :func:`apply_lora` resolves every LoRA layer in it
to a layer of the base model and merges ``W += scale * alpha / r * up @ down`` into that layer's weight
(LoHa, LoKr: see :mod:`bespoke_pl.lora.lycoris`; DoRA: then rescales each output row, or each input channel
for an older LyCORIS ``dora_scale``, to its recorded magnitude, as peft does). Nothing is silently dropped:
a key that is not a LoRA key, a layer name that matches no base layer, or a shape that does not fit is an
error naming the file and the layer. Only safetensors files are read: a pickle can run code when loaded.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from bespoke_pl.errors import LoRAFileError
from bespoke_pl.lora.files import DIFFUSERS_METADATA_KEY
from bespoke_pl.lora.inject import AdapterWeights, LoRAWeights
from bespoke_pl.lora.kohya import accepted_names, diffusers_path, sgm_block_paths
from bespoke_pl.lora.lycoris import LOHA_ROLES, LOKR_ROLES, file_magnitude, lycoris_layer
from bespoke_pl.lora.validate import check_weights

log = logging.getLogger(__name__)

FAMILY_NAMES = {"sd15": "SD 1.5", "sdxl": "SDXL"}
KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
DIFFUSERS_PREFIXES = ("unet.", "text_encoder.", "text_encoder_2.")
# key suffix -> role, longest first so ``lora.down.weight`` is not read as ``down.weight``
ROLES = {
    "lora_down.weight": "down",
    "lora_up.weight": "up",
    "lora_A.weight": "down",
    "lora_B.weight": "up",
    "lora.down.weight": "down",
    "lora.up.weight": "up",
    "lora_magnitude_vector.weight": "magnitude",
    "lora_magnitude_vector": "magnitude",
    "dora_scale": "dora_scale",
    "alpha": "alpha",
    **{role: role for role in LOHA_ROLES + LOKR_ROLES},
}
# how other adapter kinds' keys end -> what to call them in the refusal
UNSUPPORTED = {
    r"\.hada_t[12]$": "LyCORIS LoHa with Tucker decomposition (hada_t1/hada_t2)",
    r"\.lokr_t[12]$": "LyCORIS LoKr with Tucker decomposition (lokr_t1/lokr_t2)",
    r"\.lora_mid\.weight$": "LoCon with Tucker decomposition (lora_mid)",
    r"\.oft_\w+$": "OFT",
    r"\.diff(_b)?$": "full weight differences (.diff)",
    r"\.lora_B\.bias$": "LoRA with bias terms",
    r"^bundle_emb\.": "bundled textual-inversion embeddings",
}


@dataclass
class LoRAFile:
    """The layers of a LoRA file, keyed by the file's own layer names, and its header."""

    path: Path
    format: str  # "kohya" or "diffusers"
    modules: dict[str, AdapterWeights]
    metadata: dict[str, str] = field(default_factory=dict)
    family: str | None = None  # what the file says it is for; None when it does not say


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise LoRAFileError(f"LoRA file {path} does not exist")
    with path.open("rb") as f:
        head = f.read(9)
    # safetensors: an 8-byte header length, then the JSON header. Zip-based torch files start "PK", older
    # pickles with protocol opcode 0x80; look at byte 8 first, as a header length may start with 0x80 too.
    if head[8:9] != b"{" and (head[:2] == b"PK" or head[:1] == b"\x80"):
        raise LoRAFileError(
            f"{path} is a pickle (a PyTorch .pt/.ckpt/.bin file), not safetensors; pickles can run code when "
            "loaded, so bespoke_pl refuses them. Convert it to .safetensors with a tool you trust."
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    except (SafetensorError, OSError, ValueError) as error:
        raise LoRAFileError(f"{path} is not a readable safetensors file: {error}") from error
    return tensors, metadata


def _split_key(key: str) -> tuple[str, str] | None:
    for suffix, role in ROLES.items():
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1], role
    return None


def _declared_family(path: Path, metadata: dict[str, str], names: list[str]) -> str | None:
    """The family a file declares in its header, else the one its text-encoder names imply, else None."""
    version = metadata.get("ss_base_model_version", "")
    architecture = metadata.get("modelspec.architecture", "")
    if metadata.get("bespoke_pl.family") in FAMILY_NAMES:
        return metadata["bespoke_pl.family"]
    if version.startswith("sdxl") or architecture.startswith("stable-diffusion-xl"):
        return "sdxl"
    if version.startswith("sd_v1") or architecture.startswith("stable-diffusion-v1"):
        return "sd15"
    if version or architecture:
        raise LoRAFileError(
            f"{path} is a LoRA for {version or architecture}; bespoke_pl loads SD 1.5 and SDXL"
        )
    if any(n.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.")) for n in names):
        return "sdxl"
    if any(n.startswith("lora_te_") for n in names):
        return "sd15"
    return None


def _not_a_lora(path: Path, keys: list[str]) -> LoRAFileError:
    if not keys:
        return LoRAFileError(f"{path} holds no tensors: it is not a LoRA (an interrupted write?)")
    sample = ", ".join(keys[:3])
    if any(k.startswith(("model.diffusion_model.", "first_stage_model.", "conditioner.")) for k in keys):
        return LoRAFileError(f"{path} is a full model checkpoint, not a LoRA (keys like {sample})")
    return LoRAFileError(
        f"{path} is not an SD 1.5 / SDXL LoRA in kohya or diffusers format: expected keys like "
        f"lora_unet_*.lora_down.weight or unet.*.lora_A.weight, found {sample}"
    )


def _diffusers_alpha(config: dict, module: str, rank: int) -> float:
    """A layer's alpha from diffusers' adapter metadata (alpha = rank when the file records none)."""
    for pattern, alpha in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return float(alpha)
    return float(config.get("lora_alpha", rank))


def read_lora_file(path: str | Path) -> LoRAFile:
    """Read and check a LoRA file: safetensors, LoRA keys only, every layer complete.

    Raises:
        LoRAFileError: With the file and the problem in the message.
    """
    path = Path(path).expanduser()
    tensors, metadata = _read_safetensors(path)
    keys = list(tensors)
    for pattern, kind in UNSUPPORTED.items():
        if any(re.search(pattern, k) for k in keys):
            raise LoRAFileError(
                f"{path} uses {kind}, which bespoke_pl does not load (LoRA, DoRA, LoHa and LoKr only)"
            )
    if keys and all(k.startswith(KOHYA_PREFIXES) for k in keys):
        lora_format = "kohya"
    elif keys and all(k.startswith(DIFFUSERS_PREFIXES) for k in keys):
        lora_format = "diffusers"
    else:
        raise _not_a_lora(path, keys)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    part_keys: dict[str, dict[str, str]] = {}
    for key, tensor in tensors.items():
        split = _split_key(key)
        if split is None:
            raise LoRAFileError(f"{path}: key {key} is not a LoRA down/up/alpha tensor")
        parts.setdefault(split[0], {})[split[1]] = tensor
        part_keys.setdefault(split[0], {})[split[1]] = key
    family = _declared_family(path, metadata, list(parts))  # another model's LoRA: say so first
    adapter = json.loads(metadata.get(DIFFUSERS_METADATA_KEY) or "{}")
    modules: dict[str, AdapterWeights] = {}
    for name, roles in parts.items():
        kinds = {_kind(role) for role in roles} - {None}
        if len(kinds) > 1:
            raise LoRAFileError(f"{path}: layer {name} mixes {' and '.join(sorted(kinds))} keys")
        if kinds:
            modules[name] = lycoris_layer(path, name, kinds.pop(), roles, part_keys[name])
            continue
        if "down" not in roles or "up" not in roles:
            raise LoRAFileError(
                f"{path}: layer {name} has {sorted(roles)} but needs both down and up weights"
            )
        check_weights(path, name, roles, part_keys[name])
        rank = roles["down"].shape[0]
        if "alpha" in roles:
            alpha = float(roles["alpha"].float().item())
        elif lora_format == "diffusers":
            component, module = name.split(".", 1)
            config = {k.removeprefix(f"{component}."): v for k, v in adapter.items()}
            alpha = _diffusers_alpha(config, module.removeprefix("text_model."), rank)
        else:
            alpha = float(rank)  # kohya's convention for files without alpha
        magnitude, on_input = file_magnitude(roles)
        modules[name] = LoRAWeights(roles["down"], roles["up"], alpha, magnitude, on_input)
    return LoRAFile(path, lora_format, modules, metadata, family)


def _kind(role: str) -> str | None:
    return "LoHa" if role.startswith("hada_") else "LoKr" if role.startswith("lokr_") else None


def check_family(lora: LoRAFile, family: str, base_name: str = "the base model") -> None:
    """Refuse a LoRA that declares another family than the base model's."""
    if lora.family is not None and lora.family != family:
        raise LoRAFileError(
            f"{lora.path} is a LoRA for {FAMILY_NAMES[lora.family]}, but {base_name} is "
            f"{FAMILY_NAMES[family]}; use an {FAMILY_NAMES[lora.family]} base model"
        )


def layer_table(components: dict[str, nn.Module], family: str) -> dict[str, tuple[str, str, nn.Module]]:
    """Every name a LoRA file may use for a Linear / Conv2d of the base -> (component, path, layer)."""
    table: dict[str, tuple[str, str, nn.Module]] = {}
    unet = components.get("unet")
    blocks = sgm_block_paths(unet.config) if unet is not None and hasattr(unet, "config") else None
    for component, model in components.items():
        for path, layer in model.named_modules():
            if not isinstance(layer, nn.Linear | nn.Conv2d) or ".lora_" in path:
                continue
            path = path.removesuffix(".base_layer")  # a model that already carries peft LoRA
            names = [*accepted_names(component, path, family, blocks), diffusers_path(component, path)]
            names.append(f"{component}.{path}")
            for name in names:
                table.setdefault(name, (component, path, layer))
    return table


@torch.no_grad()
def merged_weight(weight: torch.Tensor, weights: AdapterWeights, scale: float = 1.0) -> torch.Tensor:
    """``weight`` plus ``scale`` times the layer's update (LoRA: ``alpha / r * up @ down``), in float32 on the
    weight's device; DoRA: then rescaled to the recorded magnitudes."""
    merged = weight.float() + weights.delta(scale).to(weight.device).view_as(weight)
    if weights.magnitude is not None:
        magnitude = weights.magnitude.float().to(weight.device)
        if weights.magnitude_on_input:  # one per input channel: norm over the outputs and the kernel
            norm = merged.transpose(0, 1).flatten(1).norm(dim=1)
            merged = merged * (magnitude / norm).view(1, -1, *([1] * (merged.dim() - 2)))
        else:  # each output row of the adapted weight gets the trained magnitude
            norm = merged.flatten(1).norm(dim=1)
            merged = merged * (magnitude / norm).view(-1, *([1] * (merged.dim() - 1)))
    return merged


def matched_layers(components: dict[str, nn.Module], lora: LoRAFile, family: str) -> dict[str, tuple]:
    """Each layer of ``lora`` -> (component, path, base layer), checked: family, names, shapes.

    Raises:
        LoRAFileError: Another family's file, or a layer without a counterpart or of the wrong shape.
    """
    check_family(lora, family)
    table = layer_table(components, family)
    unknown = [name for name in lora.modules if name not in table]
    if unknown:
        raise LoRAFileError(
            f"{lora.path}: {len(unknown)} of {len(lora.modules)} LoRA layers match no layer of the "
            f"{FAMILY_NAMES[family]} base model, e.g. {', '.join(unknown[:3])}; the LoRA is for another model"
        )
    targets: dict[str, str] = {}
    for name, weights in lora.modules.items():
        component, path, layer = table[name]
        if (other := targets.setdefault(f"{component}.{path}", name)) != name:
            raise LoRAFileError(
                f"{lora.path}: layers {other} and {name} both name the {component} layer {path}"
            )
        out_features, per_row = layer.weight.shape[0], layer.weight[0].numel()
        if weights.features != (per_row, out_features):
            raise LoRAFileError(
                f"{lora.path}: LoRA layer {name} maps {weights.features[0]} -> {weights.features[1]} "
                f"features, but the base model's {path} has weight {tuple(layer.weight.shape)}; the LoRA "
                "was trained on another base model"
            )
        inputs = layer.weight.shape[1]
        if weights.magnitude_on_input and weights.magnitude.numel() != inputs:
            raise LoRAFileError(
                f"{lora.path}: {name}.dora_scale has {weights.magnitude.numel()} magnitudes per input "
                f"channel, but the base model's {path} has {inputs} input channels"
            )
    return {name: table[name] for name in lora.modules}


@torch.no_grad()
def apply_lora(
    components: dict[str, nn.Module], lora: LoRAFile, family: str, scale: float = 1.0
) -> dict[str, int]:
    """Merge every layer of ``lora`` into the base components; returns the number of layers per component.

    Args:
        components: ``{"unet": ..., "text_encoder": ..., "text_encoder_2": ...}`` of the base model.
        lora: From :func:`read_lora_file`.
        family: The base model's family (``sd15`` / ``sdxl``).
        scale: Strength: 1 applies the LoRA as trained, 0.5 half of it. Refusals: :func:`matched_layers`.
    """
    counts: dict[str, int] = {}
    for name, (component, _, layer) in matched_layers(components, lora, family).items():
        layer.weight.copy_(merged_weight(layer.weight, lora.modules[name], scale).to(layer.weight.dtype))
        counts[component] = counts.get(component, 0) + 1
    log.info("applied %s at scale %g: %s", lora.path.name, scale, counts)
    return counts
