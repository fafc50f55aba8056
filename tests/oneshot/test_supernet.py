"""The one-shot supernet: a subnet computes what its extracted standalone model computes, and
subnets share the tensors they should (and only those)."""

from __future__ import annotations

import dataclasses
import random

import optuna
import pytest
import torch

from blocks import BLOCKS
from blocks.cmt import CMTOptions
from blocks.cot import CoTOptions
from blocks.registry import Fused
from oneshot import Supernet, every_choice, take
from oneshot.space import RandomTrial
from space.genotype import ArchSpec, StageSpec
from space.sampling import DEFAULT_BLOCKS, draw

RESOLUTION = 24


@pytest.fixture(scope="module")
def supernet() -> Supernet:
    torch.manual_seed(0)
    return Supernet(resolution=RESOLUTION, num_classes=10)


def drawn(count: int, seed: int) -> list[ArchSpec]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [draw(study.ask()) for _ in range(count)]


def one_type(block: str, widths: tuple[int, ...], options: list, heads: int = 2) -> ArchSpec:
    stages = tuple(
        StageSpec(
            block, 2, width, heads if block != "cot" else 1, 4.0 if block != "cot" else 2.0, o
        )
        for width, o in zip(widths, options, strict=True)
    )
    return ArchSpec(stages, 224, stem="cmt", stem_width=16, head="conv", head_width=1280)


def test_every_choice_is_each_path_through_a_stage_draw_once() -> None:
    """CMT's stage 2: heads 1/2/4, MLP ratios 2/3/4, k 2/4."""
    choices = every_choice(BLOCKS.get("cmt"), 1)
    assert len(choices) == 3 * 3 * 2 == len(set(choices))
    assert {c.options.kv_reduction for c in choices} == {2, 4}


def test_a_subnet_computes_what_its_extracted_model_computes(supernet: Supernet) -> None:
    """Drawn subnets covering every default block type, in evaluation and training mode."""
    archs = drawn(6, seed=4)
    assert {stage.block for arch in archs for stage in arch.stages} == set(DEFAULT_BLOCKS)
    x = torch.randn(4, 3, RESOLUTION, RESOLUTION)
    for arch in archs:
        with torch.no_grad():
            supernet.eval()
            expected = supernet.extract(arch).eval()(x)
            assert torch.equal(supernet(x, arch), expected), arch.block_mix
    supernet.train()
    arch = archs[0]
    model = supernet.extract(arch).train()
    torch.manual_seed(1)
    from_supernet = supernet(x, arch)
    torch.manual_seed(1)
    assert torch.equal(from_supernet, model(x))
    supernet.eval()


def test_the_other_hybrid_types_extract_what_the_supernet_computes() -> None:
    """BoTNet and HaloNet (conv and attention blocks alternating; Halo's k and v fused head by
    head), MaxViT (a bias table per window and grid side) and CoAtNet (its first attention's
    heads follow its input width), in evaluation mode."""
    blocks = ("bot", "halo", "maxvit", "coatnet")
    torch.manual_seed(0)
    supernet = Supernet(resolution=RESOLUTION, num_classes=10, blocks=blocks).eval()
    rng = random.Random(0)
    archs = [draw(RandomTrial(rng), blocks=blocks) for _ in range(8)]
    assert {stage.block for arch in archs for stage in arch.stages} == set(blocks)
    assert {s.options.layout for a in archs for s in a.stages if s.block in ("bot", "halo")} == {
        "alternate",
        "attention",
    }
    x = torch.randn(2, 3, RESOLUTION, RESOLUTION)
    with torch.no_grad():
        for arch in archs:
            assert torch.equal(supernet(x, arch), supernet.extract(arch).eval()(x)), arch.block_mix


