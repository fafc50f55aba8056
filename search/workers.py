"""Worker processes that train side by side on one device, each tied to its parent's life.

Several proxy trainings at once fill a GPU that one small training leaves waiting on the host,
and on a CPU they use the cores better than one training's threads do (small operators on
small maps hardly parallelise). Workers are spawned (CUDA cannot be forked); on the CPU the
cores are shared out between them. A worker whose parent dies (a SIGKILL of the run) is killed
too on Linux, and otherwise notices it after its current training, so that a rerun does not
compete with orphans of the killed one.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor

import torch

from common.device import resolve_device
from search.config import SearchConfig

__all__ = [
    "CPU_WORKERS",
    "die_with_parent",
    "parent_alive",
    "pool",
    "search_workers",
    "share_cores",
    "step_workers",
]

CPU_WORKERS = 4  # at most this many trainings at once on a CPU by default (each a model in memory)
_PR_SET_PDEATHSIG = 1
_parent = os.getppid()


def die_with_parent() -> None:
    """Ask the kernel to kill this process when its parent dies (Linux; elsewhere a no-op)."""
    global _parent
    _parent = os.getppid()
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def parent_alive() -> bool:
    """Whether the process that started this one still runs."""
    return os.getppid() == _parent


def share_cores(workers: int, device: torch.device) -> None:
    """On the CPU, give this process its share of the cores (at least one thread)."""
    if device.type == "cpu" and workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def _start(workers: int, device: str) -> None:
    die_with_parent()
    share_cores(workers, torch.device(device))


def pool(workers: int, device: torch.device) -> ProcessPoolExecutor:
    """``workers`` spawned processes that share ``device``."""
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start,
        initargs=(workers, str(device)),
    )


def search_workers(config: SearchConfig) -> int:
    """Trials trained at once by the search: ``parallel``, else one."""
    return config.parallel or 1


def step_workers(config: SearchConfig) -> int:
    """Trainings at once after the search: ``parallel``; else one on CUDA, and on the CPU one
    per core, at most ``CPU_WORKERS`` (on two cores, two one-thread trainings get through 1.3x
    the images per second of one two-thread training: ``docs/backends.md``)."""
    if config.parallel:
        return config.parallel
    if resolve_device(config.device).type == "cuda":
        return 1
    return max(1, min(os.cpu_count() or 1, CPU_WORKERS))
