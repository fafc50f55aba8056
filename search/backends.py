"""The search backends, by name, and the study's lifecycle around them.

A backend only runs trials; the run folder's study (``search.storage``) holds them, so every
backend's trials read back the same way. ``run_trials`` is the lifecycle, once for every backend:
the data and the budget checked, the folder locked (by the caller when it runs more steps under
the same lock: ``run_trials_locked``), the study opened, the trials a dead process left running
failed and queued again, the backend's trials run, then the same recovery for trials the backend
left running, and the repeated-failure check.

Backends import lazily (Ray is heavy): the table names where each one lives.
"""

from __future__ import annotations

import importlib
import re
from importlib import metadata
from typing import TYPE_CHECKING, Protocol

import optuna

from common import datasets
from common.lock import folder_lock
from search import storage
from search.records import OnTrial
from space.sampling import check_budget

if TYPE_CHECKING:
    from search.config import SearchConfig

__all__ = [
    "BACKENDS",
    "NEEDS",
    "Backend",
    "check_versions",
    "get",
    "run_trials",
    "run_trials_locked",
]

# The one table of backends: name -> where it lives.
_WHERE = {"optuna": "search.optuna_backend:OptunaBackend", "ray": "search.ray_backend:RayBackend"}
BACKENDS = tuple(_WHERE)
# The oldest versions whose API the backends use: Optuna's Trial.set_constraint (5.0; every
# backend keeps its trials in an Optuna study), and ray.tune.RunConfig, FailureConfig and
# ray.tune.report(metrics) (2.41). pyproject.toml asks for the same floors.
NEEDS = {"optuna": {"optuna": "5.0"}, "ray": {"optuna": "5.0", "ray": "2.41"}}


class Backend(Protocol):
    """A search driver. ``run_trials(config, first, on_trial)`` runs trials into the open study
    of ``config.out`` until ``config.trials`` slots are used or the same failure repeats among
    the trials numbered ``first`` or later, calling ``on_trial(finished, best_accuracy)`` as
    trials end. It is called by ``run_trials`` with the folder locked and recovered."""

    name: str

    def run_trials(self, config: SearchConfig, first: int, on_trial: OnTrial | None) -> None: ...


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


def run_trials(config: SearchConfig, on_trial: OnTrial | None = None) -> None:
    """Run (or continue) the search ``config`` describes with its backend, until its trial slots
    are used, holding the run folder's lock; ``search.storage.trial_table`` reads the trials
    back. ``RepeatedFailure`` when the same failure repeats."""
    with folder_lock(config.out):
        run_trials_locked(config, on_trial)


def run_trials_locked(config: SearchConfig, on_trial: OnTrial | None = None) -> None:
    """``run_trials`` for a caller that holds the run folder's lock (the pipeline, which goes
    on to its steps under it)."""
    backend = get(config.backend)
    datasets.load(config.data)  # a bad dataset or budget fails before the study is touched
    check_budget(config.budget_macs, config.resolution)
    journal = storage.journal(config.out)
    study = storage.open_study(journal, optuna.samplers.RandomSampler())
    first = len(study.trials)  # trials of this run (redone ones too) number from here
    storage.recover_interrupted(study, journal)
    backend.run_trials(config, first, on_trial)
    # Trials still running when the backend stopped (Ray's, say) are redone by the next run.
    study = storage.load_study(config.out)
    storage.recover_interrupted(study, journal)
    if on_trial is not None:
        on_trial(*storage.progress(study))
    storage.check_failures(study, first, config.max_repeated_failures)
