"""Tests for attnprune.data (Fashion-MNIST discovery, loading and loaders)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
import torch

from attnprune import data
from attnprune.data import (
    DEBIAN_DATA_DIR,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    NUM_CLASSES,
    DatasetNotFoundError,
    fashion_mnist_loaders,
    load_fashion_mnist,
)

from _util import image_folder_tree

needs_debian_copy = pytest.mark.skipif(
    not DEBIAN_DATA_DIR.is_dir(),
    reason=f"{DEBIAN_DATA_DIR} is absent (apt-get install dataset-fashion-mnist)",
)

STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("attnprune-cache")


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, session_cache):
    """Keeps the tests away from the user's cache and $ATTNPRUNE_DATA."""
    monkeypatch.setenv("ATTNPRUNE_CACHE", str(session_cache))
    monkeypatch.delenv("ATTNPRUNE_DATA", raising=False)


def _idx_bytes(array: torch.Tensor) -> bytes:
    """Encodes a uint8 tensor as an IDX file (big-endian header)."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.dim())
    header += b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.contiguous().numpy().tobytes()


def _write_fake(directory: Path, *, compressed: bool, n_train: int = 12, n_test: int = 6) -> dict:
    """Writes four tiny IDX files; pixel value of image i is i, label is i % 10."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1).expand(n, 28, 28)
        labels = (torch.arange(n) % 10).to(torch.uint8)
        arrays[f"{split}-images-idx3-ubyte"] = images
        arrays[f"{split}-labels-idx1-ubyte"] = labels
    for stem, array in arrays.items():
        payload = _idx_bytes(array)
        if compressed:
            (directory / f"{stem}.gz").write_bytes(gzip.compress(payload))
        else:
            (directory / stem).write_bytes(payload)
    return arrays


def test_constants():
    assert NUM_CLASSES == 10
    assert len(FASHION_MNIST_CLASSES) == NUM_CLASSES
    assert FASHION_MNIST_CLASSES[0] == "T-shirt/top"
    assert FASHION_MNIST_CLASSES[9] == "Ankle boot"


@needs_debian_copy
def test_real_train_split():
    ds = load_fashion_mnist(DEBIAN_DATA_DIR, train=True)
    x, y = ds.tensors
    assert len(ds) == 60000
    assert x.shape == (60000, 1, 28, 28)
    assert x.dtype == torch.float32
    assert y.dtype == torch.int64
    assert int(y.min()) == 0 and int(y.max()) == 9
    assert torch.bincount(y).tolist() == [6000] * 10
    # Normalised with the training-set statistics: about zero mean, unit std.
    assert abs(float(x.mean())) < 0.01
    assert abs(float(x.std()) - 1.0) < 0.01
    assert float(x.min()) == pytest.approx(-FASHION_MNIST_MEAN / FASHION_MNIST_STD, abs=1e-5)


@needs_debian_copy
def test_real_test_split_and_default_search():
    ds = load_fashion_mnist(train=False)  # found via the default search order
    x, y = ds.tensors
    assert x.shape == (10000, 1, 28, 28)
    assert y.shape == (10000,)
    assert torch.bincount(y).tolist() == [1000] * 10
    assert abs(float(x.mean())) < 0.05


@needs_debian_copy
def test_repeated_loads_are_cached():
    first = load_fashion_mnist(train=False)
    second = load_fashion_mnist(DEBIAN_DATA_DIR, train=False)
    assert first.tensors[0] is second.tensors[0]


@needs_debian_copy
def test_loader_subsets_are_deterministic():
    def first_batches(seed):
        train, test = fashion_mnist_loaders(
            batch_size=32, train_subset=256, test_subset=100, seed=seed
        )
        return train, test, next(iter(train)), next(iter(test))

    train_a, test_a, (xa, ya), (txa, tya) = first_batches(0)
    _, _, (xb, yb), (txb, tyb) = first_batches(0)
    _, _, (xc, yc), _ = first_batches(1)
    assert len(train_a.dataset) == 256 and len(test_a.dataset) == 100
    assert len(train_a) == 8 and len(test_a) == 4
    assert xa.shape == (32, 1, 28, 28) and ya.dtype == torch.int64
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert torch.equal(txa, txb) and torch.equal(tya, tyb)
    assert not torch.equal(xa, xc)
    # The same subset is kept across epochs; only the order changes.
    epoch1 = torch.cat([y for _, y in train_a])
    epoch2 = torch.cat([y for _, y in train_a])
    assert sorted(epoch1.tolist()) == sorted(epoch2.tolist())


