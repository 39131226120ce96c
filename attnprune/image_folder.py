"""ImageFolder data: ``root/train/<class>/*`` (and ``root/val/<class>/*`` or a split of train).

What :func:`image_folder_loaders` does, the usual recipe for fine-tuning an image
classifier:

* **Normalisation** of every image: ``"imagenet"`` uses ImageNet's mean and std
  (right for torchvision or timm ImageNet weights), ``"sample"`` computes them from
  up to :data:`STATS_SAMPLES` training images (seeded), ``"none"`` leaves pixels in
  [0, 1]; or pass ``(mean, std)``.
* **Augmentation** of the training images only (``augment=True``):
  ``RandomResizedCrop(image_size)`` and ``RandomHorizontalFlip()``; evaluation
  images are resized to ``image_size x image_size``.
* **Validation split**: without a ``val/`` folder, ``val_fraction`` of the training
  images (0.1 by default, the same images whatever ``seed`` is: the split uses
  :data:`SPLIT_SEED`) become the validation set, with the evaluation transform.
* ``num_workers`` loader processes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ._ints import check_int
from ._subsets import seeded_subset
from .errors import DatasetNotFoundError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "NORMALIZATIONS", "STATS_SAMPLES", "SPLIT_SEED",
           "DEFAULT_VAL_FRACTION", "image_stats", "image_folder_loaders"]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
"""Per-channel mean of the ImageNet training images (pixels in [0, 1])."""

IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""Per-channel standard deviation of the ImageNet training images."""

NORMALIZATIONS: tuple[str, ...] = ("imagenet", "sample", "none")
"""The named normalisations of :func:`image_folder_loaders`."""

STATS_SAMPLES = 256
"""Training images read to compute the ``"sample"`` normalisation."""

SPLIT_SEED = 0
"""Seed of the train/validation split when there is no ``val/`` folder (independent of ``seed``)."""

DEFAULT_VAL_FRACTION = 0.1
"""Fraction of the training images held out when there is no ``val/`` folder."""


def _not_found(message: str) -> Exception:

    return DatasetNotFoundError(message)


