"""run_search.py end to end: the run folder, resuming, rebuilding reports, and errors."""

from __future__ import annotations

import hashlib
import json
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import run_search
import search.proxy
import search.storage
from search.config import SearchConfig
from search.proxy import ProxyResult

ROOT = Path(__file__).resolve().parents[1]
RUN_FILES = (
    "config.json",
    "trials.csv",
    "pareto.csv",
    "best_arch.json",
    "scaling.csv",
    "family.csv",
    "family/Ti.json",
    "family/XS.json",
    "family/S.json",
    "family/B.json",
    "baselines.csv",
    "pareto.png",
    "tradeoff.png",
    "report.md",
    "study.journal",
    "trainings.jsonl",
)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "run_search.py"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )


def fingerprint(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_the_command_writes_every_file(tmp_path: Path) -> None:
    """A real (small) run through the command line, every step on, the trainings after the
    search in worker processes (one per core)."""
    out = tmp_path / "run"
    done = cli(
        "--budget",
        "0.12GFLOPs",
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
    )
    assert done.returncode == 0, done.stderr
    for name in RUN_FILES:
        assert (out / name).is_file(), name
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 2 and (trials.macs <= 120_000_000).all()
    report = (out / "report.md").read_text()
    best = json.loads((out / "best_arch.json").read_text())
    assert f"{len(trials)} trials" in report and best["stem"] == "cmt"
    assert report.index("Searched family against CMT") < report.index("All trials")
    assert "Seed-to-seed noise of the proxy" in report and "CMT's are 1.2, 1.3, 1.15" in report
    assert len(pd.read_csv(out / "scaling.csv")) == SearchConfig().scaling_candidates
    assert pd.read_csv(out / "family.csv").accuracy.notna().all()
    assert pd.read_csv(out / "baselines.csv").preset.tolist() == ["cmt_ti"]
    assert "report:" in done.stdout


@pytest.mark.parametrize("budget", ["0.6GFLOPs", "9GFLOPs"])
def test_small_and_large_budgets(tmp_path: Path, fake_proxy: list, budget: str) -> None:
    out = tmp_path / "run"
    assert (
        run_search.main(
            ["--budget", budget, "--trials", "5", "--data", "digits", "--out", str(out)]
        )
        == 0
    )
    trials = pd.read_csv(out / "trials.csv")
    limit = int(float(budget.removesuffix("GFLOPs")) * 1e9)
    assert len(trials) == 5 and (trials.macs <= limit).all()
    family = pd.read_csv(out / "family.csv")
    assert family.variant.tolist() == ["Ti", "XS", "S", "B"] and family.macs.is_monotonic_increasing
    assert family.macs.iloc[2] == trials.macs.max() or family.macs.iloc[2] in set(trials.macs)


def test_reports_rebuild_without_training(tmp_path: Path, fake_proxy: list) -> None:
    out = tmp_path / "run"
    args = ["--budget", "0.6G", "--trials", "4", "--data", "digits", "--out", str(out)]
    assert run_search.main(args) == 0
    trained = len(fake_proxy)
    before = (out / "report.md").read_text()
    kept = {"study.journal", "trainings.jsonl", "config.json"}
    for path in out.rglob("*"):
        if path.is_file() and path.name not in kept:
            path.unlink()
    assert run_search.main(["--out", str(out), "--report-only"]) == 0
    assert len(fake_proxy) == trained
    assert (out / "report.md").read_text() == before
    assert all((out / name).is_file() for name in RUN_FILES)


def test_a_moved_run_folder_rebuilds_where_it_is(tmp_path: Path, fake_proxy: list) -> None:
    out, moved = tmp_path / "run", tmp_path / "moved"
    args = ["--budget", "0.6G", "--trials", "3", "--data", "digits", "--out", str(out)]
    assert run_search.main(args) == 0
    out.rename(moved)
    (moved / "report.md").unlink()
    assert run_search.main(["--out", str(moved), "--report-only"]) == 0
    assert (moved / "report.md").is_file() and not out.exists()
    assert json.loads((moved / "config.json").read_text())["out"] == str(moved)


def test_rerun_resumes_and_extends(tmp_path: Path, fake_proxy: list) -> None:
    out = tmp_path / "run"
    args = ["--budget", "0.6G", "--data", "digits", "--baselines", "none", "--out", str(out)]
    assert run_search.main([*args, "--trials", "3"]) == 0
    assert run_search.main([*args, "--trials", "5"]) == 0
    assert len(pd.read_csv(out / "trials.csv")) == 5
    keys = [json.loads(line)["key"] for line in (out / "trainings.jsonl").read_text().splitlines()]
    assert len(keys) == len(set(keys))
    assert len(fake_proxy) == 5 + len(keys)  # each trial and each later training ran once


@pytest.fixture
def existing_run(tmp_path: Path, fake_proxy: list) -> Path:
    out = tmp_path / "run"
    assert (
        run_search.main(
            ["--budget", "0.6G", "--trials", "2", "--data", "digits", "--out", str(out)]
        )
        == 0
    )
    return out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--budget", "four gigaflops"], "cannot read the budget 'four gigaflops'"),
        (["--budget=-4G"], "must be a positive number"),
        (
            ["--budget", "10MFLOPs"],
            "below the smallest architecture of the search space at 224px (26,",
        ),
        (["--backend", "nni"], "argument --backend: invalid choice: 'nni'"),
        (["--data", "cifar10:/no/such/folder"], "dataset folder '/no/such/folder' does not exist"),
        (["--data", "imagenet"], "unknown dataset 'imagenet'"),
        (["--data", "fashion:/no/such/folder"], "apt-get install dataset-fashion-mnist"),
        (["--data", "clutter@20"], "the canvas (20 px) must be at least as large as a digit"),
        (["--trials", "0"], "trials must be an integer >= 1"),
        (["--blocks", "cmt,levit"], "unknown block type 'levit' in blocks; searchable: cmt"),
        (["--latency-budget", "30ms"], "a latency budget needs a latency device"),
        (
            ["--backend", "ray", "--ray-address", "127.0.0.1:9"],
            "cannot reach a Ray cluster at 127.0.0.1:9 (Connection refused)",
        ),
        (["--backend", "ray", "--ray-address", "nowhere"], "cannot read the Ray address 'nowhere'"),
        (["--latency-device", "tpu"], "argument --latency-device: invalid choice: 'tpu'"),
        (
            ["--latency-device", "cpu", "--latency-budget", "fast"],
            "cannot read the latency budget 'fast'",
        ),
        (
            ["--budget", "0.6G", "--latency-device", "cpu", "--latency-budget", "1us"],
            "latency budget of 0.001 ms is below the smallest architecture",
        ),
        (
            ["--budget", "0.6G", "--latency-device", "cpu", "--latency-budget", "1000s"],
            "latency budget of 1e+06 ms is above the largest architecture of the search space "
            "within 0.6G",
        ),
        (["--budget", "600M", "--seed", "1"], "holds a search made with seed=0; rerun with those"),
    ],
)
def test_errors_exit_2_with_one_line_and_leave_the_folder_alone(
    existing_run: Path, args: list[str], message: str
) -> None:
    before = fingerprint(existing_run)
    done = cli("--data", "digits", "--out", str(existing_run), *args)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("run_search.py: error: "), done.stderr
    assert message in lines[0]
    assert "Traceback" not in done.stderr
    assert fingerprint(existing_run) == before


