"""The presets of the families timm implements are timm's models: the same parameters, timm's
weights loaded strictly through a name map, the same outputs in float64."""

from __future__ import annotations

import dataclasses
import re

import pytest
import timm
import torch
from timm.layers.bottleneck_attn import BottleneckAttn
from timm.layers.halo_attn import HaloAttn
from torch import nn

from blocks import build_model
from blocks.botnet import BottleneckAttention
from blocks.bottleneck import AttentionBottleneck
from blocks.halonet import HaloAttention
from space import presets
from space.genotype import ArchSpec

# our preset -> timm's model name
TIMM_MODELS = {"botnet26t": "botnet26t_256", "halonet26t": "halonet26t"}
# a smaller input timm's model takes (its halonet26t takes none: the last blocks' 8 x 8 halo
# blocks need a stride-32 map of 8, so 256 px; its layers are checked at small maps below)
SMALL = {"botnet26t": 64}

_STEM = re.compile(r"stem\.convs\.(\d)\.([01])\.(.+)")
_BLOCK = re.compile(r"(stages\.\d+)\.blocks\.(\d+)\.(\w+)\.(\d+)\.(.+)")
_PARTS = {"reduce": "conv1_1x1", "expand": "conv3_1x1", "shortcut": "shortcut"}
_ATTENTION_NAMES = {"height_rel": "pos_embed.height_rel", "width_rel": "pos_embed.width_rel"}


def timm_name(model: nn.Module, name: str) -> str:
    """The name in timm's ByobNet of our parameter or buffer ``name``."""
    if match := _STEM.fullmatch(name):
        index, layer, rest = match.groups()
        return f"stem.conv{int(index) + 1}.{'conv' if layer == '0' else 'bn'}.{rest}"
    if match := _BLOCK.fullmatch(name):
        stage, block, part, layer, rest = match.groups()
        prefix = f"{stage}.{block}"
        if part in _PARTS:
            return f"{prefix}.{_PARTS[part]}.{'conv' if layer == '0' else 'bn'}.{rest}"
        attends = isinstance(model.get_submodule(f"{stage}.blocks.{block}"), AttentionBottleneck)
        if not attends:  # middle = conv -> BN -> ReLU
            return f"{prefix}.conv2_kxk.{'conv' if layer == '0' else 'bn'}.{rest}"
        if layer == "0":
            return f"{prefix}.self_attn.{_ATTENTION_NAMES.get(rest, rest)}"
        return f"{prefix}.post_attn.{rest}"
    return name  # head.fc.*


def timm_pair(name: str, resolution: int) -> tuple[nn.Module, nn.Module]:
    """Our preset and timm's model built for ``resolution``, with timm's weights (its batch
    norms' statistics and affines drawn at random, so that no residual branch starts at zero)
    loaded into ours strictly; both float64, in evaluation mode."""
    torch.manual_seed(0)
    kwargs = {"img_size": resolution} if name == "botnet26t" else {}
    reference = timm.create_model(TIMM_MODELS[name], **kwargs)
    state = reference.state_dict()
    for key, value in state.items():
        if key.endswith(("running_var", ".weight")) and value.dim() == 1:
            value.uniform_(0.5, 1.5)
        elif key.endswith(("running_mean", ".bias")) and value.dim() == 1:
            value.normal_(0.0, 0.1)
    arch = dataclasses.replace(presets.get(name), resolution=resolution)
    ours = build_model(arch)
    mapped = {key: state[timm_name(ours, key)] for key in ours.state_dict()}
    ours.load_state_dict(mapped, strict=True)
    return ours.double().eval(), reference.double().eval()


def test_the_name_map_uses_every_timm_weight_once() -> None:
    for name in TIMM_MODELS:
        ours = build_model(presets.get(name))
        reference = timm.create_model(TIMM_MODELS[name])
        mapped = [timm_name(ours, key) for key in ours.state_dict()]
        assert sorted(mapped) == sorted(reference.state_dict())
        shapes = reference.state_dict()
        for key, value in ours.state_dict().items():
            assert value.shape == shapes[timm_name(ours, key)].shape, key


@pytest.mark.parametrize("name", list(TIMM_MODELS))
def test_the_preset_has_timms_parameter_count(name: str) -> None:
    ours = build_model(presets.get(name))
    reference = timm.create_model(TIMM_MODELS[name])
    assert sum(p.numel() for p in ours.parameters()) == sum(
        p.numel() for p in reference.parameters()
    )


@pytest.mark.parametrize(
    ("name", "resolution"),
    [(name, presets.get(name).resolution) for name in TIMM_MODELS] + list(SMALL.items()),
)
def test_the_preset_gives_timms_outputs(name: str, resolution: int) -> None:
    """At the preset's own input (256 px) and a small one, max |difference| < 1e-6."""
    ours, reference = timm_pair(name, resolution)
    x = torch.randn(2, 3, resolution, resolution, dtype=torch.float64)
    with torch.no_grad():
        difference = (ours(x) - reference(x)).abs().max().item()
    assert difference < 1e-6, f"{name} at {resolution}px: max |diff| {difference:.3g}"


def test_arch_spec_round_trips_the_new_presets() -> None:
    for name in TIMM_MODELS:
        arch = presets.get(name)
        assert ArchSpec.from_json(arch.to_json()) == arch


def _same_layer(ours: nn.Module, reference: nn.Module, x: torch.Tensor) -> float:
    state = reference.state_dict()
    ours.load_state_dict(
        {key: state[_ATTENTION_NAMES.get(key, key)] for key in ours.state_dict()}, strict=True
    )
    with torch.no_grad():
        return (ours.double()(x) - reference.double()(x)).abs().max().item()


@pytest.mark.parametrize(("side", "stride"), [(4, 1), (6, 2), (8, 2)])
def test_bottleneck_attention_is_timms_at_small_maps(side: int, stride: int) -> None:
    torch.manual_seed(0)
    reference = BottleneckAttn(32, feat_size=(side, side), stride=stride, num_heads=4)
    ours = BottleneckAttention(32, heads=4, size=side, stride=stride)
    x = torch.randn(2, 32, side, side, dtype=torch.float64)
    assert _same_layer(ours, reference, x) < 1e-9


@pytest.mark.parametrize(
    ("side", "block", "halo", "stride"), [(8, 4, 1, 1), (8, 4, 3, 2), (12, 4, 2, 2), (16, 8, 2, 1)]
)
def test_halo_attention_is_timms_at_small_maps(
    side: int, block: int, halo: int, stride: int
) -> None:
    torch.manual_seed(0)
    reference = HaloAttn(32, stride=stride, num_heads=4, block_size=block, halo_size=halo)
    ours = HaloAttention(32, heads=4, block=block, halo=halo, stride=stride)
    x = torch.randn(2, 32, side, side, dtype=torch.float64)
    assert _same_layer(ours, reference, x) < 1e-9
