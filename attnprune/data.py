"""Data: Fashion-MNIST as in-memory tensors, and ImageFolder trees of images.

The library's demos and tests train on Fashion-MNIST because it is small
enough for a CPU and is packaged by Debian (``dataset-fashion-mnist``), so no
network access is needed. This module finds the four IDX files on disk, parses
them with torchvision's reader and returns normalised tensors.

The files are looked for, in this order:

1. the ``root`` argument, when given (then nothing else is searched);
2. the directory named by the environment variable ``ATTNPRUNE_DATA``;
3. ``/usr/share/datasets/fashion-mnist`` (where the Debian package puts them);
4. the cache directory, ``~/.cache/attnprune`` unless the environment
   variable ``ATTNPRUNE_CACHE`` names another one.

A directory qualifies when it holds ``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
``t10k-labels-idx1-ubyte`` (each either plain or gzip-compressed with a
``.gz`` suffix), either directly or under ``FashionMNIST/raw/`` (the layout
torchvision uses). Compressed files are decompressed once into the cache
directory. Only when ``download=True`` is passed, and nothing was found, are
the files downloaded with :class:`torchvision.datasets.FashionMNIST`.

:func:`image_folder_loaders` (:mod:`attnprune.image_folder`) reads any other
image data set laid out as ``root/train/<class>/*.png`` and, optionally,
``root/val/<class>/*.png`` (what ``attnprune prune --data DIR`` takes), with
normalisation, training augmentation and a validation split.

Example:
    >>> from attnprune.data import fashion_mnist_loaders
    >>> train_loader, test_loader = fashion_mnist_loaders(
    ...     batch_size=64, train_subset=5000, test_subset=1000)
    >>> images, labels = next(iter(train_loader))
    >>> images.shape
    torch.Size([64, 1, 28, 28])
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from ._idx_files import DEBIAN_DATA_DIR, cache_dir, download_files, not_found_message, read_idx, search, stat_key
from ._ints import check_int
from ._subsets import seeded_subset
from .errors import DatasetNotFoundError
from .image_folder import image_folder_loaders

__all__ = [
    "FASHION_MNIST_CLASSES",
    "NUM_CLASSES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "DEBIAN_DATA_DIR",
    "DatasetNotFoundError",
    "cache_dir",
    "find_fashion_mnist",
    "load_fashion_mnist",
    "fashion_mnist_loaders",
    "image_folder_loaders",
    "clear_cache",
]

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
"""The ten Fashion-MNIST class names, indexed by label."""

NUM_CLASSES: int = 10
"""Number of Fashion-MNIST classes."""

FASHION_MNIST_MEAN: float = 0.2860
"""Mean pixel value of the Fashion-MNIST training images (pixels in [0, 1])."""

FASHION_MNIST_STD: float = 0.3530
"""Standard deviation of the Fashion-MNIST training pixels (pixels in [0, 1])."""

def find_fashion_mnist(root: str | os.PathLike | None = None) -> dict[str, Path] | None:
    """Locates the four Fashion-MNIST IDX files without loading them.

    Args:
        root: A directory to use instead of the default search order. When
            given, no other location is searched.

    Returns:
        A mapping from each IDX file stem (e.g. ``"train-images-idx3-ubyte"``)
        to the path of the file found (possibly ending in ``.gz``), or None if
        no searched directory qualifies.
    """
    files, _ = search(root)
    return files


@functools.lru_cache(maxsize=4)
def _load_split(
    image_key: tuple[str, int, int], label_key: tuple[str, int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loads and normalises one split; cached on the files' path, size and mtime."""
    from torchvision.datasets.mnist import read_image_file, read_label_file

    images = read_idx(image_key, read_image_file)
    labels = read_idx(label_key, read_label_file)
    if images.dim() != 3 or tuple(images.shape[1:]) != (28, 28):
        raise ValueError(
            f"{image_key[0]}: expected images of shape (N, 28, 28), got {tuple(images.shape)}"
        )
    if labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{image_key[0]} holds {images.shape[0]} images but {label_key[0]} holds "
            f"{labels.shape[0]} labels"
        )
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= NUM_CLASSES):
        raise ValueError(
            f"{label_key[0]}: labels must lie in [0, {NUM_CLASSES - 1}], found "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )
    x = images.unsqueeze(1).to(torch.float32).div_(255.0)
    x.sub_(FASHION_MNIST_MEAN).div_(FASHION_MNIST_STD)
    return x, labels.to(torch.int64)


