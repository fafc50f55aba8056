"""The Ray Tune backend: the same trials, run in parallel by ``ray.tune.Tuner`` on a machine's
CPUs and GPUs or on an existing Ray cluster.

- Search: ``OptunaSearch`` on the run folder's own study (``search.storage``), so both
  backends keep their trials in one place, in one form. Its define-by-run space is
  ``search.trial.define``; the trial's number travels in the Ray config, and the worker stores
  its outcome in the study's journal (the run folder must be on storage every node reaches).
- Workers get the frozen ``SearchConfig`` itself and run ``search.trial.evaluate``, reporting
  after every epoch; an architecture already trained in the study is not trained again.
- Scheduling: the Optuna backend's two-objective rule (``search.pruning.DominancePruner``) as a
  Ray ``TrialScheduler``: after each epoch a trial stops when ``quorum`` trials that had
  finished when it started were more accurate at that epoch with no more MACs (ASHA, Ray's own,
  ranks on accuracy alone and would stop the cheap architectures the front needs). A stopped
  trial is PRUNED with its last accuracy and the reason. ``prune=False`` runs every trial to its
  end.
- The trainings after the search (``search.pipeline``) run on the same cluster as Ray tasks
  (``RayPool``, the backend's ``step_pool``), and one lost with its node runs again.
- Resources: ``cpus_per_trial`` and fractional ``gpus_per_trial`` (``parallel`` N asks for
  1/N GPU per trial where the cluster has GPUs); Ray packs as many trials as they allow.
  ``ray_address`` joins an existing cluster, else a local Ray starts.
- Failures: when the last ``max_repeated_failures`` trials of this run failed for the same
  reason the experiment stops and ``storage.RepeatedFailure`` is raised. A trial whose worker
  died with its node (or alone) is not a failure of its architecture: it is labelled
  ``storage.LOST`` with Ray's error, queued again and trained once more in a further round of
  the experiment, so that a cluster that loses a node still finishes every requested trial.
- Resume: as with the Optuna backend, finished trials stay in the study, trials a dead run left
  RUNNING are failed and redone, and a rerun runs the remaining slots (Ray's own experiment
  folders, ``ray/run-<k>``, are scratch).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import logging
import os
import socket
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Ray's quiet reporter; verbose=0 below

import optuna
import ray
import torch
from optuna.trial import TrialState
from ray import tune
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from common import datasets
from search import storage, trial
from search.config import SearchConfig
from search.pruning import DominancePruner, Finished, TrialStopped
from search.records import OnTrial
from search.trial import StoredTrial
from space.genotype import ArchSpec

__all__ = [
    "LOST_ERRORS",
    "DominanceScheduler",
    "ProxyFailed",
    "RayBackend",
    "RayPool",
    "check_address",
    "connect",
    "joined",
    "lost_reason",
]

EXPERIMENTS = "ray"
log = logging.getLogger(__name__)


CURRENT_CLUSTER = Path("/tmp/ray/ray_current_cluster")  # where `ray start --head` notes itself
CONNECT_SECONDS = 5.0


def check_address(address: str) -> None:
    """``ValueError`` naming the address when nothing answers there (a TCP connection within
    ``CONNECT_SECONDS``), so that a wrong ``--ray-address`` is one line at once instead of Ray's
    minutes of retries. ``auto`` is ``$RAY_ADDRESS``, else the cluster ``ray start`` noted on
    this machine."""
    given = address
    if address == "auto":
        noted = CURRENT_CLUSTER.read_text().strip() if CURRENT_CLUSTER.exists() else ""
        address = os.environ.get("RAY_ADDRESS") or noted
        if not address:
            raise ValueError(
                "--ray-address auto: no Ray cluster runs on this machine; start one with "
                "`ray start --head`, or give its HOST:PORT"
            )
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(
            f"cannot read the Ray address {given!r}: write HOST:PORT, ray://HOST:PORT or auto"
        )
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as error:
        raise ValueError(
            f"cannot reach a Ray cluster at {address} ({error.strerror or error}); start it "
            f"with `ray start --head --port {port}` there, or fix --ray-address"
        ) from None


class ProxyFailed(RuntimeError):
    """Raised in a Ray trial whose training failed, so that Ray records it as an error."""


class _StudySearch(OptunaSearch):
    """``OptunaSearch`` that tells the study what happened: PRUNED for a trial the scheduler
    stopped before its last epoch (``OptunaSearch`` itself tells it COMPLETE when it had
    reported once) and FAIL for a failed training; a trial that ended in an error without its
    worker recording why (the worker died) stays RUNNING for ``_Watch.on_trial_error``, which
    Tune calls next with the error."""

    def __init__(self, *args: Any, epochs: int, objectives: tuple[str, ...], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.epochs, self.objectives = epochs, objectives

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        asked = self._ot_trials[trial_id]
        done = (result or {}).get("epoch", 0)
        reason = self._ot_study.trials[asked.number].user_attrs.get("fail_reason")
        if error and not reason:
            pass  # _Watch.on_trial_error tells it
        elif error or not result:
            self._ot_study.tell(asked, state=TrialState.FAIL)
        elif done < self.epochs:
            if not reason:  # the scheduler's reason, else this
                asked.set_user_attr("fail_reason", f"stopped after epoch {done}")
            self._ot_study.tell(asked, state=TrialState.PRUNED)
        else:
            self._ot_study.tell(asked, [result[name] for name in self.objectives])
        self._completed_trials.add(trial_id)


class DominanceScheduler(FIFOScheduler):
    """Early stopping by ``DominancePruner`` on Ray: each trial is compared, after every epoch it
    reports, with the study's trials that had finished when it was added, exactly as the Optuna
    backend compares a trial with those finished when it started. The reason goes to the
    trial's user attributes (the report carries its number)."""

    def __init__(self, out: str, epochs: int, pruner: DominancePruner | None = None) -> None:
        super().__init__()
        self.out, self.epochs = out, epochs
        self.pruner = pruner or DominancePruner()
        self.finished: dict[str, list[Finished]] = {}

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        super().on_trial_add(tune_controller, trial)
        self.finished[trial.trial_id] = storage.finished(storage.load_study(self.out))

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        finished = self.finished.get(trial.trial_id, [])
        try:
            self.pruner.check(
                result["epoch"] - 1, result["accuracy"], result["macs"], self.epochs, finished
            )
        except TrialStopped as stop:
            journal = storage.study_storage(self.out)
            StoredTrial(journal, result["number"]).set_user_attr("fail_reason", str(stop))
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE


