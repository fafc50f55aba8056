"""Every block type: shapes, finite forward and backward passes at any size, fused == explicit."""

from __future__ import annotations

import math

import pytest
import torch

from blocks import BLOCKS, build_model, explicit_attention
from blocks.aewin import AEWinOptions, AxialWindowAttention, window_mask
from blocks.botnet import BoTOptions
from blocks.cmt import CMTOptions
from blocks.coatnet import CoAtOptions, RelativeAttention
from blocks.cot import CoTLayer, CoTOptions
from blocks.dualvit import DualOptions, SemanticTokens
from blocks.halonet import HaloOptions
from blocks.layers import DepthwiseConv2d
from blocks.maxvit import MaxViTOptions, PartitionAttention
from space.genotype import ArchSpec, StageSpec

SMALL_OPTIONS = {
    "cmt": [CMTOptions(kv_reduction=k) for k in (4, 2, 2, 1)],
    "aewin": [AEWinOptions((0.25, 0.25, 0.5), window=7, stripe=s) for s in (1, 2, 3, 7)],
    "cot": [CoTOptions(kernel=3)] * 4,
    "dual": [DualOptions(pool=4, mode=m) for m in ("dual", "dual", "merge", "merge")],
    "bot": [BoTOptions(layout) for layout in ("conv", "alternate", "alternate", "attention")],
    "halo": [
        HaloOptions(layout, block, halo)
        for layout, block, halo in (
            ("attention", 4, 1),
            ("alternate", 8, 2),
            ("alternate", 4, 3),
            ("attention", 2, 1),
        )
    ],
    "maxvit": [MaxViTOptions(window, grid) for window, grid in ((7, 7), (4, 7), (4, 4), (7, 4))],
    "coatnet": [CoAtOptions(kind) for kind in ("conv", "attention", "attention", "conv")],
}


def small_arch(block: str, resolution: int = 96) -> ArchSpec:
    """A four-stage network of one block type, small enough to run fast at any size."""
    widths, heads = (32, 64, 96, 128), (1, 2, 3, 4)
    if block == "cot":
        heads = (1, 1, 1, 1)
    if block in ("bot", "halo"):  # width over bottleneck width 2: bottlenecks of 16-64
        heads = (2, 2, 4, 4)
    if block == "coatnet":  # stage 2 attends at 32 channels from stage 1 with heads of 16
        heads = (1, 4, 3, 4)
    stages = tuple(
        StageSpec(block, 2 if i < 3 else 1, widths[i], heads[i], 2.0, SMALL_OPTIONS[block][i])
        for i in range(4)
    )
    return ArchSpec(stages, resolution, stem="cmt", stem_width=16, head="conv", head_width=64)


def test_every_registered_block_type_is_covered() -> None:
    assert set(BLOCKS.names()) == set(SMALL_OPTIONS)


@pytest.mark.parametrize("block", sorted(SMALL_OPTIONS))
@pytest.mark.parametrize("size", [32, 64, 96, 50])
def test_forward_backward_any_size(block: str, size: int) -> None:
    """32, 64, the genotype's own 96, and 50 (stages of 13, 7, 4, 2: neither k nor 7 divides)."""
    torch.manual_seed(0)
    model = build_model(small_arch(block), num_classes=7)
    x = torch.randn(2, 3, size, size)
    features, _ = model.forward_features(x)
    assert features.shape == (2, 128, math.ceil(size / 32), math.ceil(size / 32))
    out = model(x)
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("block", sorted(SMALL_OPTIONS))
@pytest.mark.parametrize("size", [64, 50])
def test_every_stage_keeps_map_shape(block: str, size: int) -> None:
    """Each stage maps (B, C_in, H, W) to (B, C, ceil(H/s), ceil(W/s)); blocks keep the shape."""
    model = build_model(small_arch(block), num_classes=7).eval()
    x = model.stem(torch.randn(1, 3, size, size))
    tokens = None
    for i, stage in enumerate(model.stages):
        x, tokens = stage(x, tokens)
        side = math.ceil(size / 2 ** (i + 2))
        assert x.shape == (1, small_arch(block).stages[i].width, side, side)


