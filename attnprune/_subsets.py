"""A reproducible subset of a data set: the first ``n`` of a seeded permutation."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from ._ints import check_int

__all__ = ["seeded_subset"]


def seeded_subset(dataset: Dataset, n: int | None, seed: int, name: str) -> Dataset:
    """The first ``n`` samples of a permutation seeded with ``seed``.

    A ``TensorDataset`` stays one (its tensors are indexed); any other data set
    becomes a ``torch.utils.data.Subset``.
    """
    if n is None:
        return dataset
    total = len(dataset)
    check_int(name, n, 1)
    if n > total:
        raise ValueError(f"{name}={n} exceeds the {total} samples available")
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(total, generator=generator)[:n]
    if isinstance(dataset, TensorDataset):
        return TensorDataset(*(t[index] for t in dataset.tensors))
    return Subset(dataset, index.tolist())
