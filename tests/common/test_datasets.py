"""Datasets: the embedded ones, CIFAR pickles and image folders made here, and clear errors."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common import datasets as data


@pytest.mark.parametrize(("name", "size", "n_val"), [("mnist5k", 28, 1000), ("digits", 8, 359)])
def test_embedded_sets(name: str, size: int, n_val: int) -> None:
    train, val, classes, image_size = data.load(name)
    assert (classes, image_size, len(val)) == (10, size, n_val)
    image, label = train[0]
    assert image.dtype == torch.uint8 and image.shape == (1, size, size)
    assert 0 <= int(label) < 10
    assert set(val.labels.tolist()) == set(range(10))  # stratified
    again = data.load(name)
    assert torch.equal(again.val.labels, val.labels)  # a fixed split


def test_default_is_the_chosen_embedded_set() -> None:
    assert data.load("default") is data.load(data.DEFAULT)


def write_cifar(root: Path, classes: int, per_file: int = 6) -> None:
    rng = np.random.default_rng(0)

    def dump(name: str, n: int) -> None:
        key = b"labels" if classes == 10 else b"fine_labels"
        batch = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            key: rng.integers(0, classes, n).tolist(),
        }
        (root / name).write_bytes(pickle.dumps(batch))

    root.mkdir(parents=True)
    if classes == 10:
        for i in range(1, 6):
            dump(f"data_batch_{i}", per_file)
        dump("test_batch", per_file)
    else:
        dump("train", 5 * per_file)
        dump("test", per_file)


@pytest.mark.parametrize("classes", [10, 100])
def test_cifar_pickles(tmp_path: Path, classes: int) -> None:
    inner = "cifar-10-batches-py" if classes == 10 else "cifar-100-python"
    write_cifar(tmp_path / inner, classes)
    name = "cifar10" if classes == 10 else "cifar100"
    for path in (tmp_path / inner, tmp_path):  # the folder itself or its parent
        train, val, n_classes, size = data.load(f"{name}:{path}")
        assert (len(train), len(val), n_classes, size) == (30, 6, classes, 32)
        image, _ = train[0]
        assert image.shape == (3, 32, 32) and image.dtype == torch.uint8


def test_malformed_cifar_folder_names_the_missing_file(tmp_path: Path) -> None:
    write_cifar(tmp_path / "c", 10)
    (tmp_path / "c" / "data_batch_3").unlink()
    with pytest.raises(ValueError, match=r"missing file .*data_batch_3"):
        data.load(f"cifar10:{tmp_path / 'c'}")
    (tmp_path / "c" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match=r"cannot read .*data_batch_3"):
        data.load(f"cifar10:{tmp_path / 'c'}")


class _Payload:
    """Unpickling this runs ``os.system(command)``: what a hostile batch file would do."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return (os.system, (self.command,))


def test_a_crafted_cifar_pickle_runs_nothing(tmp_path: Path) -> None:
    write_cifar(tmp_path / "c", 10)
    victim = tmp_path / "pwned"
    hostile = {b"data": _Payload(f"touch {victim}"), b"labels": [0]}
    (tmp_path / "c" / "data_batch_2").write_bytes(pickle.dumps(hostile, protocol=2))
    with pytest.raises(ValueError, match=r"data_batch_2.*posix.system|data_batch_2.*os.system"):
        data.load(f"cifar10:{tmp_path / 'c'}")
    assert not victim.exists()
    # the same file loaded with a plain pickle.load would have run it: the test can fail
    pickle.loads((tmp_path / "c" / "data_batch_2").read_bytes())
    assert victim.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (3, "holds a int, not a CIFAR batch"),
        ({b"labels": [0]}, "has no 'data' entry"),
        ({b"data": np.zeros((2, 3072), np.uint8)}, "has no 'labels' entry"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "2-D uint8 array"),
        ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, "rows must hold 3072"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "one label per image"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": ["a", "b"]}, "must hold integers"),
        (
            {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]},
            r"labels must lie in 0\.\.9",
        ),
    ],
)
def test_malformed_cifar_content_is_one_clear_error(
    tmp_path: Path, content: object, message: str
) -> None:
    write_cifar(tmp_path / "c", 10)
    (tmp_path / "c" / "test_batch").write_bytes(pickle.dumps(content))
    with pytest.raises(ValueError, match=message) as error:
        data.load(f"cifar10:{tmp_path / 'c'}")
    assert "test_batch" in str(error.value) and "\n" not in str(error.value)


def write_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog", "owl"), n: int = 5) -> None:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            pixels = rng.integers(0, 256, (20 + i, 30, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.png")


