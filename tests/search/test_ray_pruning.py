"""Two-objective early stopping on Ray: the Ray scheduler stops the same trials at the same epochs
as the Optuna backend's pruner, for the same recorded reports."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest

pytest.importorskip("ray")

from ray.tune.schedulers import TrialScheduler

from search import optuna_backend, storage
from search.pruning import DominancePruner, TrialStopped
from search.ray_backend import DominanceScheduler

EPOCHS = 3
FINISHED = [  # (MACs, accuracy after each epoch) of the trials already finished
    (1.0e9, (0.50, 0.60, 0.70)),
    (1.5e9, (0.55, 0.65, 0.72)),
    (2.0e9, (0.45, 0.62, 0.74)),
    (3.0e9, (0.60, 0.70, 0.80)),
    (3.5e9, (0.40, 0.50, 0.66)),
]
CANDIDATES = {  # recorded reports of trials that come next
    "dominated at epoch 1": (3.2e9, (0.30, 0.90, 0.90)),
    "cheap, so never dominated": (0.5e9, (0.10, 0.20, 0.30)),
    "dominated at epoch 2": (3.6e9, (0.58, 0.55, 0.90)),
    "ahead all the way": (2.5e9, (0.70, 0.80, 0.85)),
}


def recorded_study(out: Path) -> optuna.Study:
    study = storage.open_study(storage.study_storage(out), optuna.samplers.RandomSampler())
    for macs, accuracies in FINISHED:
        trial = study.ask()
        trial.set_user_attr("macs", macs)
        trial.set_user_attr("epoch_accuracies", list(accuracies))
        study.tell(trial, [accuracies[-1], macs])
    return study


def optuna_stops(study: optuna.Study) -> dict[str, int]:
    stops = {}
    for name, (macs, accuracies) in CANDIDATES.items():
        report = optuna_backend._pruner_report(study, DominancePruner(), macs, EPOCHS)
        for epoch, accuracy in enumerate(accuracies):
            try:
                report(epoch, accuracy)
            except TrialStopped:
                stops[name] = epoch
                break
    return stops


def ray_stops(study: optuna.Study, out: Path) -> tuple[dict[str, int], dict[str, str]]:
    scheduler = DominanceScheduler(str(out), EPOCHS)
    stops, reasons = {}, {}
    for i, (name, (macs, accuracies)) in enumerate(CANDIDATES.items()):
        trial = SimpleNamespace(trial_id=f"ray-{i}")
        scheduler.on_trial_add(None, trial)
        number = study.ask().number  # the study trial the Ray trial runs
        for epoch, accuracy in enumerate(accuracies):
            result = {"epoch": epoch + 1, "accuracy": accuracy, "macs": macs, "number": number}
            if scheduler.on_trial_result(None, trial, result) == TrialScheduler.STOP:
                stops[name] = epoch
                reasons[name] = storage.load_study(out).trials[number].user_attrs["fail_reason"]
                break
    return stops, reasons


def test_ray_and_optuna_stop_the_same_trials_at_the_same_epochs(tmp_path: Path) -> None:
    study = recorded_study(tmp_path)
    expected = optuna_stops(study)
    assert expected == {"dominated at epoch 1": 0, "dominated at epoch 2": 1}
    stops, reasons = ray_stops(study, tmp_path)
    assert stops == expected
    assert reasons["dominated at epoch 1"].startswith("stopped after epoch 1: 4 finished trials")
