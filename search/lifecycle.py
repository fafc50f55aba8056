"""The study's lifecycle around a backend, once for every backend.

``run_trials``: the data and the budget checked before the run folder is touched (``check``),
the folder locked (by the caller when it goes on to more steps under the same lock:
``check``, then ``run_trials_locked``), the study opened, the trials
a dead process left running failed and queued again, the backend's trials run, the same recovery
for trials the backend left running (Ray's, when its experiment stops), and the check that the
same failure did not repeat.
"""

from __future__ import annotations

import optuna

from common import datasets
from common.lock import folder_lock
from search import backends, storage
from search.config import SearchConfig
from search.records import OnTrial
from space.sampling import check_budget

__all__ = ["CONFIG", "check", "run_trials", "run_trials_locked"]

CONFIG = "config"  # a shared study's note of the search it holds (the first run's config)


def run_trials(config: SearchConfig, on_trial: OnTrial | None = None) -> None:
    """Run (or continue) the search ``config`` describes with its backend, until its trial slots
    are used, holding the run folder's lock; ``search.storage.trial_table`` reads the trials
    back. ``RepeatedFailure`` when the same failure repeats."""
    check(config)
    with folder_lock(config.out):
        run_trials_locked(config, on_trial)


def check(config: SearchConfig) -> None:
    """``ValueError`` for a dataset that does not load, a budget below the space's smallest
    architecture (the data loads once per process: ``common.datasets.load`` keeps it), a
    one-shot search that cannot run (``oneshot.search.check``), or a shared storage that cannot
    be opened or holds a different search."""
    datasets.load(config.data)
    check_budget(config.budget_macs, config.resolution, config.block_types)
    if config.strategy == "oneshot":
        from oneshot import search as oneshot_search  # torch-heavy: only when asked for

        oneshot_search.check(config)
    if config.storage is not None:
        study = _shared_study(config)
        saved = study.user_attrs.get(CONFIG) if study is not None else None
        changed = config.changed_from(SearchConfig.from_json(saved)) if saved else []
        if changed:
            raise ValueError(
                f"the study in {storage.hidden(config.storage)} holds a search made with "
                f"{', '.join(changed)}; run with those options to join it, or use another storage"
            )


def _shared_study(config: SearchConfig) -> optuna.Study | None:
    """The study in ``config.storage``, None before the first run creates it."""
    where = storage.open_url(config.storage)
    names = {s.study_name for s in optuna.get_all_study_summaries(where)}
    if storage.STUDY_NAME not in names:
        return None
    return optuna.load_study(study_name=storage.STUDY_NAME, storage=where)


def run_trials_locked(config: SearchConfig, on_trial: OnTrial | None = None) -> None:
    """``run_trials`` for a caller that holds the run folder's lock (the pipeline, which goes
    on to its steps under it), after ``check``."""
    backend = backends.get(config.backend)
    storage.note_storage(config.out, config.storage)
    where, shared = storage.study_storage(config.out), config.storage is not None
    study = storage.open_study(where, optuna.samplers.RandomSampler(), config.objectives)
    if shared and CONFIG not in study.user_attrs:
        study.set_user_attr(CONFIG, config.to_json())
    target = config.latency_target()
    if target is not None:
        study.set_user_attr(storage.LATENCY_MACHINE, target.fingerprint().describe())
    first = len(study.trials)  # trials of this run (redone ones too) number from here
    storage.recover_interrupted(study, where, shared)
    backend.run_trials(config, first, on_trial)
    # Trials still running when the backend stopped (Ray's, say) are redone by the next run.
    study = storage.load_study(config.out)
    storage.recover_interrupted(study, where, shared)
    if on_trial is not None:
        on_trial(*storage.progress(study))
    storage.check_failures(study, first, config.max_repeated_failures)
