"""How much memory a proxy training needs, and how much a device has, before anything is built.

``training_bytes`` counts the parameters four times (weights, gradients and AdamW's two
moments, float32) and the activations autograd keeps for the backward pass of one batch at the
proxy input. The activations are measured, not guessed: the model is built on PyTorch's
``meta`` device, which allocates nothing and computes nothing, and one forward pass records
the size of every tensor saved for backward. ``available_bytes`` is the free memory of a GPU,
or the memory available to this process on the CPU (the system's, capped by a cgroup limit).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from blocks import build_model
from space.genotype import ArchSpec

__all__ = ["available_bytes", "training_bytes"]

OPTIMISER_COPIES = 4  # weights, gradients, AdamW's first and second moments


def training_bytes(arch: ArchSpec, num_classes: int, resolution: int, batch_size: int) -> int:
    """Bytes that training ``arch`` needs at ``batch_size`` images of ``resolution`` pixels."""
    with torch.device("meta"):
        model = build_model(arch, num_classes, resolution=resolution)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    saved: dict[int, torch.Tensor] = {}  # by identity: a tensor saved twice counts once

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        saved[id(tensor)] = tensor
        return tensor

    image = torch.empty(batch_size, 3, resolution, resolution, device="meta")
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        model(image)
    activations = sum(t.numel() * t.element_size() for t in saved.values())
    return OPTIMISER_COPIES * weights + activations


def _cgroup_free() -> int | None:
    """Bytes left under this process's cgroup (v2) memory limit, or None without one."""
    limit, used = Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current")
    try:
        text = limit.read_text().strip()
        return None if text == "max" else int(text) - int(used.read_text())
    except (OSError, ValueError):
        return None


def _system_available() -> int | None:
    """``MemAvailable`` from /proc/meminfo, else free pages from ``sysconf``; None if neither."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def available_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` in bytes, or None where it cannot be told."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    known = [b for b in (_system_available(), _cgroup_free()) if b is not None]
    return min(known) if known else None
