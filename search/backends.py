"""The search backends, by name. A backend only runs trials; the run folder's study
(``search.storage``) holds them, so every backend's trials read back the same way, and the study's
lifecycle around a backend is ``search.lifecycle``'s, the same for every backend.

Backends import lazily (Ray is heavy): the one table of backends names where each one lives.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from concurrent.futures import Future
from importlib import metadata
from typing import TYPE_CHECKING, Any, Protocol

from search.records import OnTrial

if TYPE_CHECKING:
    from search.config import SearchConfig

__all__ = ["BACKENDS", "NEEDS", "Backend", "StepPool", "check_versions", "get"]

# The one table of backends: name -> where it lives.
_WHERE = {"optuna": "search.optuna_backend:OptunaBackend", "ray": "search.ray_backend:RayBackend"}
BACKENDS = tuple(_WHERE)
# The oldest versions whose API the backends use: Optuna's Trial.set_constraint (5.0; every
# backend keeps its trials in an Optuna study), and ray.tune.RunConfig, FailureConfig and
# ray.tune.report(metrics) (2.41). pyproject.toml asks for the same floors.
NEEDS = {"optuna": {"optuna": "5.0"}, "ray": {"optuna": "5.0", "ray": "2.41"}}


class StepPool(Protocol):
    """Where the trainings after the search run: a context manager whose ``submit(function,
    *args)`` returns a ``concurrent.futures.Future``, ``workers`` trainings at once."""

    workers: int

    def __enter__(self) -> StepPool: ...

    def __exit__(self, *exc: object) -> None: ...

    def submit(self, function: Callable[..., Any], *args: Any) -> Future: ...


class Backend(Protocol):
    """A search driver. ``run_trials(config, first, on_trial)`` runs trials into the open study
    of ``config.out`` until ``config.trials`` slots are used or the same failure repeats among
    the trials numbered ``first`` or later, calling ``on_trial(finished, best_accuracy)`` as
    trials end. ``search.lifecycle.run_trials`` calls it with the folder locked and recovered.
    ``step_pool(config)`` is where the pipeline's trainings after the search run: None for
    this machine's own worker processes (``search.workers``)."""

    name: str

    def run_trials(self, config: SearchConfig, first: int, on_trial: OnTrial | None) -> None: ...

    def step_pool(self, config: SearchConfig) -> StepPool | None: ...


def _release(text: str) -> tuple[int, ...]:
    """``"2.41.0rc1"`` -> (2, 41, 0): the leading numbers of a version."""
    numbers = re.match(r"\d+(?:\.\d+)*", text)
    return tuple(int(n) for n in numbers.group().split(".")) if numbers else ()


def check_versions(name: str) -> None:
    """Raise ``ValueError`` naming the package and the version it needs when an installed
    package is older than backend ``name`` needs (or missing)."""
    for package, oldest in NEEDS.get(name, {}).items():
        try:
            installed = metadata.version(package)
        except metadata.PackageNotFoundError:
            raise ValueError(
                f"the {name} backend needs {package} >= {oldest}, which is not installed"
            ) from None
        if _release(installed) < _release(oldest):
            raise ValueError(
                f"the {name} backend needs {package} >= {oldest}, but {installed} is installed; "
                f"pip install '{package}>={oldest}'"
            )


def get(name: str) -> Backend:
    """The backend called ``name``; an unknown name lists the known ones. (``run_search.py``
    checks the installed versions, ``check_versions``, before the run folder is touched.)"""
    if name not in _WHERE:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(_WHERE)}")
    module, _, cls = _WHERE[name].partition(":")
    return getattr(importlib.import_module(module), cls)()
