"""One search run by several processes on a shared study storage (``--storage``): SQLite always,
a real PostgreSQL server (Debian's ``postgresql`` package) where installed. Two runs with their
own run folders work on one study; one is killed with SIGKILL while it trains, and the other
finishes every trial once, the killed one's trial redone."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from search import lifecycle, storage
from search.lifecycle import run_trials
from search.storage import trial_table
from tests.conftest import tiny

ROOT = Path(__file__).resolve().parents[2]
TRIALS = 4


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return found[-1].parent if found else None


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server of its own on a free loopback port (as the ``postgres`` user when
    the test runs as root, which PostgreSQL refuses to be), stopped at the end."""
    pytest.importorskip("psycopg")
    binaries = _postgres_bin()
    if binaries is None:
        pytest.skip("no PostgreSQL server installed (Debian: apt-get install postgresql)")
    folder = Path(tempfile.mkdtemp(prefix="pg"))
    as_user = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []
    if as_user:
        shutil.chown(folder, "postgres")
    data, port = folder / "data", _free_port()

    def run(*command: str) -> None:
        subprocess.run([*as_user, *command], check=True, capture_output=True, timeout=120)

    run(str(binaries / "initdb"), "-D", str(data), "-U", "hnas", "--auth=trust")
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
    run(str(binaries / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w",
        "start")  # fmt: skip
    try:
        run(str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "hnas", "search")
        yield f"postgresql://hnas@127.0.0.1:{port}/search"
    finally:
        run(str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql", "journal"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    if request.param == "journal":
        return str(tmp_path / "study.journal")
    return request.getfixturevalue("postgres_url")


def _search(url: str, out: Path) -> subprocess.Popen:
    command = [
        sys.executable, "run_search.py", "--storage", url, "--out", str(out),
        "--budget", "300M", "--data", "digits", "--trials", str(TRIALS), "--epochs", "3",
        "--no-prune", "--scaling", "cmt", "--baselines", "none",
    ]  # fmt: skip
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _running_in(url: str, pid: int) -> bool:
    where = storage.open_url(url)
    names = {s.study_name for s in optuna.get_all_study_summaries(where)}
    if storage.STUDY_NAME not in names:
        return False
    study = optuna.load_study(study_name=storage.STUDY_NAME, storage=where)
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    return any(t.user_attrs.get("worker", "").endswith(f":{pid}") for t in running)


@pytest.mark.fault
def test_two_runs_share_a_study_and_one_killed_loses_nothing(url: str, tmp_path: Path) -> None:
    first = _search(url, tmp_path / "a")
    second = _search(url, tmp_path / "b")
    deadline = time.monotonic() + 300
    while not _running_in(url, first.pid):
        assert time.monotonic() < deadline and first.poll() is None, "the first run never trained"
        time.sleep(0.5)
    time.sleep(2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    output, _ = second.communicate(timeout=900)
    assert second.returncode == 0, output.decode(errors="replace")[-3000:]

    table = trial_table(tmp_path / "b")
    assert (tmp_path / "b" / storage.STORAGE_NOTE).read_text().strip() == url
    interrupted = table[table.fail_reason == storage.INTERRUPTED]
    kept = table[table.fail_reason != storage.INTERRUPTED]
    assert len(interrupted) == 1 and len(kept) == TRIALS and (kept.state == "COMPLETE").all()
    study = storage.load_study(tmp_path / "b")
    lost = study.trials[int(interrupted.number.iloc[0])]
    assert lost.user_attrs["worker"].endswith(f":{first.pid}")
    redone = [t for t in study.trials if t.user_attrs.get("redo_of") == lost.number]
    assert len(redone) == 1 and redone[0].params == lost.params
    assert redone[0].state == optuna.trial.TrialState.COMPLETE
    workers = {t.user_attrs["worker"].rpartition(":")[2] for t in study.trials}
    assert workers == {str(first.pid), str(second.pid)}  # both trained on the one study


def test_a_different_search_on_a_shared_study_is_refused(tmp_path: Path, fake_proxy: list) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    config = tiny(trials=2, out=str(tmp_path / "a"), storage=url)
    run_trials(config)
    assert len(trial_table(config.out)) == 2
    joined = dataclasses.replace(config, out=str(tmp_path / "b"), trials=3, parallel=2)
    lifecycle.check(joined)  # another folder, more trials, more workers: the same search
    other = dataclasses.replace(joined, seed=1)
    with pytest.raises(
        ValueError, match=r"the study in sqlite:///.* holds a search made with seed=0"
    ):
        lifecycle.check(other)


def test_a_storage_that_cannot_be_opened_is_one_line_and_exit_2(tmp_path: Path) -> None:
    port = _free_port()  # nothing listens there
    url = f"postgresql://hnas:secret@127.0.0.1:{port}/search"
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "run_search.py", "--storage", url, "--out", str(out), "--budget", "300M",
         "--data", "digits"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("run_search.py: error: ")
    assert f"postgresql://hnas:***@127.0.0.1:{port}/search" in line and "secret" not in line
    assert not out.exists()


def test_storage_is_for_the_optuna_backend() -> None:
    with pytest.raises(ValueError, match="--storage is for the optuna backend"):
        tiny(storage="sqlite:///x.db", backend="ray")
