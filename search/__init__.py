"""Datasets, proxy training, and the Optuna and Ray Tune search drivers.

``search.run(config)`` runs (or continues) a search and returns its trial table.
"""

from __future__ import annotations

import pandas as pd

from search.config import SearchConfig
from search.records import TrialRecord, to_frame

__all__ = ["SearchConfig", "TrialRecord", "run"]


def run(config: SearchConfig) -> pd.DataFrame:
    """Run the search ``config`` describes with its backend; one row per trial
    (``search.records.COLUMNS``)."""
    if config.backend == "ray":
        from search import ray_backend

        return to_frame(ray_backend.run(config))
    from search import optuna_backend

    return to_frame(optuna_backend.run(config))
