"""The run folder's lock: one process at a time in a run folder (a search or a retraining)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import filelock

__all__ = ["FolderBusy", "folder_lock"]


class FolderBusy(RuntimeError):
    """Another process is running in the same run folder (a search or a retraining)."""


@contextlib.contextmanager
def folder_lock(out: str | Path) -> Iterator[None]:
    """Hold ``out/.lock`` for the duration; another process gets ``FolderBusy`` at once."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(out / ".lock")
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        raise FolderBusy(f"another run is using {out}; wait for it or use another --out") from None
    try:
        yield
    finally:
        lock.release()
