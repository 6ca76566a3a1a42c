"""LyCORIS' LoHa and LoKr, and DoRA's ``dora_scale``: one layer's weights, their update, their file keys.

The layout is what ComfyUI reads and LyCORIS writes, checked (read, not copied) against ComfyUI's
``comfy/weight_adapter/loha.py``, ``lokr.py``, ``lora.py`` and ``base.py`` (``weight_decompose``) and LyCORIS'
``lycoris/modules/loha.py``, ``lokr.py``, ``locon.py`` and ``lycoris/kohya.py`` (commit f49d30d, 2025):

* **LoHa**, per layer ``<name>.hada_w1_a`` (out, r), ``hada_w1_b`` (r, in*kh*kw), ``hada_w2_a`` (out, r),
  ``hada_w2_b`` (r, in*kh*kw) and ``<name>.alpha``; the update is
  ``(w1_a @ w1_b) * (w2_a @ w2_b) * alpha / r`` (elementwise product, r = ``hada_w1_b.shape[0]``) reshaped to
  the layer's weight. peft's LoHa without ``use_effective_conv2d`` has the same shapes and scale.
* **LoKr**: ``lokr_w1`` (a, c) or ``lokr_w1_a`` (a, r) @ ``lokr_w1_b`` (r, c), and ``lokr_w2`` (b, d) / (b, d,
  kh, kw) or ``lokr_w2_a`` (b, r) @ ``lokr_w2_b`` (r, d*kh*kw); the update is ``kron(w1, w2) * scale``
  (w1 given two trailing 1-dims when w2 is 4-D) reshaped to (a*b, c*d, kh, kw). ``scale`` is alpha / r, r the
  rank of a decomposed factor (w2's when both are), and **1 when both factors are full matrices**: ComfyUI
  then ignores alpha, and LyCORIS writes alpha = r. peft scales by alpha / r in that case too, so such a
  layer is written with its scale folded into ``lokr_w1``.
* **DoRA**: ``<name>.dora_scale`` beside ``lora_down``/``lora_up``/``alpha``. LyCORIS since 2025-04
  (``wd_on_output``, on by default in ``lycoris/kohya.py``) holds one magnitude per output row, shaped
  (out, 1) for a Linear and (out, 1, 1, 1) for a convolution, and rescales each output row of ``W + dW`` to
  it: peft's DoRA, so that is what we write. Older LyCORIS files hold (1, in) / (1, in, 1, 1), one magnitude
  per input channel (norm over the outputs and the kernel); ComfyUI tells the two apart by
  ``dora_scale.shape[0] == out``, and so does :func:`split_dora_scale`. Caveat: ComfyUI's output-axis branch
  divides by the norm of the base ``W`` rather than of ``W + dW`` (an open ComfyUI pull request fixes it),
  so ComfyUI shows such a file (ours, or LyCORIS') off by ``||W + dW|| / ||W||`` per row, which is close to
  1 for a small update; LyCORIS and our loader apply it exactly. diffusers drops ``dora_scale`` from kohya
  files (with a warning), so for diffusers save DoRA in diffusers' format.
* Tucker forms (``hada_t1``/``hada_t2``, ``lokr_t1``/``lokr_t2``) are neither trained nor read here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bespoke_pl.errors import LoRAFileError
from bespoke_pl.lora.validate import check_loha, check_lokr

LOHA_ROLES = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
LOKR_ROLES = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")


@dataclass
class LoHaWeights:
    """One layer's LoHa: two rank-r products multiplied elementwise, scaled by ``alpha / r``.

    ``magnitude``/``magnitude_on_input`` as in :class:`~bespoke_pl.lora.inject.LoRAWeights` (DoRA on a LoHa,
    which other tools' files may hold; peft trains none).
    """

    w1a: torch.Tensor  # (out, r)
    w1b: torch.Tensor  # (r, in * kh * kw)
    w2a: torch.Tensor  # (out, r)
    w2b: torch.Tensor  # (r, in * kh * kw)
    alpha: float
    magnitude: torch.Tensor | None = None
    magnitude_on_input: bool = False

    @property
    def rank(self) -> int:
        return self.w1b.shape[0]

    @property
    def features(self) -> tuple[int, int]:
        """(inputs per output row, outputs) of the layer the update fits."""
        return self.w1b.shape[1], self.w1a.shape[0]

    def delta(self, scale: float = 1.0) -> torch.Tensor:
        """``scale * alpha / r * (w1a @ w1b) * (w2a @ w2b)`` in float32, shaped (out, in * kh * kw)."""
        first = self.w1a.float() @ self.w1b.float()
        second = self.w2a.float() @ self.w2b.float()
        return first * second * (scale * self.alpha / self.rank)

    def kohya_tensors(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        _no_magnitude(self)
        tensors = dict(zip(LOHA_ROLES, (self.w1a, self.w1b, self.w2a, self.w2b), strict=True))
        return {**{k: v.to(dtype) for k, v in tensors.items()}, "alpha": _alpha(self.alpha)}


@dataclass
class LoKrWeights:
    """One layer's LoKr: ``kron(w1, w2)``, each factor a full matrix or a rank-r product.

    Exactly one of ``w1`` / (``w1a``, ``w1b``) is set, and one of ``w2`` / (``w2a``, ``w2b``).
    """

    w1: torch.Tensor | None
    w1a: torch.Tensor | None
    w1b: torch.Tensor | None
    w2: torch.Tensor | None
    w2a: torch.Tensor | None
    w2b: torch.Tensor | None
    alpha: float
    magnitude: torch.Tensor | None = None
    magnitude_on_input: bool = False

    @property
    def rank(self) -> int | None:
        """The rank of the decomposed factor (w2's first); None when both are full matrices (scale 1)."""
        if self.w2b is not None:
            return self.w2b.shape[0]
        return self.w1b.shape[0] if self.w1b is not None else None

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(w1, w2) as full float32 matrices; w2 may be 4-D (b, d, kh, kw)."""
        w1 = self.w1.float() if self.w1 is not None else self.w1a.float() @ self.w1b.float()
        w2 = self.w2.float() if self.w2 is not None else self.w2a.float() @ self.w2b.float()
        return w1, w2

    @property
    def features(self) -> tuple[int, int]:
        """(inputs per output row, outputs) of the layer the update fits."""
        a, c = self.w1.shape if self.w1 is not None else (self.w1a.shape[0], self.w1b.shape[1])
        if self.w2 is not None:
            b, per_row = self.w2.shape[0], self.w2[0].numel()
        else:
            b, per_row = self.w2a.shape[0], self.w2b.shape[1]
        return c * per_row, a * b

    def delta(self, scale: float = 1.0) -> torch.Tensor:
        """``scale * kron(w1, w2) * (alpha / r, or 1 for two full factors)`` in float32, (out, in * kh * kw)."""
        w1, w2 = self.factors()
        if w2.dim() == 4:
            w1 = w1[:, :, None, None]
        factor = self.alpha / self.rank if self.rank is not None else 1.0
        return torch.kron(w1, w2).flatten(1) * (scale * factor)

    def kohya_tensors(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        _no_magnitude(self)
        parts = (self.w1, self.w1a, self.w1b, self.w2, self.w2a, self.w2b)
        tensors = {k: v.to(dtype) for k, v in zip(LOKR_ROLES, parts, strict=True) if v is not None}
        return {**tensors, "alpha": _alpha(self.alpha)}


def _no_magnitude(weights: LoHaWeights | LoKrWeights) -> None:
    if weights.magnitude is not None:  # peft trains no DoRA on LoHa/LoKr; files with one are only read
        raise ValueError(f"DoRA on a {type(weights).__name__.removesuffix('Weights')} is read, not written")


def _alpha(alpha: float) -> torch.Tensor:
    # float32 whatever the weights' dtype: an alpha like 0.3 survives exactly (loaders call .item()).
    return torch.tensor(alpha, dtype=torch.float32)


def dora_scale(magnitude: torch.Tensor, conv: bool) -> torch.Tensor:
    """peft's per-output-row magnitude (out,) as LyCORIS' output-axis ``dora_scale``: (out, 1[, 1, 1])."""
    return magnitude.reshape(-1, 1, 1, 1) if conv else magnitude.reshape(-1, 1)


def split_dora_scale(scale: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """A file's ``dora_scale`` -> (magnitudes as a vector, whether they are per input channel).

    (1, in[, 1, 1]) is the input-axis layout of older LyCORIS files; anything else is one per output row.
    """
    on_input = scale.dim() >= 2 and scale.shape[0] == 1 and scale.shape[1] > 1
    return scale.reshape(-1), on_input


def file_magnitude(roles: dict[str, torch.Tensor]) -> tuple[torch.Tensor | None, bool]:
    """A file layer's DoRA magnitudes as a vector (``dora_scale``, or diffusers' per-output-row
    ``lora_magnitude_vector``), and whether they are per input channel; (None, False) without DoRA."""
    if "dora_scale" in roles:
        return split_dora_scale(roles["dora_scale"])
    return (roles["magnitude"].reshape(-1) if "magnitude" in roles else None), False


def lycoris_layer(
    path: Path, name: str, kind: str, roles: dict[str, torch.Tensor], keys: dict[str, str]
) -> LoHaWeights | LoKrWeights:
    """A file's checked ``LoHa`` / ``LoKr`` layer; without an alpha its update is unscaled, as in ComfyUI.

    Args:
        path: The file (for messages).
        name: The layer's name in the file.
        kind: ``LoHa`` or ``LoKr``.
        roles: The layer's tensors by key suffix (``hada_w1_a``, ``alpha``, ``dora_scale`` ...).
        keys: The file's key of each role.
    """
    known = {*(LOHA_ROLES if kind == "LoHa" else LOKR_ROLES), "alpha", "dora_scale"}
    if stray := sorted(set(roles) - known):
        raise LoRAFileError(f"{path}: {kind} layer {name} also has {', '.join(keys[r] for r in stray)}")
    (check_loha if kind == "LoHa" else check_lokr)(path, name, roles, keys)
    magnitude, on_input = file_magnitude(roles)
    if kind == "LoHa":
        weights = LoHaWeights(*(roles[r] for r in LOHA_ROLES), 0.0, magnitude, on_input)
    else:
        weights = LoKrWeights(*(roles.get(r) for r in LOKR_ROLES), 0.0, magnitude, on_input)
    weights.alpha = float(roles["alpha"].float().item()) if "alpha" in roles else float(weights.rank or 1)
    return weights


def _check_scale(name: str, scaling: float, alpha: float, rank: int) -> None:
    if not math.isclose(scaling, alpha / rank, rel_tol=1e-6):
        raise ValueError(f"{name}: scale is not alpha / rank (rsLoRA?); no file format stores that")


def peft_loha(name: str, layer: nn.Module, adapter: str) -> LoHaWeights:
    """The LoHa of a peft ``LoHaLayer``, detached."""
    if adapter in layer.hada_t1:
        raise ValueError(f"{name}: LoHa with Tucker decomposition (use_effective_conv2d) is not saved")
    rank, alpha = layer.r[adapter], float(layer.alpha[adapter])
    _check_scale(name, layer.scaling[adapter], alpha, rank)
    parts = (layer.hada_w1_a, layer.hada_w1_b, layer.hada_w2_a, layer.hada_w2_b)
    return LoHaWeights(*(p[adapter].detach() for p in parts), alpha)


def peft_lokr(name: str, layer: nn.Module, adapter: str) -> LoKrWeights:
    """The LoKr of a peft ``LoKrLayer``, detached; two full factors get peft's scale folded into w1."""
    if adapter in layer.lokr_t2:
        raise ValueError(f"{name}: LoKr with Tucker decomposition (use_effective_conv2d) is not saved")
    rank, alpha = layer.r[adapter], float(layer.alpha[adapter])
    _check_scale(name, layer.scaling[adapter], alpha, rank)

    def get(table: nn.ParameterDict) -> torch.Tensor | None:
        return table[adapter].detach() if adapter in table else None

    weights = LoKrWeights(
        w1=get(layer.lokr_w1),
        w1a=get(layer.lokr_w1_a),
        w1b=get(layer.lokr_w1_b),
        w2=get(layer.lokr_w2),
        w2a=get(layer.lokr_w2_a),
        w2b=get(layer.lokr_w2_b),
        alpha=alpha,
    )
    if weights.rank is None:  # readers apply no scale to two full matrices: carry peft's in the weights
        weights.w1 = weights.w1 * (alpha / rank)
        weights.alpha = float(rank)
    return weights
