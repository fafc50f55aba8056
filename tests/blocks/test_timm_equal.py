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
from blocks.coatnet import CoAtTransformer
from blocks.halonet import HaloAttention
from blocks.maxvit import MaxViTOptions
from space import presets
from space.genotype import ArchSpec

# our preset -> timm's model name
TIMM_MODELS = {
    "botnet26t": "botnet26t_256",
    "halonet26t": "halonet26t",
    "maxvit_tiny": "maxvit_tiny_tf_224",
    "coatnet_0": "coatnet_0_rw_224",
}
# a smaller input timm's model takes (its halonet26t takes none: the last blocks' 8 x 8 halo
# blocks need a stride-32 map of 8, so 256 px; its layers are checked at small maps below).
# timm's MaxViT built for 64 px partitions by 64 / 32 = 2, so ours takes windows and grids of 2.
SMALL = {"botnet26t": 64, "maxvit_tiny": 64, "coatnet_0": 64}

_STEM = re.compile(r"stem\.convs\.(\d)\.([01])\.(.+)")
_BLOCK = re.compile(r"(stages\.\d+)\.blocks\.(\d+)\.(\w+)\.(\d+)\.(.+)")
_PARTS = {"reduce": "conv1_1x1", "expand": "conv3_1x1", "shortcut": "shortcut"}
_ATTENTION_NAMES = {"height_rel": "pos_embed.height_rel", "width_rel": "pos_embed.width_rel"}


def byob_name(model: nn.Module, name: str) -> str:
    """The name in timm's ByobNet (BoTNet, HaloNet) of our parameter or buffer ``name``."""
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


_STRIDED_NORM = re.compile(r"(stages\.\d+\.blocks\.\d+)\.norm1\.(.+)")


def maxxvit_name(model: nn.Module, name: str) -> str:
    """The name in timm's MaxxVit (MaxViT, CoAtNet) of our parameter or buffer ``name``: the
    same modules, but for the position tables, the norm-MLP head's hidden layer, CoAtNet's
    final norm (timm's ``norm``) and a strided transformer's norm (timm's ``norm1.norm``)."""
    name = name.replace(".attn.bias_table", ".attn.rel_pos.relative_position_bias_table")
    name = name.replace("head.pre_logits.", "head.pre_logits.fc.")
    if name.startswith("head.norm.") and not hasattr(model.get_submodule("head"), "pre_logits"):
        return name.removeprefix("head.")
    if match := _STRIDED_NORM.fullmatch(name):
        block = model.get_submodule(match[1])
        if isinstance(block, CoAtTransformer) and isinstance(block.down, nn.AvgPool2d):
            return f"{match[1]}.norm1.norm.{match[2]}"
    return name


NAME_MAPS = {
    "botnet26t": byob_name,
    "halonet26t": byob_name,
    "maxvit_tiny": maxxvit_name,
    "coatnet_0": maxxvit_name,
}


def timm_name(model: nn.Module, preset: str, name: str) -> str:
    """The name in timm's model of ``preset`` of our parameter or buffer ``name``."""
    return NAME_MAPS[preset](model, name)


def preset_at(name: str, resolution: int) -> ArchSpec:
    """The preset built for ``resolution`` (MaxViT's partitions as timm's: resolution / 32)."""
    arch = dataclasses.replace(presets.get(name), resolution=resolution)
    if name == "maxvit_tiny":
        options = MaxViTOptions(window=resolution // 32, grid=resolution // 32)
        stages = tuple(dataclasses.replace(stage, options=options) for stage in arch.stages)
        arch = dataclasses.replace(arch, stages=stages)
    return arch


def timm_pair(name: str, resolution: int) -> tuple[nn.Module, nn.Module]:
    """Our preset and timm's model built for ``resolution``, with timm's weights (its norms'
    affines and statistics drawn at random, so that no residual branch starts at zero, and its
    position-bias tables at unit scale, so that a misplaced offset shows) loaded into ours
    strictly; both float64, in evaluation mode."""
    torch.manual_seed(0)
    kwargs = {"img_size": resolution} if name != "halonet26t" else {}
    reference = timm.create_model(TIMM_MODELS[name], **kwargs)
    state = reference.state_dict()
    for key, value in state.items():
        if key.endswith(("running_var", ".weight")) and value.dim() == 1:
            value.uniform_(0.5, 1.5)
        elif key.endswith(("running_mean", ".bias")) and value.dim() == 1:
            value.normal_(0.0, 0.1)
        elif key.endswith("relative_position_bias_table"):
            value.normal_(0.0, 1.0)
    ours = build_model(preset_at(name, resolution))
    mapped = {key: state[timm_name(ours, name, key)] for key in ours.state_dict()}
    ours.load_state_dict(mapped, strict=True)
    return ours.double().eval(), reference.double().eval()


def test_the_name_map_uses_every_timm_weight_once() -> None:
    for name in TIMM_MODELS:
        ours = build_model(presets.get(name))
        reference = timm.create_model(TIMM_MODELS[name])
        mapped = [timm_name(ours, name, key) for key in ours.state_dict()]
        assert sorted(mapped) == sorted(reference.state_dict())
        shapes = reference.state_dict()
        for key, value in ours.state_dict().items():
            assert value.shape == shapes[timm_name(ours, name, key)].shape, key


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
    """At the preset's own input (256 or 224 px) and a small one, max |difference| < 1e-6."""
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