@needs_debian_copy
def test_loader_argument_errors():
    with pytest.raises(ValueError, match="train_subset"):
        fashion_mnist_loaders(train_subset=60001)
    with pytest.raises(ValueError, match="batch_size"):
        fashion_mnist_loaders(batch_size=0)
    with pytest.raises(TypeError, match="test_subset"):
        fashion_mnist_loaders(test_subset=1.5)


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gz"])
def test_env_var_directory(tmp_path, monkeypatch, compressed):
    arrays = _write_fake(tmp_path / "fm", compressed=compressed)
    monkeypatch.setenv("ATTNPRUNE_DATA", str(tmp_path / "fm"))
    train = load_fashion_mnist(train=True)
    test = load_fashion_mnist(train=False)
    assert len(train) == 12 and len(test) == 6
    x, y = train.tensors
    assert x.shape == (12, 1, 28, 28) and x.dtype == torch.float32
    assert y.tolist() == (torch.arange(12) % 10).tolist()
    expected = (5 / 255 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
    assert float(x[5, 0, 3, 7]) == pytest.approx(expected, abs=1e-6)
    assert torch.equal(
        test.tensors[1], arrays["t10k-labels-idx1-ubyte"].to(torch.int64)
    )


def test_torchvision_layout(tmp_path):
    _write_fake(tmp_path / "FashionMNIST" / "raw", compressed=True, n_train=4)
    ds = load_fashion_mnist(tmp_path, train=True)
    assert len(ds) == 4


def test_missing_files_message(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"")  # one of four is not enough
    with pytest.raises(FileNotFoundError) as info:
        load_fashion_mnist(tmp_path)
    assert isinstance(info.value, DatasetNotFoundError)
    message = str(info.value)
    assert "dataset-fashion-mnist" in message
    assert "ATTNPRUNE_DATA" in message
    assert "download=True" in message
    assert str(tmp_path) in message


@needs_debian_copy
def test_bad_env_var_falls_back_with_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNPRUNE_DATA", str(tmp_path / "nowhere"))
    with pytest.warns(RuntimeWarning, match="ATTNPRUNE_DATA"):
        ds = load_fashion_mnist(train=False)
    assert len(ds) == 10000


def test_corrupt_file_raises_value_error(tmp_path):
    _write_fake(tmp_path, compressed=False)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"not an idx file at all")
    with pytest.raises(ValueError, match="not a valid Fashion-MNIST IDX file"):
        load_fashion_mnist(tmp_path, train=False)


def test_clear_cache(tmp_path):
    _write_fake(tmp_path, compressed=False)
    a = load_fashion_mnist(tmp_path, train=False)
    data.clear_cache()
    b = load_fashion_mnist(tmp_path, train=False)
    assert a.tensors[0] is not b.tensors[0]
    assert torch.equal(a.tensors[0], b.tensors[0])


def test_dataset_not_found_is_an_attnprune_error(tmp_path):
    from attnprune.errors import AttnpruneError

    with pytest.raises(DatasetNotFoundError) as info:
        load_fashion_mnist(tmp_path / "empty")
    assert isinstance(info.value, AttnpruneError) and isinstance(info.value, FileNotFoundError)


def _image_tree(root: Path, train=("cat", "dog"), val=("cat", "dog"), per_class=3) -> Path:
    return image_folder_tree(root, {"train": train, "val": val}, per_class, (20, 24))


def test_image_folder_loaders(tmp_path):
    from attnprune.data import image_folder_loaders

    root = _image_tree(tmp_path / "imgs")
    plain = {"normalize": "none", "augment": False}  # attnprune 0.1's transform: resize only
    train, val, num_classes = image_folder_loaders(root, image_size=12, batch_size=4, train_subset=5, seed=1,
                                                   **plain)
    assert num_classes == 2
    x, y = next(iter(train))
    assert x.shape == (4, 3, 12, 12) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert sum(len(b) for _, b in train) == 5 and sum(len(b) for _, b in val) == 6
    first, _, _ = image_folder_loaders(root, image_size=12, batch_size=4, train_subset=5, seed=1, **plain)
    again, _, _ = image_folder_loaders(root, image_size=12, batch_size=4, train_subset=5, seed=1, **plain)
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(first, again)), "same seed, same batches"

    with pytest.raises(ValueError, match="test_subset=7 exceeds the 6 samples"):
        image_folder_loaders(root, test_subset=7)
    with pytest.raises(DatasetNotFoundError, match=r"train/ and val/.*missing: the folder itself"):
        image_folder_loaders(tmp_path / "nowhere")
    other = _image_tree(tmp_path / "other", val=("cat", "cow"), per_class=1)
    with pytest.raises(ValueError, match="same class folders"):
        image_folder_loaders(other)
    import shutil

    shutil.rmtree(other / "train")
    with pytest.raises(DatasetNotFoundError, match="missing: train"):
        image_folder_loaders(other)


