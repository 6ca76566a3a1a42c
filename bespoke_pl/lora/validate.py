"""The checks every tensor of a LoRA file passes before anything is merged into a base model.

A LoRA file comes from anywhere: another tool, a half-finished download, a hand edit. Each layer's tensors
are checked here for what the merge ``W += alpha / r * up @ down`` (or LoHa's / LoKr's update, DoRA's
rescaling) silently relies on, so a bad file ends in one :class:`~bespoke_pl.errors.LoRAFileError` naming the
file and the key, not in a ``RuntimeError`` from a matrix product, a division by a rank of 0, or a base model
turned to NaN (one black image per prompt).
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
    _check_dtypes(path, roles, keys)
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
    _check_alpha_scale_values(path, roles, keys, up.shape[0])


def _check_dtypes(path: Path, roles: dict[str, torch.Tensor], keys: dict[str, str]) -> None:
    for role, tensor in roles.items():
        # int8/bool "weights" are not a quantised LoRA any loader understands; casting them would invent one.
        # An integer alpha is still a number (some tools write one); a bool is not.
        if not tensor.is_floating_point() and (role != "alpha" or tensor.dtype == torch.bool):
            raise LoRAFileError(
                f"{path}: {keys[role]} is {str(tensor.dtype).removeprefix('torch.')}; "
                "LoRA weights must be floating point (float32, float16 or bfloat16)"
            )


def _check_alpha_scale_values(
    path: Path, roles: dict[str, torch.Tensor], keys: dict[str, str], out_features: int
) -> None:
    """alpha one number; DoRA's magnitudes one per output row (or, ``dora_scale`` 1 x N, per input
    channel: checked against the base layer when merging); every value finite."""
    alpha = roles.get("alpha")
    if alpha is not None and alpha.numel() != 1:
        raise LoRAFileError(f"{path}: {keys['alpha']} is {_shape(alpha)}; alpha must be a single number")
    magnitude = roles.get("magnitude")
    if magnitude is not None and magnitude.numel() != out_features:
        raise LoRAFileError(
            f"{path}: {keys['magnitude']} has {magnitude.numel()} values for {out_features} output features"
        )
    scale = roles.get("dora_scale")
    if scale is not None:
        sizes = [n for n in scale.shape if n != 1]
        on_input = scale.dim() >= 2 and scale.shape[0] == 1 and scale.shape[1] > 1
        if scale.dim() not in (2, 4) or len(sizes) > 1 or (not on_input and scale.numel() != out_features):
            raise LoRAFileError(
                f"{path}: {keys['dora_scale']} is {_shape(scale)}; DoRA's dora_scale is {out_features} x 1 "
                "(one magnitude per output row, x 1 x 1 for a convolution) or 1 x inputs"
            )
    for role, tensor in roles.items():
        if not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise LoRAFileError(
                f"{path}: {keys[role]} holds {bad} NaN or infinite values of {tensor.numel()}; "
                "the file is damaged or came from a diverged run"
            )


def _pair(path: Path, name: str, keys: dict[str, str], a: torch.Tensor, b: torch.Tensor, ra: str, rb: str):
    """A rank-r product ``a @ b`` of 2-D tensors: (rows, r) @ (r, cols); its rank."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise LoRAFileError(
            f"{path}: {name} has {ra} {_shape(a)} and {rb} {_shape(b)}; they must be 2-D, rows x r and "
            "r x columns (transposed or mismatched weights?)"
        )
    if a.shape[1] == 0:
        raise LoRAFileError(f"{path}: {name} has rank 0 ({keys[ra]} {_shape(a)}); it needs rank >= 1")
    return a.shape[1]


def check_loha(path: Path, name: str, roles: dict[str, torch.Tensor], keys: dict[str, str]) -> None:
    """Refuse a LoHa layer whose four ``hada_*`` matrices cannot form its update (the first problem).

    Raises:
        LoRAFileError: A matrix missing, not floating point, or not (out, r) @ (r, in) pairs of one rank and
            one shape; an alpha that is not one number; a NaN / infinite value.
    """
    missing = [role for role in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b") if role not in roles]
    if missing:
        raise LoRAFileError(f"{path}: LoHa layer {name} lacks {', '.join(missing)}")
    _check_dtypes(path, roles, keys)
    w1a, w1b, w2a, w2b = (roles[r] for r in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"))
    ranks = (
        _pair(path, name, keys, w1a, w1b, "hada_w1_a", "hada_w1_b"),
        _pair(path, name, keys, w2a, w2b, "hada_w2_a", "hada_w2_b"),
    )
    if ranks[0] != ranks[1]:
        # readers scale by alpha / the first pair's rank: two ranks have no single scale
        raise LoRAFileError(
            f"{path}: LoHa layer {name} has ranks {ranks[0]} (hada_w1) and {ranks[1]} (hada_w2)"
        )
    if (w1a.shape[0], w1b.shape[1]) != (w2a.shape[0], w2b.shape[1]):
        raise LoRAFileError(
            f"{path}: LoHa layer {name}'s products are {w1a.shape[0]} x {w1b.shape[1]} (hada_w1) and "
            f"{w2a.shape[0]} x {w2b.shape[1]} (hada_w2); both must be out x in"
        )
    _check_alpha_scale_values(path, roles, keys, w1a.shape[0])


def check_lokr(path: Path, name: str, roles: dict[str, torch.Tensor], keys: dict[str, str]) -> None:
    """Refuse a LoKr layer whose ``lokr_*`` factors cannot form its Kronecker product (the first problem).

    Raises:
        LoRAFileError: Each factor must be given once, as a full matrix (``lokr_w1`` 2-D, ``lokr_w2`` 2-D or
            4-D) or a rank-r pair (``_a`` rows x r, ``_b`` r x columns); floating point, finite, one alpha.
    """
    _check_dtypes(path, roles, keys)
    rows = []
    for factor in ("lokr_w1", "lokr_w2"):
        pair = [role for role in (f"{factor}_a", f"{factor}_b") if role in roles]
        if (factor in roles) == bool(pair) or len(pair) == 1:
            given = sorted(r for r in roles if r.startswith(factor)) or "none of them"
            raise LoRAFileError(
                f"{path}: LoKr layer {name} needs {factor}, or {factor}_a and {factor}_b; it has {given}"
            )
        if factor in roles:
            full = roles[factor]
            if full.dim() not in ((2,) if factor == "lokr_w1" else (2, 4)) or 0 in full.shape:
                raise LoRAFileError(f"{path}: {keys[factor]} is {_shape(full)}; a LoKr factor is a matrix")
            rows.append(full.shape[0])
        else:
            a, b = roles[f"{factor}_a"], roles[f"{factor}_b"]
            _pair(path, name, keys, a, b, f"{factor}_a", f"{factor}_b")
            rows.append(a.shape[0])
    _check_alpha_scale_values(path, roles, keys, rows[0] * rows[1])