# What Ray raises for a trial whose worker process or node died (not its training).
LOST_ERRORS = (
    ray.exceptions.RayActorError,
    ray.exceptions.WorkerCrashedError,
    ray.exceptions.NodeDiedError,
)


def _said(error: BaseException | None) -> str:
    """An error's type and the first line of its message."""
    if error is None:
        return "the Ray trial failed with no error recorded"
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:160]}" if lines else type(error).__name__


def lost_reason(error: BaseException) -> str:
    """``storage.LOST`` with what Ray said, in brackets."""
    return f"{storage.LOST} ({_said(error)})"


def _error(trial: Any) -> BaseException | None:
    """What a failed Ray trial raised: Tune pickles it into the trial's local folder at once
    (``Trial.get_pickled_error`` reads the synced copy, which is not there yet)."""
    path = trial.pickled_error_file
    if not path or not Path(path).exists():
        return None
    return ray.cloudpickle.loads(Path(path).read_bytes())


class _Watch(tune.Callback):
    """As trials end: calls ``on_trial(finished, best_accuracy)`` from the study, notes
    when the last trials of this run all failed for the same reason (``failure``), which
    ``_StopOnFailure`` turns into the end of the experiment, and queues again a trial whose
    worker was lost (``LOST_ERRORS``). A progress bar is not picklable, so ``on_trial`` is left
    out of Ray's saved experiment state."""

    def __init__(self, config: SearchConfig, first: int, on_trial: OnTrial | None) -> None:
        self.out, self.first, self.times = config.out, first, config.max_repeated_failures
        self.on_trial, self.failure = on_trial, None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "on_trial": None}

    def _ended(self) -> None:
        study = storage.load_study(self.out)
        self.failure = storage.repeated_failure(study, self.first, self.times)
        if self.on_trial is not None:
            self.on_trial(*storage.progress(study))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        error, number = _error(trial), trial.config.get("number")
        study = storage.load_study(self.out)
        if number is not None and study.trials[number].state == TrialState.RUNNING:
            journal = storage.study_storage(self.out)
            if isinstance(error, LOST_ERRORS):
                storage.redo(study, journal, study.trials[number], lost_reason(error))
            else:  # an error outside the training (which records its own)
                ident = storage.trial_id(journal, number)
                journal.set_trial_user_attr(ident, "fail_reason", _said(error))
                journal.set_trial_state_values(ident, TrialState.FAIL)
        self._ended()


