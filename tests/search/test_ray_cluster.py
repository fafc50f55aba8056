"""A real Ray cluster on this machine: a head node and a second node started with ``ray start``
as separate processes (one CPU each), ``run_search.py --ray-address`` joining them, and the
second node's raylet killed with SIGKILL while it trains, during the search or during the
trainings after it. The run must finish every trial and training once, the lost one labelled
and trained again."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from search import storage
from search.trainings import FILE as TRAININGS

ROOT = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).with_name("ray")
TRIALS = 3


pytestmark = [
    pytest.mark.fault,
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc"),
]


@dataclass
class Cluster:
    address: str
    env: dict[str, str]
    second_raylet: int  # its process id


def _processes() -> dict[int, tuple[int, str]]:
    """Every process: pid -> (parent pid, command line), from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except (OSError, ValueError):
            continue  # not a process, or gone
        found[int(entry.name)] = (int(stat.rpartition(")")[2].split()[1]), line)
    return found


def _descendants(pid: int) -> list[str]:
    """The command lines of ``pid``'s children, grandchildren and so on."""
    processes, family, lines = _processes(), {pid}, []
    for _ in range(4):
        for child, (parent, line) in processes.items():
            if parent in family and child not in family:
                family.add(child)
                lines.append(line)
    return lines


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _raylets(folder: str) -> set[int]:
    return {
        pid
        for pid, (_, line) in _processes().items()
        if line.split(" ")[0].endswith("/raylet") and folder in line
    }


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """Two nodes, token authentication on (Ray's default for ``ray start``) with a token of
    their own; every process of the cluster killed at the end."""
    folder = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    port = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    try:
        head = [str(RAY), "start", "--head", "--port", str(port), "--include-dashboard", "false"]
        subprocess.run([*head, *common, "--temp-dir", folder], env=env, check=True, timeout=120)
        before = _raylets(folder)
        node = [str(RAY), "start", "--address", f"127.0.0.1:{port}", *common]
        subprocess.run([*node, "--temp-dir", folder], env=env, check=True, timeout=120)
        (second,) = _raylets(folder) - before
        yield Cluster(f"127.0.0.1:{port}", env, second)
    finally:
        for pid, (_, line) in _processes().items():
            if folder in line:
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(folder, ignore_errors=True)


def _run(cluster: Cluster, out: Path) -> subprocess.Popen:
    command = [
        sys.executable, "run_search.py", "--backend", "ray", "--ray-address", cluster.address,
        "--budget", "300M", "--data", "digits", "--trials", str(TRIALS), "--epochs", "2",
        "--no-prune", "--scaling", "cmt", "--baselines", "none", "--out", str(out),
    ]  # fmt: skip
    return subprocess.Popen(
        command, cwd=ROOT, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def _kill_when_training(cluster: Cluster, run: subprocess.Popen, title: str) -> None:
    """SIGKILL the second node's raylet once one of its workers has run ``title`` for two
    seconds (``ray::ImplicitFunc`` is a search trial, ``ray::_in_task`` a later training)."""
    seen = None
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and run.poll() is None:
        working = any(line.startswith(title) for line in _descendants(cluster.second_raylet))
        seen = (seen or time.monotonic()) if working else None
        if seen is not None and time.monotonic() - seen > 2:
            os.kill(cluster.second_raylet, signal.SIGKILL)
            return
        time.sleep(0.2)
    pytest.fail(f"no {title} ran on the second node (run exit {run.poll()})")


def _finished(run: subprocess.Popen) -> str:
    output, _ = run.communicate(timeout=900)
    text = output.decode(errors="replace")
    assert run.returncode == 0, text[-3000:]
    return text


def _trainings(out: Path) -> list[str]:
    return [json.loads(line)["key"] for line in (out / TRAININGS).read_text().splitlines()]


def test_a_node_killed_during_a_trial_loses_nothing(cluster: Cluster, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run = _run(cluster, out)
    _kill_when_training(cluster, run, "ray::ImplicitFunc")
    text = _finished(run)
    records = storage.records(out)
    lost = [r for r in records if r.fail_reason.startswith(storage.LOST)]
    kept = [r for r in records if not r.fail_reason.startswith("interrupted:")]
    assert len(lost) == 1, text[-4000:]
    assert "Error" in lost[0].fail_reason and lost[0].state == "FAIL"
    assert len(kept) == TRIALS and all(r.state == "COMPLETE" for r in kept)
    study = storage.load_study(out)
    redone = [t for t in study.trials if t.user_attrs.get("redo_of") == lost[0].number]
    assert len(redone) == 1 and redone[0].params == study.trials[lost[0].number].params
    keys = _trainings(out)
    assert len(keys) == len(set(keys)) > 0


def test_a_node_killed_during_the_trainings_after_the_search_loses_nothing(
    cluster: Cluster, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    run = _run(cluster, out)
    _kill_when_training(cluster, run, "ray::_in_task")
    text = _finished(run)
    assert "a training was lost (interrupted: the Ray worker" in text
    records = storage.records(out)
    assert len(records) == TRIALS and all(r.state == "COMPLETE" for r in records)
    keys = _trainings(out)
    assert len(keys) == len(set(keys))
    report = (out / "report.md").read_text()
    assert "not trained" not in report


def test_a_driver_without_the_clusters_token_is_one_line_and_exit_2(
    cluster: Cluster, tmp_path: Path
) -> None:
    env = {k: v for k, v in cluster.env.items() if not k.startswith("RAY_AUTH")}
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "run_search.py", "--backend", "ray", "--ray-address", cluster.address,
         "--budget", "300M", "--data", "digits", "--trials", "1", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2
    error = done.stderr.strip().splitlines()[-1]
    expected = f"run_search.py: error: cannot join the Ray cluster at {cluster.address} "
    assert error.startswith(expected)
    assert "RAY_AUTH_MODE=token" in error and not out.exists()
