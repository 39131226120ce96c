"""Embedded default data: Fashion-MNIST as in-memory tensors.

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
import gzip
import hashlib
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader, TensorDataset

from ._files import atomic_file

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

DEBIAN_DATA_DIR: Path = Path("/usr/share/datasets/fashion-mnist")
"""Where the Debian package ``dataset-fashion-mnist`` installs the IDX files."""

_DATA_ENV = "ATTNPRUNE_DATA"
_CACHE_ENV = "ATTNPRUNE_CACHE"
_IDX_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_TORCHVISION_SUBDIR = Path("FashionMNIST") / "raw"


class DatasetNotFoundError(FileNotFoundError):
    """Raised when the Fashion-MNIST IDX files cannot be found or fetched."""


def cache_dir() -> Path:
    """Returns the attnprune cache directory (it is not created).

    Returns:
        ``$ATTNPRUNE_CACHE`` if that environment variable is set and not empty,
        else ``~/.cache/attnprune``.
    """
    env = os.environ.get(_CACHE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "attnprune"


def _idx_files_in(directory: Path) -> dict[str, Path] | None:
    """Returns the four IDX files held by ``directory``, or None.

    ``directory`` itself is tried first, then ``directory/FashionMNIST/raw``.
    All four files must sit in the same one of those two places. A plain file
    is preferred over its ``.gz`` twin.
    """
    for base in (directory, directory / _TORCHVISION_SUBDIR):
        found: dict[str, Path] = {}
        for stem in _IDX_STEMS:
            for candidate in (base / stem, base / f"{stem}.gz"):
                if candidate.is_file():
                    found[stem] = candidate
                    break
        if len(found) == len(_IDX_STEMS):
            return found
    return None


def _candidates(root: str | os.PathLike | None) -> list[tuple[Path, str]]:
    """Lists the directories to search, each with a description of its origin."""
    if root is not None:
        return [
            (
                Path(root).expanduser(),
                "explicit root argument (no other location is searched when root is given)",
            )
        ]
    candidates: list[tuple[Path, str]] = []
    env = os.environ.get(_DATA_ENV, "").strip()
    if env:
        candidates.append((Path(env).expanduser(), f"${_DATA_ENV}"))
    candidates.append(
        (DEBIAN_DATA_DIR, "Debian package dataset-fashion-mnist")
    )
    candidates.append((cache_dir(), f"cache directory (set ${_CACHE_ENV} to move it)"))
    return candidates


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
    files, _ = _search(root)
    return files


def _search(
    root: str | os.PathLike | None,
) -> tuple[dict[str, Path] | None, list[tuple[Path, str]]]:
    searched = _candidates(root)
    for directory, origin in searched:
        files = _idx_files_in(directory)
        if files is not None:
            return files, searched
        if origin == f"${_DATA_ENV}":
            warnings.warn(
                f"{_DATA_ENV}={directory} does not hold the four Fashion-MNIST "
                f"IDX files ({', '.join(_IDX_STEMS)}, optionally .gz); "
                "continuing the search elsewhere.",
                RuntimeWarning,
                stacklevel=3,
            )
    return None, searched


def _not_found_message(searched: list[tuple[Path, str]], download_error: str | None) -> str:
    lines = ["Fashion-MNIST IDX files not found. Searched:"]
    for directory, origin in searched:
        lines.append(f"  - {directory}  [{origin}]")
    lines.append(
        "A directory qualifies when it holds "
        + ", ".join(_IDX_STEMS)
        + " (each plain or .gz), directly or under FashionMNIST/raw/."
    )
    if download_error is not None:
        lines.append(f"Downloading with torchvision also failed: {download_error}")
    lines.append("To fix this, do one of:")
    lines.append(
        "  * sudo apt-get install dataset-fashion-mnist   "
        f"(Debian/Ubuntu; installs the files into {DEBIAN_DATA_DIR})"
    )
    lines.append(
        f"  * export {_DATA_ENV}=/path/to/dir   (a directory holding the four files)"
    )
    lines.append(
        f"  * pass download=True to fetch them with torchvision into {cache_dir()} "
        "(needs internet access)"
    )
    return "\n".join(lines)


def _download(root: str | os.PathLike | None) -> tuple[dict[str, Path] | None, str | None]:
    """Downloads with torchvision into ``root`` (or the cache directory)."""
    from torchvision.datasets import FashionMNIST

    target = Path(root).expanduser() if root is not None else cache_dir()
    try:
        target.mkdir(parents=True, exist_ok=True)
        FashionMNIST(str(target), train=True, download=True)
    except Exception as exc:  # network, permission and checksum errors alike
        return None, f"{type(exc).__name__}: {exc}"
    files = _idx_files_in(target)
    if files is None:
        return None, f"torchvision finished, but the files are not in {target / _TORCHVISION_SUBDIR}"
    return files, None


def _stat_key(path: Path) -> tuple[str, int, int]:
    resolved = path.resolve()
    st = resolved.stat()
    return str(resolved), st.st_size, st.st_mtime_ns


def _decompressed_path(gz_key: tuple[str, int, int]) -> Path:
    """Where the decompressed copy of a ``.gz`` file lives in the cache."""
    digest = hashlib.sha256(repr(gz_key).encode()).hexdigest()[:16]
    name = Path(gz_key[0]).name[: -len(".gz")]
    return cache_dir() / "idx" / f"{name}.{digest}"


def _gunzip(src: Path, dst: Path) -> None:
    """Decompresses ``src`` into ``dst`` atomically (via a temporary file)."""
    with atomic_file(dst) as out, gzip.open(src, "rb") as inp:
        shutil.copyfileobj(inp, out, length=1 << 20)


def _read_idx(key: tuple[str, int, int], reader: Callable[[str], torch.Tensor]) -> torch.Tensor:
    """Parses one IDX file with torchvision's ``reader``, decompressing if needed."""
    path = Path(key[0])
    try:
        if path.suffix != ".gz":
            return reader(str(path))
        target = _decompressed_path(key)
        try:
            if not target.is_file():
                _gunzip(path, target)
            return reader(str(target))
        except OSError as exc:
            if isinstance(exc, (gzip.BadGzipFile, EOFError)):
                raise
            # The cache directory is not writable: use a throw-away directory.
            with tempfile.TemporaryDirectory(prefix="attnprune-idx-") as tmp:
                tmp_target = Path(tmp) / target.name
                _gunzip(path, tmp_target)
                return reader(str(tmp_target))
    except (AssertionError, TypeError, ValueError, KeyError, RuntimeError, EOFError,
            gzip.BadGzipFile) as exc:
        raise ValueError(
            f"{path} is not a valid Fashion-MNIST IDX file ({type(exc).__name__}: {exc}). "
            "Re-install it (apt-get install --reinstall dataset-fashion-mnist) or point "
            f"{_DATA_ENV} at a good copy."
        ) from exc


