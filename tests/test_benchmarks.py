"""The benchmarks run and write what the README and docs/ quote: the GPU benchmark's quick CPU mode,
the fidelity benchmark's and the dataset pilot's resumable rows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_no_benchmark_script_shadows_a_package_of_the_project() -> None:
    """A script's own folder comes first on ``sys.path``: ``benchmarks/latency.py`` made every
    benchmark that imports the ``latency`` package (through ``search.config``) fail at start."""
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    scripts = {p.stem for p in (ROOT / "benchmarks").glob("*.py")}
    assert packages and not scripts & packages


def test_the_gpu_benchmark_quick_mode_writes_its_rows(tmp_path: Path) -> None:
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "gpu.py"),
        "--quick",
        "--out",
        str(tmp_path),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    rows = {
        row["measurement"]: row
        for row in map(json.loads, (tmp_path / "gpu-cpu.jsonl").read_text().splitlines())
    }
    assert set(rows) == {"trial", "packing"}
    trial = rows["trial"]
    for when in ("eager_first", "eager_warm"):
        assert trial[when]["seconds"] > 0 and trial[when]["images_per_second"] > 0
        assert 0 < trial[when]["fraction_of_peak"] < 1 and not trial[when]["failed"]
    packing = rows["packing"]["levels"]
    assert set(packing) == {"1", "2"} and all(p["trials_per_hour"] > 0 for p in packing.values())
    again = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert again.returncode == 0 and again.stdout == ""  # every measurement kept: resumed


def test_fidelity_trains_each_row_once_with_workers_and_a_rerun_trains_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import fidelity

    monkeypatch.setattr(fidelity, "RESULTS", tmp_path)
    args = ["--data", "digits", "--archs", "3", "--resolution", "16", "--long-resolution", "16"]
    args += ["--long-epochs", "1", "--workers", "2"]
    fidelity.main(args)
    rows = [json.loads(line) for line in (tmp_path / "fidelity-digits.jsonl").open()]
    assert len(rows) == 9  # 3 architectures: the reference's seed 0 and the proxy's seeds 0 and 1
    proxy, reference = fidelity.DEFAULTS.warmup_fraction, fidelity.REFERENCE_WARMUP
    warmups = {(r["recipe"]["warmup_fraction"], r["seed"]) for r in rows}
    assert warmups == {(reference, 0), (proxy, 0), (proxy, 1)}
    assert all(r["threads"] == 1 and r["device"] == "cpu" for r in rows)
    assert "Kendall tau, proxy seed 0 vs reference seed 0" in capsys.readouterr().out
    fidelity.main(args)
    assert len((tmp_path / "fidelity-digits.jsonl").read_text().splitlines()) == 9
    assert "9 of 9 trainings already done" in capsys.readouterr().out


def test_the_pilot_keeps_its_rows_per_dataset_and_reuses_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import fidelity
    import pilot

    monkeypatch.setattr(fidelity, "RESULTS", tmp_path)
    args = ["--data", "digits", "clutter@28x1x8,fixed", "--archs", "2", "--resolution", "16"]
    pilot.main([*args, "--workers", "2"])
    files = sorted(path.name for path in tmp_path.iterdir())
    assert files == ["fidelity-clutter@28x1x8,fixed.jsonl", "fidelity-digits.jsonl"]
    assert all(len((tmp_path / name).read_text().splitlines()) == 2 for name in files)
    table = capsys.readouterr().out
    assert "| clutter@28x1x8,fixed | 0.150 |" in table and "| digits | 0.150 |" in table
    pilot.main(args)
    assert "2 of 2 trainings already done" in capsys.readouterr().out
    assert all(len((tmp_path / name).read_text().splitlines()) == 2 for name in files)
    with pytest.raises(SystemExit):
        pilot.main(["--data", "clutter@10"])


def test_the_latency_benchmark_keeps_its_rows_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import importlib.util

    from space import presets

    script = ROOT / "benchmarks" / "latency_prediction.py"
    where = importlib.util.spec_from_file_location("latency_prediction", script)
    bench = importlib.util.module_from_spec(where)
    where.loader.exec_module(bench)

    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    monkeypatch.setattr(bench, "TABLES", tmp_path / "tables")
    monkeypatch.setattr(presets, "names", lambda: ("cmt_ti",))
    target = bench.Target("cpu", 1, 1)
    rows = bench.run(target, 2, 600_000_000)
    assert [row["name"] for row in rows] == ["cmt_ti", "sampled 0", "sampled 1"]
    assert all(row["predicted_ms"] > 0 and row["measured_ms"] > 0 for row in rows)
    assert rows[0]["units_measured"] > 0
    bench.report(rows)
    out = capsys.readouterr().out
    assert "within 10%" in out and "faster than measuring" in out
    again = bench.run(target, 2, 600_000_000)
    assert again == rows and "predicted" not in capsys.readouterr().out.split("fingerprint")[0]
