"""Datasets, proxy training, and the Optuna and Ray Tune search drivers.

``search.run(config)`` runs (or continues) a search and returns its trial table.
"""

from __future__ import annotations

import pandas as pd

from search.config import SearchConfig
from search.records import OnTrial, TrialRecord, to_frame

__all__ = ["SearchConfig", "TrialRecord", "run", "trial_table"]


def run(config: SearchConfig, on_trial: OnTrial | None = None) -> pd.DataFrame:
    """Run (or continue) the search ``config`` describes; one row per trial
    (``search.records.COLUMNS``). ``on_trial(finished, best_accuracy)`` reports progress."""
    if config.backend == "ray":
        from search import ray_backend

        return to_frame(ray_backend.run(config, on_trial))
    from search import optuna_backend

    return to_frame(optuna_backend.run(config, on_trial))


def trial_table(config: SearchConfig) -> pd.DataFrame:
    """The trial table of the run folder ``config.out`` as it stands, without running anything."""
    if config.backend == "ray":
        from search import ray_backend

        return to_frame(ray_backend.records(config))
    from search import optuna_backend

    return to_frame(optuna_backend.records(optuna_backend.load_study(config)))
