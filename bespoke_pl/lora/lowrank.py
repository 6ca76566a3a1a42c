"""A layer's update as a plain LoRA: its truncated SVD at the smallest rank whose error stays within a bound.

The error is relative and in the Frobenius norm, ``||dW - up @ down|| / ||dW||``: by Eckart-Young the
truncated SVD is the best rank-r approximation in that norm, and its error is the energy of the dropped
singular values, so the rank that keeps it under ``max_error`` is read off the spectrum, not guessed. The
singular values are split evenly between the factors (``up = U sqrt(S)``, ``down = sqrt(S) V^T``), which keeps
both in float16's range. The error reported is measured on the factors as they are stored (after the cast
to the file's dtype), so it is what a loader gets.

Why the rank is measured: DoRA rescales whole rows of ``W + BA``, so its update ``(diag(s) - I) W + diag(s)
BA`` carries the base weight's full spectrum; a LoHa's ``(w1a w1b) * (w2a w2b)`` has rank up to r^2, a
LoKr's ``kron(w1, w2)`` up to rank(w1) * rank(w2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LowRank:
    """A plain LoRA of one layer: ``up @ down`` approximates the update, scale 1 (alpha = rank)."""

    down: torch.Tensor  # (r, in * kh * kw)
    up: torch.Tensor  # (out, r)
    error: float  # ||dW - up @ down||_F / ||dW||_F, measured in the stored dtype

    @property
    def rank(self) -> int:
        return self.down.shape[0]


def tail_errors(singular: torch.Tensor) -> torch.Tensor:
    """Relative error of the rank-r truncation for r = 0 .. n, from the singular values (n,) in any order.

    ``err(r) = sqrt(sum_{i >= r} s_i^2 / sum_i s_i^2)`` with ``s`` sorted descending; all zeros for a zero
    update (nothing to lose).
    """
    energy = singular.double().sort(descending=True).values.square()
    total = energy.sum()
    tail = torch.cat([energy.flip(0).cumsum(0).flip(0), energy.new_zeros(1)])
    if total == 0:
        return torch.zeros_like(tail)
    return (tail / total).clamp_min(0).sqrt()


def rank_for_error(singular: torch.Tensor, max_error: float, max_rank: int | None = None) -> int:
    """The smallest rank whose truncation error is at most ``max_error``, capped at ``max_rank``; at least 1.

    Args:
        singular: The update's singular values.
        max_error: Bound on the relative Frobenius error (0.01 = 1% of the update's norm).
        max_rank: Cap on the rank (None: up to full rank, which is exact).
    """
    errors = tail_errors(singular)
    fits = torch.nonzero(errors <= max_error).flatten()
    rank = int(fits[0]) if len(fits) else len(singular)
    cap = len(singular) if max_rank is None else min(max_rank, len(singular))
    return max(1, min(rank, cap))


def relative_error(delta: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> float:
    """``||delta - up @ down|| / ||delta||`` in float32 (0 for a zero update approximated by zero)."""
    delta = delta.float()
    residual = (delta - up.float() @ down.float()).norm()
    norm = delta.norm()
    if norm == 0:
        return 0.0 if residual == 0 else float("inf")
    return float(residual / norm)


def low_rank(
    delta: torch.Tensor, max_error: float, max_rank: int | None = None, dtype: torch.dtype = torch.float32
) -> LowRank:
    """The truncated SVD of ``delta`` (out, n) at the smallest rank with relative error <= ``max_error``.

    The rank comes from the float32 spectrum; if the factors as stored in ``dtype`` then miss the bound
    (rounding, or a bound at a singular value's edge), the rank grows until they meet it or reach the cap;
    a bound below the dtype's rounding ends at the cap, with the error measured.

    Args:
        delta: The exact update, (out, in * kh * kw).
        max_error: Bound on the relative Frobenius error.
        max_rank: Cap on the rank; the error may then exceed ``max_error`` (it is reported as measured).
        dtype: Dtype the factors are stored in.

    Raises:
        ValueError: ``max_error`` is negative or ``max_rank`` below 1.
    """
    if max_error < 0:
        raise ValueError(f"max_error must be >= 0, got {max_error}")
    if max_rank is not None and max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    delta = delta.float()
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    cap = len(s) if max_rank is None else min(max_rank, len(s))
    rank = rank_for_error(s, max_error, max_rank)
    while True:
        root = s[:rank].sqrt()
        up = (u[:, :rank] * root).to(dtype)
        down = (root[:, None] * vh[:rank]).to(dtype)
        error = relative_error(delta, up, down)
        if error <= max_error or rank >= cap:
            return LowRank(down, up, error)
        rank = min(cap, rank + max(1, rank // 8))  # a few steps, not one SVD-sized loop per rank
