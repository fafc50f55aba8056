"""Datasets, proxy training, and the Optuna and Ray Tune search drivers.

``search.run(config)`` runs (or continues) a search and returns its trial table;
``search.trial_table(config)`` reads the table of a run folder without running anything.
"""

from __future__ import annotations

import pandas as pd

from search import backends, storage
from search.config import SearchConfig
from search.proxy import ProxySettings
from search.records import OnTrial, TrialRecord, to_frame

__all__ = ["ProxySettings", "SearchConfig", "TrialRecord", "run", "trial_table"]


def run(config: SearchConfig, on_trial: OnTrial | None = None) -> pd.DataFrame:
    """Run (or continue) the search ``config`` describes with its backend; one row per trial
    (``search.records.COLUMNS``). ``on_trial(finished, best_accuracy)`` reports progress."""
    backends.get(config.backend).run(config, on_trial)
    return trial_table(config)


def trial_table(config: SearchConfig) -> pd.DataFrame:
    """The trial table of the run folder ``config.out`` as it stands, without running anything;
    ``ValueError`` if the folder holds no search."""
    return to_frame(storage.records(config.out))
