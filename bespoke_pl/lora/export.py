"""A DoRA, LoHa or LoKr file as a plain kohya LoRA, which every loader applies as we do.

Other tools apply our non-plain files differently (measured with their own code, see docs/lora-export.md):
diffusers refuses LoHa / LoKr and drops DoRA's ``dora_scale``, ComfyUI and Forge normalise DoRA by the base
weight's norm, A1111 and InvokeAI read ``dora_scale`` per input channel. A plain LoRA (``lora_down`` /
``lora_up`` / ``alpha``) is the one format they all apply the same way, so each layer's exact update
(merged weight minus base weight, by :func:`~bespoke_pl.lora.loading.merged_weight`, the code ``generate``
merges with) is written as its truncated SVD (:mod:`bespoke_pl.lora.lowrank`) at scale 1. DoRA's update
depends on the base weight, so the export needs the base model the file was trained on.

The layers have no ``alpha`` key: without one, kohya, LyCORIS, ComfyUI, Forge, A1111, InvokeAI and diffusers
all take alpha = rank (scale 1). Writing ``alpha = rank`` says the same to most of them, but with ranks
that differ by layer, diffusers 0.42 (``get_peft_kwargs``) puts the alphas in an ``alpha_pattern`` whose
SD 1.5 attention keys match no module, so peft ignores them and scales those layers by the most common
alpha over their rank (measured: the fused weights were off); with no alphas it mirrors each layer's rank.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from bespoke_pl.errors import LoRAFileError
from bespoke_pl.lora.files import DIFFUSERS_METADATA_KEY, atomic_save_safetensors
from bespoke_pl.lora.inject import AdapterWeights, LoRAWeights
from bespoke_pl.lora.kohya import kohya_name, sgm_block_paths
from bespoke_pl.lora.loading import LoRAFile, matched_layers, merged_weight
from bespoke_pl.lora.lowrank import low_rank
from bespoke_pl.lora.lycoris import LoHaWeights

PLAIN_SUFFIX = "-plain"  # NAME-000003-plain.safetensors beside NAME-000003.safetensors
EXPORT_KEY = "bespoke_pl.export"  # header: what the file was exported from, each layer's rank and error
DEFAULT_MAX_ERROR = 0.01
DORA_LOADERS = (
    "ComfyUI and Forge apply DoRA up to 11% off, A1111 and InvokeAI up to 10x the update, diffusers drops "
    "dora_scale"
)


def layer_kind(weights: AdapterWeights) -> str:
    """``LoRA``, ``DoRA``, ``LoHa`` or ``LoKr`` (a LyCORIS factorisation with DoRA counts as DoRA)."""
    if weights.magnitude is not None:
        return "DoRA"
    if isinstance(weights, LoRAWeights):
        return "LoRA"
    return "LoHa" if isinstance(weights, LoHaWeights) else "LoKr"


def file_kind(lora: LoRAFile) -> str:
    """What a file holds besides plain LoRA (``DoRA``, ``LoHa+LoKr``...), or ``LoRA`` when nothing else."""
    kinds = sorted({layer_kind(w) for w in lora.modules.values()} - {"LoRA"})
    return "+".join(kinds) or "LoRA"


def plain_path(path: str | Path) -> Path:
    """Where a file's plain export goes by default: ``NAME-plain.safetensors`` beside ``NAME.safetensors``."""
    path = Path(path)
    return path.with_name(f"{path.stem}{PLAIN_SUFFIX}.safetensors")


def _stored_dtype(weights: AdapterWeights) -> torch.dtype:
    """The dtype a layer's factors were saved in (the export keeps it)."""
    tensors = [v for v in vars(weights).values() if isinstance(v, torch.Tensor)]
    return tensors[0].dtype


