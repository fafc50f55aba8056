"""Size and speed of every preset: params, MACs (fvcore, attention included), ptflops' figures,
and forward+backward images per second with fused and with explicit attention.

    python benchmarks/presets.py                 # every preset, batch 8, on the CPU
    python benchmarks/presets.py --presets cmt_s --device cuda --batch 64

Prints a Markdown table (the one in docs/benchmarks.md). ptflops is shown as a second opinion: its
default backend counts module hooks and misses matrix products written as ``@`` and the fused
attention kernel; its aten backend counts bmm/mm but not fused kernels that do not decompose.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import time
import warnings

import torch

from blocks import build_model, explicit_attention
from space import count, presets
from space.genotype import ArchSpec


def ptflops_macs(arch: ArchSpec, backend: str) -> int | None:
    """ptflops' MAC count of the model with fused attention, or None if it fails."""
    from ptflops import get_model_complexity_info

    model = build_model(arch).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        macs, _ = get_model_complexity_info(
            model,
            (3, arch.resolution, arch.resolution),
            as_strings=False,
            print_per_layer_stat=False,
            backend=backend,
            ost=io.StringIO(),
        )
    return None if macs is None else int(macs)


def images_per_second(
    arch: ArchSpec, *, batch: int, iters: int, warmup: int, device: str
) -> tuple[float, float]:
    """Median forward+backward throughput at the preset's resolution, (fused, explicit).

    One model; the two attention paths alternate iteration by iteration after ``warmup``
    rounds of each, so that both see the same machine state.
    """
    torch.manual_seed(0)
    model = build_model(arch).to(device).train()
    x = torch.randn(batch, 3, arch.resolution, arch.resolution, device=device)
    times: dict[bool, list[float]] = {True: [], False: []}
    for i in range(warmup + iters):
        for fused in (True, False):
            ctx = contextlib.nullcontext() if fused else explicit_attention()
            with ctx:
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                start = time.perf_counter()
                model(x).logsumexp(dim=1).mean().backward()
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
            if i >= warmup:
                times[fused].append(time.perf_counter() - start)
            model.zero_grad(set_to_none=True)
    return batch / statistics.median(times[True]), batch / statistics.median(times[False])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(presets.names()))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-speed", action="store_true", help="sizes only")
    args = parser.parse_args(argv)

    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, device {args.device}, {threads} threads, batch {args.batch}")
    print()
    print(
        "| preset | input | params | MACs (fvcore) | ptflops (pytorch) | ptflops (aten) "
        "| img/s fused | img/s explicit |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in args.presets:
        arch = presets.get(name)
        cost = count(arch)
        flops = [ptflops_macs(arch, backend) for backend in ("pytorch", "aten")]
        speed = ["-", "-"]
        if not args.no_speed:
            rates = images_per_second(
                arch, batch=args.batch, iters=args.iters, warmup=args.warmup, device=args.device
            )
            speed = [f"{rate:.1f}" for rate in rates]
        shown = [f"{m / 1e9:.3f}G" if m is not None else "failed" for m in flops]
        print(
            f"| {name} | {arch.resolution} | {cost.params / 1e6:.2f}M | {cost.macs / 1e9:.3f}G "
            f"| {shown[0]} | {shown[1]} | {speed[0]} | {speed[1]} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
