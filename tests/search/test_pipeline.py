"""The run as a pipeline: the scaling candidates, the proxy-input rule, the steps, and resuming
after a kill without training anything twice."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from search import pipeline
from search.trainings import FILE, TrainingLog
from space import presets
from space.scaling import coefficient_grid, mac_exponents, scale, spread_candidates
from tests.conftest import tiny

ROOT = Path(__file__).resolve().parents[2]


def test_the_candidates_start_with_cmts_and_spread_over_the_grid() -> None:
    exponents = mac_exponents(presets.get("cmt_s"))
    grid = coefficient_grid(exponents)
    for count in (1, 3, 5):
        chosen = spread_candidates(grid, count)
        assert len(chosen) == count == len(set(chosen))
        assert chosen[0] == (1.2, 1.3, 1.15)
        for alpha, beta, gamma in chosen[1:]:
            step = alpha * beta**exponents.width * gamma**exponents.resolution
            assert (alpha, beta, gamma) in grid and math.isclose(step, 2.5, rel_tol=1e-3)
    three = spread_candidates(grid, 3)
    assert max(three[1][2], three[2][2]) > 1.4 and max(three[1][0], three[2][0]) >= 1.45


def test_the_proxy_input_scales_with_each_models_own_input() -> None:
    config = tiny()
    assert config.proxy_for(224).resolution == config.proxy.resolution == 32
    assert [config.proxy_for(r).resolution for r in (160, 192, 256)] == [23, 27, 37]
    # CMT-Ti (160 px) is CMT-S's phi = -2 member: both train at the same proxy input
    ti = scale(presets.get("cmt_s"), -2)
    assert config.proxy_for(ti.resolution) == config.proxy_for(presets.get("cmt_ti").resolution)
    assert config.proxy_for(32).resolution == 16  # never below the smallest proxy input
    assert tiny(resolution=160).proxy_for(224).resolution == 45  # relative to the search's input


def test_the_steps_plan_and_record_every_training(tmp_path: Path, fake_proxy: list) -> None:
    config = tiny(
        trials=4, out=str(tmp_path), budget="0.6G", baselines="cmt_ti,cmt_s", scaling_candidates=3
    )
    results = pipeline.run(config)
    steps = [t.step for t in TrainingLog(tmp_path).load().values()]
    assert steps.count("scaling") == 3 and len(results.scaling) == 3
    assert [row.job.label for row in results.family] == ["Ti", "XS", "S", "B"]
    assert all(row.accuracy is not None for row in results.family)
    assert [row.job.label for row in results.baselines] == ["cmt_ti", "cmt_s"]
    assert [row.job.facts["pair"] for row in results.noise] == ["S", "cmt_s"]
    # S is its search trial and XS the chosen candidate's training: neither is trained again
    assert steps.count("family") == 2 and "search" not in steps
    assert len(fake_proxy) == 4 + len(steps)  # the 4 trials, then each training once
    chosen = [row for row in results.scaling if row.job.arch == results.family[1].job.arch]
    assert len(chosen) == 1 and results.coefficients == tuple(
        chosen[0].job.facts[k] for k in ("alpha", "beta", "gamma")
    )


def test_cmt_scaling_and_no_baselines_skip_both_steps(tmp_path: Path, fake_proxy: list) -> None:
    config = tiny(trials=3, out=str(tmp_path), scaling="cmt", baselines="none")
    results = pipeline.run(config)
    assert results.scaling == [] and results.baselines == []
    assert results.coefficients == (1.2, 1.3, 1.15)
    steps = sorted(t.step for t in TrainingLog(tmp_path).load().values())
    assert steps == ["family", "family", "family", "noise"]


def test_report_only_trains_nothing(tmp_path: Path, fake_proxy: list) -> None:
    config = tiny(trials=3, out=str(tmp_path), baselines="cmt_ti")
    first = pipeline.run(config)
    trained = len(fake_proxy)
    again = pipeline.run(config, report_only=True)
    assert len(fake_proxy) == trained
    assert [r.accuracy for r in again.family] == [r.accuracy for r in first.family]
    assert again.coefficients == first.coefficients


def _lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_sigkill_during_the_family_then_rerun_trains_only_what_was_missing(
    tmp_path: Path,
) -> None:
    """Real trainings on ``digits``: kill -9 once the family step has recorded a training,
    then rerun the same command."""
    out = tmp_path / "run"
    args = [
        sys.executable,
        str(ROOT / "run_search.py"),
        "--budget",
        "0.12G",
        "--trials",
        "2",
        "--epochs",
        "1",
        "--data",
        "digits",
        "--baselines",
        "cmt_ti",
        "--out",
        str(out),
    ]
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 400
        while not any(row["step"] == "family" for row in _lines(out / FILE)):
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline, "the family step did not start in time"
            time.sleep(0.2)
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
    before = (out / FILE).read_text()
    done_before = {row["key"] for row in _lines(out / FILE)}
    rerun = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    after = _lines(out / FILE)
    assert (out / FILE).read_text().startswith(before)  # nothing recorded was lost
    keys = [row["key"] for row in after]
    assert len(keys) == len(set(keys))  # nothing trained twice
    new = [row for row in after if row["key"] not in done_before]
    assert new and all(row["step"] in ("family", "baselines", "noise") for row in new)
    assert {row["step"] for row in after} == {"scaling", "family", "baselines", "noise"}
    assert os.path.getsize(out / "tradeoff.png") > 0
