"""The one-shot strategy: subnets within the budget's window, a kill during the supernet's
training or the scoring that loses nothing already computed, the best subnets trained as the
run's trials, and the runs it refuses before anything trains."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import optuna
import pytest

import run_search
from oneshot import search as oneshot_search
from oneshot.space import draw_within, random_within, share_within, window
from oneshot.supernet import Supernet
from search import latency_limit, lifecycle, storage
from search.config import SearchConfig
from search.proxy import ProxySettings
from space.cost import estimate, parse_budget
from space.sampling import draw

BUDGET = "1GFLOPs"


class Killed(Exception):
    """Stands for a kill at a chosen point of the run."""


def config(out: Path, **changes: object) -> SearchConfig:
    """A small one-shot run on the digits: CMT blocks only, few subnets, a short supernet."""
    settings = dict(
        strategy="oneshot",
        budget=BUDGET,
        blocks="cmt",
        data="digits",
        subnets=12,
        trials=2,
        supernet_epochs=2,
        proxy=ProxySettings(epochs=1, batch_size=256),
        baselines="none",
        scaling="cmt",
        out=str(out),
    )
    return SearchConfig(**{**settings, **changes})


def test_the_one_shot_space_is_the_draws_within_the_window() -> None:
    budget = parse_budget(BUDGET)
    low, high = window(budget)
    assert (low, high) == (750_000_000, 1_000_000_000)
    rng = random.Random(0)
    archs = [random_within(rng, budget, blocks=("cmt",)) for _ in range(20)]
    assert all(low <= estimate(arch).macs <= high for arch in archs)
    from oneshot.space import RandomTrial

    rng = random.Random(1)
    for _ in range(200):
        trial = RandomTrial(random.Random(rng.random()))
        state = trial.rng.getstate()
        arch = draw_within(trial, budget, blocks=("cmt",))
        trial.rng.setstate(state)
        drawn = draw(trial, blocks=("cmt",))
        assert (arch is not None) == (low <= estimate(drawn).macs <= high)
        assert arch is None or arch == drawn
    assert 0 < share_within(budget, blocks=("cmt",), draws=300) < 1


def test_the_supernet_runs_every_draw_of_the_space() -> None:
    """Unfitted draws never pass the space's largest widths and depths, which size it."""
    supernet = Supernet(resolution=24, num_classes=10, blocks=("cmt",))
    rng = random.Random(0)
    from oneshot.space import RandomTrial

    assert all(supernet.covers(draw(RandomTrial(rng), blocks=("cmt",))) for _ in range(40))


def test_a_killed_one_shot_search_resumes_and_trains_its_best_subnets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after the supernet's first epoch, then after five subnets scored: each rerun
    goes on from the checkpoint and the study, nothing computed twice (once all are scored,
    the supernet is not even loaded); the best two subnets by their second score become the
    run's two trials, within the budget."""
    settings = config(tmp_path)
    epochs: list[int] = []

    def kill_at(phase: str, at: int):
        def progress(now: str, done: int, total: int) -> None:
            if now == "supernet":
                epochs.append(done)
            if now == phase and done == at:
                raise Killed

        return progress

    with pytest.raises(Killed):
        oneshot_search.run(settings, kill_at("supernet", 1))
    assert (tmp_path / oneshot_search.CHECKPOINT).exists()
    with pytest.raises(Killed):
        oneshot_search.run(settings, kill_at("subnets", 5))
    first = oneshot_search.table(tmp_path)
    assert len(first) == 5
    scores: list[float] = []
    original = oneshot_search.Scorer.first

    def counted(self: oneshot_search.Scorer, arch: object) -> float:
        scores.append(0.0)
        return original(self, arch)

    monkeypatch.setattr(oneshot_search.Scorer, "first", counted)
    oneshot_search.run(settings, kill_at("never", 0))
    # epochs reported: 0 then 1 (killed), 1 then 2 (resumed), 2 (trained: nothing to do)
    assert epochs == [0, 1, 1, 2, 2]
    table = oneshot_search.table(tmp_path)
    assert len(table) == settings.subnets
    kept = table.iloc[:5].drop(columns="rescore")  # the five scored before the kill, as scored
    assert kept.equals(first.drop(columns="rescore"))
    fresh = table.iloc[5:]
    assert len(scores) == fresh.duplicate_of.isna().sum()  # only the new ones were scored
    low, high = window(settings.budget_macs)
    assert table.macs.between(low, high).all()
    rescored = table[table.rescore.notna()]
    assert len(rescored) == min(oneshot_search.RESCORED_PER_TRIAL * settings.trials, len(table))
    monkeypatch.setattr(oneshot_search, "Supernet", None)  # all scored: the supernet not loaded
    oneshot_search.run(settings, kill_at("supernet", 0))
    assert oneshot_search.table(tmp_path).equals(table)

    lifecycle.run_trials_locked(settings)
    trials = storage.records(tmp_path)
    best = rescored.sort_values(["rescore", "number"], ascending=[False, True])
    best = best.drop_duplicates("arch").arch.iloc[: settings.trials]
    assert [t.arch.to_json() for t in trials] == list(best)
    assert all(t.macs <= settings.budget_macs and t.state == "COMPLETE" for t in trials)


