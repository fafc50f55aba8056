"""The run configuration: one typed object with visible defaults, validated on construction,
saved as ``config.json`` in the run folder so that every run can be reproduced from its folder."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from search.proxy import DEFAULTS
from space.cost import parse_budget
from space.genotype import MIN_RESOLUTION

__all__ = ["BACKENDS", "SAMPLERS", "SearchConfig"]

BACKENDS = ("optuna", "ray")
SAMPLERS = ("nsga2", "tpe")


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Everything a search needs. ``budget`` is text (``4GFLOPs``, ``600M`` ...), in MACs."""

    budget: str = "4GFLOPs"
    trials: int = 8  # about 8 minutes at 4 GMACs on a 2-core CPU with the default proxy
    data: str = "default"
    epochs: int = DEFAULTS.epochs
    proxy_resolution: int = DEFAULTS.resolution
    resolution: int = 224
    backend: str = "optuna"
    sampler: str = "nsga2"
    prune: bool = True
    out: str = "runs/search"
    seed: int = 0
    device: str = "auto"
    ray_address: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0

    def __post_init__(self) -> None:
        parse_budget(self.budget)
        for name in ("trials", "epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("proxy_resolution", "resolution"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < MIN_RESOLUTION:
                raise ValueError(f"{name} must be an integer >= {MIN_RESOLUTION}, got {value!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.cpus_per_trial <= 0:
            raise ValueError(f"cpus_per_trial must be > 0, got {self.cpus_per_trial!r}")
        if self.gpus_per_trial < 0:
            raise ValueError(f"gpus_per_trial must be >= 0, got {self.gpus_per_trial!r}")
        if not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            raise ValueError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")

    @property
    def budget_macs(self) -> int:
        return parse_budget(self.budget)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchConfig:
        """Build from a dict; an unknown key is an error that lists the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> SearchConfig:
        return cls.from_dict(json.loads(text))
