"""A weight-sharing supernet over the search space: one set of tensors per block type and stage,
every drawn architecture (a subnet) run on slices of them.

A subnet is an ``ArchSpec`` as ``space.sampling.draw`` draws it (before any fitting to a budget).
It runs as its own standalone model (``blocks.build_model``), built on the meta device (its
structure, no storage) and called through ``torch.func.functional_call`` with slices of the
shared tensors as its parameters and buffers. So the elastic blocks are the standalone blocks,
which equal the official code, and extracting a subnet (``Supernet.extract``) is loading the same
slices into a real model: the extracted model computes what the supernet computes for it.

How a subnet's tensor is cut from the shared one (``take``):

- widths, heads, MLP and bottleneck ratios: the leading channels (the weight entanglement of
  AutoFormer and once-for-all); depth: the first blocks of the stage;
- a tensor stacking equal parts along a dimension (a fused q/k/v layer, ``Stage.fused_tensors``):
  the leading channels of each part; parts laid out head by head (HaloNet's k and v) are
  gathered, per head, from shared parts kept one after another;
- a convolution kernel smaller than the shared one: its centre (once-for-all's elastic kernel,
  without its transform matrices), e.g. CoT's 3x3 static context inside the 5x5;
- tensors that cannot be shared across an option's values (``Stage.own_tensors``): one copy per
  value: CMT's key reduction and position-bias table per k, the last layers of CoT's attention
  embedding per kernel, HaloNet's relative tables per (block, halo), MaxViT's bias tables per
  window and grid side, a bottleneck's middle norm per kind of middle layer.

Everything else is shared across options too: AEWin's head split and stripe (the same q, k, v and
projection, their channels grouped differently), Dual-ViT's token pool (it has no tensors) and
block mode (the norms, FFN and layer scales both modes have), BoTNet's and HaloNet's layouts (a
block keeps both its attention and its 3x3 conv). Heads split the same leading channels into
more or fewer heads (a per-head gather takes the attention's own count: CoAtNet's first block
attends at its input width, in heads that follow both widths).

The shared tensors are as large as the largest choice of each stage and type needs, found by
building every choice of the stage's own draw (``Stage.draw``) at the space's largest width
(every pair of input and stage widths for ``Stage.one_shot_every_width``), in a one-block and a
three-block stage (``TEMPLATE_DEPTHS``), on the meta device: for the default
space at a 24 px input, 323.9M numbers (most of them the four types' stages 3 and 4 at 16 and
4 blocks of 384 and 768 channels), their shapes found in about 11 s on a 2-core CPU. They start
as the standalone blocks start: linear and convolution weights by the backbone's rules at the
shared size, every other tensor (norms, layer scales, position tables) with the mean and spread
a small real model of the type starts with.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from blocks import BLOCKS, HEADS, STEMS, build_model
from blocks.backbone import Backbone, plan_stages
from blocks.registry import Fused, SharedChoices, Stage, StageChoice
from space.genotype import NUM_STAGES, ArchSpec, StageSpec
from space.sampling import DEFAULT_BLOCKS, SHARED, SPACE
from space.scaling import round_width

__all__ = ["Supernet", "check_blocks", "every_choice", "shared_numbers", "take", "template"]

_STAGE = re.compile(r"stages\.(\d+)\.(.+)")
# The stage depths built to find the shared tensors: the first block of a one-block stage, and
# the first three of a longer one, whose second and third stand for every later block (a
# layout may alternate: BoTNet's and HaloNet's conv and attention blocks).
TEMPLATE_DEPTHS = (1, 3)
_INDEX = re.compile(r"\b(stages|blocks)\.\d+")


def take(
    shared: Tensor, shape: Sequence[int], fused: Fused | None = None, heads: int = 1
) -> Tensor:
    """The part of ``shared`` that a subnet's tensor of ``shape`` uses: the leading entries of
    each dimension, the centre of a convolution kernel's two spatial dimensions, and the leading
    entries of each of a ``fused`` tensor's parts. The shared tensor keeps its parts one after
    another; a ``per_head`` subnet tensor (of ``heads`` heads) gathers each head's channels of
    every part from them. A view where it can be."""
    if len(shape) != shared.dim() or any(n > m for n, m in zip(shape, shared.shape, strict=True)):
        raise ValueError(f"a {tuple(shape)} tensor cannot be cut from {tuple(shared.shape)}")
    out = shared
    for dim, (size, full) in enumerate(zip(shape, shared.shape, strict=True)):
        if fused is not None and fused.dimension == dim:
            out = _parts(out, dim, size, fused, heads)
        elif size == full:
            continue
        elif shared.dim() == 4 and dim >= 2:  # a kernel's rows or columns: the centre
            out = out.narrow(dim, (full - size) // 2, size)
        else:
            out = out.narrow(dim, 0, size)
    return out


def _parts(shared: Tensor, dim: int, size: int, fused: Fused, heads: int) -> Tensor:
    """The leading ``size / parts`` channels of each of ``fused``'s parts of ``shared`` along
    ``dim``: part after part, or (``per_head``) head after head, each head's parts together."""
    parts, full = fused.parts, shared.shape[dim]
    width, full_width = size // parts, full // parts
    if not fused.per_head:
        if size == full:
            return shared
        out = shared.unflatten(dim, (parts, full_width)).narrow(dim + 1, 0, width)
        return out.flatten(dim, dim + 1)
    channel = width // heads  # of one head in one part
    head = torch.arange(heads, device=shared.device).view(heads, 1, 1) * channel
    part = torch.arange(parts, device=shared.device).view(1, parts, 1) * full_width
    within = torch.arange(channel, device=shared.device)
    return shared.index_select(dim, (head + part + within).flatten())


