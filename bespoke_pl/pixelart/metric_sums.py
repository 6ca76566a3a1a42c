"""The base of the pixel-art metrics (:mod:`bespoke_pl.pixelart.metrics`): per-image values summed over
batches and processes, and leaving an image's own training match out of a comparison."""

from __future__ import annotations

import torch
from torchmetrics import Metric


def without(table: torch.Tensor, exclude: torch.Tensor | None, fill: float | bool) -> torch.Tensor:
    """(B, N) image-to-training table with each image's ``exclude`` column (-1: none) set to ``fill``."""
    if exclude is not None:
        rows = torch.nonzero(exclude >= 0).flatten()
        table[rows, exclude[rows]] = fill
    return table


class PerImageSums(Metric):
    """A metric whose state is the running sum of each per-image value, and the image count.

    Subclasses define ``keys`` (the names of ``compute()``, each a per-image value of ``values()``) and
    ``values(...)``; ``update`` takes the same arguments as ``values``, or ``values=`` already computed.
    """

    full_state_update = False
    keys: tuple[str, ...] = ()
    on_raw = False  # True: also needs the images as generated (24k px), not only the 24x24 art
    leave_one_out = False  # True: values() takes ``exclude``, a training index per image to skip

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in (*self.keys, "images"):
            self.add_state(name, torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def values(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def update(self, *args, values: dict[str, torch.Tensor] | None = None, **kwargs) -> None:
        values = self.values(*args, **kwargs) if values is None else values
        counted = torch.ones_like(values[self.keys[0]], dtype=torch.bool)
        for name in self.keys:
            counted &= torch.isfinite(values[name].double())  # e.g. grid fidelity of an image at k = 1
        for name in self.keys:
            setattr(self, name, getattr(self, name) + values[name][counted].double().sum())
        self.images += counted.sum()

    def compute(self) -> dict[str, torch.Tensor]:
        count = self.images
        nan = torch.tensor(float("nan"))
        return {name: (getattr(self, name) / count).float() if count > 0 else nan for name in self.keys}
