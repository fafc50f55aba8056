"""The one-shot strategy (``--strategy oneshot``), the pipeline's search step for it:

1. **supernet**: one weight-sharing supernet of the run's block types (``oneshot.supernet``)
   trained by the sandwich rule for ``supernet_epochs`` (``oneshot.train``), checkpointed in the
   run folder (``supernet.pt``) after every epoch;
2. **subnets**: ``subnets`` architectures of the one-shot space (``oneshot.space``: drawn without
   fitting, within 75-100% of the budget) scored with the weights they inherit, asked from the
   run's sampler (NSGA-II, population 50, or TPE) over accuracy and MACs, and predicted latency
   with a latency device (``search.latency_limit``, the trials' prediction). A draw outside the
   window, or over the latency budget, is told with its MACs (and latency) and a violated
   constraint, and not scored (it costs an estimate, and a prediction for one in the window).
   A subnet is scored on ``FIRST_PASS_IMAGES`` validation images after one calibration batch;
   the best ``RESCORED_PER_TRIAL x trials`` are scored again on every validation image after
   ``calibration_batches`` batches. The scoring study is its own journal (``oneshot.journal``):
   a killed run loses at most the subnet being scored;
3. the best ``trials`` subnets by that second score are queued in the run's study, where the
   backend trains them as it trains any trial (the proxy, on their own); S is chosen among them
   and the pipeline goes on as after any search.

``table(out)`` is every scored subnet (``subnets.csv`` of the reports).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path

import optuna
import pandas as pd
import torch
from optuna.trial import TrialState
from torch import Tensor

from common import datasets
from common.device import resolve_device
from oneshot.space import share_within, window
from oneshot.supernet import Supernet, shared_numbers
from oneshot.train import SupernetRecipe, score, train_supernet
from search import latency_limit, storage
from search.config import SearchConfig
from search.images import ImageSource, prepare
from search.memory import OPTIMISER_COPIES, available_bytes, training_bytes
from search.trial import QUEUED_SUBNET, sampler
from space.cost import estimate
from space.genotype import ArchSpec
from space.sampling import draw, largest_within

__all__ = [
    "CHECKPOINT",
    "JOURNAL",
    "TABLE",
    "Scorer",
    "check",
    "recipe",
    "run",
    "table",
]

CHECKPOINT = "supernet.pt"
JOURNAL = "oneshot.journal"
TABLE = "subnets.csv"
POPULATION = 50  # NSGA-II's generation of subnets (AutoFormer's 50 a generation)
FIRST_PASS_IMAGES = 250  # validation images of a subnet's first score
RESCORED_PER_TRIAL = 4  # subnets scored again on every validation image, per trial to train
MAX_REJECTED = 5000  # draws in a row outside the window or the latency budget before giving up
RESCORE = "rescore/"  # the study's user attribute of a subnet's second score, by number
OnProgress = Callable[[str, int, int], None]
"""``on_progress(phase, done, total)``: ``supernet`` epochs, then ``subnets`` scored."""


def recipe(config: SearchConfig) -> SupernetRecipe:
    """The supernet's recipe: the run's proxy over ``supernet_epochs``."""
    return SupernetRecipe(dataclasses.replace(config.proxy, epochs=config.supernet_epochs))


@functools.lru_cache(maxsize=4)
def _share_within(budget_macs: int, resolution: int, blocks: tuple[str, ...]) -> float:
    return share_within(budget_macs, resolution, blocks)


def check(config: SearchConfig) -> None:
    """``ValueError`` when the one-shot space holds no architecture of the budget's window, or
    when training the supernet would not fit in the device's memory."""
    blocks, budget = config.block_types, config.budget_macs
    if _share_within(budget, config.resolution, blocks) == 0:  # checked twice a command: cached
        low, high = window(budget)
        raise ValueError(
            f"no draw of the space without fitting has {low / 1e9:.3g}-{high / 1e9:.3g} GMACs "
            "(the one-shot space is the space as drawn); use --strategy trials for this budget"
        )
    data = datasets.load(config.data)
    settings = recipe(config).proxy
    numbers = shared_numbers(blocks, settings.resolution, data.num_classes)  # shapes cached
    largest = largest_within(budget, config.resolution, blocks)
    activations = training_bytes(
        largest, data.num_classes, settings.resolution, settings.batch_size
    )
    needed = OPTIMISER_COPIES * 4 * numbers + activations
    device = resolve_device(config.device)
    free = available_bytes(device)
    if free is not None and needed > free:
        raise ValueError(
            f"the supernet ({numbers / 1e6:.1f}M numbers) needs about {needed / 2**30:.1f} GiB to "
            f"train, and {device} has {free / 2**30:.1f} GiB free; use --strategy trials, fewer "
            "--blocks or a device with more memory"
        )