def test_image_folder_split_and_resized(tmp_path: Path) -> None:
    write_folder(tmp_path / "pets")
    train, val, classes, size = data.load(f"folder:{tmp_path / 'pets'}")
    assert (len(train), len(val), classes, size) == (12, 3, 3, 64)
    image, label = train[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.uint8 and label == 0
    _, _, _, size = data.load(f"folder:{tmp_path / 'pets'}@40")
    assert size == 40


def test_image_folder_with_train_and_val(tmp_path: Path) -> None:
    write_folder(tmp_path / "set" / "train", n=4)
    write_folder(tmp_path / "set" / "val", n=2)
    train, val, classes, _ = data.load(f"folder:{tmp_path / 'set'}")
    assert (len(train), len(val), classes) == (12, 6, 3)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("imagenet", "unknown dataset 'imagenet'"),
        ("cifar10", "unknown dataset"),
        ("cifar10:/no/such/place", "'/no/such/place' does not exist"),
        ("folder:/no/such/place", "does not exist"),
        ("mnist5k:extra", "unknown dataset"),
    ],
)
def test_bad_names(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        data.load(name)


def test_folder_errors(tmp_path: Path) -> None:
    write_folder(tmp_path / "one", classes=("only",))
    with pytest.raises(ValueError, match="at least two class sub-folders"):
        data.load(f"folder:{tmp_path / 'one'}")
    write_folder(tmp_path / "two", classes=("a", "b"))
    with pytest.raises(ValueError, match="image size"):
        data.load(f"folder:{tmp_path / 'two'}@big")


def write_idx(folder: Path, images: np.ndarray, labels: np.ndarray, *, gz: bool) -> None:
    """Fashion-MNIST's training files in the IDX format (big-endian header, then bytes)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in (("train-images-idx3-ubyte", images), ("train-labels-idx1-ubyte", labels)):
        header = (0x0800 + array.ndim).to_bytes(4, "big")
        header += b"".join(int(n).to_bytes(4, "big") for n in array.shape)
        payload = header + array.astype(np.uint8).tobytes()
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(payload))
        else:
            (folder / name).write_bytes(payload)


@pytest.fixture(scope="module")
def fashion_like(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A folder of IDX files as the Debian package lays them out: 750 images of each class,
    each image's index written into its first two rows and its label into the third."""
    folder = tmp_path_factory.mktemp("fashion")
    labels = np.repeat(np.arange(10), 750)[np.random.default_rng(1).permutation(7500)]
    images = np.zeros((7500, 28, 28), dtype=np.uint8)
    images[:, 0, :] = (np.arange(7500) // 256)[:, None]
    images[:, 1, :] = (np.arange(7500) % 256)[:, None]
    images[:, 2, :] = labels[:, None]
    write_idx(folder, images, labels, gz=True)
    return folder, labels


def test_fashion_subset_is_stratified_fixed_and_disjoint(fashion_like: tuple) -> None:
    folder, _ = fashion_like
    train, val, classes, size = data.load(f"fashion:{folder}")
    assert (len(train), len(val), classes, size) == (5000, 2000, 10, 28)
    assert torch.bincount(train.labels).tolist() == [500] * 10
    assert torch.bincount(val.labels).tolist() == [200] * 10
    assert train.images.shape == (5000, 1, 28, 28) and train.natural  # flips are valid
    assert torch.equal(train.images[:, 0, 2, 0].long(), train.labels)  # images keep labels
    data._fashion.cache_clear()
    again = data.load(f"fashion:{folder}")
    assert torch.equal(again.train.images, train.images)
    assert torch.equal(again.val.images, val.images)

    def indices(images: torch.Tensor) -> set[int]:
        return set((images[:, 0, 0, 0].long() * 256 + images[:, 0, 1, 0].long()).tolist())

    assert len(indices(train.images)) == 5000 and len(indices(val.images)) == 2000
    assert not indices(train.images) & indices(val.images)


def test_fashion_reads_plain_idx_files_too(tmp_path: Path, fashion_like: tuple) -> None:
    folder, _ = fashion_like
    plain = tmp_path / "plain"
    plain.mkdir()
    for gz in folder.iterdir():
        (plain / gz.stem).write_bytes(gzip.decompress(gz.read_bytes()))
    assert torch.equal(
        data.load(f"fashion:{plain}").val.images, data.load(f"fashion:{folder}").val.images
    )


@pytest.mark.skipif(
    not data.FASHION_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed"
)
def test_fashion_from_the_debian_package() -> None:
    train, val, classes, size = data.load("fashion")
    assert (len(train), len(val), classes, size) == (5000, 2000, 10, 28)
    assert torch.bincount(val.labels).tolist() == [200] * 10
    assert 60 < train.images.float().mean() < 90  # garments, not an empty or noise file


def test_fashion_errors_name_the_package_or_the_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="apt-get install dataset-fashion-mnist"):
        data.load(f"fashion:{tmp_path / 'absent'}")
    with pytest.raises(ValueError, match=r"missing file .*train-images-idx3-ubyte"):
        data.load(f"fashion:{tmp_path}")
    images = np.zeros((30, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "small", images, np.arange(30) % 10, gz=False)
    with pytest.raises(ValueError, match="class 0 has 3 images; the subset needs 700"):
        data.load(f"fashion:{tmp_path / 'small'}")
    (tmp_path / "small" / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x03" + bytes(8))
    with pytest.raises(ValueError, match="not an IDX file of bytes with 1 dimension"):
        data.load(f"fashion:{tmp_path / 'small'}")
