"""The run folder's record of finished proxy trainings outside the search trials (scaling
candidates, the family, the published baselines, the noise measurement): ``trainings.jsonl``.

Each training is keyed by what defines it (genotype, proxy recipe with its input size, dataset,
seed) and appended as one JSON line the moment it ends, so a killed run loses only the training
that was running, and a step that finds its key here does not train again. A line torn by a
kill is ignored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from search.proxy import ProxyResult, ProxySettings
from space.genotype import ArchSpec

__all__ = ["FILE", "Training", "TrainingLog", "training_key"]

FILE = "trainings.jsonl"


def training_key(arch: ArchSpec, recipe: ProxySettings, data: str, seed: int) -> str:
    """What defines a training, hashed: the same key is the same training."""
    text = json.dumps(
        [arch.to_dict(), dataclasses.asdict(recipe), data, seed], sort_keys=True, default=str
    )
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclasses.dataclass(frozen=True)
class Training:
    """One finished proxy training: what it trained (``step`` and ``label`` say why) and how it
    went (``ProxyResult``'s fields)."""

    key: str
    step: str
    label: str
    arch: ArchSpec
    recipe: dict[str, Any]
    data: str
    seed: int
    accuracy: float
    epoch_accuracies: tuple[float, ...]
    seconds: float
    failed: bool = False
    reason: str = ""

    @classmethod
    def of(
        cls,
        step: str,
        label: str,
        arch: ArchSpec,
        recipe: ProxySettings,
        data: str,
        seed: int,
        result: ProxyResult,
    ) -> Training:
        return cls(
            training_key(arch, recipe, data, seed),
            step,
            label,
            arch,
            dataclasses.asdict(recipe),
            data,
            seed,
            result.accuracy,
            tuple(result.epoch_accuracies),
            result.seconds,
            result.failed,
            result.reason,
        )

    @property
    def input_size(self) -> int:
        """The proxy input it trained at."""
        return int(self.recipe["resolution"])


class TrainingLog:
    """``trainings.jsonl`` of a run folder: read it, look a training up, add one."""

    def __init__(self, out: str | Path) -> None:
        self.path = Path(out) / FILE

    def load(self) -> dict[str, Training]:
        """Every recorded training by key (a later record of a key replaces an earlier one)."""
        found: dict[str, Training] = {}
        if not self.path.exists():
            return found
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
                row["epoch_accuracies"] = tuple(row["epoch_accuracies"])
                row["arch"] = ArchSpec.from_json(row["arch"])
                training = Training(**row)
            except (json.JSONDecodeError, TypeError, KeyError, ValueError):
                continue  # a line torn by a kill
            found[training.key] = training
        return found

    def add(self, training: Training) -> None:
        """Append ``training`` and make sure it is on disk before returning."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torn = self.path.exists() and self.path.stat().st_size > 0 and not _ends_a_line(self.path)
        with self.path.open("a") as handle:
            row = {**dataclasses.asdict(training), "arch": training.arch.to_json()}
            handle.write(("\n" if torn else "") + json.dumps(row) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def _ends_a_line(path: Path) -> bool:
    with path.open("rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"