class _Replay:
    """A trial that answers ``suggest_categorical`` with the choices at ``indices``, then with
    the first choice, and records how many choices each call offered."""

    def __init__(self, indices: Sequence[int]) -> None:
        self.indices, self.taken, self.counts = list(indices), [], []

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        position = len(self.taken)
        index = self.indices[position] if position < len(self.indices) else 0
        self.taken.append(index)
        self.counts.append(len(choices))
        return choices[index]

    def suggest_int(self, name: str, low: int, high: int) -> int:
        raise TypeError("a stage's own draw takes categorical choices only")

    def suggest_float(self, name: str, low: float, high: float) -> float:
        raise TypeError("a stage's own draw takes categorical choices only")


def every_choice(stage_type: type[Stage], stage: int, shared: SharedChoices = SHARED) -> list:
    """Every ``StageChoice`` that ``stage_type.draw`` can make for stage ``stage`` (each path
    through its categorical suggestions once)."""
    found: list[StageChoice] = []
    pending: list[tuple[int, ...]] = [()]
    while pending:
        prefix = pending.pop()
        trial = _Replay(prefix)
        found.append(stage_type.draw(trial, stage, dataclasses.replace(shared, network={})))
        for position in range(len(prefix), len(trial.counts)):
            head = tuple(trial.taken[:position])
            pending += [(*head, j) for j in range(1, trial.counts[position])]
    return found


def _stage_spec(block: str, stage: int, choice: StageChoice, depth: int, width: int) -> StageSpec:
    """The stage at ``width`` rounded, as sampling rounds it, to the nearest valid width."""

    def make(w: int) -> StageSpec:
        return StageSpec(block, depth, w, choice.heads, choice.mlp_ratio, choice.options)

    return round_width(make, width, choice.heads)


def _filler(block: str, stage: int, width: int) -> StageSpec:
    """A one-block stage of ``block`` at about ``width``, with its cheapest choices: the
    neighbour of a stage whose tensors are being sized."""
    return _stage_spec(block, stage, BLOCKS.get(block).cheapest(stage, SHARED), 1, width)


