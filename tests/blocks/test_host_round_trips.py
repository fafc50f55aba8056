"""No host round-trip inside a training step: on a GPU, a forward or backward pass that copies
a tensor from the host or reads a value back makes the GPU wait for the CPU.

The models run on PyTorch's ``meta`` device (shapes only, no data, no compute) under a dispatch
mode that records every operator producing a tensor on the host, every device-changing copy
and every read of a value (``.item()``, ``int(tensor)``). After one warm-up pass, which may
build shape-only helpers once per input size, a forward and backward pass must record none.
"""

from __future__ import annotations

import optuna
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from blocks import build_model
from space import presets
from space.genotype import ArchSpec
from space.sampling import block_types, sample

PROXY_INPUT = 32
ATEN = torch.ops.aten


class HostTraffic(TorchDispatchMode):
    """Records what would make a GPU wait for the host."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = str(func.overloadpacket.__name__)
        if func in (ATEN._local_scalar_dense.default, ATEN.item.default):
            self.events.append(f"{name}: reads a value back")
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if any(t.device.type != "meta" for t in outputs):
            self.events.append(f"{name}: makes a tensor on the host")
        if len({t.device.type for t in inputs + outputs}) > 1:
            self.events.append(f"{name}: copies between devices")
        return out


def host_traffic(arch: ArchSpec) -> list[str]:
    with torch.device("meta"):
        model = build_model(arch, num_classes=10, resolution=PROXY_INPUT)
    image = torch.empty(4, 3, PROXY_INPUT, PROXY_INPUT, device="meta")
    model(image).sum().backward()  # the warm-up pass
    with HostTraffic() as mode:
        model(image).sum().backward()
    return mode.events


def sampled_of_each_type() -> list[ArchSpec]:
    """Sampled 4-GMAC genotypes until each block type has appeared in some stage."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=5))
    found: dict[str, ArchSpec] = {}
    while len(found) < len(block_types()):
        arch = sample(study.ask(), 4_000_000_000, blocks=block_types())
        for stage in arch.stages:
            found.setdefault(stage.block, arch)
    return list(found.values())


@pytest.mark.parametrize("name", presets.names())
def test_a_preset_step_has_no_host_round_trip(name: str) -> None:
    assert host_traffic(presets.get(name)) == []


@pytest.mark.parametrize("index", range(len(block_types())))
def test_a_sampled_step_has_no_host_round_trip(index: int) -> None:
    archs = sampled_of_each_type()
    arch = archs[index % len(archs)]
    assert host_traffic(arch) == [], arch.block_mix


def test_the_check_sees_a_host_copy() -> None:
    """The mode does catch what it looks for: a tensor built on the host and moved over."""

    class Leaky(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.arange(x.shape[-1]).to(x.device)

    with HostTraffic() as mode:
        Leaky()(torch.empty(2, 3, device="meta"))
    assert any("host" in event for event in mode.events)
    assert any("copies between devices" in event for event in mode.events)