class Scorer:
    """Scores subnets of a trained supernet: the prepared calibration batches (the first
    training batches of a seeded shuffle, unaugmented) and validation images."""

    def __init__(
        self, supernet: Supernet, data: datasets.ImageData, recipe: SupernetRecipe, seed: int
    ) -> None:
        device = next(supernet.parameters()).device
        settings = recipe.proxy
        self.supernet = supernet

        def ready(images: Tensor) -> Tensor:
            return prepare(images, settings.resolution, augment=False, flips=False, generator=None)

        generator = torch.Generator(device=device).manual_seed(seed)
        batches = ImageSource(data.train, device).batches(
            settings.batch_size, train=True, generator=generator, epoch=0
        )
        self.calibration = [
            ready(images)
            for _, (images, _) in zip(range(recipe.calibration_batches), batches, strict=False)
        ]
        val = [(ready(x), y) for x, y in ImageSource(data.val, device).batches(250, train=False)]
        self.val = val
        images = torch.cat([x for x, _ in val])
        labels = torch.cat([y for _, y in val])
        pick = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
        pick = pick[:FIRST_PASS_IMAGES].to(device)
        self.first_val = [(images[pick], labels[pick])]

    def first(self, arch: ArchSpec) -> float:
        """``arch``'s top-1 on ``FIRST_PASS_IMAGES`` images after one calibration batch."""
        return score(self.supernet, arch, self.calibration[:1], self.first_val)

    def full(self, arch: ArchSpec) -> float:
        """``arch``'s top-1 on every validation image after every calibration batch."""
        return score(self.supernet, arch, self.calibration, self.val)


def _study(out: Path, config: SearchConfig) -> tuple[optuna.Study, optuna.storages.BaseStorage]:
    where = storage.open_url(str(out / JOURNAL))
    study = storage.open_study(where, sampler(config, population=POPULATION), config.objectives)
    return study, where


def _scored(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if "score" in t.user_attrs
    ]


def _score_subnets(
    study: optuna.Study, scorer: Callable[[], Scorer], config: SearchConfig, on_progress: OnProgress
) -> None:
    """Ask, draw and score subnets (with ``scorer()``) until ``config.subnets`` are scored."""
    low, high = window(config.budget_macs)
    scored = _scored(study)
    known = {t.user_attrs["arch"]: (t.number, t.user_attrs["score"]) for t in scored}
    count = len(scored)
    if count < config.subnets:
        scorer()  # the supernet trains (or loads) before the first subnet is drawn
    on_progress("subnets", count, config.subnets)
    rejected = 0
    while count < config.subnets:
        asked = study.ask()
        arch = draw(asked, config.resolution, config.block_types)
        cost = estimate(arch)
        asked.set_constraint("macs_below_window", low - cost.macs)
        asked.set_constraint("macs_over_budget", cost.macs - high)
        inside = low <= cost.macs <= high
        latency = _latency(asked, arch, inside, config)
        values = (float(cost.macs),) if latency is None else (float(cost.macs), latency)
        if not (inside and _keeps_limit(latency, config)):
            study.tell(asked, (0.0, *values))
            rejected = _rejected(rejected, config)
            continue
        rejected = 0
        text = arch.to_json()
        for key, value in (
            ("arch", text),
            ("blocks", arch.block_mix),
            ("macs", cost.macs),
            ("params", cost.params),
            *([] if latency is None else [("latency_ms", latency)]),
        ):
            asked.set_user_attr(key, value)
        if text in known:
            twin, accuracy = known[text]
            asked.set_user_attr("duplicate_of", twin)
        else:
            accuracy = scorer().first(arch)
            known[text] = (asked.number, accuracy)
        asked.set_user_attr("score", accuracy)
        study.tell(asked, (accuracy, *values))
        count += 1
        on_progress("subnets", count, config.subnets)


def _latency(
    asked: optuna.Trial, arch: ArchSpec, inside: bool, config: SearchConfig
) -> float | None:
    """The draw's predicted latency in ms with a latency device (infinite outside the MAC
    window: not predicted), with its latency-budget constraint set; without one, None."""
    if config.latency_device is None:
        return None
    latency = latency_limit.predicted_ms(arch, config) if inside else float("inf")
    if config.latency_limit_ms is not None:
        over = latency - config.latency_limit_ms if inside else 0.0  # the window's already out
        asked.set_constraint("latency_over_budget", over)
    return latency


def _keeps_limit(latency: float | None, config: SearchConfig) -> bool:
    limit = config.latency_limit_ms
    return latency is None or limit is None or latency <= limit