class _StopOnFailure(tune.Stopper):
    """Ends the experiment once ``_Watch`` has seen the same failure repeat."""

    def __init__(self, watch: _Watch) -> None:
        self.watch = watch

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.watch.failure is not None


def _space(asked: optuna.Trial, *, config: SearchConfig) -> dict[str, Any]:
    """Ray's define-by-run space: ``search.trial.define``; the config carries the trial."""
    return {"arch": trial.define(asked, config).to_json(), "number": asked.number}


def _trainable(params: dict[str, Any], *, config: SearchConfig) -> None:
    """One Ray trial: train the defined architecture, reporting after every epoch."""
    torch.set_num_threads(max(1, int(config.cpus_per_trial)))
    arch = ArchSpec.from_json(params["arch"])
    journal = storage.study_storage(config.out)
    study = optuna.load_study(study_name=storage.STUDY_NAME, storage=journal)
    number = params["number"]
    stored = study.trials[number].user_attrs
    costs = {name: float(stored[name]) for name in config.objectives[1:]}  # MACs, latency

    def report(epoch: int, accuracy: float) -> None:
        tune.report({"accuracy": accuracy, **costs, "epoch": epoch + 1, "number": number})

    attrs = trial.StoredTrial(journal, params["number"])
    device = "cuda" if config.gpus_per_trial > 0 else config.device
    worker = dataclasses.replace(config, device=device)
    outcome = trial.evaluate(
        attrs, arch, study, worker, datasets.load(config.data), report, replay=True
    )
    if outcome.state == TrialState.FAIL:
        raise ProxyFailed(outcome.reason)


def _packed(config: SearchConfig) -> SearchConfig:
    """``parallel`` N > 1 without ``gpus_per_trial`` asks for 1/N GPU per trial, where the Ray
    cluster has GPUs."""
    if config.gpus_per_trial or config.parallel <= 1:
        return config
    if not ray.cluster_resources().get("GPU", 0):
        return config
    return dataclasses.replace(config, gpus_per_trial=1.0 / config.parallel)


def _tuner(config: SearchConfig, slots: int, experiment: str, watch: _Watch) -> Any:
    search = _StudySearch(
        space=functools.partial(_space, config=config),
        metric=list(config.objectives),
        mode=[storage.DIRECTIONS[name][:3] for name in config.objectives],
        sampler=trial.sampler(config, config.seed + storage.trial_count(config.out)),
        study_name=storage.STUDY_NAME,
        storage=storage.study_storage(config.out),
        epochs=config.proxy.epochs,
        objectives=config.objectives,
    )
    scheduler = (
        DominanceScheduler(config.out, config.proxy.epochs) if config.prune else FIFOScheduler()
    )
    trainable = tune.with_resources(
        functools.partial(_trainable, config=config),
        {"cpu": config.cpus_per_trial, "gpu": config.gpus_per_trial},
    )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=search, scheduler=scheduler, num_samples=slots),
        run_config=tune.RunConfig(
            name=experiment,
            storage_path=str(Path(config.out) / EXPERIMENTS),
            failure_config=tune.FailureConfig(max_failures=0),
            callbacks=[watch],
            stop=_StopOnFailure(watch),
            verbose=0,
        ),
    )


def _experiment(out: str) -> str:
    """The next experiment folder's name under ``out/ray``: run-1, run-2, ..."""
    runs = Path(out) / EXPERIMENTS
    return f"run-{len(list(runs.glob('run-*'))) + 1 if runs.exists() else 1}"