@pytest.mark.parametrize("block", sorted(SMALL_OPTIONS))
@pytest.mark.parametrize("size", [96, 50])
def test_fused_and_explicit_attention_agree(block: str, size: int) -> None:
    torch.manual_seed(0)
    model = build_model(small_arch(block), num_classes=7).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        fused = model.forward_features(x)[0]
        with explicit_attention():
            explicit = model.forward_features(x)[0]
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=0)


def test_mixed_stages_and_dual_makes_tokens_when_none_flow_in() -> None:
    dual = DualOptions(pool=4, mode="merge")
    stages = (
        StageSpec("dual", 1, 32, 1, 2.0, DualOptions(pool=4)),
        StageSpec("cot", 1, 64, 1, 2.0),
        StageSpec("dual", 1, 96, 3, 2.0, dual),
        StageSpec("dual", 1, 128, 4, 2.0, dual),
    )
    arch = ArchSpec(stages, 64, stem="cmt", stem_width=16, head="class_attention", head_width=64)
    model = build_model(arch, num_classes=5)
    assert isinstance(model.stages[0].tokens, SemanticTokens)
    assert isinstance(model.stages[2].tokens, SemanticTokens)  # a cot stage dropped them
    assert not isinstance(model.stages[3].tokens, SemanticTokens)  # embedded from stage 3
    _, tokens = model.forward_features(torch.randn(2, 3, 64, 64))
    assert tokens is not None and tokens.shape == (2, 1, 128)  # stage 3's 4x4 map pooled by 4
    assert model(torch.randn(2, 3, 40, 40)).shape == (2, 5)


def test_semantic_token_grid_follows_the_map() -> None:
    """Pooled by 7: 64 tokens from the 56x56 map the queries are learnt for, fewer from smaller
    maps (the queries resized), at least one."""
    make = SemanticTokens(32, pool=7, side=56)
    assert make.queries.shape == (64, 32)
    for side, tokens in ((56, 64), (28, 16), (8, 1), (3, 1), (112, 256)):
        assert make(torch.randn(2, 32, side, side)).shape == (2, tokens, 32)


def test_cot_aggregation_matches_a_loop_over_the_kernel() -> None:
    """Channel c uses weight group c mod C/8 (the official interleaved sharing), zero padding."""
    torch.manual_seed(0)
    layer = CoTLayer(16, kernel=3)
    b, c, h, w = 2, 16, 5, 6
    groups = c // 8
    value = torch.randn(b, c, h, w)
    weights = torch.randn(b, groups * 9, h, w)
    padded = torch.nn.functional.pad(value, (1, 1, 1, 1))
    expected = torch.zeros_like(value)
    for ch in range(c):
        for pos in range(9):
            dy, dx = divmod(pos, 3)
            weight = weights[:, (ch % groups) * 9 + pos]
            expected[:, ch] += weight * padded[:, ch, dy : dy + h, dx : dx + w]
    torch.testing.assert_close(layer.aggregate(value, weights), expected)


def test_window_padding_is_masked() -> None:
    """Pure window heads on a 10x10 map padded to 14x14: the bottom-right window holds 3x3 real
    tokens and 40 padded ones, so its output equals the output on the 3x3 crop alone."""
    torch.manual_seed(0)
    attn = AxialWindowAttention(16, 2, AEWinOptions((0, 0, 1), window=7, stripe=1)).eval()
    x = torch.randn(1, 10, 10, 16)
    with torch.no_grad():
        torch.testing.assert_close(attn(x)[:, 7:, 7:], attn(x[:, 7:, 7:].contiguous()))