@functools.lru_cache(maxsize=4)
def _load_split(
    image_key: tuple[str, int, int], label_key: tuple[str, int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loads and normalises one split; cached on the files' path, size and mtime."""
    from torchvision.datasets.mnist import read_image_file, read_label_file

    images = _read_idx(image_key, read_image_file)
    labels = _read_idx(label_key, read_label_file)
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
    files, searched = _search(root)
    download_error = None
    if files is None and download:
        files, download_error = _download(root)
    if files is None:
        raise DatasetNotFoundError(_not_found_message(searched, download_error))
    prefix = "train" if train else "t10k"
    images, labels = _load_split(
        _stat_key(files[f"{prefix}-images-idx3-ubyte"]),
        _stat_key(files[f"{prefix}-labels-idx1-ubyte"]),
    )
    return TensorDataset(images, labels)


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _subset(dataset: TensorDataset, n: int | None, seed: int, name: str) -> TensorDataset:
    """The first ``n`` samples of a permutation seeded with ``seed``."""
    if n is None:
        return dataset
    total = len(dataset)
    _check_int(name, n, 1)
    if n > total:
        raise ValueError(f"{name}={n} exceeds the {total} samples available")
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(total, generator=generator)[:n]
    return TensorDataset(*(t[index] for t in dataset.tensors))


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
    _check_int("batch_size", batch_size, 1)
    _check_int("seed", seed, 0)
    _check_int("num_workers", num_workers, 0)
    train_set = _subset(
        load_fashion_mnist(root, train=True, download=download), train_subset, seed, "train_subset"
    )
    test_set = _subset(
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
