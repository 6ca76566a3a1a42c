"""The checks every tensor of a LoRA file passes before anything is merged into a base model.

A LoRA file comes from anywhere: another tool, a half-finished download, a hand edit. Each layer's tensors
are checked here for what the merge ``W += alpha / r * up @ down`` silently relies on, so a bad file ends in
one :class:`~bespoke_pl.errors.LoRAFileError` naming the file and the key, not in a ``RuntimeError`` from a
matrix product, a division by a rank of 0, or a base model turned to NaN (one black image per prompt).
"""

from __future__ import annotations

from pathlib import Path

import torch

from bespoke_pl.errors import LoRAFileError


def _shape(tensor: torch.Tensor) -> str:
    return "x".join(str(n) for n in tensor.shape) or "a scalar"


def check_weights(path: Path, name: str, roles: dict[str, torch.Tensor], keys: dict[str, str]) -> None:
    """Refuse a layer whose tensors cannot be a LoRA: the first problem, naming ``path`` and the key.

    Args:
        path: The file (for the message).
        name: The layer's name in the file (its keys' common stem).
        roles: ``down``, ``up`` and optionally ``alpha`` and ``magnitude`` tensors of the layer.
        keys: The file's key of each role (for the message).

    Raises:
        LoRAFileError: Weights that are not floating point, shapes that are not a (down, up) pair of one rank
            (2-D for a Linear, 4-D for a convolution), a rank of 0, an alpha that is not one number, or a
            NaN / infinite value.
    """
    down, up = roles["down"], roles["up"]
    for role, tensor in roles.items():
        # int8/bool "weights" are not a quantised LoRA any loader understands; casting them would invent one.
        # An integer alpha is still a number (some tools write one); a bool is not.
        if not tensor.is_floating_point() and (role != "alpha" or tensor.dtype == torch.bool):
            raise LoRAFileError(
                f"{path}: {keys[role]} is {str(tensor.dtype).removeprefix('torch.')}; "
                "LoRA weights must be floating point (float32, float16 or bfloat16)"
            )
    if down.dim() not in (2, 4) or up.dim() != down.dim():
        raise LoRAFileError(
            f"{path}: {name} has down {_shape(down)} and up {_shape(up)}; a LoRA layer has a 2-D pair "
            "(rank x in, out x rank) or a 4-D pair for a convolution (rank x in x kh x kw, out x rank x 1 x 1)"
        )
    rank = down.shape[0]
    if rank == 0:
        raise LoRAFileError(f"{path}: {name} has rank 0 (down {_shape(down)}); a LoRA layer needs rank >= 1")
    if up.shape[1] != rank or (up.dim() == 4 and tuple(up.shape[2:]) != (1, 1)):
        raise LoRAFileError(
            f"{path}: {name} has down {_shape(down)} (rank {rank}) but up {_shape(up)}; up must be "
            f"out x {rank}{' x 1 x 1' if up.dim() == 4 else ''} (transposed or mismatched weights?)"
        )
    features = down.flatten(1).shape[1], up.shape[0]
    if rank > max(features):
        # (in x rank, rank x out) stored the wrong way round reads as a rank larger than the layer itself.
        raise LoRAFileError(
            f"{path}: {name} has down {_shape(down)} and up {_shape(up)}: rank {rank} for a layer of "
            f"{features[0]} inputs and {features[1]} outputs; the pair looks transposed"
        )
    alpha = roles.get("alpha")
    if alpha is not None and alpha.numel() != 1:
        raise LoRAFileError(f"{path}: {keys['alpha']} is {_shape(alpha)}; alpha must be a single number")
    magnitude = roles.get("magnitude")
    if magnitude is not None and magnitude.numel() != up.shape[0]:
        raise LoRAFileError(
            f"{path}: {keys['magnitude']} has {magnitude.numel()} values for {up.shape[0]} output features"
        )
    for role, tensor in roles.items():
        if not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise LoRAFileError(
                f"{path}: {keys[role]} holds {bad} NaN or infinite values of {tensor.numel()}; "
                "the file is damaged or came from a diverged run"
            )
