"""retrain.py end to end: a run killed during epoch 2 resumes at epoch 2's start, its folder
holds the result, and bad input gives one line and exit status 2."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import retrain

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "example-run" / "best_arch.json"


def command(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "retrain.py"), *args]


def test_sigkill_in_epoch_two_resumes_at_its_start(tmp_path: Path) -> None:
    """The acceptance command: killed with SIGKILL once epoch 1's checkpoint is written (so
    during epoch 2), rerun, it starts at epoch 2 and ends with result.json."""
    out = tmp_path / "run"
    args = command(str(EXAMPLE), "--data", "digits", "--epochs", "2", "--out", str(out))
    first = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (out / "last.pt").exists():
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, "epoch 1 did not finish in 5 minutes"
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1
    second = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    assert "resuming after epoch 1 of 2" in second.stdout
    assert "epoch 1:" not in second.stdout and "epoch 2:" in second.stdout
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [row["epoch"] for row in rows] == ["1", "2"]
    result = json.loads((out / "result.json").read_text())
    assert result["epochs"] == 2 and 0 < result["top1"] <= result["top5"] <= 1
    assert result["best"]["top1"] == max(
        max(float(row["top1"]), float(row["ema_top1"])) for row in rows
    )
    assert result["resolution"] == 32  # digits are 8 px: trained at the 32 px floor
    assert result["genotype_macs_at_own_resolution"] == 3_563_931_584  # the search's count
    assert set(result["inference_images_per_second"]) == {"1", "64"}
    assert (out / "best.pt").exists() and (out / "retrain.json").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["cmt_xxl"], "neither an architecture file nor a preset"),
        (["cmt_ti", "--data", "mnist"], "unknown dataset 'mnist'"),
        (["cmt_ti", "--export", "pdf"], "unknown export format 'pdf'"),
        (["cmt_ti", "--lr", "-1"], "lr must be a number > 0"),
        (["cmt_ti", "--mixup", "nan"], "mixup must be a number >= 0"),
        (["cmt_ti", "--epochs", "x"], "argument --epochs: invalid int value"),
        (["cmt_ti", "--workers", "-1"], "--workers must be >= 0"),
        (["cmt_ti", "--resolution", "16"], "--resolution must be at least 32"),
        (["cmt_ti", "--device", "cuda:7"], "device 'cuda:7' was asked for"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], message: str
) -> None:
    out = tmp_path / "run"
    assert retrain.main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("retrain.py: error:") and message in err and "\n" not in err
    assert not out.exists()


@pytest.mark.parametrize("where", ["file", "proc"])
def test_an_unwritable_output_folder_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, where: str
) -> None:
    if where == "file":
        (tmp_path / "a_file").write_text("")
        out, message = tmp_path / "a_file" / "run", "is a file"
    else:
        out, message = Path("/proc/hybrid-nas-retrain"), "cannot write to the output folder"
    assert retrain.main(["cmt_ti", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("retrain.py: error:") and message in err and "\n" not in err


def test_a_bad_genotype_file_names_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    arch = tmp_path / "arch.json"
    arch.write_text('{"resolution": 224, "stages": [{"block": "cmt", "depth": 2, "width": 64}]}')
    assert retrain.main([str(arch), "--out", str(tmp_path / "run")]) == 2
    assert "is not an architecture: stages must hold 4 stages" in capsys.readouterr().err


def test_a_folder_of_another_retraining_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    args = parse = retrain.build_parser().parse_args(
        ["cmt_ti", "--data", "digits", "--out", str(out)]
    )
    settings = retrain.prepare(parse)[0]
    out.mkdir()
    (out / "retrain.json").write_text(json.dumps(settings.to_dict()))
    before = (out / "retrain.json").read_text()
    assert args.epochs == 300
    code = retrain.main(["cmt_ti", "--data", "digits", "--epochs", "5", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "holds a retraining made with --epochs 300" in err
    assert (out / "retrain.json").read_text() == before


def test_help_shows_the_recipe() -> None:
    text = retrain.build_parser().format_help()
    for option in ("--mixup", "--cutmix", "--randaugment", "--drop-path", "--ema-decay"):
        assert option in text
    assert "rand-m9-mstd0.5-inc1" in text and "default 300" in text


def test_export_without_onnx_installed_is_refused_first(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retrain, "find_spec", lambda name: None if name == "onnxscript" else True)
    out = tmp_path / "run"
    assert retrain.main(["cmt_ti", "--data", "digits", "--export", "onnx", "--out", str(out)]) == 2
    assert "--export onnx needs onnxscript" in capsys.readouterr().err and not out.exists()