def test_stripe_padding_is_masked() -> None:
    """A 10-row map in stripes of 3: the last stripe holds one real row and two padded ones."""
    torch.manual_seed(0)
    attn = AxialWindowAttention(16, 2, AEWinOptions((1, 0, 0), window=7, stripe=3)).eval()
    q, k, v = torch.randn(3, 1, 10, 6, 16)
    with torch.no_grad():
        full = attn.stripe_attention(q, k, v, heads=2)
        last_row = attn.stripe_attention(q[:, 9:], k[:, 9:], v[:, 9:], heads=2)
    torch.testing.assert_close(full[:, 9:], last_row)


def test_shifted_window_does_not_mix_wrapped_regions() -> None:
    """With a shift of 3 on a 14x14 map, the corner token (0, 0) lands in a rolled window with
    wrapped-around tokens; the mask must keep its output a function of rows and columns 0-2 only."""
    torch.manual_seed(0)
    attn = AxialWindowAttention(8, 1, AEWinOptions((0, 0, 1), window=7, stripe=1), shift=True)
    x = torch.randn(1, 14, 14, 8, requires_grad=True)
    attn(x)[0, 0, 0].sum().backward()
    influence = x.grad.abs().sum(dim=-1)[0]
    touched = influence > 1e-9 * influence.max()  # masked keys weigh exp(-100)
    expected = torch.zeros(14, 14, dtype=torch.bool)
    expected[:3, :3] = True
    assert torch.equal(touched, expected)


def test_window_mask_is_none_when_nothing_is_masked() -> None:
    assert window_mask(14, 14, (7, 7), (0, 0)) is None
    mask = window_mask(14, 14, (7, 7), (3, 3))
    assert mask is not None and mask.shape == (4, 49, 49)
    assert (mask[0] == 0).all()  # the first rolled window holds one region only