def image_stats(dataset: Dataset, samples: int = STATS_SAMPLES, seed: int = 0) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of up to ``samples`` images of ``dataset`` (seeded choice).

    ``dataset`` yields ``(tensor image (C, H, W), label)`` pairs, pixels in [0, 1].
    """
    n = len(dataset)
    index = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:samples].tolist()
    total = total_sq = None
    count = 0
    for i in index:
        x = dataset[i][0].to(torch.float64).flatten(1)
        s, sq = x.sum(1), (x * x).sum(1)
        total = s if total is None else total + s
        total_sq = sq if total_sq is None else total_sq + sq
        count += x.shape[1]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(0).sqrt().clamp_min(1e-6)
    return [float(v) for v in mean], [float(v) for v in std]


def _check_val_fraction(val_fraction: float | None) -> None:
    if val_fraction is None:
        return
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not \
            (math.isfinite(val_fraction) and 0 < val_fraction < 1):
        raise ValueError(f"val_fraction must be a number in (0, 1), got {val_fraction!r}")


def _normalization(normalize, stats_source: Dataset, seed: int):
    if isinstance(normalize, str):
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {', '.join(NORMALIZATIONS)} or a (mean, std) pair, "
                             f"got {normalize!r}")
        if normalize == "none":
            return None
        if normalize == "imagenet":
            return list(IMAGENET_MEAN), list(IMAGENET_STD)
        return image_stats(stats_source, seed=seed)
    try:
        mean, std = (list(map(float, v)) for v in normalize)
    except (TypeError, ValueError):
        raise ValueError(f"normalize must be one of {', '.join(NORMALIZATIONS)} or a (mean, std) pair of "
                         f"sequences, got {normalize!r}") from None
    if len(mean) != len(std) or any(s <= 0 for s in std):
        raise ValueError(f"normalize: mean and std must have the same length and std > 0, got {normalize!r}")
    return mean, std


def image_folder_loaders(
    root: str | os.PathLike,
    *,
    image_size: int = 224,
    batch_size: int = 128,
    train_subset: int | None = None,
    test_subset: int | None = None,
    seed: int = 0,
    normalize: str | Sequence = "sample",
    augment: bool = True,
    num_workers: int = 0,
    val_fraction: float | None = None,
) -> tuple[DataLoader, DataLoader, int]:
    """Train and validation loaders of an ImageFolder tree (see the module docstring).

    Args:
        root: A folder with ``train/`` (one folder of images per class) and
            optionally ``val/`` with the same classes.
        image_size: Images are ``image_size x image_size`` RGB tensors.
        batch_size: Samples per batch for both loaders.
        train_subset: If given, use only this many training samples (a permutation
            seeded with ``seed``).
        test_subset: Likewise for the validation split.
        seed: Seeds the subsets, the ``"sample"`` statistics and the training
            loader's shuffle (augmentation draws from torch's global generator,
            which ``prune()`` seeds).
        normalize: ``"imagenet"``, ``"sample"``, ``"none"`` or ``(mean, std)``.
        augment: Random resized crops and horizontal flips of the training images.
        num_workers: ``DataLoader`` worker processes.
        val_fraction: Fraction of ``train/`` held out for validation when there is
            no ``val/`` folder (default 0.1); an error when there is one.

    Returns:
        ``(train_loader, val_loader, num_classes)``.

    Raises:
        DatasetNotFoundError: ``root`` or ``train/`` is missing, or a split holds no images.
        ValueError: The splits hold different classes, a subset is larger than its
            split, ``val_fraction`` is given although ``val/`` exists, or another
            argument is out of range.
    """
    from torchvision import datasets, transforms


    check_int("image_size", image_size, 1)
    check_int("batch_size", batch_size, 1)
    check_int("seed", seed, 0)
    check_int("num_workers", num_workers, 0)
    if not isinstance(augment, bool):
        raise TypeError(f"augment must be True or False, got {augment!r}")
    _check_val_fraction(val_fraction)
    folder = Path(root)
    if not folder.is_dir() or not (folder / "train").is_dir():
        missing = "train" if folder.is_dir() else "the folder itself"
        raise _not_found(f"{str(root)!r} is not an ImageFolder root: a folder with train/ and val/ "
                         f"subfolders, or train/ alone (missing: {missing})")
    has_val = (folder / "val").is_dir()
    if has_val and val_fraction is not None:
        raise ValueError(f"val_fraction is for a folder without val/, but {folder / 'val'} exists")
    resize = transforms.Resize((image_size, image_size))
    plain = transforms.Compose([resize, transforms.ToTensor()])
    try:
        stats_source = datasets.ImageFolder(str(folder / "train"), transform=plain)
    except (FileNotFoundError, RuntimeError) as exc:
        raise _not_found(str(exc)) from None
    norm = _normalization(normalize, stats_source, seed)
    tail = [transforms.Normalize(*norm)] if norm is not None else []
    train_tf = transforms.Compose(
        [transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip(), transforms.ToTensor(), *tail]
        if augment else [resize, transforms.ToTensor(), *tail])
    eval_tf = transforms.Compose([resize, transforms.ToTensor(), *tail])
    train = datasets.ImageFolder(str(folder / "train"), transform=train_tf)
    if has_val:
        try:
            val: Dataset = datasets.ImageFolder(str(folder / "val"), transform=eval_tf)
        except (FileNotFoundError, RuntimeError) as exc:
            raise _not_found(str(exc)) from None
        if train.classes != val.classes:
            raise ValueError("train/ and val/ must hold the same class folders; "
                             f"train: {train.classes}, val: {val.classes}")
        train_part: Dataset = train
    else:
        fraction = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
        n = len(train)
        n_val = max(1, round(fraction * n))
        if n_val >= n:
            raise ValueError(f"val_fraction={fraction} leaves no training image of the {n} in {folder / 'train'}")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
        held_out = datasets.ImageFolder(str(folder / "train"), transform=eval_tf)
        val = Subset(held_out, sorted(order[:n_val]))
        train_part = Subset(train, sorted(order[n_val:]))
    train_set = seeded_subset(train_part, train_subset, seed, "train_subset")
    val_set = seeded_subset(val, test_subset, seed, "test_subset")
    train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                              generator=torch.Generator().manual_seed(seed))
    val_loader = DataLoader(val_set, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    return train_loader, val_loader, len(train.classes)

