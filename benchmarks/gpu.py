"""Trials at GPU speed: how fast one proxy training runs, how many trials an hour a GPU holds,
and whether the faster GPU proxy still ranks architectures like the eager one.

    python benchmarks/gpu.py --device cuda            # every measurement (about 20 minutes)
    python benchmarks/gpu.py --device cuda --only trial packing
    python benchmarks/gpu.py --quick --out /tmp/gpu   # a seconds-long CPU check of the tool

Measurements (each a JSON line in ``benchmarks/results/gpu-<device>.jsonl``, skipped when
present, so an interrupted run resumes):

- ``trial``: one default proxy training of a 4-GMAC sample (RandomSampler seed 3, the
  architecture the GPU issue profiled), first in the process and warm, with and without the
  captured step: seconds, images/s, peak memory, GPU utilisation (pynvml, sampled every 50 ms)
  and the fraction of the device's measured bf16 matmul peak the training reached;
- ``packing``: trials/hour with 1, 2, 4 and 8 trials at a time on one device (worker processes,
  each training sampled 4-GMAC architectures), and the GPU utilisation meanwhile;
- ``end_to_end``: ``run_search.py --budget 4GFLOPs --device cuda`` from scratch, wall time;
- ``ranking``: the fidelity benchmark's 10 architectures trained with the captured bf16 step
  and eagerly in float32, Kendall tau between the two (the faster proxy must rank alike).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import optuna  # noqa: E402
import torch  # noqa: E402

from common import datasets  # noqa: E402
from common.device import resolve_device  # noqa: E402
from search.proxy import DEFAULTS, ProxySettings, train  # noqa: E402
from space.cost import estimate, parse_budget  # noqa: E402
from space.genotype import ArchSpec  # noqa: E402
from space.sampling import sample  # noqa: E402

MEASUREMENTS = ("trial", "packing", "end_to_end", "ranking")


def sampled(n: int, seed: int, budget: str = "4GFLOPs") -> list[ArchSpec]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [sample(study.ask(), parse_budget(budget)) for _ in range(n)]


class Utilisation:
    """GPU utilisation sampled every 50 ms in a thread (pynvml; None where it is missing)."""

    def __init__(self, device: torch.device) -> None:
        self.samples: list[int] = []
        self.handle = None
        if device.type == "cuda":
            try:
                import pynvml

                pynvml.nvmlInit()
                self.handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
                self.nvml = pynvml
            except Exception:  # pynvml missing or no driver access: no figure
                self.handle = None
        self.stop = threading.Event()

    def __enter__(self) -> Utilisation:
        if self.handle is not None:
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.stop.wait(0.05):
            self.samples.append(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)

    def __exit__(self, *exc: object) -> None:
        self.stop.set()

    @property
    def mean(self) -> float | None:
        return statistics.mean(self.samples) if self.samples else None


def matmul_peak(device: torch.device) -> float:
    """Measured bf16 (CUDA) or float32 (CPU) matmul throughput in FLOP/s."""
    dtype, n = (torch.bfloat16, 8192) if device.type == "cuda" else (torch.float32, 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ a
    _sync(device)
    start, repeats = time.perf_counter(), 20
    for _ in range(repeats):
        a @ a
    _sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def one_trial(
    arch: ArchSpec, data: str, settings: ProxySettings, device: str, graphs: bool
) -> dict:
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    loaded = datasets.load(data)
    with Utilisation(dev) as busy:
        result = train(arch, loaded, settings, device=device, cuda_graphs=graphs, progress=False)
    images = result.images_per_second * result.seconds
    macs = estimate(dataclasses.replace(arch, resolution=max(32, settings.resolution))).macs
    return {
        "seconds": result.seconds,
        "images_per_second": result.images_per_second,
        "accuracy": result.accuracy,
        "failed": result.failed,
        "peak_memory_gib": torch.cuda.max_memory_allocated(dev) / 2**30
        if dev.type == "cuda"
        else None,
        "gpu_utilisation": busy.mean,
        "training_flops": 6 * macs * images,
    }


def measure_trial(args: argparse.Namespace, settings: ProxySettings) -> dict:
    arch = sampled(1, 3)[0] if not args.quick else sampled(1, 3, "0.12GFLOPs")[0]
    dev = resolve_device(args.device)
    peak = matmul_peak(dev)
    rows = {}
    for graphs in (True, False) if dev.type == "cuda" else (False,):
        for when in ("first", "warm"):
            row = one_trial(arch, args.data, settings, args.device, graphs)
            row["fraction_of_peak"] = row["training_flops"] / row["seconds"] / peak
            rows[f"{'graphs' if graphs else 'eager'}_{when}"] = row
    return {"arch": arch.block_mix, "macs": estimate(arch).macs, "peak_flops": peak, **rows}


def _packing_worker(args: tuple) -> int:
    data, settings, device, seed, n, threads = args
    torch.set_num_threads(threads)
    for arch in sampled(n, seed, "0.12GFLOPs" if data == "digits" else "4GFLOPs"):
        train(arch, datasets.load(data), settings, device=device, progress=False)
    return n


def measure_packing(args: argparse.Namespace, settings: ProxySettings) -> dict:
    dev = resolve_device(args.device)
    rows = {}
    levels = (1, 2) if args.quick else (1, 2, 4, 8)
    per_worker = 1 if args.quick else 3
    for level in levels:
        threads = max(1, torch.get_num_threads() // level) if dev.type == "cpu" else 1
        jobs = [
            (args.data, settings, args.device, 100 + i, per_worker, threads) for i in range(level)
        ]
        context = multiprocessing.get_context("spawn")
        with Utilisation(dev) as busy, context.Pool(level) as pool:
            start = time.perf_counter()
            done = sum(pool.map(_packing_worker, jobs))
            seconds = time.perf_counter() - start
        rows[str(level)] = {
            "trials": done,
            "seconds": seconds,
            "trials_per_hour": done * 3600 / seconds,
            "gpu_utilisation": busy.mean,
        }
    return {"levels": rows}


def measure_end_to_end(args: argparse.Namespace, settings: ProxySettings) -> dict:
    with tempfile.TemporaryDirectory() as out:
        command = [
            sys.executable,
            str(ROOT / "run_search.py"),
            "--budget",
            "4GFLOPs",
            "--device",
            args.device,
            "--out",
            out,
        ]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        return {
            "command": " ".join(command[1:-2]),
            "seconds": time.perf_counter() - start,
            "returncode": done.returncode,
        }


def measure_ranking(args: argparse.Namespace, settings: ProxySettings) -> dict:
    from fidelity import sampled as fidelity_archs
    from scipy.stats import kendalltau

    archs = fidelity_archs(10, parse_budget("4GFLOPs"))
    data = datasets.load(args.data)
    fast = [train(a, data, settings, device=args.device, progress=False).accuracy for a in archs]
    eager = [
        train(a, data, settings, device=args.device, cuda_graphs=False, progress=False).accuracy
        for a in archs
    ]
    tau = kendalltau(fast, eager)
    return {"fast": fast, "eager": eager, "tau": tau.statistic, "p": tau.pvalue}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--data", default="default")
    parser.add_argument("--only", nargs="*", choices=MEASUREMENTS, default=list(MEASUREMENTS))
    parser.add_argument("--quick", action="store_true", help="a tiny CPU check of the tool")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    settings = DEFAULTS
    if args.quick:
        args.device, args.data = "cpu", "digits"
        args.only = [m for m in args.only if m in ("trial", "packing")]
        settings = dataclasses.replace(DEFAULTS, epochs=1)
    dev = resolve_device(args.device)
    name = torch.cuda.get_device_name(dev).replace(" ", "-") if dev.type == "cuda" else "cpu"
    log = Path(args.out) / f"gpu-{name}.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    done = (
        {json.loads(line)["measurement"] for line in log.read_text().splitlines()}
        if (log.exists())
        else set()
    )
    measures = {
        "trial": measure_trial,
        "packing": measure_packing,
        "end_to_end": measure_end_to_end,
        "ranking": measure_ranking,
    }
    for measurement in args.only:
        if measurement in done:
            continue
        row = {
            "measurement": measurement,
            "device": name,
            "torch": torch.__version__,
            "recipe": dataclasses.asdict(settings),
            **measures[measurement](args, settings),
        }
        with log.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(json.dumps(row, indent=1), flush=True)


if __name__ == "__main__":
    main()
