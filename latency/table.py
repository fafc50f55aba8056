"""The per-machine table of unit latencies, filled lazily and kept on disk.

One JSON-lines file per fingerprint (``<key>.jsonl`` in the cache folder: ``$HYBRID_NAS_CACHE``,
else ``$XDG_CACHE_HOME/hybrid-nas``, else ``~/.cache/hybrid-nas``, then ``latency/``): its first
line is the fingerprint, every other line one measured unit. A unit missing from the table is
measured once, under a lock shared by every process on the machine (two measurements at once
would slow each other), and appended; a second search on the same machine measures nothing the
table has. A line torn by a kill is ignored.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import filelock
import torch

from latency.target import Target
from latency.timing import Timing, time_module
from latency.units import Strides, Unit, output_strides

__all__ = ["Entry", "LatencyTable", "cache_folder"]


def cache_folder() -> Path:
    """Where latency tables live (see the module docstring)."""
    if os.environ.get("HYBRID_NAS_CACHE"):
        root = Path(os.environ["HYBRID_NAS_CACHE"])
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hybrid-nas"
    return root / "latency"


@dataclasses.dataclass(frozen=True)
class Entry:
    """A measured unit: its latency and the strides of its output map."""

    timing: Timing
    out_strides: Strides


class LatencyTable:
    """The measured units of ``target`` on this machine; ``entry(unit)`` looks a unit up and
    measures it when it is missing. ``measured`` and ``measure_seconds`` count what this object
    measured."""

    def __init__(self, target: Target, folder: str | Path | None = None) -> None:
        self.target = target
        self.fingerprint = target.fingerprint()
        folder = Path(folder) if folder is not None else cache_folder()
        self.path = folder / f"{self.fingerprint.key}.jsonl"
        self.lock = filelock.FileLock(folder / ".measure.lock")
        self.rows: dict[str, Entry] = {}
        self.measured, self.measure_seconds = 0, 0.0
        self._read()

    def __len__(self) -> int:
        return len(self.rows)

    def _read(self) -> None:
        if not self.path.exists():
            return
        for line in self.path.read_text().splitlines()[1:]:
            try:
                row = json.loads(line)
                key, strides = row.pop("key"), tuple(row.pop("out_strides"))
                self.rows[key] = Entry(Timing(**row), strides)
            except (json.JSONDecodeError, TypeError, KeyError):
                continue  # a line torn by a kill

    def entry(self, unit: Unit) -> Entry:
        """The unit's latency on this machine and its output strides: from the table, else
        measured and added."""
        if unit.key in self.rows:
            return self.rows[unit.key]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.lock:
            self._read()  # another process may have measured it meanwhile
            if unit.key not in self.rows:
                self._append(unit.key, self._measure(unit))
        return self.rows[unit.key]

    def _measure(self, unit: Unit) -> Entry:
        started = time.perf_counter()
        module, inputs, takes_tokens = unit.build(self.target.batch)
        with torch.inference_mode():
            strides = output_strides(module(*inputs) if takes_tokens else module(inputs[0]))
        timing = time_module(module, inputs, self.target, takes_tokens=takes_tokens)
        self.measure_seconds += time.perf_counter() - started
        self.measured += 1
        return Entry(timing, strides)

    def _append(self, key: str, entry: Entry) -> None:
        self.rows[key] = entry
        new = not self.path.exists() or self.path.stat().st_size == 0
        row = {"key": key, **dataclasses.asdict(entry.timing), "out_strides": entry.out_strides}
        with self.path.open("a") as handle:
            if new:
                handle.write(json.dumps({"fingerprint": self.fingerprint.to_dict()}) + "\n")
            handle.write(json.dumps(row) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
