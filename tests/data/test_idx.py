"""Fashion-MNIST and MNIST from IDX files: the real Debian files, their layouts, the train
subset, and damaged files."""

from __future__ import annotations

import gzip
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from sweeper.config import ConfigError, DataConfig, SweeperConfig, load_config
from sweeper.data import DatasetSplits, balanced_subset, load_dataset, read_idx
from sweeper.errors import DataError

DEBIAN = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
STEMS = [stem for pair in FILES.values() for stem in pair]
needs_debian = pytest.mark.skipif(
    not all((DEBIAN / f"{stem}.gz").is_file() for stem in STEMS),
    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist; .ci/run does)",
)


def _fashion(root: Path = DEBIAN, **options: object) -> DataConfig:
    return DataConfig(dataset="fashion_mnist", root=root, **options)


def _load_config(data: dict) -> SweeperConfig:
    return load_config(data={"name": "t", "selection": {"rule": "max"}, "data": data})


def _raw_pixels(path: Path, index: int) -> np.ndarray:
    """Image ``index`` of a gzipped IDX image file, parsed here with struct, not the reader."""
    with gzip.open(path) as file:
        magic, count, rows, cols = struct.unpack(">IIII", file.read(16))
        assert magic == 0x0803 and index < count
        file.seek(16 + index * rows * cols)
        return np.frombuffer(file.read(rows * cols), dtype=np.uint8).reshape(rows, cols)


def _raw_labels(path: Path) -> np.ndarray:
    with gzip.open(path) as file:
        magic, count = struct.unpack(">II", file.read(8))
        assert magic == 0x0801
        return np.frombuffer(file.read(), dtype=np.uint8)[:count].astype(np.int64)


