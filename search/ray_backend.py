"""The Ray Tune backend: the same search space and proxy through ``ray.tune.Tuner``, for parallel
trials on GPUs and on existing Ray clusters.

- Search: ``OptunaSearch`` over the same define-by-run space (``space.sampling.sample``), with
  the two objectives (accuracy up, MACs down) and the same NSGA-II or TPE sampler; the sampled
  architecture travels in the trial's config as JSON.
- Scheduling: ASHA on the per-epoch accuracy (a trial reports after every epoch); a trial it
  stops is recorded as PRUNED with its last accuracy (the searcher is told that accuracy).
- Resources: ``cpus_per_trial`` and fractional ``gpus_per_trial`` per trial; Ray packs as many
  trials as the resources allow.
- Cluster: ``ray_address`` joins an existing cluster; without it a local Ray is started.
- Resume: the experiment lives in ``<out>/ray``; rerunning the same command restores it with
  ``Tuner.restore``, the searcher's state included, and reruns the unfinished trials.

Results become the same ``TrialRecord`` rows as the Optuna backend's (backend ``ray``).
"""

from __future__ import annotations

import functools
import os
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Ray's quiet reporter; verbose=0 below

import optuna
import ray
import torch
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from search import data as datasets
from search import proxy
from search.config import SearchConfig
from search.records import OnTrial, TrialRecord, best_accuracy
from space.cost import estimate
from space.genotype import ArchSpec
from space.sampling import check_budget, sample

__all__ = ["EXPERIMENT", "ProxyFailed", "records", "run"]

EXPERIMENT = "ray"
_PROGRESS: dict[str, OnTrial] = {}  # the current process's progress callback, by name


class _Progress(tune.Callback):
    """Calls this process's ``on_trial`` as trials end. Only its name is pickled into the
    experiment, so a restored run reports to the process that restores it."""

    def __init__(self) -> None:
        self.finished: list[float | None] = []

    def _ended(self, trial: Any) -> None:
        self.finished.append((trial.last_result or {}).get("accuracy"))
        callback = _PROGRESS.get("on_trial")
        if callback is not None:
            callback(len(self.finished), best_accuracy(self.finished))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial)


class ProxyFailed(RuntimeError):
    """Raised in a Ray trial whose proxy training failed (NaN loss, out of memory)."""


def _space(trial: Any, *, budget: int, resolution: int) -> dict[str, str]:
    """Ray's define-by-run space: our one sampler; the architecture goes into the config."""
    return {"arch": sample(trial, budget, resolution).to_json()}


def _trainable(config: dict[str, Any], *, settings: dict[str, Any]) -> None:
    """One Ray trial: proxy-train the sampled architecture, reporting after every epoch."""
    torch.set_num_threads(max(1, int(settings["cpus_per_trial"])))
    arch = ArchSpec.from_json(config["arch"])
    cost = estimate(arch)
    data = datasets.load(settings["data"])
    start, accuracies = time.time(), []

    def report(epoch: int, accuracy: float) -> None:
        accuracies.append(accuracy)
        tune.report(
            {
                "accuracy": accuracy,
                "macs": cost.macs,
                "params": cost.params,
                "epoch": epoch + 1,
                "epoch_accuracies": list(accuracies),
                "start": start,
                "end": time.time(),
            }
        )

    device = "cuda" if settings["gpus_per_trial"] > 0 else settings["device"]
    result = proxy.train(
        arch,
        data,
        epochs=settings["epochs"],
        resolution=settings["proxy_resolution"],
        seed=settings["seed"],
        device=device,
        report=report,
        progress=False,
    )
    if result.failed:
        raise ProxyFailed(result.reason)


