"""One search trial, the same for every backend.

A backend runs each trial in this order:

1. ``define(trial, config)``, where the study is asked for a trial: draws an architecture
   within the budget (``space.sampling.sample``; with a latency limit, scaled down until its
   predicted latency keeps it: ``search.latency_limit``), stores it, its cost and its predicted
   latency in the trial's user attributes and gives the samplers the budget constraints;
2. ``evaluate(attrs, study, config, data, report)``, where the trial trains: reuses the result of
   the same architecture already trained in the study, or proxy-trains it, passing each
   epoch's accuracy to ``report(epoch, accuracy)`` (a pruner may stop the trial there), and
   stores the outcome in the trial's user attributes;
3. the backend tells the study the returned ``Outcome``.

The sampler every backend uses comes from ``sampler(config)``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import optuna
from optuna.trial import FrozenTrial, TrialState

from common.datasets import ImageData
from search import latency_limit, proxy
from search.config import SearchConfig
from search.pruning import TrialStopped
from search.storage import completed, trial_id
from space.cost import estimate
from space.genotype import ArchSpec
from space.sampling import draw, sample

__all__ = [
    "QUEUED_SUBNET",
    "Attrs",
    "Outcome",
    "StoredTrial",
    "define",
    "evaluate",
    "sampler",
]

log = logging.getLogger(__name__)
QUEUED_SUBNET = "oneshot_subnet"  # a one-shot search's trial: the number of the subnet it trains
Report = Callable[[int, float], None]


class Attrs(Protocol):
    """Where a trial's user attributes go: an ``optuna.Trial``, or a ``StoredTrial``."""

    def set_user_attr(self, key: str, value: Any) -> None: ...


