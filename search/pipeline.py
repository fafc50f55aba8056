"""A run as a pipeline of steps, each step recorded in the run folder as it finishes.

1. ``search``: the architecture search within the budget (the backend's trials, in
   ``study.journal``); with ``--strategy oneshot`` a trained supernet's best subnets are those
   trials (``oneshot.search``). S is the most accurate completed trial within the budget.
2. ``scaling``: alpha/beta/gamma candidates built from S's measured MAC exponents (CMT's
   (1.2, 1.3, 1.15) first, then the grid's most spread-out triples), each scored by
   proxy-training S scaled by it to ``SCALING_PHI``; the most accurate is chosen. With
   ``config.scaling == "cmt"`` CMT's coefficients are kept and nothing is trained.
3. ``family``: Ti/XS/S/B of S (phi -2, -1, 0, +1) with the chosen coefficients. S is its search
   trial, and XS is the chosen candidate's own training when the scaling step ran.
4. ``baselines``: the published presets named in ``config.baselines`` (CMT-Ti...B by default).
5. ``noise``: S and CMT-S trained again with the next seed: the proxy's seed-to-seed noise.

Every training of steps 2-5 follows one proxy recipe, whose input size scales with the
model's own (``SearchConfig.proxy_for``), and is recorded in ``trainings.jsonl`` as it ends
(``search.trainings``). Planning a step needs no training, so a rerun trains only what is
missing and ``--report-only`` rebuilds every file from the folder. The trainings after the
search run ``search.workers.step_workers`` at a time in worker processes: the scaling
candidates first, then the largest of the others, the family as soon as it is planned.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from concurrent import futures
from typing import Any, NamedTuple

import pandas as pd

from common import datasets
from common.device import resolve_device
from common.lock import folder_lock
from search import backends, lifecycle, measured, proxy, storage, workers
from search.config import SearchConfig
from search.records import OnTrial, TrialRecord, best_within_budget, to_frame
from search.trainings import Training, TrainingLog, training_key
from space import presets
from space.cost import estimate
from space.genotype import ArchSpec
from space.scaling import (
    ALPHA,
    BETA,
    FAMILY_PHI,
    GAMMA,
    coefficient_grid,
    mac_exponents,
    scale,
    spread_candidates,
)

__all__ = ["SCALING_PHI", "Job", "Results", "run"]

SCALING_PHI = -1.0  # where candidates are scored (docs/results.md: measured cost, why not +1)
CMT_COEFFICIENTS = (ALPHA, BETA, GAMMA)
OnStep = Callable[[int, int, list[str]], None]
"""Progress of the trainings after the search: ``on_step(done, total, running)``, ``running``
naming what trains now (``"baselines: cmt_b"``)."""


class Job(NamedTuple):
    """One proxy training a step needs: why (``step``, ``label``, ``facts`` for its table),
    what (``arch``), how (``recipe``) and with which ``seed``."""

    step: str
    label: str
    arch: ArchSpec
    recipe: proxy.ProxySettings
    seed: int
    facts: dict[str, Any]


class Row(NamedTuple):
    """A job and its training (None while it has not run)."""

    job: Job
    training: Training | None

    @property
    def accuracy(self) -> float | None:
        """The proxy accuracy, or None when not trained or failed (collapsed included)."""
        training = self.training
        return None if training is None or training.failed else training.accuracy


@dataclasses.dataclass(frozen=True)
class Results:
    """What a run produced, for the reports: the trial table, S (the best trial within the
    budget, None without one), the rows of each training step, and the chosen coefficients."""

    trials: pd.DataFrame
    best: TrialRecord | None
    scaling: list[Row]
    coefficients: tuple[float, float, float]
    family: list[Row]
    baselines: list[Row]
    noise: list[Row]
    latency_machine: str | None = None
    measured_ms: dict[str, float] = dataclasses.field(default_factory=dict)
    subnets: pd.DataFrame | None = None  # a one-shot search's scored subnets


def _job(step: str, label: str, arch: ArchSpec, config: SearchConfig, **facts: Any) -> Job:
    seed = config.seed + facts.pop("seed_offset", 0)
    return Job(step, label, arch, config.proxy_for(arch.resolution), seed, facts)


def _scaling_jobs(s: ArchSpec, config: SearchConfig) -> list[Job]:
    if config.scaling == "cmt":
        return []
    grid = coefficient_grid(mac_exponents(s))
    jobs = []
    for alpha, beta, gamma in spread_candidates(grid, config.scaling_candidates):
        member = scale(s, SCALING_PHI, alpha, beta, gamma)
        label = f"alpha {alpha:g}, beta {beta:g}, gamma {gamma:g}"
        jobs.append(_job("scaling", label, member, config, alpha=alpha, beta=beta, gamma=gamma))
    return jobs


def _chosen(rows: list[Row]) -> tuple[float, float, float]:
    """The most accurate candidate's coefficients (the first listed on ties: CMT's); CMT's
    when no candidate has an accuracy."""
    scored = [row for row in rows if row.accuracy is not None]
    if not scored:
        return CMT_COEFFICIENTS
    best = max(scored, key=lambda row: row.accuracy)
    return best.job.facts["alpha"], best.job.facts["beta"], best.job.facts["gamma"]


def _family_jobs(s: ArchSpec, coefficients: tuple[float, ...], config: SearchConfig) -> list[Job]:
    return [
        _job("family", variant, scale(s, phi, *coefficients), config, phi=phi)
        for variant, phi in FAMILY_PHI.items()
    ]


def baseline_names(config: SearchConfig) -> list[str]:
    """The presets ``config.baselines`` names (``none``: none)."""
    text = config.baselines.strip()
    return [] if text == "none" else [name.strip() for name in text.split(",") if name.strip()]


def _baseline_jobs(config: SearchConfig) -> list[Job]:
    return [
        _job("baselines", name, presets.get(name), config, preset=name)
        for name in baseline_names(config)
    ]


def _noise_jobs(s: ArchSpec, config: SearchConfig) -> list[Job]:
    pairs = [("S", s)]
    if "cmt_s" in baseline_names(config):
        pairs.append(("cmt_s", presets.get("cmt_s")))
    return [
        _job("noise", f"{name}, seed {config.seed + 1}", arch, config, pair=name, seed_offset=1)
        for name, arch in pairs
    ]


def _search_training(best: TrialRecord, config: SearchConfig) -> Training:
    """S's search trial as a recorded training (the search trained it with the run's seed)."""
    result = proxy.ProxyResult(best.accuracy, best.epoch_accuracies, best.train_seconds or 0, 0.0)
    return Training.of(
        "search", f"trial {best.number}", best.arch, config.proxy, config.data, config.seed, result
    )


@functools.lru_cache(maxsize=2)
def _dataset(name: str) -> datasets.ImageData:
    return datasets.load(name)


def _train_job(job: Job, data: str, device: str, cuda_graphs: bool) -> proxy.ProxyResult:
    """One job's proxy training (in this process or in a worker)."""
    return proxy.train(
        job.arch, _dataset(data), job.recipe, seed=job.seed, device=device, cuda_graphs=cuda_graphs
    )