@dataclass
class PlainLoRA:
    """An export: kohya tensors, and each layer's rank and relative error by its kohya name."""

    tensors: dict[str, torch.Tensor]
    ranks: dict[str, int] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)
    kind: str = "LoRA"

    @property
    def size_bytes(self) -> int:
        """Bytes of tensor data (the file adds a header of some kB)."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def rank_histogram(self) -> dict[str, int]:
        """Layer counts by rank, in power-of-two bins (``1``, ``2``, ``3-4``, ``5-8``, ...)."""
        bins: Counter[int] = Counter(1 << max(0, (r - 1).bit_length()) for r in self.ranks.values())
        label = {1: "1", 2: "2"}
        return {label.get(top, f"{top // 2 + 1}-{top}"): bins[top] for top in sorted(bins)}

    def summary(self, max_error: float) -> str:
        """One line: layers, ranks, error, size."""
        errors = list(self.errors.values())
        over = sum(e > max_error for e in errors)
        histogram = ", ".join(f"{k}: {v}" for k, v in self.rank_histogram().items())
        return (
            f"{len(self.ranks)} {self.kind} layers as plain LoRA: rank {min(self.ranks.values())}-"
            f"{max(self.ranks.values())} (layers by rank {histogram}), relative error max "
            f"{max(errors):.3%} mean {sum(errors) / len(errors):.3%} (bound {max_error:.2%}"
            + (f"; {over} layers over it at --max_rank" if over else "")
            + f"), {self.size_bytes / 1e6:.1f} MB"
        )


@torch.no_grad()
def export_plain(
    lora: LoRAFile,
    components: dict[str, nn.Module],
    family: str,
    max_error: float = DEFAULT_MAX_ERROR,
    max_rank: int | None = None,
) -> PlainLoRA:
    """Each layer of ``lora`` as a plain kohya LoRA of the smallest rank within ``max_error``.

    Args:
        lora: From :func:`~bespoke_pl.lora.loading.read_lora_file`.
        components: The base model it was trained on (``unet``, ``text_encoder``...), left unchanged; a
            peft-injected model during training works too (its ``base_layer`` weights are the base).
        family: ``sd15`` or ``sdxl``.
        max_error: Bound on each layer's relative Frobenius error (0.01 = 1% of the update's norm).
        max_rank: Cap on each layer's rank; None: as high as the bound needs.

    Raises:
        LoRAFileError: The file is plain LoRA already, or does not fit the base model.
    """
    kind = file_kind(lora)
    if kind == "LoRA":
        raise LoRAFileError(f"{lora.path} is a plain LoRA already: nothing to export")
    layers = matched_layers(components, lora, family)
    unet = components.get("unet")
    blocks = sgm_block_paths(unet.config) if family == "sdxl" and unet is not None else None
    plain = PlainLoRA({}, kind=kind)
    for name, (component, path, layer) in layers.items():
        weights, weight = lora.modules[name], layer.weight.detach()
        delta = (merged_weight(weight, weights) - weight.float()).flatten(1)  # (out, in * kh * kw)
        approx = low_rank(delta, max_error, max_rank, _stored_dtype(weights))
        rank, conv = approx.rank, weight.dim() == 4
        stem = kohya_name(component, path, family, blocks)
        plain.tensors |= {
            f"{stem}.lora_down.weight": approx.down.reshape(rank, *weight.shape[1:]).cpu(),
            f"{stem}.lora_up.weight": (approx.up[:, :, None, None] if conv else approx.up).cpu(),
        }  # no alpha key: scale 1 in every loader (see the module's docstring)
        plain.ranks[stem], plain.errors[stem] = rank, approx.error
    return plain


def export_header(
    source: dict[str, str], plain: PlainLoRA, source_name: str, max_error: float, max_rank: int | None
) -> dict[str, str]:
    """The source's header (palette, pixel_scale, clip skip, family, modelspec, ``ss_*``) as a plain LoRA's.

    kohya's ``ss_network_*`` keys describe the new network (``networks.lora``, the highest rank, conv_dim
    for 3x3 layers); :data:`EXPORT_KEY` records the source, the bound and each layer's rank and error.
    """
    header = {
        k: v for k, v in source.items() if k != DIFFUSERS_METADATA_KEY and not k.startswith("sshs_")
    }  # diffusers' adapter config and kohya's hashes describe the source's tensors, not these
    conv = [plain.ranks[k.removesuffix(".lora_down.weight")] for k, t in plain.tensors.items()
            if k.endswith(".lora_down.weight") and t.dim() == 4 and t.shape[-1] > 1]  # fmt: skip
    top = max(plain.ranks.values())
    header |= {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(top),
        "ss_network_alpha": str(float(top)),
        "ss_network_args": json.dumps({"conv_dim": str(max(conv)), "conv_alpha": str(float(max(conv)))})
        if conv
        else "{}",
        EXPORT_KEY: json.dumps(
            {
                "from": source_name,
                "kind": plain.kind,
                "from_network_module": source.get("ss_network_module"),
                "from_network_args": source.get("ss_network_args"),
                "max_error": max_error,
                "max_rank": max_rank,
                "layers": {
                    k: {"rank": r, "error": round(plain.errors[k], 6)} for k, r in plain.ranks.items()
                },
            }
        ),  # fmt: skip
    }
    return {"format": "pt", **header}


def write_plain(path: str | Path, plain: PlainLoRA, header: dict[str, str]) -> Path:
    """Write the export atomically; an existing file is never replaced.

    Raises:
        FileExistsError: ``path`` exists.
    """
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists; an export never replaces a file")
    return atomic_save_safetensors(plain.tensors, path, header)
