"""A latency-aware search: latency is a third objective, recorded for every trial, and a latency
budget is a hard limit on every backend; the machine's unit table is reused by the next search."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest

from reports.report import write_reports
from reports.tables import baselines_table, latency_data
from search import latency_limit, measured, pipeline, storage
from search.lifecycle import run_trials
from search.storage import trial_table
from space.sampling import smallest
from tests.conftest import tiny


def limited(tmp_path: Path, backend: str, **changes: object):
    """A tiny search whose latency limit is 1.5 x the predicted latency of the space's smallest
    architecture: tight enough that draws must shrink to keep it."""
    config = tiny(trials=6, out=str(tmp_path / backend), backend=backend, latency_device="cpu")
    floor = latency_limit.predicted_ms(smallest(config.resolution), config)
    budget = f"{1.5 * floor:.3f}ms"
    return dataclasses.replace(config, latency_budget=budget, **changes)


@pytest.mark.parametrize("backend", ["optuna", pytest.param("ray", marks=pytest.mark.slow)])
def test_every_trial_keeps_the_latency_budget(
    tmp_path: Path, fake_proxy: list, backend: str
) -> None:
    config = limited(tmp_path, backend)
    run_trials(config)
    table = trial_table(config.out)
    assert len(table) == 6 and table.latency_ms.notna().all()
    assert (table.latency_ms <= config.latency_limit_ms).all()
    assert (table.macs <= config.budget_macs).all()
    study = storage.load_study(config.out)
    assert study.metric_names == ["accuracy", "macs", "latency_ms"]
    for trial in study.trials:
        if trial.values is not None:
            assert trial.values[2] == pytest.approx(trial.user_attrs["latency_ms"])


def test_a_second_search_on_the_machine_measures_nothing_it_has(
    tmp_path: Path, fake_proxy: list
) -> None:
    first = dataclasses.replace(limited(tmp_path, "optuna"), out=str(tmp_path / "first"))
    run_trials(first)
    latency_limit._table.cache_clear()  # a new process: the table is read from disk
    run_trials(dataclasses.replace(first, out=str(tmp_path / "second")))
    assert latency_limit._table(first.latency_target()).measured == 0
    assert trial_table(first.out).arch.tolist() == trial_table(tmp_path / "second").arch.tolist()


def test_without_a_latency_device_the_study_keeps_two_objectives(
    tmp_path: Path, fake_proxy: list
) -> None:
    config = tiny(trials=2, out=str(tmp_path / "run"))
    run_trials(config)
    assert storage.load_study(config.out).metric_names == ["accuracy", "macs"]
    assert trial_table(config.out).latency_ms.isna().all()


def reported(tmp_path: Path, **changes: object):
    """A latency-limited run through the whole pipeline and its reports (CMT's coefficients)."""
    config = dataclasses.replace(limited(tmp_path, "optuna"), scaling="cmt", **changes)
    results = pipeline.run(config)
    write_reports(config.out, config, results)
    return config, results, Path(config.out)


def test_the_reports_draw_the_latency_front_and_name_the_machine(
    tmp_path: Path, fake_proxy: list
) -> None:
    config, _, out = reported(tmp_path, trials=8, baselines="none")
    front = pd.read_csv(out / "pareto-latency.csv")
    assert len(front) >= 1 and front.latency_ms.is_monotonic_increasing
    assert front.accuracy.is_monotonic_increasing
    assert (out / "latency.png").stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "## Latency" in report and "cpu (torch" in report and "threads on" in report
    assert f"The limit was {config.latency_limit_ms:g} ms" in report


def test_the_family_and_baselines_are_measured_once_after_the_search(
    tmp_path: Path, fake_proxy: list
) -> None:
    config, results, out = reported(tmp_path, trials=4, baselines="cmt_ti")
    lines = (out / measured.FILE).read_text().splitlines()
    assert len(lines) == len(results.measured_ms) == 5  # S, Ti, XS, B (S once) and cmt_ti
    family = pd.read_csv(out / "family.csv")
    assert (
        family.latency_ms.notna().all() and family.latency_ms.iloc[0] < family.latency_ms.iloc[-1]
    )
    assert family.cmt_latency_ms.notna().sum() == 1  # only CMT-Ti was a baseline
    assert pd.read_csv(out / "baselines.csv").latency_ms.notna().all()
    drawn = latency_data(results.trials, None, baselines_table(results)).presets  # the figure's
    assert drawn.preset.tolist() == ["cmt_ti"] and drawn.latency_ms.notna().all()
    assert "measured whole on the same machine" in (out / "report.md").read_text()
    again = pipeline.run(config)  # a rerun measures nothing it has
    assert again.measured_ms == results.measured_ms
    assert len((out / measured.FILE).read_text().splitlines()) == 5