@dataclasses.dataclass(frozen=True)
class StoredTrial:
    """A trial's user attributes written straight to the storage, from a process that did not
    ask for the trial (a Ray worker)."""

    storage: optuna.storages.BaseStorage
    number: int

    def set_user_attr(self, key: str, value: Any) -> None:
        self.storage.set_trial_user_attr(trial_id(self.storage, self.number), key, value)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What to tell the study: ``values`` (``SearchConfig.objectives``: accuracy, MACs and,
    with a latency device, latency in ms) for a COMPLETE trial, else the state and its reason."""

    state: TrialState
    values: tuple[float, ...] | None = None
    reason: str = ""


class PicklableNSGAII(optuna.samplers.NSGAIISampler):
    """NSGA-II that can be pickled: Optuna 5.1's sampler keeps a ``threading.Lock`` that does
    not pickle, and Ray Tune pickles its searcher, sampler included, when the Tuner starts (every
    Ray search failed with "cannot pickle '_thread.lock' object"). The lock is made anew."""

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_thread_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


def sampler(
    config: SearchConfig, seed: int | None = None, population: int | None = None
) -> optuna.samplers.BaseSampler:
    """The search's sampler: NSGA-II (``population``, by default max(4, min(50, trials / 4)),
    so that small searches still evolve) or multivariate TPE, seeded with ``seed`` (default the
    run's)."""
    seed = config.seed if seed is None else seed
    if config.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)
    if population is None:
        population = max(4, min(50, config.trials // 4))
    return PicklableNSGAII(population_size=population, seed=seed)


def define(trial: optuna.Trial, config: SearchConfig) -> ArchSpec:
    """Draw the trial's architecture and store it, its cost and the budget constraint. In a
    one-shot search the trials are the subnets it queued (``oneshot.search``): their parameters
    are fixed, and the draw without fitting gives the subnet scored."""
    if config.strategy == "oneshot":
        if not {QUEUED_SUBNET, "redo_of"} & set(trial.user_attrs):
            raise ValueError("a one-shot search's trials are its queued subnets; none was queued")
        arch = draw(trial, config.resolution, config.block_types)
    else:
        arch = sample(trial, config.budget_macs, config.resolution, config.block_types)
    if config.latency_device is not None:
        arch = latency_limit.within_limit(arch, config)
    cost = estimate(arch)
    trial.set_constraint("macs_over_budget", cost.macs - config.budget_macs)
    attrs = [
        ("backend", config.backend),
        ("arch", arch.to_json()),
        ("blocks", arch.block_mix),
        ("macs", cost.macs),
        ("params", cost.params),
    ]
    if config.latency_device is not None:
        latency = latency_limit.predicted_ms(arch, config)
        attrs.append(("latency_ms", latency))
        if config.latency_limit_ms is not None:
            trial.set_constraint("latency_over_budget", latency - config.latency_limit_ms)
    for key, value in attrs:
        trial.set_user_attr(key, value)
    return arch


def _twin(study: optuna.Study, arch_json: str) -> FrozenTrial | None:
    """A completed trial of the study with the same architecture, if any."""
    return next((t for t in completed(study) if t.user_attrs.get("arch") == arch_json), None)


def _reuse(twin: FrozenTrial, attrs: Attrs, report: Report | None) -> Outcome:
    """The outcome of ``twin``, the same architecture trained earlier in the study (its epochs
    passed to ``report`` when given)."""
    epochs = twin.user_attrs.get("epoch_accuracies", [])
    attrs.set_user_attr("duplicate_of", twin.number)
    attrs.set_user_attr("epoch_accuracies", epochs)
    attrs.set_user_attr("train_seconds", 0.0)
    for epoch, accuracy in enumerate(epochs if report is not None else []):
        report(epoch, accuracy)
    return Outcome(TrialState.COMPLETE, tuple(twin.values))


def _outcome(result: proxy.ProxyResult, arch: ArchSpec, config: SearchConfig) -> Outcome:
    """What a finished training tells the study; the reason is kept (a retry at a lower
    learning rate says so on a COMPLETE trial too)."""
    if result.failed:
        return Outcome(TrialState.FAIL, reason=result.reason)
    values = (result.accuracy, float(estimate(arch).macs))
    if config.latency_device is not None:
        values += (latency_limit.predicted_ms(arch, config),)
    return Outcome(TrialState.COMPLETE, values, reason=result.reason)


def evaluate(
    attrs: Attrs,
    arch: ArchSpec,
    study: optuna.Study,
    config: SearchConfig,
    data: ImageData,
    report: Report,
    *,
    replay: bool = False,
) -> Outcome:
    """Train the trial's architecture (or reuse its twin's result) and store the outcome.

    A ``TrialStopped`` raised by ``report`` gives a PRUNED outcome; a failed proxy (NaN loss,
    out of memory) or an exception of the training gives FAIL with the reason. Any other
    exception raised by ``report`` (a backend's own control flow) passes through. ``replay``
    passes a reused result's epochs to ``report`` too.
    """
    twin = _twin(study, arch.to_json())
    if twin is not None:
        return _reuse(twin, attrs, report if replay else None)
    accuracies: list[float] = []
    escaped: list[BaseException] = []  # what ``report`` raised, to tell it from a failure
    started = time.perf_counter()

    def epoch_done(epoch: int, accuracy: float) -> None:
        accuracies.append(accuracy)
        attrs.set_user_attr("epoch_accuracies", accuracies)
        try:
            report(epoch, accuracy)
        except BaseException as error:
            escaped.append(error)
            raise

    try:
        result = proxy.train(
            arch,
            data,
            config.proxy,
            seed=config.seed,
            device=config.device,
            report=epoch_done,
            cuda_graphs=config.cuda_graphs,
        )
    except TrialStopped as stop:
        outcome = Outcome(TrialState.PRUNED, reason=str(stop))
    except Exception as error:  # a failure of the training is recorded, a report's passes
        if escaped and error is escaped[0]:
            raise
        log.warning("trial failed: %s: %s", type(error).__name__, error)
        outcome = Outcome(TrialState.FAIL, reason=f"{type(error).__name__}: {error}")
    else:
        attrs.set_user_attr("epoch_accuracies", list(result.epoch_accuracies))
        outcome = _outcome(result, arch, config)
    attrs.set_user_attr("train_seconds", time.perf_counter() - started)
    if outcome.reason:
        attrs.set_user_attr("fail_reason", outcome.reason)
    return outcome