@pytest.mark.parametrize("where", ["file", "proc"])
def test_unwritable_output_folder(tmp_path: Path, where: str) -> None:
    if where == "file":
        (tmp_path / "a_file").write_text("")
        out, message = tmp_path / "a_file" / "run", "is a file"
    else:
        out, message = Path("/proc/hybrid-nas-run"), "cannot write to the output folder"
    done = cli("--data", "digits", "--out", str(out))
    assert done.returncode == 2 and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_report_only_without_a_run(tmp_path: Path) -> None:
    done = cli("--out", str(tmp_path / "nothing"), "--report-only")
    assert done.returncode == 2 and "holds no run" in done.stderr


def test_a_crafted_cifar_folder_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    from tests.common.test_datasets import _Payload, write_cifar

    write_cifar(tmp_path / "c", 10)
    victim = tmp_path / "pwned"
    hostile = {b"data": _Payload(f"touch {victim}"), b"labels": [0]}
    (tmp_path / "c" / "data_batch_1").write_bytes(pickle.dumps(hostile, protocol=2))
    done = cli("--data", f"cifar10:{tmp_path / 'c'}", "--out", str(tmp_path / "run"))
    assert done.returncode == 2 and "data_batch_1" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert not victim.exists() and not (tmp_path / "run").exists()


def test_a_budget_above_the_space_is_refused_at_once(tmp_path: Path) -> None:
    started = time.perf_counter()
    done = cli("--budget", "1e30", "--out", str(tmp_path / "run"))
    assert done.returncode == 2 and time.perf_counter() - started < 60
    assert "above the largest architecture of the search space at 224px" in done.stderr
    assert "GMACs" in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(torch.cuda.device_count() > 8, reason="needs cuda:9 to be absent")
@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
def test_latency_on_a_missing_gpu_is_refused(tmp_path: Path) -> None:
    done = cli("--data", "digits", "--latency-device", "cuda", "--out", str(tmp_path / "run"))
    assert done.returncode == 2 and "CUDA is not available" in done.stderr
    assert not (tmp_path / "run").exists()


def test_a_missing_gpu_is_refused_before_anything_runs(tmp_path: Path) -> None:
    device = "cuda:0" if not torch.cuda.is_available() else "cuda:9"
    done = cli("--device", device, "--data", "digits", "--out", str(tmp_path / "run"))
    assert done.returncode == 2 and device in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_trials_failing_the_same_way_stop_the_search(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def broken(*args: object, **kwargs: object) -> ProxyResult:
        return ProxyResult(0.0, (), 0.1, 10.0, True, "out of memory: tried 1.5 GiB")

    monkeypatch.setattr(search.proxy, "train", broken)
    args = ["--budget", "0.6G", "--trials", "20", "--data", "digits", "--out", str(tmp_path)]
    assert run_search.main([*args, "--max-repeated-failures", "4"]) == 1
    assert "the last 4 trials all failed with: out of memory" in capsys.readouterr().err
    trials = pd.DataFrame(search.storage.records(tmp_path))
    assert len(trials) == 4 and (trials.state == "FAIL").all()
