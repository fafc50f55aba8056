"""The run configuration: one typed object with visible defaults, validated on construction,
saved as ``config.json`` in the run folder so that every run can be reproduced from its folder.

Every field carries its command-line help in its metadata, so ``run_search.py`` builds its
options from the dataclass (``add_options`` / ``from_options``): an option exists exactly when
a setting does. ``proxy`` nests the proxy's whole recipe (``search.proxy.ProxySettings``).
Settings marked ``defines_search`` may not change when a run folder is resumed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import typing
from typing import Any

from common.cli import add_option, setting
from common.datasets import NAMES as DATASET_NAMES
from common.fields import check_integer, field_names, reject_unknown
from latency.target import TARGETS, Target
from search.backends import BACKENDS
from search.proxy import MIN_PROXY_RESOLUTION, ProxySettings
from space.cost import parse_budget, parse_latency
from space.genotype import MIN_RESOLUTION
from space.sampling import DEFAULT_BLOCKS, parse_blocks

__all__ = ["SAMPLERS", "SCALING", "STRATEGIES", "SearchConfig", "add_options", "from_options"]

SAMPLERS = ("nsga2", "tpe")
SCALING = ("search", "cmt")
STRATEGIES = ("trials", "oneshot")


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Everything a run needs. ``budget`` is text (``4GFLOPs``, ``600M`` ...), in MACs."""

    budget: str = setting(
        "4GFLOPs",
        "MAC budget: 4GFLOPs, 600M, 4e9, '4 GMACs'; FLOPs mean MACs (default %(default)s)",
        defines_search=True,
    )
    trials: int = setting(
        6,
        "trials to run; with --strategy oneshot, the best subnets proxy-trained on their own "
        "(default %(default)s)",
    )
    strategy: str = setting(
        "trials",
        "trials: every candidate proxy-trained on its own; oneshot: one weight-sharing supernet "
        "trained, --subnets subnets scored with its weights, the best --trials of them "
        "proxy-trained (docs/oneshot.md) (default %(default)s)",
        choices=STRATEGIES,
        defines_search=True,
    )
    subnets: int = setting(
        1000,
        "oneshot: subnets the trained supernet scores (default %(default)s)",
        defines_search=True,
    )
    supernet_epochs: int = setting(
        2, "oneshot: epochs of the supernet's training (default %(default)s)", defines_search=True
    )
    data: str = setting(
        "default",
        ", ".join(DATASET_NAMES),
        defines_search=True,
    )
    resolution: int = setting(
        224,
        "input size of the searched architecture; the budget is counted at it "
        "(default %(default)s)",
        defines_search=True,
    )
    blocks: str = setting(
        ",".join(DEFAULT_BLOCKS),
        "the block types the search draws from, comma-separated, or all; the default is the "
        "space whose proxy was measured (docs/data.md) (default %(default)s)",
        defines_search=True,
    )
    proxy: ProxySettings = dataclasses.field(
        default_factory=ProxySettings,
        metadata={"help": "the proxy's recipe", "defines_search": True},
    )
    scaling: str = setting(
        "search",
        "search: score alpha/beta/gamma candidates by proxy training; cmt: keep CMT's "
        "(1.2, 1.3, 1.15) (default %(default)s)",
        choices=SCALING,
    )
    scaling_candidates: int = setting(
        2, "alpha/beta/gamma candidates to score, CMT's among them (default %(default)s)"
    )
    baselines: str = setting(
        "cmt_ti,cmt_xs,cmt_s,cmt_b",
        "published presets trained under the same proxy, comma-separated, or none "
        "(default %(default)s)",
    )
    backend: str = setting(
        "optuna", "search backend (default %(default)s)", choices=BACKENDS, defines_search=True
    )
    sampler: str = setting(
        "nsga2", "Optuna sampler (default %(default)s)", choices=SAMPLERS, defines_search=True
    )
    prune: bool = setting(
        True,
        "--no-prune: train every trial to its last epoch (early stopping off)",
        defines_search=True,
    )
    latency_device: str | None = setting(
        None,
        "measure inference latency on cpu (PyTorch eager), onnxruntime (its CPU provider) or "
        "cuda, and search it as an objective beside accuracy and MACs (default: off)",
        choices=TARGETS,
        defines_search=True,
    )
    latency_batch: int = setting(
        1, "batch size latency is measured at (default %(default)s)", defines_search=True
    )
    latency_budget: str | None = setting(
        None,
        "hard latency limit like the MAC budget, e.g. 30ms or 0.03s; needs --latency-device "
        "(default: none)",
        defines_search=True,
    )
    out: str = setting("runs/search", "run folder (default %(default)s); rerun to resume")
    seed: int = setting(
        0, "seed of the sampler and the proxy (default %(default)s)", defines_search=True
    )
    device: str = setting(
        "auto", "proxy device: auto (CUDA when there is one), cpu, cuda[:N] (default %(default)s)"
    )
    parallel: int = setting(
        0,
        "trainings at once on one device: in the search N worker processes (Optuna) or 1/N GPU "
        "per trial (Ray), and N trainings at once after it; on the CPU the cores are shared "
        "out. 0: one at a time on CUDA; on the CPU the search trains one trial at a time (a "
        "seed repeats its architectures) and the steps after it one training per core, at most "
        "4 (default %(default)s)",
    )
    cuda_graphs: bool = setting(
        True, "--no-cuda-graphs: train eagerly on CUDA instead of replaying a captured step"
    )
    max_repeated_failures: int = setting(
        3,
        "stop the search after this many trials in a row fail for the same reason "
        "(default %(default)s)",
    )
    storage: str | None = setting(
        None,
        "Optuna: the study's storage, for one search run by several machines at once (each "
        "with its own --out): sqlite:///PATH, postgresql://USER@HOST[:PORT]/DB (password from "
        "~/.pgpass or PGPASSWORD) or a journal file on shared disk (default: the run folder's "
        "study.journal)",
        defines_search=True,
    )
    ray_address: str | None = setting(
        None, "Ray: join this cluster (auto, ray://host:10001; default: start a local Ray)"
    )
    cpus_per_trial: float = setting(1.0, "Ray: CPUs per trial (default %(default)s)")
    gpus_per_trial: float = setting(
        0.0, "Ray: GPUs per trial, fractional to pack trials on a GPU (default %(default)s)"
    )

    def __post_init__(self) -> None:
        parse_budget(self.budget)
        check_integer("trials", self.trials)
        self._check_strategy()
        check_integer("resolution", self.resolution, MIN_RESOLUTION)
        parse_blocks(self.blocks)
        if not isinstance(self.proxy, ProxySettings):
            raise ValueError(f"proxy must be ProxySettings, got {type(self.proxy).__name__}")
        if self.scaling not in SCALING:
            raise ValueError(f"scaling must be one of {', '.join(SCALING)}, got {self.scaling!r}")
        check_integer("scaling_candidates", self.scaling_candidates)
        self._check_baselines()
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.cpus_per_trial <= 0:
            raise ValueError(f"cpus_per_trial must be > 0, got {self.cpus_per_trial!r}")
        if self.gpus_per_trial < 0:
            raise ValueError(f"gpus_per_trial must be >= 0, got {self.gpus_per_trial!r}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(self.device)):
            raise ValueError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")
        self._check_latency()
        if self.storage is not None and self.backend != "optuna":
            raise ValueError("--storage is for the optuna backend (Ray keeps its study in --out)")
        if self.storage is not None and not str(self.storage).strip():
            raise ValueError("storage must be a URL or a journal file path, got ''")
        check_integer("parallel", self.parallel, 0)
        check_integer("max_repeated_failures", self.max_repeated_failures)

    def _check_strategy(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}"
            )
        check_integer("subnets", self.subnets)
        check_integer("supernet_epochs", self.supernet_epochs)
        if self.strategy != "oneshot":
            return
        from oneshot.supernet import check_blocks

        check_blocks(parse_blocks(self.blocks))
        if self.subnets < self.trials:
            raise ValueError(
                f"--strategy oneshot trains the best --trials of its --subnets: subnets "
                f"({self.subnets}) must be at least trials ({self.trials})"
            )
        refused = {
            "backend": (self.backend != "optuna", "scores subnets in this process (Optuna)"),
            "storage": (self.storage is not None, "keeps its supernet and study in --out"),
        }
        for name, (given, why) in refused.items():
            if given:
                raise ValueError(
                    f"--{name.replace('_', '-')} does not apply: --strategy oneshot {why}"
                )

    def _check_baselines(self) -> None:
        from space import presets  # the presets' names, checked here so a typo fails at once

        text = self.baselines.strip() if isinstance(self.baselines, str) else None
        if text is None or not text:
            raise ValueError(f"baselines must name presets or be none, got {self.baselines!r}")
        if text != "none":
            for name in text.split(","):
                presets.get(name.strip())

    def _check_latency(self) -> None:
        if self.latency_device is not None and self.latency_device not in TARGETS:
            raise ValueError(
                f"latency_device must be one of {', '.join(TARGETS)}, got {self.latency_device!r}"
            )
        check_integer("latency_batch", self.latency_batch)
        if self.latency_budget is not None:
            parse_latency(self.latency_budget)
            if self.latency_device is None:
                raise ValueError("a latency budget needs a latency device (--latency-device)")

    @property
    def budget_macs(self) -> int:
        return parse_budget(self.budget)

    @property
    def block_types(self) -> tuple[str, ...]:
        """The block types the search draws from, in registration order."""
        return parse_blocks(self.blocks)

    @property
    def latency_limit_ms(self) -> float | None:
        """The latency budget in milliseconds, or None without one."""
        return None if self.latency_budget is None else parse_latency(self.latency_budget)

    @property
    def objectives(self) -> tuple[str, ...]:
        """The study's objectives: accuracy (up) and MACs (down), and latency in ms (down) when
        a latency device is set."""
        return ("accuracy", "macs", "latency_ms") if self.latency_device else ("accuracy", "macs")

    def latency_target(self) -> Target | None:
        """The latency target (``ValueError`` when its device cannot be used here), or None."""
        if self.latency_device is None:
            return None
        return Target(self.latency_device, self.latency_batch)

    def proxy_for(self, resolution: int) -> ProxySettings:
        """The proxy recipe of a model whose target input is ``resolution``: its proxy input
        scales with it, ``proxy.resolution x resolution / self.resolution`` (rounded, at least
        ``MIN_PROXY_RESOLUTION``), so a scaled member or a published model sees its own input
        size relative to the searched architecture's. The one place of this rule."""
        side = max(
            MIN_PROXY_RESOLUTION, round(self.proxy.resolution * resolution / self.resolution)
        )
        return dataclasses.replace(self.proxy, resolution=side)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchConfig:
        """Build from ``to_dict``'s output; an unknown key is an error listing the known ones."""
        reject_unknown(data, field_names(cls), what="setting")
        data = dict(data)
        if isinstance(data.get("proxy"), dict):
            reject_unknown(data["proxy"], field_names(ProxySettings), what="proxy setting")
            data["proxy"] = ProxySettings(**data["proxy"])
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> SearchConfig:
        return cls.from_dict(json.loads(text))

    def changed_from(self, previous: SearchConfig) -> list[str]:
        """``name=value`` of each setting that defines the search and differs in ``previous``
        (the budget compared in MACs)."""
        changed = []
        for name, value, before in _settings_that_define(self, previous):
            if name == "budget":
                same = parse_budget(value) == parse_budget(before)
            elif name == "latency_budget" and value is not None and before is not None:
                same = parse_latency(value) == parse_latency(before)
            else:
                same = value == before
            if not same:
                changed.append(f"{name}={before!r}")
        return changed