def _channel_stats(loader):
    x = torch.cat([b for b, _ in loader])
    return x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))


def test_image_folder_normalisation(tmp_path):
    from attnprune.image_folder import IMAGENET_MEAN, IMAGENET_STD, image_folder_loaders, image_stats

    root = _image_tree(tmp_path / "imgs", per_class=4)
    train, _, _ = image_folder_loaders(root, image_size=8, batch_size=4, augment=False, normalize="sample")
    mean, std = _channel_stats(train)
    assert torch.allclose(mean, torch.zeros(3), atol=1e-4) and torch.allclose(std, torch.ones(3), atol=0.05)
    raw, _, _ = image_folder_loaders(root, image_size=8, batch_size=4, augment=False, normalize="none")
    net, _, _ = image_folder_loaders(root, image_size=8, batch_size=4, augment=False, normalize="imagenet")
    (a, _), (b, _) = next(iter(raw)), next(iter(net))
    expected = (a - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    assert torch.allclose(b, expected, atol=1e-5)
    m, s = image_stats(raw.dataset)
    assert len(m) == 3 and all(v > 0 for v in s)
    with pytest.raises(ValueError, match="normalize must be one of imagenet, sample, none"):
        image_folder_loaders(root, normalize="cifar")


def test_image_folder_augments_training_images_only(tmp_path):
    from attnprune.image_folder import image_folder_loaders

    root = _image_tree(tmp_path / "imgs", per_class=4)
    train, val, _ = image_folder_loaders(root, image_size=12, batch_size=16, normalize="none")
    torch.manual_seed(0)
    first = torch.cat([x for x, _ in train])
    second = torch.cat([x for x, _ in train])
    assert first.shape == (8, 3, 12, 12)
    reads = [train.dataset[0][0] for _ in range(4)]
    assert any(not torch.equal(reads[0], r) for r in reads[1:]), "a training image is cropped/flipped at random"
    assert not torch.equal(torch.sort(first.flatten())[0], torch.sort(second.flatten())[0])
    v1 = torch.cat([x for x, _ in val])
    v2 = torch.cat([x for x, _ in val])
    assert torch.equal(v1, v2), "validation images are not augmented"
    plain, _, _ = image_folder_loaders(root, image_size=12, batch_size=16, normalize="none", augment=False)
    assert torch.equal(plain.dataset[3][0], plain.dataset[3][0])


def test_image_folder_validation_split_without_val(tmp_path):
    import shutil

    from attnprune.image_folder import image_folder_loaders

    root = _image_tree(tmp_path / "imgs", per_class=10)
    shutil.rmtree(root / "val")
    train, val, n = image_folder_loaders(root, image_size=8, batch_size=4, val_fraction=0.25, num_workers=0)
    assert n == 2 and len(train.dataset) == 15 and len(val.dataset) == 5
    assert not set(train.dataset.indices) & set(val.dataset.indices), "train and validation are disjoint"
    other_seed, val2, _ = image_folder_loaders(root, image_size=8, val_fraction=0.25, seed=7)
    assert val2.dataset.indices == val.dataset.indices, "the split does not depend on seed"
    default_train, default_val, _ = image_folder_loaders(root, image_size=8)
    assert len(default_val.dataset) == 2 and len(default_train.dataset) == 18
    with pytest.raises(ValueError, match=r"val_fraction must be a number in \(0, 1\)"):
        image_folder_loaders(root, val_fraction=1.5)
    (root / "val" / "cat").mkdir(parents=True)
    with pytest.raises(ValueError, match="val_fraction is for a folder without val/"):
        image_folder_loaders(root, val_fraction=0.2)


def test_image_folder_workers(tmp_path):
    from attnprune.image_folder import image_folder_loaders

    root = _image_tree(tmp_path / "imgs", per_class=2)
    train, val, _ = image_folder_loaders(root, image_size=8, batch_size=2, num_workers=2)
    assert train.num_workers == 2 and val.num_workers == 2
    assert sum(len(y) for _, y in val) == 4