def _largest_first(jobs: list[Job]) -> list[Job]:
    return sorted(jobs, key=lambda job: -estimate(job.arch).macs)


class _Trainings:
    """Looks jobs up in the run folder's log and, when allowed, trains the missing ones,
    ``workers`` at a time, recording each as it ends."""

    def __init__(self, config: SearchConfig, log: TrainingLog, may_train: bool, on_step: OnStep):
        self.config, self.log, self.may_train = config, log, may_train
        self.on_step = on_step
        self.done = log.load()
        self.pool = backends.get(config.backend).step_pool(config) if may_train else None
        self.workers = workers.step_workers(config) if may_train else 1
        self.finished, self.total = 0, 0
        self.running: dict[Any, Job] = {}

    def _key(self, job: Job) -> str:
        return training_key(job.arch, job.recipe, self.config.data, job.seed)

    def known(self, job: Job) -> Training | None:
        return self.done.get(self._key(job))

    def rows(self, jobs: list[Job]) -> list[Row]:
        """Each job with its training (None when it has not run)."""
        return [Row(job, self.known(job)) for job in jobs]

    def _missing(self, jobs: list[Job]) -> list[Job]:
        """The jobs not trained yet, each training once (two jobs may be the same training)."""
        unique = {self._key(job): job for job in jobs if self.known(job) is None}
        return list(unique.values())

    def train_missing(
        self, first: list[Job], rest: list[Job], then: Callable[[], list[Job]]
    ) -> None:
        """Train what is missing of ``first``, of ``then()`` (planned once ``first`` is done)
        and of ``rest``. One worker trains them in that order; several start with ``first``
        and the largest of ``rest``, and take ``then()``'s as soon as it can be planned."""
        if not self.may_train:
            return
        if self.pool is not None:
            with self.pool as pool:
                self.workers = pool.workers
                self._parallel(first, rest, then, pool)
        elif self.workers == 1:
            for job in self._missing(first):
                self._one(job)
            for job in self._missing(then() + rest):
                self._one(job)
        else:
            with workers.pool(self.workers, resolve_device(self.config.device)) as pool:
                self._parallel(first, rest, then, pool)
        self._show()

    def _one(self, job: Job) -> None:
        self.total = max(self.total, self.finished + 1)
        self.running = {None: job}
        self._show()
        config = self.config
        self.running = {}
        self._record(job, _train_job(job, config.data, config.device, config.cuda_graphs))

    def _parallel(
        self,
        first: list[Job],
        rest: list[Job],
        then: Callable[[], list[Job]],
        pool: backends.StepPool | futures.Executor,
    ) -> None:
        config, planned = self.config, False
        data = datasets.absolute(config.data)  # workers may run in another folder
        queue = self._missing(first) + _largest_first(self._missing(rest))
        firsts = {self._key(job) for job in first}
        self.total = len(queue)
        while queue or self.running or not planned:
            waiting = {self._key(job) for job in [*queue, *self.running.values()]}
            if not planned and firsts.isdisjoint(waiting):
                extra = _largest_first(self._missing(then()))
                queue, planned = extra + queue, True
                self.total += len(extra)
                continue
            while queue and len(self.running) < self.workers:
                job = queue.pop(0)
                future = pool.submit(_train_job, job, data, config.device, config.cuda_graphs)
                self.running[future] = job
            self._show()
            ended, _ = futures.wait(self.running, return_when=futures.FIRST_COMPLETED)
            for future in ended:
                self._record(self.running.pop(future), future.result())

    def _record(self, job: Job, result: proxy.ProxyResult) -> None:
        training = Training.of(
            job.step, job.label, job.arch, job.recipe, self.config.data, job.seed, result
        )
        self.log.add(training)
        self.done[training.key] = training
        self.finished += 1

    def _show(self) -> None:
        labels = [f"{job.step}: {job.label}" for job in self.running.values()]
        self.on_step(self.finished, max(self.total, self.finished), labels)