def _settings_that_define(
    config: SearchConfig, previous: SearchConfig
) -> list[tuple[str, Any, Any]]:
    """(name, value, previous value) of every setting marked ``defines_search``, the proxy's
    fields by their own names."""
    out = []
    for field in dataclasses.fields(SearchConfig):
        if not field.metadata.get("defines_search"):
            continue
        value, before = getattr(config, field.name), getattr(previous, field.name)
        if isinstance(value, ProxySettings):
            out += [
                (_proxy_name(f.name), getattr(value, f.name), getattr(before, f.name))
                for f in dataclasses.fields(ProxySettings)
            ]
        else:
            out.append((field.name, value, before))
    return out


# The proxy's fields on the command line: --epochs and --proxy-NAME.
_PROXY_FLAGS = {"epochs": "epochs"}
_PROXY_HELP = {
    "epochs": "proxy training epochs per trial (default %(default)s)",
    "resolution": "proxy input size of the searched architecture (default %(default)s)",
    "batch_size": "proxy batch size (default %(default)s)",
    "lr": "proxy peak learning rate of AdamW (default %(default)s)",
    "weight_decay": "proxy weight decay (default %(default)s)",
    "warmup_fraction": "share of the proxy's steps spent warming up (default %(default)s)",
    "label_smoothing": "proxy label smoothing (default %(default)s)",
}