def _write_idx(path: Path, array: np.ndarray, *, magic: bytes | None = None) -> Path:
    """An IDX file of uint8 ``array`` (gzipped if the name ends in .gz), written with struct."""
    header = magic if magic is not None else bytes([0, 0, 0x08, array.ndim])
    data = header + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def _tiny_root(root: Path, *, n_train: int = 30, n_test: int = 10) -> Path:
    """A valid four-file IDX data set of random 28×28 images, three per class in train."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = FILES[split]
        _write_idx(root / images, rng.integers(0, 256, (n, 28, 28)))
        _write_idx(root / labels, np.arange(n) % 10)
    return root


@pytest.fixture(scope="module")
def full() -> DatasetSplits:
    if not DEBIAN.is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    return load_dataset(_fashion(image_size=28))


# --- the real Debian files ----------------------------------------------------------------------


@needs_debian
def test_fashion_mnist_is_the_real_dataset(full) -> None:
    assert full.name == "fashion_mnist"
    assert full.train.images.shape == (60_000, 1, 28, 28)
    assert full.test.images.shape == (10_000, 1, 28, 28)
    assert full.train.images.dtype == torch.float32
    assert 0.0 <= float(full.train.images.min()) and float(full.train.images.max()) == 1.0
    # Fashion-MNIST is balanced: 6 000 train and 1 000 test images of each of its 10 classes.
    assert torch.equal(torch.bincount(full.train.labels), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(full.test.labels), torch.full((10,), 1000))
    for split, index in (("train", 0), ("train", 59_999), ("test", 1234)):
        images, labels = FILES[split]
        expected = _raw_pixels(DEBIAN / f"{images}.gz", index)
        got = getattr(full, split).images[index, 0].mul(255).round().to(torch.uint8).numpy()
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(getattr(full, split).labels.numpy(), _raw_labels(DEBIAN / f"{labels}.gz"))
    # Garments stay garments when mirrored: flips on, as for natural images.
    assert full.natural_images and full.channels == 1


@needs_debian
def test_resized_like_digits(full) -> None:
    small = load_dataset(_fashion(image_size=16, train_per_class=5))
    assert small.train.images.shape == (50, 1, 16, 16)
    assert small.test.images.shape == (10_000, 1, 16, 16)
    expected = torch.nn.functional.interpolate(full.test.images[:8], size=(16, 16), mode="bilinear", antialias=True)
    torch.testing.assert_close(small.test.images[:8], expected.clamp(0, 1))


@needs_debian
def test_train_subset_is_balanced_seeded_and_from_the_train_split(full) -> None:
    a = load_dataset(_fashion(image_size=28, train_per_class=30))
    again = load_dataset(_fashion(image_size=28, train_per_class=30))
    other = load_dataset(_fashion(image_size=28, train_per_class=30, subset_seed=1))
    assert torch.equal(torch.bincount(a.train.labels), torch.full((10,), 30))
    assert torch.equal(a.train.images, again.train.images)
    assert not torch.equal(a.train.images, other.train.images)
    assert len(a.test) == 10_000  # the test split stays whole
    # The subset's images are the train split's images at the subset's indices, in file order.
    indices = balanced_subset(full.train.labels, 30, seed=0)
    assert torch.equal(indices, indices.sort().values)
    assert torch.equal(a.train.images, full.train.images[indices])
    assert torch.equal(a.train.labels, full.train.labels[indices])
    # The first images (RankMe's samples) mix the classes.
    assert len(torch.unique(a.train.labels[:30])) >= 5


def test_balanced_subset_indices() -> None:
    labels = torch.arange(1000) % 7
    same = balanced_subset(labels, 40, seed=3), balanced_subset(labels, 40, seed=3)
    assert torch.equal(*same)
    assert not torch.equal(same[0], balanced_subset(labels, 40, seed=4))
    assert torch.equal(torch.bincount(labels[same[0]]), torch.full((7,), 40))
    assert len(set(same[0].tolist())) == 280
    # A smaller subset with the same seed is part of the larger one.
    assert set(balanced_subset(labels, 10, seed=3).tolist()) <= set(same[0].tolist())
    with pytest.raises(DataError, match=r"train_per_class 200: class 0 of the dataset has only 143"):
        balanced_subset(labels, 200, seed=0)


# --- layouts: gzipped or not, flat or torchvision's raw/ -----------------------------------------


@needs_debian
def test_uncompressed_files_read_as_the_gzipped_ones(tmp_path: Path, full) -> None:
    for stem in STEMS:
        with gzip.open(DEBIAN / f"{stem}.gz") as source, open(tmp_path / stem, "wb") as target:
            shutil.copyfileobj(source, target)
    config = _fashion(tmp_path, image_size=28)
    assert all(path.suffix != ".gz" for pair in config.idx_files().values() for path in pair)
    raw = load_dataset(config)
    assert torch.equal(raw.train.images, full.train.images)
    assert torch.equal(raw.test.labels, full.test.labels)


@needs_debian
def test_torchvision_raw_layout(tmp_path: Path) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in STEMS:
        (raw / f"{stem}.gz").symlink_to(DEBIAN / f"{stem}.gz")
    config = _fashion(tmp_path, train_per_class=3)
    assert config.idx_files()["test"][0] == raw / "t10k-images-idx3-ubyte.gz"
    splits = load_dataset(config)
    assert len(splits.train) == 30 and len(splits.test) == 10_000


def test_mnist_reads_its_own_raw_folder_and_does_not_flip(tmp_path: Path) -> None:
    _tiny_root(tmp_path / "MNIST" / "raw")
    splits = load_dataset(DataConfig(dataset="mnist", root=tmp_path, image_size=28))
    assert splits.name == "mnist" and not splits.natural_images  # a mirrored digit is no digit
    assert splits.train.images.shape == (30, 1, 28, 28) and len(splits.test) == 10
    expected = read_idx(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte", ndim=3)[4]
    np.testing.assert_array_equal(splits.train.images[4, 0].mul(255).round().byte().numpy(), expected)
    # Fashion-MNIST looks in FashionMNIST/raw/, not in MNIST/raw/.
    with pytest.raises(ConfigError, match="has no Fashion-MNIST IDX files"):
        _load_config({"dataset": "fashion_mnist", "root": str(tmp_path)})


# --- missing roots: one line naming the Debian package, at config load and in the loader ---------


@pytest.mark.parametrize("root", [None, "/no/such/dir", "EMPTY"])
def test_missing_fashion_mnist_is_a_config_error_naming_the_package(root: str | None, tmp_path: Path) -> None:
    data = {"dataset": "fashion_mnist"} | ({} if root is None else {"root": str(tmp_path) if root == "EMPTY" else root})
    with pytest.raises(ConfigError) as error:
        _load_config(data)
    message = str(error.value)
    assert message.startswith("data: root ") and "\n" not in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "set data.root: /usr/share/datasets/fashion-mnist" in message


def test_incomplete_root_is_a_config_error(tmp_path: Path) -> None:
    _tiny_root(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(ConfigError, match=rf"^data: root '{re.escape(str(tmp_path))}' has no MNIST IDX files"):
        _load_config({"dataset": "mnist", "root": str(tmp_path)})


def test_loader_checks_the_root_again(tmp_path: Path) -> None:
    config = DataConfig(dataset="fashion_mnist", root=_tiny_root(tmp_path))
    for stem in STEMS:
        (tmp_path / stem).unlink()
    with pytest.raises(
        DataError, match=rf"^data\.root '{re.escape(str(tmp_path))}' has no Fashion-MNIST IDX files.*apt-get install"
    ):
        load_dataset(config)


def test_subset_larger_than_a_class_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="train_per_class 4: class 0 of mnist has only 3"):
        load_dataset(DataConfig(dataset="mnist", root=_tiny_root(tmp_path), train_per_class=4))


# --- damaged files: a DataError naming the file and the problem ----------------------------------


def test_reader_round_trips_gz_and_raw(tmp_path: Path) -> None:
    array = np.random.default_rng(1).integers(0, 256, (5, 3, 4)).astype(np.uint8)
    for name in ("a-idx3-ubyte", "a-idx3-ubyte.gz"):
        np.testing.assert_array_equal(read_idx(_write_idx(tmp_path / name, array), ndim=3), array)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda data: b"\x89PNG" + data[4:], r"not an IDX file \(wrong magic number 89504e47\)"),
        (lambda data: data[:2] + b"\x0d" + data[3:], r"IDX dtype 0x0d is not supported"),
        (lambda data: data[:3] + b"\x02" + data[4:], r"an IDX file of 2 dimensions, expected 3"),
        (lambda data: data[:-100], r"IDX file truncated: its header says 5×28×28 = 3920 values, it holds 3820"),
        (lambda data: data + b"\0", r"IDX file has trailing bytes"),
        (lambda data: data[:10], r"truncated IDX header"),
        (lambda data: b"", r"not an IDX file \(wrong magic number none\)"),
    ],
    ids=["magic", "dtype", "ndim", "truncated", "trailing", "header", "empty"],
)
def test_damaged_idx_is_a_clear_error(tmp_path: Path, damage, expected: str) -> None:
    path = _write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((5, 28, 28)))
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: {expected}"):
        read_idx(path, ndim=3)


def test_damaged_gzip_is_a_clear_error(tmp_path: Path) -> None:
    path = _write_idx(tmp_path / "labels.gz", np.arange(5000) % 10)
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: truncated gzip file"):
        read_idx(path, ndim=1)
    path.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: not readable gzip data"):
        read_idx(path, ndim=1)


@needs_debian
def test_truncated_real_file_fails_the_load(tmp_path: Path) -> None:
    for stem in STEMS:
        (tmp_path / f"{stem}.gz").symlink_to(DEBIAN / f"{stem}.gz")
    damaged = tmp_path / "t10k-labels-idx1-ubyte.gz"
    data = damaged.read_bytes()
    damaged.unlink()
    damaged.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=rf"^{re.escape(str(damaged))}: truncated gzip file"):
        load_dataset(_fashion(tmp_path, train_per_class=1))


def test_images_and_labels_count_mismatch(tmp_path: Path) -> None:
    _tiny_root(tmp_path)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(9) % 10)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte holds 10 images but .*t10k-labels-idx1-ubyte holds 9"):
        load_dataset(DataConfig(dataset="mnist", root=tmp_path))


def test_label_out_of_range(tmp_path: Path) -> None:
    _tiny_root(tmp_path)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.full(30, 10))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: label 10 is outside 0\.\.9"):
        load_dataset(DataConfig(dataset="mnist", root=tmp_path))