@dataclasses.dataclass(frozen=True)
class RayBackend:
    """Runs (or continues) the search with Ray Tune until ``config.trials`` slots are used;
    ``on_trial(finished, best_accuracy)`` is called at the start and as trials end."""

    name: str = "ray"

    def run_trials(self, config: SearchConfig, first: int, on_trial: OnTrial | None) -> None:
        config = _for_workers(config)
        used, best = storage.progress(storage.load_study(config.out))
        if on_trial is not None:
            on_trial(used, best)
        if used >= config.trials:
            return
        with joined(config):
            packed = _packed(config)
            # Trials lost with a node leave slots over: further rounds run them, redone first.
            for round_ in itertools.count(1):
                watch = _Watch(packed, first, on_trial)
                _tuner(packed, config.trials - used, _experiment(config.out), watch).fit()
                used = storage.slots_used(storage.load_study(config.out))
                if used >= config.trials or watch.failure is not None or round_ > config.trials:
                    break

    def step_pool(self, config: SearchConfig) -> RayPool:
        """The trainings after the search run as Ray tasks, on the cluster the search used."""
        return RayPool(config)


def _for_workers(config: SearchConfig) -> SearchConfig:
    """``config`` with absolute paths, for workers that run elsewhere."""
    return dataclasses.replace(
        config, data=datasets.absolute(config.data), out=str(Path(config.out).resolve())
    )


def _init(address: str | None) -> None:
    ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)


def connect(address: str) -> None:
    """Join the Ray cluster at ``address`` for the rest of this process (``joined`` then uses
    it), after ``check_address``; ``ValueError`` naming the address and the likely cause when
    it answers but refuses us (most often its token: ``ray start`` turns token authentication
    on)."""
    check_address(address)
    if ray.is_initialized():
        return
    try:
        _init(address)
    except ConnectionError as error:
        raise ValueError(
            f"cannot join the Ray cluster at {address} ({error}); if it was started with `ray "
            "start`, set RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN, or the file "
            "~/.ray/auth_token of its head node) here too"
        ) from None


@contextlib.contextmanager
def joined(config: SearchConfig) -> Iterator[None]:
    """Ray running for the block: the cluster at ``config.ray_address``, else a local Ray
    (left as found: a Ray this process had already joined or started stays up)."""
    started_here = not ray.is_initialized()
    if started_here:
        _init(config.ray_address)
    try:
        yield
    finally:
        if started_here:
            ray.shutdown()


def _in_task(threads: int, function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)`` in a Ray task, on ``threads`` threads (its CPUs)."""
    torch.set_num_threads(threads)
    return function(*args)


class RayPool:
    """The trainings after the search as Ray tasks, ``cpus_per_trial`` and ``gpus_per_trial``
    each, ``workers`` at once (what the cluster holds). ``submit`` returns a
    ``concurrent.futures.Future``; a task whose worker or node died (``LOST_ERRORS``) is
    submitted again, up to ``MAX_LOST`` times, with a warning naming what Ray said (kept in
    ``lost``), so the future ends with the training's result. A context manager (``joined``)."""

    MAX_LOST = 3

    def __init__(self, config: SearchConfig) -> None:
        self.config = _for_workers(config)
        self.workers = 1
        self.lost: list[str] = []
        self._joined = joined(self.config)

    def __enter__(self) -> RayPool:
        self._joined.__enter__()
        resources = ray.cluster_resources()
        config = self.config
        if config.gpus_per_trial > 0:
            self.workers = int(resources.get("GPU", 0) // config.gpus_per_trial)
        else:
            self.workers = int(resources.get("CPU", 1) // config.cpus_per_trial)
        self.workers = max(1, self.workers)
        return self

    def __exit__(self, *exc: object) -> None:
        self._joined.__exit__(*exc)

    def submit(self, function: Callable[..., Any], *args: Any) -> futures.Future:
        config = self.config
        task = ray.remote(_in_task).options(
            num_cpus=config.cpus_per_trial, num_gpus=config.gpus_per_trial, max_retries=0
        )
        threads = max(1, int(config.cpus_per_trial))
        outcome: futures.Future = futures.Future()
        tries = [0]

        def attempt() -> None:
            tries[0] += 1
            task.remote(threads, function, *args).future().add_done_callback(ended)

        def ended(done: futures.Future) -> None:
            try:
                outcome.set_result(done.result())
            except LOST_ERRORS as error:
                self.lost.append(lost_reason(error))
                if tries[0] > self.MAX_LOST:
                    outcome.set_exception(error)
                    return
                log.warning("a training was lost (%s); it runs again", self.lost[-1])
                attempt()
            except BaseException as error:  # the training's own error, as a local pool gives it
                outcome.set_exception(error)

        attempt()
        return outcome
