"""Training the supernet: the sandwich of subnets, a killed training that resumes to the same
tensors, and scoring with re-estimated batch-norm statistics."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from common import datasets
from common.datasets import ImageData, ImageTensorDataset
from oneshot import Supernet
from oneshot.space import window
from oneshot.train import SupernetRecipe, sandwich, score, train_supernet
from search.images import prepare
from search.proxy import ProxySettings
from space.cost import estimate, parse_budget
from space.sampling import largest_within, smallest

BUDGET = parse_budget("1GFLOPs")
# two steps an epoch over the largest and smallest subnets (the random draws: test above)
RECIPE = SupernetRecipe(ProxySettings(epochs=2, batch_size=32), subnets=2, calibration_batches=2)


@pytest.fixture(scope="module")
def digits() -> ImageData:
    train, val, classes, size = datasets.load("digits")
    subset = ImageTensorDataset(train.images[:64], train.labels[:64], natural=False)
    return ImageData(subset, val, classes, size)


def cmt_supernet() -> Supernet:
    torch.manual_seed(0)
    return Supernet(resolution=RECIPE.proxy.resolution, num_classes=10, blocks=("cmt",))


def test_a_step_trains_the_largest_the_smallest_and_random_subnets_within_the_budget() -> None:
    supernet = cmt_supernet()
    archs = sandwich(supernet, BUDGET, 4, random.Random(0))
    assert archs[0] == largest_within(BUDGET, blocks=("cmt",))
    assert archs[1] == smallest(blocks=("cmt",))
    assert all(estimate(arch).macs <= BUDGET and supernet.covers(arch) for arch in archs)
    low, high = window(BUDGET)
    assert all(low <= estimate(arch).macs <= high for arch in archs[2:])
    assert archs[2] != archs[3]


def test_a_killed_training_resumes_to_the_same_tensors(digits: ImageData, tmp_path: Path) -> None:
    """Two epochs at once, against one epoch, a new process's supernet, and the second epoch
    resumed from the checkpoint: the same losses and the same tensors, bit for bit."""
    straight = cmt_supernet()
    losses = train_supernet(
        straight, digits, RECIPE, budget_macs=BUDGET, checkpoint=tmp_path / "a.pt"
    )
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
    first = cmt_supernet()
    train_supernet(
        first, digits, RECIPE, budget_macs=BUDGET, checkpoint=tmp_path / "b.pt", epochs=1
    )
    assert not (tmp_path / "b.pt.partial").exists()
    resumed = cmt_supernet()
    assert (
        train_supernet(resumed, digits, RECIPE, budget_macs=BUDGET, checkpoint=tmp_path / "b.pt")
        == losses
    )
    for (name, a), (_, b) in zip(
        straight.state_dict().items(), resumed.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert not torch.equal(
        straight.state_dict()["head/fc/weight"], cmt_supernet().state_dict()["head/fc/weight"]
    )


def test_a_given_subnet_draw_trains_only_those_subnets(digits: ImageData, tmp_path: Path) -> None:
    """``subnets`` replaces the sandwich (the sharing benchmark's seam): training the smallest
    alone changes its tensors and leaves every other shared tensor as it started."""
    supernet = cmt_supernet()
    arch = smallest(blocks=("cmt",))
    before = {name: tensor.clone() for name, tensor in supernet.state_dict().items()}
    train_supernet(
        supernet,
        digits,
        RECIPE,
        budget_macs=BUDGET,
        checkpoint=tmp_path / "c.pt",
        epochs=1,
        subnets=lambda rng: [arch],
    )
    used = {supernet.shared_key(arch, name).replace(".", "/") for name in supernet.tensors(arch)}
    after = supernet.state_dict()
    changed = {name for name, tensor in after.items() if not torch.equal(tensor, before[name])}
    assert changed and changed <= used
    assert "head/fc/weight" in changed


def test_scoring_estimates_its_own_norm_statistics(digits: ImageData) -> None:
    supernet = cmt_supernet()
    arch = sandwich(supernet, BUDGET, 2, random.Random(0))[0]
    images = digits.train.images[:64]
    calibration = [
        prepare(images[i : i + 32], 24, augment=False, flips=False, generator=None) for i in (0, 32)
    ]
    val = [
        (
            prepare(digits.val.images[:100], 24, augment=False, flips=False, generator=None),
            digits.val.labels[:100],
        )
    ]
    before = {name: t.clone() for name, t in supernet.state_dict().items()}
    accuracy = score(supernet, arch, calibration, val)
    assert 0.0 <= accuracy <= 1.0
    assert accuracy == score(supernet, arch, calibration, val)
    for name, tensor in supernet.state_dict().items():
        assert torch.equal(tensor, before[name]), name  # the shared statistics are untouched


def test_a_bad_recipe_names_the_field() -> None:
    with pytest.raises(ValueError, match="subnets"):
        SupernetRecipe(subnets=0)