class Supernet(nn.Module):
    """The shared tensors of every stage and block type of ``blocks``, sized for the space's
    largest choices, for inputs of ``resolution`` pixels (the proxy's: the position tables
    follow the stage maps) and ``num_classes`` classes."""

    def __init__(
        self,
        *,
        resolution: int,
        num_classes: int,
        blocks: Sequence[str] = DEFAULT_BLOCKS,
    ) -> None:
        super().__init__()
        self.resolution, self.num_classes, self.blocks = resolution, num_classes, tuple(blocks)
        check_blocks(self.blocks)
        self._names: dict[str, str] = {}  # shared key -> attribute name
        shapes, owners, buffers = _shapes(self.blocks, resolution, num_classes)
        starts = self._initial_statistics()
        for key, shape in sorted(shapes.items()):
            name = key.replace(".", "/")
            self._names[key] = name
            value = self._initial(key, shape, owners[key], starts)
            if key in buffers:
                self.register_buffer(name, value)
            else:
                self.register_parameter(name, nn.Parameter(value))

    @staticmethod
    def _stage_key(stage: int, spec: StageSpec, rest: str) -> str:
        """The shared key of tensor ``rest`` of stage ``stage`` (``spec``)."""
        stage_type = BLOCKS.get(spec.block)
        key = f"stages.{stage}.{spec.block}.{rest}"
        for pattern, owner in stage_type.own_tensors(spec).items():
            if re.fullmatch(pattern, rest):
                return f"{key}@{owner}"
        return key

    def shared_key(self, arch: ArchSpec, name: str) -> str:
        """The shared key of ``arch``'s tensor ``name`` (a key of its model's state dict)."""
        match = _STAGE.fullmatch(name)
        if match is None:
            return name
        stage = int(match[1])
        return self._stage_key(stage, arch.stages[stage], match[2])

    @staticmethod
    def _fused(arch: ArchSpec, name: str) -> Fused | None:
        match = _STAGE.fullmatch(name)
        if match is None:
            return None
        stage_type = BLOCKS.get(arch.stages[int(match[1])].block)
        for pattern, fused in stage_type.fused_tensors.items():
            if re.fullmatch(pattern, match[2]):
                return fused
        return None

    # -- initialisation --------------------------------------------------------------------

    def _initial_statistics(self) -> dict[str, tuple[float, float]]:
        """(mean, standard deviation) of each tensor kind of small real models of each type."""
        values: dict[str, list[Tensor]] = {}
        torch.manual_seed(0)
        for block in self.blocks:
            stage_type = BLOCKS.get(block)
            for pick in (stage_type.cheapest, stage_type.costliest):
                stages = tuple(
                    _stage_spec(block, i, pick(i, SHARED), 2, min(SPACE["width"][i]))
                    for i in range(NUM_STAGES)
                )
                arch = ArchSpec(stages, 224, stem_width=min(SPACE["stem_width"]))
                model = build_model(arch, self.num_classes, resolution=self.resolution)
                for name, tensor in model.state_dict().items():
                    kind = _kind(self.shared_key(arch, name))
                    values.setdefault(kind, []).append(tensor.detach().float().flatten())
        out = {}
        for kind, tensors in values.items():
            flat = torch.cat(tensors)
            out[kind] = (float(flat.mean()), float(flat.std()) if flat.numel() > 1 else 0.0)
        return out

    @staticmethod
    def _initial(
        key: str, shape: list[int], owner: nn.Module, starts: dict[str, tuple[float, float]]
    ) -> Tensor:
        """The starting value of the shared tensor ``key``: linear and convolution weights by
        the backbone's rules (``blocks.layers.trunc_normal_init``) at the shared size, the rest
        as the small real models start them."""
        attribute = key.rsplit(".", 1)[-1].split("@")[0]
        if isinstance(owner, nn.Linear) and attribute == "weight":
            # N(0, 0.02): trunc_normal_init's truncation at +-2 never acts at this spread
            return torch.empty(shape).normal_(0.0, 0.02)
        if isinstance(owner, nn.Conv2d) and attribute == "weight":
            out_channels, per_group, kh, kw = shape
            groups = out_channels if per_group == 1 else owner.groups
            return torch.empty(shape).normal_(
                0.0, math.sqrt(2.0 / (kh * kw * out_channels // groups))
            )
        kind = _kind(key)
        if kind not in starts:
            raise ValueError(f"no starting value is known for the supernet tensor {key}")
        mean, std = starts[kind]
        if attribute == "num_batches_tracked":
            return torch.zeros(shape, dtype=torch.long)
        value = torch.full(shape, mean)
        return value.normal_(mean, std) if std > 0 else value

    # -- subnets ---------------------------------------------------------------------------

    def shared(self, key: str) -> Tensor:
        """The shared tensor of key ``key`` (``shared_key``'s)."""
        try:
            return getattr(self, self._names[key])
        except KeyError:
            raise ValueError(f"the supernet has no shared tensor {key!r}") from None

    def tensors(self, arch: ArchSpec) -> dict[str, Tensor]:
        """``arch``'s parameters and buffers, by its model's state-dict names, cut from the
        shared tensors (views, or gathers for parts laid out head by head: either way training
        the subnet trains the supernet)."""
        model = template(arch, self.resolution, self.num_classes)
        out = {}
        for name, tensor in model.state_dict(keep_vars=True).items():
            key = self.shared_key(arch, name)
            if key not in self._names:
                raise ValueError(
                    f"{arch.block_mix} is not in this supernet's space ({name} has no shared "
                    "tensor; its block types: " + ", ".join(self.blocks) + ")"
                )
            fused = self._fused(arch, name)
            heads = 1
            if fused is not None and fused.per_head:  # the attention's (CoAtNet's first differ)
                heads = model.get_submodule(name.rsplit(".", 2)[0]).heads
            out[name] = take(self.shared(key), tensor.shape, fused, heads)
        return out

    def covers(self, arch: ArchSpec) -> bool:
        """Whether the supernet can run ``arch``: its block types are the supernet's and no
        width, depth or option of it goes past the shared tensors."""
        try:
            self.tensors(arch)
        except ValueError:
            return False
        return True

    def forward(self, x: Tensor, arch: ArchSpec) -> Tensor:
        """The logits of subnet ``arch`` on ``x``, in this module's training or evaluation mode."""
        model = template(arch, self.resolution, self.num_classes).train(self.training)
        return functional_call(model, self.tensors(arch), (x,), strict=True)

    def extract(self, arch: ArchSpec) -> Backbone:
        """Subnet ``arch`` as a standalone model carrying its inherited tensors (copies)."""
        model = build_model(arch, self.num_classes, resolution=self.resolution)
        state = {name: t.detach().clone() for name, t in self.tensors(arch).items()}
        model.load_state_dict(state, strict=True)
        return model.train(self.training)


def check_blocks(blocks: Sequence[str]) -> None:
    """``ValueError`` naming the block types of ``blocks`` the supernet cannot hold: unknown ones,
    and those whose tensors' sharing is not declared (``Stage.one_shot``)."""
    unknown = set(blocks) - set(BLOCKS.names())
    if unknown:
        raise ValueError(f"unknown block type(s) {', '.join(sorted(unknown))}")
    undeclared = [block for block in blocks if not BLOCKS.get(block).one_shot]
    if undeclared:
        ready = ", ".join(name for name in BLOCKS.names() if BLOCKS.get(name).one_shot)
        raise ValueError(
            f"the supernet cannot hold {', '.join(undeclared)} yet (how its tensors share is "
            f"not declared); it holds {ready}"
        )


def shared_numbers(blocks: Sequence[str], resolution: int, num_classes: int) -> int:
    """How many numbers the supernet of ``blocks`` holds (parameters and buffers), found without
    allocating them."""
    shapes, _, _ = _shapes(tuple(blocks), resolution, num_classes)
    return sum(math.prod(shape) for shape in shapes.values())


@functools.lru_cache(maxsize=4)
def _shapes(
    blocks: tuple[str, ...], resolution: int, num_classes: int
) -> tuple[dict[str, list[int]], dict[str, nn.Module], set[str]]:
    """Each shared tensor's shape (the largest of every choice's), owning module, and which
    keys are buffers (cached: read, never changed, by every supernet of the same space)."""
    shapes: dict[str, list[int]] = {}
    owners: dict[str, nn.Module] = {}
    buffers: set[str] = set()
    for key, module, tensor, is_buffer in _templates(blocks, resolution, num_classes):
        if key not in shapes:
            shapes[key], owners[key] = list(tensor.shape), module
            if is_buffer:
                buffers.add(key)
        else:
            shapes[key] = [max(a, b) for a, b in zip(shapes[key], tensor.shape, strict=True)]
    return shapes, owners, buffers


def _templates(
    blocks: Sequence[str], resolution: int, num_classes: int
) -> list[tuple[str, nn.Module, Tensor, bool]]:
    """(shared key, owning module, tensor, is buffer) of every tensor of every
    choice of every stage and type, and of the stem and head, built on the meta device."""
    found = []
    depths = [high for _, high in SPACE["depth"]]
    last_widths = []
    with torch.device("meta"):
        for stage in range(NUM_STAGES):
            for block in blocks:
                stage_type = BLOCKS.get(block)
                neighbours = ["cmt"] + (["dual"] if block == "dual" and stage > 0 else [])
                for choice, depth, before, (in_width, width) in itertools.product(
                    every_choice(stage_type, stage),
                    TEMPLATE_DEPTHS,
                    neighbours,
                    _template_widths(stage_type, stage),
                ):
                    spec = _stage_spec(block, stage, choice, depth, width)
                    if stage == NUM_STAGES - 1:
                        last_widths.append(spec.width)
                    plan = _plan(stage, spec, before, in_width, resolution)
                    module = plan.stage_type(plan, [0.0] * spec.depth)
                    for rest, owner, tensor, is_buffer in _tensors(module):
                        for name in _deeper(rest, depths[stage]):
                            key = Supernet._stage_key(stage, spec, name)
                            found.append((key, owner, tensor, is_buffer))
        stem = STEMS.get("cmt")(max(SPACE["stem_width"]))
        for rest, owner, tensor, is_buffer in _tensors(stem):
            found.append((f"stem.{rest}", owner, tensor, is_buffer))
        last = dataclasses.replace(_filler("cmt", NUM_STAGES - 1, 8), width=max(last_widths))
        head = HEADS.get("conv")(
            last, width=SPACE["head_width"], num_classes=num_classes, dropout=0.0
        )
        for rest, owner, tensor, is_buffer in _tensors(head):
            found.append((f"head.{rest}", owner, tensor, is_buffer))
    return found


def _template_widths(stage_type: type[Stage], stage: int) -> list[tuple[int, int]]:
    """The (input width, stage width) pairs stage ``stage``'s templates are built at: the
    largest of each, or every pair for a type whose tensors' shapes follow both
    (``Stage.one_shot_every_width``)."""
    inputs = SPACE["stem_width"] if stage == 0 else SPACE["width"][stage - 1]
    if not stage_type.one_shot_every_width:
        return [(max(inputs), max(SPACE["width"][stage]))]
    return list(itertools.product(inputs, SPACE["width"][stage]))


def _plan(stage: int, spec: StageSpec, before: str, in_width: int, resolution: int) -> Any:
    """The plan of stage ``stage`` = ``spec`` after a ``before`` stage (or the stem) of
    ``in_width`` channels."""
    stages = [_filler("cmt", i, max(SPACE["width"][i])) for i in range(NUM_STAGES)]
    if stage > 0:
        previous = _filler(before, stage - 1, in_width)
        if before == "dual" and spec.block == "dual":  # tokens flow: the same token pool
            options = dataclasses.replace(previous.options, pool=spec.options.pool)
            previous = dataclasses.replace(previous, options=options)
        stages[stage - 1] = previous
    stages[stage] = spec
    arch = ArchSpec(
        tuple(stages),
        224,
        stem="cmt",
        stem_width=in_width if stage == 0 else max(SPACE["stem_width"]),
        head="conv",
        head_width=SPACE["head_width"],
    )
    return plan_stages(arch, resolution)[stage]


def _deeper(name: str, depth: int) -> list[str]:
    """The names in a stage of ``depth`` blocks that the name ``name`` in a template stage
    (``TEMPLATE_DEPTHS``) stands for: a tensor of its second or third block is every later
    block's too."""
    match = re.match(r"blocks\.([12])\.", name)
    if match is None:
        return [name]
    rest = name[match.end() :]
    return [f"blocks.{j}.{rest}" for j in range(1, depth)]


def _kind(key: str) -> str:
    """A shared key without its stage and block indices and its owner: the kind of tensor."""
    return _INDEX.sub(r"\1.#", key.split("@")[0])


def _tensors(module: nn.Module) -> list[tuple[str, nn.Module, Tensor, bool]]:
    """(name, owning module, tensor, is buffer) of each tensor of ``module``'s state dict."""
    found = []
    for owner_name, owner in module.named_modules():
        prefix = f"{owner_name}." if owner_name else ""
        for attribute, tensor in owner.named_parameters(recurse=False):
            found.append((prefix + attribute, owner, tensor, False))
        for attribute, tensor in owner.named_buffers(recurse=False):
            if attribute not in owner._non_persistent_buffers_set:
                found.append((prefix + attribute, owner, tensor, True))
    return found


@functools.lru_cache(maxsize=256)
def template(arch: ArchSpec, resolution: int, num_classes: int) -> Backbone:
    """``arch``'s model on the meta device: its structure, run with the supernet's tensors
    (cached: one per architecture; its training mode follows the last call)."""
    with torch.device("meta"):
        return build_model(arch, num_classes, resolution=resolution)
