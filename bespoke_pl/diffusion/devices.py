"""Which device to run on, and which precision is safe there: one place for training, sampling and tools.

CUDA gets half precision for frozen weights (bf16 where supported, else fp16) and mixed-precision training;
Apple MPS and CPU stay in float32 (CPU has no fast half kernels; MPS half precision still misbehaves in
places). LoRA weights and the VAE are float32 everywhere; that is decided where they are built.
"""

from __future__ import annotations

import torch


def pick_device(requested: str = "auto") -> torch.device:
    """``auto``: CUDA if present, else Apple MPS, else CPU. A named device that is missing is an error."""
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
        "cpu": True,
    }
    if requested == "auto":
        return torch.device(next(name for name, ok in available.items() if ok))
    if requested not in available:
        raise ValueError(f"device must be auto, cuda, mps or cpu, got {requested!r}")
    if not available[requested]:
        raise ValueError(f"device {requested} was requested but is not available on this machine")
    return torch.device(requested)


def weight_dtype_for(device: torch.device, requested: str = "auto") -> torch.dtype:
    """Dtype of the frozen UNet and text encoders: half precision on CUDA only, float32 elsewhere."""
    if requested != "auto":
        return getattr(torch, requested)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def default_precision(accelerator: str | None) -> str:
    """Lightning precision that is safe on the device: bf16 (else fp16) mixed on CUDA, fp32 on MPS and CPU."""
    wants_cuda = accelerator in ("cuda", "gpu") or (
        accelerator in (None, "auto") and torch.cuda.is_available()
    )
    if wants_cuda:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"