def clear_cache() -> None:
    """Drops the in-process cache of loaded splits (frees their memory)."""
    _load_split.cache_clear()


def load_fashion_mnist(
    root: str | os.PathLike | None = None,
    *,
    train: bool = True,
    download: bool = False,
) -> TensorDataset:
    """Loads one Fashion-MNIST split as normalised in-memory tensors.

    The result is cached in-process (keyed on the files' resolved paths, sizes
    and modification times), so repeated calls are cheap and share storage:
    do not modify the returned tensors in place.

    Args:
        root: A directory holding the four IDX files (directly or under
            ``FashionMNIST/raw/``). When None, ``$ATTNPRUNE_DATA``,
            ``/usr/share/datasets/fashion-mnist`` and the cache directory are
            searched in that order.
        train: Load the 60,000-image training split if True, else the
            10,000-image test split.
        download: If nothing is found, download the files with torchvision into
            ``root`` (or into the cache directory when ``root`` is None).

    Returns:
        A ``TensorDataset`` of ``(images, labels)``: float32 images of shape
        ``(N, 1, 28, 28)``, normalised as ``(x / 255 - 0.2860) / 0.3530``, and
        int64 labels in ``[0, 9]`` (see :data:`FASHION_MNIST_CLASSES`).

    Raises:
        DatasetNotFoundError: (a ``FileNotFoundError``) if the files are not
            found and could not be downloaded; the message lists what was
            searched and how to fix it.
        ValueError: If a file found is not a valid Fashion-MNIST IDX file.
    """
    files, searched = search(root)
    download_error = None
    if files is None and download:
        files, download_error = download_files(root)
    if files is None:
        raise DatasetNotFoundError(not_found_message(searched, download_error))
    prefix = "train" if train else "t10k"
    images, labels = _load_split(
        stat_key(files[f"{prefix}-images-idx3-ubyte"]),
        stat_key(files[f"{prefix}-labels-idx1-ubyte"]),
    )
    return TensorDataset(images, labels)


def fashion_mnist_loaders(
    root: str | os.PathLike | None = None,
    *,
    batch_size: int = 128,
    train_subset: int | None = None,
    test_subset: int | None = None,
    seed: int = 0,
    num_workers: int = 0,
    download: bool = False,
) -> tuple[DataLoader, DataLoader]:
    """Builds deterministic Fashion-MNIST train and test loaders.

    Args:
        root: See :func:`load_fashion_mnist`.
        batch_size: Samples per batch for both loaders.
        train_subset: If given, use only this many training samples: the first
            ``train_subset`` indices of a permutation seeded with ``seed``.
        test_subset: Likewise for the test split.
        seed: Seeds the subset permutations and the training loader's shuffle
            (through its own ``torch.Generator``), so two calls with the same
            arguments yield the same batches in the same order.
        num_workers: ``DataLoader`` worker processes (0 loads in the main
            process, which is usually fastest for in-memory tensors).
        download: See :func:`load_fashion_mnist`.

    Returns:
        ``(train_loader, test_loader)``. The training loader shuffles every
        epoch; the test loader keeps a fixed order. Neither drops the last
        partial batch.

    Raises:
        DatasetNotFoundError: If the data cannot be found (see
            :func:`load_fashion_mnist`).
        TypeError: If an integer argument is not an int.
        ValueError: If ``batch_size`` < 1, ``num_workers`` < 0, or a subset
            size is < 1 or larger than its split.
    """
    check_int("batch_size", batch_size, 1)
    check_int("seed", seed, 0)
    check_int("num_workers", num_workers, 0)
    train_set = seeded_subset(
        load_fashion_mnist(root, train=True, download=download), train_subset, seed, "train_subset"
    )
    test_set = seeded_subset(
        load_fashion_mnist(root, train=False, download=download), test_subset, seed, "test_subset"
    )
    train_loader = DataLoader(
        train_set,
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        num_workers=num_workers,
    )
    test_loader = DataLoader(
        test_set, batch_size=batch_size, shuffle=False, num_workers=num_workers
    )
    return train_loader, test_loader