def test_a_trial_of_a_one_shot_search_is_a_queued_subnet(tmp_path: Path) -> None:
    """Asked without a queued subnet, a one-shot trial fails instead of training a draw."""
    settings = config(tmp_path, trials=1)
    lifecycle.run_trials_locked(settings)
    (trial,) = storage.records(tmp_path)
    assert trial.state == "FAIL" and "none was queued" in trial.fail_reason


def test_a_latency_budget_limits_every_subnet_scored_and_trained(tmp_path: Path) -> None:
    """With a latency device the subnets are told their predicted latency as a third objective;
    with a latency budget none over it is scored, queued or trained."""
    settings = config(tmp_path, subnets=6, trials=1, supernet_epochs=1, latency_device="cpu")
    rng = random.Random(0)
    drawn = [random_within(rng, settings.budget_macs, blocks=("cmt",)) for _ in range(8)]
    latencies = sorted(latency_limit.predicted_ms(arch, settings) for arch in drawn)
    settings = dataclasses.replace(settings, latency_budget=f"{latencies[4]:.3f}ms")
    oneshot_search.run(settings)
    table = oneshot_search.table(tmp_path)
    assert len(table) == settings.subnets
    assert table.latency_ms.notna().all() and (table.latency_ms <= settings.latency_limit_ms).all()
    study = optuna.load_study(
        study_name=storage.STUDY_NAME,
        storage=storage.open_url(str(tmp_path / oneshot_search.JOURNAL)),
    )
    assert study.metric_names == ["accuracy", "macs", "latency_ms"]
    limit = settings.latency_limit_ms
    over = [t for t in study.trials if limit < t.values[2] < float("inf")]  # in the window
    assert over and not any("score" in t.user_attrs for t in over)
    lifecycle.run_trials_locked(settings)
    (trial,) = storage.records(tmp_path)
    assert trial.state == "COMPLETE" and trial.latency_ms <= settings.latency_limit_ms


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backend", "ray"], "--backend does not apply: --strategy oneshot scores subnets"),
        (["--subnets", "3"], "subnets (3) must be at least trials (6)"),
    ],
)
def test_what_a_one_shot_search_cannot_do_exits_2_before_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], message: str
) -> None:
    out = tmp_path / "run"
    code = run_search.main(["--strategy", "oneshot", "--data", "digits", "--out", str(out), *args])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and message in error[0], error
    assert not out.exists()


def test_a_supernet_too_large_for_memory_exits_2_before_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(oneshot_search, "available_bytes", lambda device: 2**30)
    out = tmp_path / "run"
    code = run_search.main(["--strategy", "oneshot", "--data", "digits", "--out", str(out)])
    error = capsys.readouterr().err.strip()
    assert code == 2 and "GiB to train, and cpu has 1.0 GiB free" in error, error
    assert "the supernet (323.9M numbers)" in error and not out.exists()


def test_a_budget_the_drawn_space_cannot_reach_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    args = ["--strategy", "oneshot", "--budget", "40M", "--blocks", "cmt", "--out", str(out)]
    code = run_search.main([*args, "--data", "digits"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and "use --strategy trials for this budget" in error, error