def _rejected(rejected: int, config: SearchConfig) -> int:
    """One more draw in a row outside the window or the latency budget; ``ValueError`` when
    there have been ``MAX_REJECTED`` (a budget the space barely reaches)."""
    rejected += 1
    if rejected >= MAX_REJECTED:
        raise ValueError(
            f"{MAX_REJECTED} draws in a row fell outside the MAC window"
            + ("" if config.latency_limit_ms is None else " or the latency budget")
            + "; raise the budget or use --strategy trials"
        )
    return rejected


def _best_distinct(trials: list[optuna.trial.FrozenTrial], key: Callable) -> list:
    """``trials`` best first by ``key``, one per architecture."""
    seen, out = set(), []
    for t in sorted(trials, key=key, reverse=True):
        if t.user_attrs["arch"] not in seen:
            seen.add(t.user_attrs["arch"])
            out.append(t)
    return out


def _rescored(
    study: optuna.Study, scorer: Callable[[], Scorer], count: int
) -> list[optuna.trial.FrozenTrial]:
    """The best ``count`` subnets by their first score, each scored again on every validation
    image (kept in the study's user attributes), best first by the second score."""
    top = _best_distinct(_scored(study), lambda t: (t.user_attrs["score"], -t.number))[:count]
    for t in top:
        if RESCORE + str(t.number) not in study.user_attrs:
            arch = ArchSpec.from_json(t.user_attrs["arch"])
            study.set_user_attr(RESCORE + str(t.number), scorer().full(arch))
    rescores = study.user_attrs
    return sorted(top, key=lambda t: (rescores[RESCORE + str(t.number)], -t.number), reverse=True)


def _queue(config: SearchConfig, best: list[optuna.trial.FrozenTrial]) -> None:
    """Queue the best ``config.trials`` subnets in the run's study (each once)."""
    where = storage.study_storage(config.out)
    main = storage.open_study(where, optuna.samplers.RandomSampler(), config.objectives)
    queued = {t.user_attrs.get(QUEUED_SUBNET) for t in main.get_trials(deepcopy=False)}
    for t in best[: config.trials]:
        if t.number not in queued:
            main.enqueue_trial(t.params, user_attrs={QUEUED_SUBNET: t.number})


def run(config: SearchConfig, on_progress: OnProgress | None = None) -> None:
    """Train the supernet, score the subnets and queue the best in the run's study, each part
    resumed from what the run folder holds (the caller holds its lock). The supernet is built
    and trained (or loaded) only when a subnet still needs a score."""
    progress = on_progress or (lambda phase, done, total: None)
    study, where = _study(Path(config.out), config)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):  # a killed score
        where.set_trial_state_values(storage.trial_id(where, t.number), TrialState.FAIL)
    scorer = functools.cache(lambda: _trained_scorer(config, progress))
    _score_subnets(study, scorer, config, progress)
    _queue(config, _rescored(study, scorer, RESCORED_PER_TRIAL * config.trials))


def _trained_scorer(config: SearchConfig, progress: OnProgress) -> Scorer:
    """The run's supernet, trained (resumed from its checkpoint), ready to score subnets."""
    data = datasets.load(config.data)
    settings = recipe(config)
    torch.manual_seed(config.seed)
    supernet = Supernet(
        resolution=settings.proxy.resolution,
        num_classes=data.num_classes,
        blocks=config.block_types,
    ).to(resolve_device(config.device))
    train_supernet(
        supernet,
        data,
        settings,
        budget_macs=config.budget_macs,
        checkpoint=Path(config.out) / CHECKPOINT,
        seed=config.seed,
        resolution=config.resolution,
        on_epoch=lambda done, total: progress("supernet", done, total),
    )
    return Scorer(supernet, data, settings, config.seed)


def table(out: str | Path) -> pd.DataFrame:
    """Every scored subnet of the run folder, in the order scored: its number, blocks, MACs,
    parameters, predicted latency (with a latency device), first score, second score (best ones
    only), architecture and, for a duplicate, the subnet it repeats. Empty without a one-shot
    search."""
    columns = [
        "number",
        "blocks",
        "macs",
        "params",
        "latency_ms",
        "score",
        "rescore",
        "duplicate_of",
        "arch",
    ]
    path = Path(out) / JOURNAL
    if not path.exists():
        return pd.DataFrame(columns=columns)
    study = optuna.load_study(study_name=storage.STUDY_NAME, storage=storage.open_url(str(path)))
    rescores = study.user_attrs
    rows = [
        {
            "number": t.number,
            **{
                key: t.user_attrs.get(key)
                for key in ("blocks", "macs", "params", "latency_ms", "score")
            },
            "rescore": rescores.get(RESCORE + str(t.number)),
            "duplicate_of": t.user_attrs.get("duplicate_of"),
            "arch": t.user_attrs["arch"],
        }
        for t in _scored(study)
    ]
    frame = pd.DataFrame(rows, columns=columns)
    for column in ("macs", "params", "duplicate_of"):
        frame[column] = frame[column].astype("Int64")
    return frame
