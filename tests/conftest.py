"""Fixtures shared by the test packages: a stand-in for proxy training and small configs."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest

import search.proxy
import search.workers
from search.config import SearchConfig
from search.proxy import DEFAULTS, ProxyResult, ProxySettings


def fake_train(
    arch: Any, data: Any, settings: ProxySettings = DEFAULTS, *, report: Any = None, **kwargs: Any
) -> ProxyResult:
    """A deterministic stand-in for proxy training: accuracy from the architecture's hash."""
    digest = hashlib.sha256(arch.to_json().encode()).digest()
    accuracies = [(digest[0] + 40 * e) / 400 for e in range(settings.epochs)]
    for epoch, accuracy in enumerate(accuracies):
        if report is not None:
            report(epoch, accuracy)
    return ProxyResult(accuracies[-1], tuple(accuracies), 0.01, 1000.0)


@pytest.fixture(scope="session", autouse=True)
def latency_cache(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Latency tables go to a folder of the test session, not the user's cache (subprocesses
    inherit it)."""
    before = os.environ.get("HYBRID_NAS_CACHE")
    os.environ["HYBRID_NAS_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if before is None:
        del os.environ["HYBRID_NAS_CACHE"]
    else:
        os.environ["HYBRID_NAS_CACHE"] = before


@pytest.fixture
def fake_proxy(monkeypatch: pytest.MonkeyPatch) -> list:
    """Replace proxy training by ``fake_train``, in this process (worker processes would not
    see the replacement); the list collects the trained architectures as JSON."""
    calls: list[str] = []

    def counted(arch: Any, data: Any, *args: Any, **kwargs: Any) -> ProxyResult:
        calls.append(arch.to_json())
        return fake_train(arch, data, *args, **kwargs)

    monkeypatch.setattr(search.proxy, "train", counted)
    monkeypatch.setattr(search.workers, "step_workers", lambda config: 1)
    return calls


def tiny(epochs: int = 1, **changes: Any) -> SearchConfig:
    """A search small enough for the default test run: 0.12 GMACs on ``digits``, one training
    at a time in this process (so that ``fake_proxy`` replaces every training), at a proxy
    input of 32 px (the recorded search was made at it)."""
    settings = dict(
        budget="0.12GFLOPs",
        data="digits",
        proxy=ProxySettings(epochs=epochs, resolution=32),
        parallel=1,
    )
    return SearchConfig(**{**settings, **changes})
