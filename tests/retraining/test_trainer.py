"""Retraining: the recipe is checked, a run resumes after a kill with nothing lost, and the
run folder holds checkpoints, metrics and the result."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import pytest
import torch

from common import datasets as data
from common.datasets import ImageData, ImageTensorDataset
from retraining.recipe import Recipe
from retraining.trainer import Diverged, RetrainSettings, checkpoint_model, retrain
from tests.search.test_proxy import tiny_arch

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits_subset() -> ImageData:
    train_set, val, classes, size = data.load("digits")
    subset = ImageTensorDataset(train_set.images[:256], train_set.labels[:256], natural=False)
    return ImageData(subset, val, classes, size)


def settings(epochs: int = 3, **recipe: object) -> RetrainSettings:
    return RetrainSettings(
        tiny_arch(), "digits", 32, 0, Recipe(epochs=epochs, batch_size=64, lr=4e-3, **recipe)
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("epochs", 0, "epochs must be an integer >= 1"),
        ("lr", -1.0, "lr must be a number > 0"),
        ("drop_path", 1.0, r"drop_path must be a number in \[0, 1\)"),
        ("crop_scale", 0.0, r"crop_scale must be a number in \(0, 1\]"),
        ("randaugment", "autoaug", "randaugment must be a timm RandAugment policy"),
    ],
)
def test_recipe_refuses_bad_values(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Recipe(**{field: value})


def test_recipe_scales_to_the_data() -> None:
    recipe = Recipe(epochs=2, batch_size=128)
    assert recipe.batch_for(1437) == 128 and recipe.batch_for(101) == 100  # even, within the set
    assert recipe.scaled_lr(128) == pytest.approx(5e-4 * 128 / 512)  # DeiT's linear rule
    assert recipe.warmup_steps(10) == 2  # 5 epochs capped at a tenth of 2 epochs
    assert Recipe().warmup_steps(10) == 50


def test_resumed_run_equals_uninterrupted(tmp_path: Path, digits_subset: ImageData) -> None:
    """A run stopped after epoch 1 (its checkpoint written) and started again ends with the
    weights, EMA and metrics of a run that never stopped."""
    whole = retrain(settings(2), digits_subset, tmp_path / "whole", device=CPU, workers=0)

    class Killed(Exception):
        pass

    def stop(row: dict) -> None:
        raise Killed

    (tmp_path / "cut").mkdir()
    with pytest.raises(Killed):
        retrain(settings(2), digits_subset, tmp_path / "cut", device=CPU, workers=0, on_epoch=stop)
    starts: list[int] = []
    cut = retrain(
        settings(2), digits_subset, tmp_path / "cut", device=CPU, workers=0, on_start=starts.append
    )
    assert starts == [1]
    for a, b in zip(whole, cut, strict=True):
        assert {k: v for k, v in a.items() if k not in ("seconds", "images_per_second")} == {
            k: v for k, v in b.items() if k not in ("seconds", "images_per_second")
        }
    last = {
        name: torch.load(tmp_path / name / "last.pt", weights_only=True)
        for name in ("whole", "cut")
    }
    for part in ("model", "ema"):
        for key, tensor in last["whole"][part].items():
            assert torch.equal(tensor, last["cut"][part][key]), (part, key)
    rows = list(csv.DictReader((tmp_path / "cut" / "metrics.csv").open()))
    assert [row["epoch"] for row in rows] == ["1", "2"]


def test_training_learns_and_keeps_the_best(tmp_path: Path) -> None:
    """The whole recipe (Mixup/CutMix, RandAugment, erasing, EMA) learns the digits in three
    epochs (74% here) at a learning rate for short runs; best.pt holds the best epoch."""
    run = dataclasses.replace(
        settings(3, crop_scale=0.35), recipe=Recipe(3, 64, 2e-2, crop_scale=0.35)
    )
    history = retrain(run, data.load("digits"), tmp_path, device=CPU, workers=0)
    assert len(history) == 3 and history[-1]["lr"] == pytest.approx(1e-5)  # cosine to min_lr
    chance = 1 / 10
    best, weights = checkpoint_model(tmp_path / "best.pt")
    tops = [max(row["top1"], row["ema_top1"]) for row in history]
    assert best["top1"] == max(tops) > 4 * chance
    assert best["epoch"] == tops.index(max(tops)) + 1
    assert best["arch"] == tiny_arch().to_dict() and best["resolution"] == 32
    assert all(row["top5"] >= row["top1"] for row in history)
    assert set(weights) == set(torch.load(tmp_path / "last.pt", weights_only=True)["model"])


def test_no_mixup_no_ema(tmp_path: Path, digits_subset: ImageData) -> None:
    """The recipe's parts can be switched off: plain label smoothing, no EMA."""
    plain = settings(1, mixup=0.0, cutmix=0.0, ema_decay=0.0, randaugment="none", reprob=0.0)
    history = retrain(plain, digits_subset, tmp_path, device=CPU, workers=0)
    assert history[0]["ema_top1"] != history[0]["ema_top1"]  # NaN: no EMA
    assert checkpoint_model(tmp_path / "best.pt")[0]["weights"] == "model"


def test_settings_round_trip_and_differences() -> None:
    first = settings(2)
    assert RetrainSettings.from_dict(first.to_dict()) == first
    other = dataclasses.replace(first, seed=1, recipe=dataclasses.replace(first.recipe, lr=1e-3))
    assert other.changed_from(first) == ["seed=0", "--lr 0.004"]


def test_a_diverged_training_stops_with_a_clear_error(
    tmp_path: Path, digits_subset: ImageData
) -> None:
    wild = RetrainSettings(tiny_arch(), "digits", 32, 0, Recipe(2, 64, 1e9, warmup_epochs=0))
    with pytest.raises(Diverged, match="became NaN or infinite; lower --lr"):
        retrain(wild, digits_subset, tmp_path, device=CPU, workers=0)
    assert not (tmp_path / "last.pt").exists()  # no checkpoint of a diverged epoch