def _steps(config: SearchConfig, records: list[TrialRecord], trainings: _Trainings) -> Results:
    """Steps 2-5 after the search: plan, look up, train what is missing."""
    trials = to_frame(records)
    machine = storage.load_study(config.out).user_attrs.get(storage.LATENCY_MACHINE)
    subnets = None
    if config.strategy == "oneshot":
        from oneshot import search as oneshot_search

        subnets = oneshot_search.table(config.out)
    best = best_within_budget(records, config.budget_macs)
    if best is None:
        return Results(trials, None, [], CMT_COEFFICIENTS, [], [], [], machine, subnets=subnets)
    s = best.arch
    searched = _search_training(best, config)
    trainings.done.setdefault(searched.key, searched)
    scaling_jobs = _scaling_jobs(s, config)
    baseline_jobs, noise_jobs = _baseline_jobs(config), _noise_jobs(s, config)

    def family_jobs() -> list[Job]:
        return _family_jobs(s, _chosen(trainings.rows(scaling_jobs)), config)

    trainings.train_missing(scaling_jobs, baseline_jobs + noise_jobs, family_jobs)
    scaling = trainings.rows(scaling_jobs)
    family = trainings.rows(family_jobs())
    latencies = {}
    if config.latency_device is not None:  # step 6: S, the family and the baselines, measured
        archs = [s, *(row.job.arch for row in family), *(job.arch for job in baseline_jobs)]
        latencies = measured.measured_ms(archs, config, measure_missing=trainings.may_train)
    return Results(
        trials,
        best,
        scaling,
        _chosen(scaling),
        family,
        trainings.rows(baseline_jobs),
        trainings.rows(noise_jobs),
        machine,
        latencies,
        subnets,
    )


def run(
    config: SearchConfig,
    *,
    on_trial: OnTrial | None = None,
    on_step: OnStep | None = None,
    on_oneshot: Callable[[str, int, int], None] | None = None,
    report_only: bool = False,
) -> Results:
    """Run (or resume) every step of ``config``'s run; with ``report_only`` run nothing and
    return what the run folder holds. ``on_oneshot(phase, done, total)`` follows a one-shot
    search's supernet epochs and scored subnets."""
    if report_only:
        records = storage.records(config.out)
        return _steps(config, records, _Trainings(config, TrainingLog(config.out), False, _quiet))
    lifecycle.check(config)
    with folder_lock(config.out):
        if config.strategy == "oneshot":
            from oneshot import search as oneshot_search

            oneshot_search.run(config, on_oneshot)
        lifecycle.run_trials_locked(config, on_trial)
        records = storage.records(config.out)
        trainings = _Trainings(config, TrainingLog(config.out), True, on_step or _quiet)
        return _steps(config, records, trainings)


def _quiet(done: int, total: int, running: list[str]) -> None:
    """No progress display."""
