"""The search backends, by name. A backend only runs trials; the run folder's study
(``search.storage``) holds them, so every backend's trials read back the same way.

Backends import lazily (Ray is heavy): the table names where each one lives.
"""

from __future__ import annotations

import importlib
from typing import Protocol

from search.config import BACKENDS, SearchConfig
from search.records import OnTrial

__all__ = ["Backend", "get"]

_WHERE = {"optuna": "search.optuna_backend:OptunaBackend", "ray": "search.ray_backend:RayBackend"}
assert tuple(_WHERE) == BACKENDS


class Backend(Protocol):
    """A search driver. ``run(config, on_trial)`` runs (or continues) the search in
    ``config.out`` until ``config.trials`` slots are used, calling ``on_trial(finished,
    best_accuracy)`` as trials end; afterwards (or any time) ``search.storage.records`` reads
    the trials back."""

    name: str

    def run(self, config: SearchConfig, on_trial: OnTrial | None = None) -> None: ...


def get(name: str) -> Backend:
    """The backend called ``name``; an unknown name lists the known ones."""
    if name not in _WHERE:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(_WHERE)}")
    module, _, cls = _WHERE[name].partition(":")
    return getattr(importlib.import_module(module), cls)()
