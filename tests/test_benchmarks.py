"""The GPU benchmark's quick CPU mode: the tool runs and writes what the README quotes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