def _sampler(config: SearchConfig) -> optuna.samplers.BaseSampler:
    if config.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=config.seed, multivariate=True, group=True)
    population = max(4, min(50, config.trials // 4))
    return optuna.samplers.NSGAIISampler(population_size=population, seed=config.seed)


def _tuner(config: SearchConfig, experiment: Path) -> tune.Tuner:
    settings = {
        "data": datasets.absolute(config.data),
        "epochs": config.epochs,
        "proxy_resolution": config.proxy_resolution,
        "seed": config.seed,
        "device": config.device,
        "cpus_per_trial": config.cpus_per_trial,
        "gpus_per_trial": config.gpus_per_trial,
    }
    trainable = tune.with_resources(
        functools.partial(_trainable, settings=settings),
        {"cpu": config.cpus_per_trial, "gpu": config.gpus_per_trial},
    )
    if tune.Tuner.can_restore(str(experiment)):
        return tune.Tuner.restore(str(experiment), trainable, resume_unfinished=True)
    search = OptunaSearch(
        space=functools.partial(_space, budget=config.budget_macs, resolution=config.resolution),
        metric=["accuracy", "macs"],
        mode=["max", "min"],
        sampler=_sampler(config),
    )
    scheduler = ASHAScheduler(
        metric="accuracy",
        mode="max",
        time_attr="training_iteration",
        max_t=config.epochs,
        grace_period=1,
        reduction_factor=2,
    )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=search,
            scheduler=scheduler,
            num_samples=config.trials,
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=EXPERIMENT,
            storage_path=str(experiment.parent),
            failure_config=tune.FailureConfig(max_failures=0),
            callbacks=[_Progress()],
            verbose=0,
        ),
    )


def _trial_dirname(trial: Any) -> str:
    """``trial_<n>_<id>``, n counting from 1 in creation order (Ray's experiment tag)."""
    return f"trial_{trial.experiment_tag.split('_', 1)[0]}_{trial.trial_id}"


def _number(path: str, fallback: int) -> int:
    """The trial's 0-based creation index, from its folder name (see ``_trial_dirname``)."""
    match = re.match(r"trial_(\d+)_", Path(path).name)
    return int(match.group(1)) - 1 if match else fallback


def _record(number: int, result: Any, epochs: int) -> TrialRecord:
    arch_json = result.config.get("arch", "")
    metrics = result.metrics or {}
    accuracies = tuple(metrics.get("epoch_accuracies", ()))
    cost = estimate(ArchSpec.from_json(arch_json)) if arch_json else None
    if result.error is not None:
        state, reason = "FAIL", str(result.error).strip().splitlines()[-1]
    elif len(accuracies) < epochs:
        state, reason = "PRUNED", f"stopped by ASHA after epoch {len(accuracies)}"
    else:
        state, reason = "COMPLETE", ""
    start, end = metrics.get("start"), metrics.get("end")
    return TrialRecord(
        number=number,
        state=state,
        backend="ray",
        arch=arch_json,
        blocks=ArchSpec.from_json(arch_json).block_mix if arch_json else "",
        params=cost.params if cost else None,
        macs=cost.macs if cost else None,
        accuracy=accuracies[-1] if accuracies and state != "FAIL" else None,
        epoch_accuracies=accuracies,
        train_seconds=(end - start) if start and end else None,
        start=datetime.fromtimestamp(start) if start else None,
        end=datetime.fromtimestamp(end) if end else None,
        fail_reason=reason,
    )


def _records(results: Any, epochs: int) -> list[TrialRecord]:
    return [_record(_number(r.path, i), r, epochs) for i, r in enumerate(results)]


def records(config: SearchConfig) -> list[TrialRecord]:
    """The trials of the run folder's Ray experiment as they stand, without running any."""
    experiment = Path(config.out).resolve() / EXPERIMENT
    if not tune.Tuner.can_restore(str(experiment)):
        raise ValueError(f"{config.out} holds no Ray Tune experiment ({EXPERIMENT}/)")
    results = tune.Tuner.restore(str(experiment), trainable=_trainable).get_results()
    return _records(list(results), config.epochs)


def run(config: SearchConfig, on_trial: OnTrial | None = None) -> list[TrialRecord]:
    """Run (or resume) the search with Ray Tune; returns one record per trial.

    ``on_trial(finished, best_accuracy)`` is called as trials end (in this process).
    """
    datasets.load(config.data)
    check_budget(config.budget_macs, config.resolution)
    experiment = Path(config.out).resolve() / EXPERIMENT
    experiment.parent.mkdir(parents=True, exist_ok=True)
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(
            address=config.ray_address,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    if on_trial is not None:
        _PROGRESS["on_trial"] = on_trial
    try:
        return _records(list(_tuner(config, experiment).fit()), config.epochs)
    finally:
        _PROGRESS.pop("on_trial", None)
        if started_here:
            ray.shutdown()