def test_the_other_types_own_what_their_options_change() -> None:
    """HaloNet's relative tables per (block, halo), the norm after a 3x3 conv apart from the
    one after attention, k and v gathered head by head; MaxViT's bias tables per side."""
    from blocks.halonet import HaloOptions
    from blocks.maxvit import MaxViTOptions

    supernet = Supernet(resolution=RESOLUTION, num_classes=10, blocks=("halo", "maxvit"))
    widths = (64, 128, 256, 512)

    def halo(**options: object) -> ArchSpec:
        return one_type("halo", widths, [HaloOptions(**options)] * 4, heads=4)

    small, large = halo(block=4, halo=1), halo(block=8, halo=1)
    table = "stages.1.blocks.1.middle.0.height_rel"
    assert supernet.shared_key(small, table) != supernet.shared_key(large, table)
    norm = "stages.1.blocks.{}.middle.1.weight"
    alternate = halo(layout="alternate")
    assert supernet.shared_key(alternate, norm.format(0)).endswith("@convs")
    assert supernet.shared_key(alternate, norm.format(1)).endswith("@attends")
    assert supernet.shared_key(halo(), norm.format(0)).endswith("@attends")
    name = "stages.1.blocks.1.middle.0.kv.weight"  # (2 x 32 bottleneck, 32): heads of 8
    shared = supernet.shared(supernet.shared_key(small, name))
    half = shared.shape[0] // 2
    mine = supernet.tensors(small)[name]
    for head in range(4):
        k, v = mine[16 * head : 16 * head + 8], mine[16 * head + 8 : 16 * head + 16]
        assert torch.equal(k, shared[8 * head : 8 * head + 8, :32])
        assert torch.equal(v, shared[half + 8 * head : half + 8 * head + 8, :32])
    four, seven = (
        one_type("maxvit", widths, [MaxViTOptions(window=w, grid=4)] * 4) for w in (4, 7)
    )
    table = "stages.1.blocks.0.attn_block.attn.bias_table"
    assert supernet.shared_key(four, table) != supernet.shared_key(seven, table)
    grid = "stages.1.blocks.0.attn_grid.attn.bias_table"
    assert supernet.shared_key(four, grid) == supernet.shared_key(seven, grid)


def test_subnets_share_the_leading_channels(supernet: Supernet) -> None:
    narrow = one_type(
        "cmt", (48, 96, 128, 256), [CMTOptions(4), CMTOptions(2), CMTOptions(1), CMTOptions(1)]
    )
    wide = dataclasses.replace(
        narrow,
        stages=(
            narrow.stages[0],
            dataclasses.replace(narrow.stages[1], width=192),
            *narrow.stages[2:],
        ),
    )
    name = "stages.1.blocks.0.ffn.expand.0.weight"  # (4 width, width, 1, 1)
    small, large = supernet.tensors(narrow)[name], supernet.tensors(wide)[name]
    assert small.shape == (384, 96, 1, 1) and large.shape == (768, 192, 1, 1)
    assert small.data_ptr() == large.data_ptr()  # views of one shared tensor
    assert torch.equal(small, large[:384, :96])


def test_fused_layers_slice_each_part_alike(supernet: Supernet) -> None:
    """AEWin's q, k, v come from one linear layer: a narrower subnet's k is the leading rows of
    the shared k, not rows of the shared q."""
    from blocks.aewin import AEWinOptions

    options = [AEWinOptions((0.25, 0.25, 0.5), 7, 2)] * 4
    arch = one_type("aewin", (64, 128, 256, 512), options)
    name = "stages.2.blocks.0.attn.qkv.weight"
    shared = supernet.shared(supernet.shared_key(arch, name))
    full = shared.shape[0] // 3
    mine = supernet.tensors(arch)[name]
    for part in range(3):
        assert torch.equal(
            mine[part * 256 : (part + 1) * 256], shared[part * full : part * full + 256, :256]
        )


def test_options_own_the_tensors_they_cannot_share(supernet: Supernet) -> None:
    """CMT's key reduction and bias table belong to its k; CoT's static 3x3 context is the
    centre of the shared 5x5, its attention embedding's output the kernel's own."""
    base = one_type(
        "cmt", (64, 128, 256, 512), [CMTOptions(4), CMTOptions(2), CMTOptions(1), CMTOptions(1)]
    )
    other = dataclasses.replace(
        base, stages=(dataclasses.replace(base.stages[0], options=CMTOptions(8)), *base.stages[1:])
    )
    for name in ("stages.0.relative_bias", "stages.0.blocks.0.attn.reduce.0.weight"):
        assert supernet.shared_key(base, name) != supernet.shared_key(other, name)
    assert supernet.shared_key(base, "stages.0.blocks.0.attn.q.weight") == supernet.shared_key(
        other, "stages.0.blocks.0.attn.q.weight"
    )
    three = one_type("cot", (64, 128, 256, 512), [CoTOptions(3)] * 4)
    five = one_type("cot", (64, 128, 256, 512), [CoTOptions(5)] * 4)
    name = "stages.1.blocks.0.cot.key_embed.0.weight"
    assert torch.equal(supernet.tensors(three)[name], supernet.tensors(five)[name][:, :, 1:4, 1:4])
    name = "stages.1.blocks.0.cot.embed.3.weight"
    assert supernet.shared_key(three, name) != supernet.shared_key(five, name)