def _proxy_name(name: str) -> str:
    return _PROXY_FLAGS.get(name, f"proxy_{name}")


def add_options(parser: argparse.ArgumentParser) -> None:
    """One command-line option per setting of ``SearchConfig`` (the proxy's included), with
    the dataclass defaults."""
    hints = typing.get_type_hints(SearchConfig)
    proxy_hints = typing.get_type_hints(ProxySettings)
    for field in dataclasses.fields(SearchConfig):
        if field.name == "proxy":
            for sub in dataclasses.fields(ProxySettings):
                add_option(
                    parser,
                    _proxy_name(sub.name),
                    proxy_hints[sub.name],
                    sub.default,
                    _PROXY_HELP[sub.name],
                )
            continue
        meta = field.metadata
        add_option(
            parser,
            field.name,
            hints[field.name],
            field.default,
            meta["help"],
            choices=meta.get("choices"),
        )


def from_options(args: argparse.Namespace) -> SearchConfig:
    """The configuration the parsed options (``add_options``) describe."""
    proxy = ProxySettings(
        **{f.name: getattr(args, _proxy_name(f.name)) for f in dataclasses.fields(ProxySettings)}
    )
    values = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(SearchConfig) if f.name != "proxy"
    }
    return SearchConfig(**values, proxy=proxy)
