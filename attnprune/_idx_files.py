"""Finding, decompressing and parsing the Fashion-MNIST IDX files on disk.

The search order and the file layout are documented in :mod:`attnprune.data`,
whose loaders are built on these helpers.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from ._files import atomic_file

__all__ = [
    "DEBIAN_DATA_DIR",
    "DATA_ENV",
    "CACHE_ENV",
    "IDX_STEMS",
    "cache_dir",
    "idx_files_in",
    "search",
    "not_found_message",
    "download_files",
    "stat_key",
    "read_idx",
]

DEBIAN_DATA_DIR: Path = Path("/usr/share/datasets/fashion-mnist")
"""Where the Debian package ``dataset-fashion-mnist`` installs the IDX files."""

DATA_ENV = "ATTNPRUNE_DATA"
CACHE_ENV = "ATTNPRUNE_CACHE"
IDX_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
TORCHVISION_SUBDIR = Path("FashionMNIST") / "raw"


def cache_dir() -> Path:
    """Returns the attnprune cache directory (it is not created).

    Returns:
        ``$ATTNPRUNE_CACHE`` if that environment variable is set and not empty,
        else ``~/.cache/attnprune``.
    """
    env = os.environ.get(CACHE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "attnprune"


def idx_files_in(directory: Path) -> dict[str, Path] | None:
    """Returns the four IDX files held by ``directory``, or None.

    ``directory`` itself is tried first, then ``directory/FashionMNIST/raw``.
    All four files must sit in the same one of those two places. A plain file
    is preferred over its ``.gz`` twin.
    """
    for base in (directory, directory / TORCHVISION_SUBDIR):
        found: dict[str, Path] = {}
        for stem in IDX_STEMS:
            for candidate in (base / stem, base / f"{stem}.gz"):
                if candidate.is_file():
                    found[stem] = candidate
                    break
        if len(found) == len(IDX_STEMS):
            return found
    return None


def candidates(root: str | os.PathLike | None) -> list[tuple[Path, str]]:
    """Lists the directories to search, each with a description of its origin."""
    if root is not None:
        return [
            (
                Path(root).expanduser(),
                "explicit root argument (no other location is searched when root is given)",
            )
        ]
    candidates: list[tuple[Path, str]] = []
    env = os.environ.get(DATA_ENV, "").strip()
    if env:
        candidates.append((Path(env).expanduser(), f"${DATA_ENV}"))
    candidates.append(
        (DEBIAN_DATA_DIR, "Debian package dataset-fashion-mnist")
    )
    candidates.append((cache_dir(), f"cache directory (set ${CACHE_ENV} to move it)"))
    return candidates


def search(
    root: str | os.PathLike | None,
) -> tuple[dict[str, Path] | None, list[tuple[Path, str]]]:
    searched = candidates(root)
    for directory, origin in searched:
        files = idx_files_in(directory)
        if files is not None:
            return files, searched
        if origin == f"${DATA_ENV}":
            warnings.warn(
                f"{DATA_ENV}={directory} does not hold the four Fashion-MNIST "
                f"IDX files ({', '.join(IDX_STEMS)}, optionally .gz); "
                "continuing the search elsewhere.",
                RuntimeWarning,
                stacklevel=3,
            )
    return None, searched


def not_found_message(searched: list[tuple[Path, str]], download_error: str | None) -> str:
    lines = ["Fashion-MNIST IDX files not found. Searched:"]
    for directory, origin in searched:
        lines.append(f"  - {directory}  [{origin}]")
    lines.append(
        "A directory qualifies when it holds "
        + ", ".join(IDX_STEMS)
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
        f"  * export {DATA_ENV}=/path/to/dir   (a directory holding the four files)"
    )
    lines.append(
        f"  * pass download=True to fetch them with torchvision into {cache_dir()} "
        "(needs internet access)"
    )
    return "\n".join(lines)


def download_files(root: str | os.PathLike | None) -> tuple[dict[str, Path] | None, str | None]:
    """Downloads with torchvision into ``root`` (or the cache directory)."""
    from torchvision.datasets import FashionMNIST

    target = Path(root).expanduser() if root is not None else cache_dir()
    try:
        target.mkdir(parents=True, exist_ok=True)
        FashionMNIST(str(target), train=True, download=True)
    except Exception as exc:  # network, permission and checksum errors alike
        return None, f"{type(exc).__name__}: {exc}"
    files = idx_files_in(target)
    if files is None:
        return None, f"torchvision finished, but the files are not in {target / TORCHVISION_SUBDIR}"
    return files, None


def stat_key(path: Path) -> tuple[str, int, int]:
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


def read_idx(key: tuple[str, int, int], reader: Callable[[str], torch.Tensor]) -> torch.Tensor:
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
            f"{DATA_ENV} at a good copy."
        ) from exc