def test_training_a_subnet_trains_only_its_slices() -> None:
    torch.manual_seed(0)
    supernet = Supernet(resolution=RESOLUTION, num_classes=10, blocks=("cmt",))
    arch = one_type(
        "cmt", (48, 96, 128, 256), [CMTOptions(4), CMTOptions(2), CMTOptions(1), CMTOptions(1)]
    )
    supernet.train()
    x, y = torch.randn(4, 3, RESOLUTION, RESOLUTION), torch.randint(0, 10, (4,))
    torch.nn.functional.cross_entropy(supernet(x, arch), y).backward()
    name = "stages.1.blocks.0.attn.q.weight"
    shared = supernet.shared(supernet.shared_key(arch, name))
    assert shared.grad[:96, :96].abs().sum() > 0
    assert shared.grad[96:].abs().sum() == 0 and shared.grad[:, 96:].abs().sum() == 0
    deeper = supernet.shared("stages.1.cmt.blocks.5.attn.q.weight")
    assert deeper.grad is None  # a block the subnet does not have
    running_mean = supernet.shared_key(arch, "stages.1.blocks.0.ffn.expand.2.running_mean")
    stats = supernet.shared(running_mean)
    assert stats[:384].abs().sum() > 0 and stats[384:].abs().sum() == 0  # hidden 4 x 96


def test_a_type_without_declared_sharing_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(BLOCKS.get("coatnet"), "one_shot", False)
    with pytest.raises(ValueError, match="cannot hold coatnet yet"):
        Supernet(resolution=RESOLUTION, num_classes=10, blocks=("cmt", "coatnet"))


def test_a_subnet_outside_the_space_is_refused() -> None:
    supernet = Supernet(resolution=RESOLUTION, num_classes=10, blocks=("cmt",))
    arch = one_type("cot", (64, 128, 256, 512), [CoTOptions(3)] * 4)
    with pytest.raises(ValueError, match="not in this supernet's space"):
        supernet.tensors(arch)
    with pytest.raises(ValueError, match=r"no shared tensor 'stages\.0\.cot"):
        supernet.shared("stages.0.cot.blocks.0.reduce.0.weight")


def test_take_cuts_leading_centre_and_fused_parts() -> None:
    shared = torch.arange(6 * 4 * 5 * 5).reshape(6, 4, 5, 5)
    assert torch.equal(take(shared, (2, 3, 3, 3)), shared[:2, :3, 1:4, 1:4])
    fused = take(shared[:, :, 0, 0], (4, 4), fused=Fused(0, 2))
    assert torch.equal(fused, torch.cat([shared[0:2, :, 0, 0], shared[3:5, :, 0, 0]]))
    # q, k, v of 4 channels each in two heads of 2, head by head, from parts of 6 channels
    qkv = torch.arange(18)
    per_head = take(qkv, (12,), Fused(0, 3, per_head=True), heads=2)
    assert per_head.tolist() == [0, 1, 6, 7, 12, 13, 2, 3, 8, 9, 14, 15]
    with pytest.raises(ValueError, match="cannot be cut"):
        take(shared, (7, 4, 5, 5))


def test_a_subnet_step_through_the_supernet_has_no_host_round_trip() -> None:
    """On a GPU the slices (HaloNet's per-head gathers too), the functional call and the
    backward pass into the shared tensors never wait for the host (the meta device stands for
    it, as for the standalone blocks)."""
    from tests.blocks.test_host_round_trips import HostTraffic

    torch.manual_seed(0)
    blocks = ("cmt", "dual", "halo")
    supernet = Supernet(resolution=RESOLUTION, num_classes=10, blocks=blocks).to("meta")
    image = torch.empty(4, 3, RESOLUTION, RESOLUTION, device="meta")
    rng = random.Random(2)
    archs = [draw(RandomTrial(rng), blocks=blocks) for _ in range(3)]
    assert {stage.block for arch in archs for stage in arch.stages} == set(blocks)
    for arch in archs:
        supernet(image, arch).sum().backward()  # the warm-up pass
        with HostTraffic() as mode:
            supernet(image, arch).sum().backward()
        assert mode.events == [], arch.block_mix