@pytest.mark.parametrize(("side", "kernel"), [(1, 3), (2, 3), (2, 5), (4, 5), (5, 3)])
def test_depthwise_conv_trains_exactly_like_the_library_conv(side: int, kernel: int) -> None:
    """Small maps take the written-out backward on the CPU; output and every gradient equal
    ``nn.Conv2d``'s (float64)."""
    ours = DepthwiseConv2d(6, kernel).double()
    reference = torch.nn.Conv2d(6, 6, kernel, padding=kernel // 2, groups=6).double()
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(3, 6, side, side, dtype=torch.float64)
    grads = []
    for conv in (ours, reference):
        image = x.clone().requires_grad_()
        out = conv(image)
        (out * torch.arange(out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        grads.append((out, image.grad, conv.weight.grad, conv.bias.grad))
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, atol=1e-12)


def test_tracing_leaves_the_shape_caches_real() -> None:
    """torch.export (the ONNX exporter's path) traces with fake tensors: the AEWin masks it
    builds must not stay cached, or the next eager call with those shapes fails."""
    from blocks import aewin

    stages = (
        StageSpec("aewin", 1, 16, 1, 2.0),
        StageSpec("aewin", 1, 32, 2, 2.0),
        StageSpec("aewin", 1, 32, 2, 2.0),
        StageSpec("aewin", 1, 64, 2, 2.0),
    )
    model = build_model(ArchSpec(stages, 40, stem="cmt", stem_width=16, head_width=64), 10).eval()
    for builder in (aewin.relative_index, aewin.window_mask, aewin.stripe_mask):
        builder.cache_clear()
    x = torch.randn(2, 3, 40, 40)
    torch.export.export(model, (x,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    with torch.no_grad():
        out = model(x)
    assert type(out) is torch.Tensor and out.shape == (2, 10)


def test_a_model_trains_after_inference_mode_built_its_masks() -> None:
    """A search that measures latency (inference mode) then trains in the same process: the
    shape-cached masks and index tables must be usable by autograd."""
    arch = small_arch("aewin", resolution=64)
    model = build_model(arch, num_classes=7)
    x = torch.randn(1, 3, 61, 61)  # a size no other test builds masks for
    with torch.inference_mode():
        model.eval()(x)
    model.train()(x).sum().backward()


@pytest.mark.parametrize("block", sorted(SMALL_OPTIONS))
def test_forward_backward_channels_last(block: str) -> None:
    """The proxy trains channels_last: every block type takes maps in that layout."""
    model = build_model(small_arch(block), num_classes=7).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    model(x).square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def _partition_attention_by_loops(layer: PartitionAttention, x: torch.Tensor) -> torch.Tensor:
    """MaxViT's window or grid attention written per query: the keys are the real pixels of its
    group on the map padded to whole partitions; the bias is read at their partition offsets."""
    b, h, w, c = x.shape
    heads, part = layer.heads, layer.part
    ph, pw = min(part, h), min(part, w)
    cells = (math.ceil(h / ph), math.ceil(w / pw))  # cells per side (grid) or windows per side
    q, k, v = layer.qkv(x).reshape(b, h, w, 3, heads, c // heads).unbind(3)

    def place(y: int, x_: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """(group, position in the group) of pixel (y, x_)."""
        if layer.grid:
            return (y % cells[0], x_ % cells[1]), (y // cells[0], x_ // cells[1])
        return (y // ph, x_ // pw), (y % ph, x_ % pw)

    out = torch.zeros(b, h, w, heads, c // heads, dtype=x.dtype)
    for y in range(h):
        for x_ in range(w):
            group, (qy, qx) = place(y, x_)
            keys = [(ky, kx) for ky in range(h) for kx in range(w) if place(ky, kx)[0] == group]
            logits = torch.stack(
                [
                    (q[:, y, x_] * k[:, ky, kx]).sum(-1) * (c // heads) ** -0.5
                    + layer.bias_table[:, ky_ - qy + part - 1, kx_ - qx + part - 1]
                    for ky, kx in keys
                    for ky_, kx_ in [place(ky, kx)[1]]
                ],
                dim=-1,
            )  # (B, heads, keys)
            values = torch.stack([v[:, ky, kx] for ky, kx in keys], dim=-2)  # (B, heads, keys, d)
            out[:, y, x_] = (logits.softmax(-1)[..., None] * values).sum(-2)
    return layer.proj(out.reshape(b, h, w, c))


@pytest.mark.parametrize("grid", [False, True])
@pytest.mark.parametrize(("height", "width", "part"), [(8, 8, 4), (6, 9, 4), (5, 3, 7), (7, 7, 7)])
def test_maxvit_partition_attention_pads_masks_and_shrinks(
    grid: bool, height: int, width: int, part: int
) -> None:
    """Whole partitions, a padded map (6 x 9 by 4), a map smaller than the partition (5 x 3 by
    7: one group, the table's central offsets): all equal attention written per query."""
    torch.manual_seed(0)
    layer = PartitionAttention(16, heads=2, part=part, grid=grid).double()
    with torch.no_grad():
        layer.bias_table.normal_()
    x = torch.randn(2, height, width, 16, dtype=torch.float64)
    with torch.no_grad():
        expected = _partition_attention_by_loops(layer, x)
        torch.testing.assert_close(layer(x), expected, atol=1e-10, rtol=0)
        with explicit_attention():
            torch.testing.assert_close(layer(x), expected, atol=1e-10, rtol=0)


def test_coatnet_relative_bias_on_a_smaller_map_is_the_central_offsets() -> None:
    """A layer built for 7 x 7 on a 4 x 4 map equals one built for 4 x 4 holding the table's
    central 7 x 7 offsets; on a larger map the table is resampled and the layer still runs."""
    torch.manual_seed(0)
    large = RelativeAttention(16, 24, heads=2, size=7).double()
    small = RelativeAttention(16, 24, heads=2, size=4).double()
    state = large.state_dict()
    table = state["bias_table"].reshape(13, 13, 2)[3:10, 3:10].reshape(49, 2)
    small.load_state_dict({**state, "bias_table": table})
    x = torch.randn(2, 16, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(large(x), small(x), atol=1e-12, rtol=0)
        assert large(torch.randn(1, 16, 9, 9, dtype=torch.float64)).shape == (1, 24, 9, 9)
