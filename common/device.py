"""The device policy: which device ``auto`` means, and the autocast type on it."""

from __future__ import annotations

import torch

__all__ = ["amp_dtype", "resolve_device"]


def resolve_device(device: str) -> torch.device:
    """``auto`` is the first CUDA device when there is one, else the CPU. ``cuda[:N]`` asked for
    on a machine without CUDA, or with N beyond the visible GPUs, is a ValueError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was asked for, but CUDA is not available")
        visible = torch.cuda.device_count()
        if dev.index is not None and dev.index >= visible:
            raise ValueError(
                f"device {device!r} was asked for, but only {visible} GPU(s) are visible "
                f"(cuda:0 to cuda:{visible - 1})"
            )
    return dev


def amp_dtype(dev: torch.device) -> torch.dtype | None:
    """The autocast type: bfloat16 on CUDA where supported, else float16; none on the CPU."""
    if dev.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
