"""Where latency is measured: the target (PyTorch eager on the CPU, ONNX Runtime's CPU execution
provider, or CUDA), its batch and threads, and the fingerprint of the machine that measured it.

Every figure is stored with its fingerprint (CPU model, threads, library versions, GPU name), so
a table measured on one machine is never read as another's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
from importlib import metadata

import torch

from common.fields import check_integer

__all__ = ["TARGETS", "Fingerprint", "Target", "cpu_model"]

TARGETS = ("cpu", "onnxruntime", "cuda")


@dataclasses.dataclass(frozen=True)
class Target:
    """A latency target: ``device`` (one of ``TARGETS``), the ``batch`` it infers, and the CPU
    ``threads`` it may use (0: PyTorch's current count; ignored on CUDA)."""

    device: str = "cpu"
    batch: int = 1
    threads: int = 0

    def __post_init__(self) -> None:
        if self.device not in TARGETS:
            raise ValueError(
                f"latency device must be one of {', '.join(TARGETS)}, got {self.device!r}"
            )
        check_integer("latency batch", self.batch)
        check_integer("latency threads", self.threads, 0)
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("latency device 'cuda' was asked for, but CUDA is not available")
        if self.device == "onnxruntime" and not _installed("onnxruntime"):
            raise ValueError(
                "latency device 'onnxruntime' needs the onnxruntime package: "
                "pip install -e '.[export]'"
            )

    @property
    def cpu_threads(self) -> int:
        """The threads the measurement uses (``threads``, else PyTorch's count now)."""
        return self.threads or torch.get_num_threads()

    def fingerprint(self) -> Fingerprint:
        """This machine, as the target sees it."""
        versions = {"torch": torch.__version__}
        if self.device == "onnxruntime":
            versions["onnxruntime"] = metadata.version("onnxruntime")
        gpu = torch.cuda.get_device_name() if self.device == "cuda" else ""
        return Fingerprint(
            device=self.device,
            batch=self.batch,
            threads=0 if self.device == "cuda" else self.cpu_threads,
            cpu=cpu_model(),
            gpu=gpu,
            versions=tuple(sorted(versions.items())),
        )


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    """What a latency figure depends on besides the model: the target and the machine."""

    device: str
    batch: int
    threads: int
    cpu: str
    gpu: str
    versions: tuple[tuple[str, str], ...]

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "versions": dict(self.versions)}

    @property
    def key(self) -> str:
        """A short hash of the whole fingerprint: the name of its table on disk."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def describe(self) -> str:
        """One line for a report: ``onnxruntime 1.20, batch 1, 2 threads on AMD EPYC ...``."""
        versions = ", ".join(f"{name} {version}" for name, version in self.versions)
        where = f"{self.gpu}" if self.gpu else f"{self.threads} threads on {self.cpu}"
        return f"{self.device} ({versions}), batch {self.batch}, {where}"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what ``platform`` says)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or os.name


def _installed(package: str) -> bool:
    try:
        metadata.version(package)
    except metadata.PackageNotFoundError:
        return False
    return True
