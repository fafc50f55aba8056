"""After the search: S, the family and the baselines measured whole on the run's latency target.

Each network is measured once (``latency.predict.measure``) and appended to ``latency.jsonl`` in
the run folder, keyed by its genotype and the machine's fingerprint, the moment it is measured;
a rerun, or ``--report-only``, reads what is there and measures only what is missing (the
report-only run measures nothing).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from latency.predict import measure
from search.config import SearchConfig
from space.genotype import ArchSpec

__all__ = ["FILE", "measured_ms"]

FILE = "latency.jsonl"


def _read(path: Path, machine: str) -> dict[str, float]:
    found: dict[str, float] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a kill
            if row.get("fingerprint") == machine:
                found[row["arch"]] = row["median_ms"]
    return found


def measured_ms(
    archs: list[ArchSpec], config: SearchConfig, *, measure_missing: bool = True
) -> dict[str, float]:
    """Each network's measured latency in ms, by its genotype's JSON: read from the run
    folder's record, the missing ones measured and added when ``measure_missing``."""
    target = config.latency_target()
    assert target is not None, "the run has no latency device"
    fingerprint = target.fingerprint()
    path = Path(config.out) / FILE
    found = _read(path, fingerprint.key)
    for arch in archs:
        text = arch.to_json()
        if text in found or not measure_missing:
            continue
        timing = measure(arch, target)
        row = {"arch": text, "fingerprint": fingerprint.key, **dataclasses.asdict(timing)}
        with path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        found[text] = timing.median_ms
    return found
