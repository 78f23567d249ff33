"""Tests for bayes_dc.data: IDX parsing and search order, image folders, digits, synthetic, subsets, errors.

Everything runs on tiny files written to tmp_path, in seconds, with no network: the system data dirs, the
download cache and the download step are monkeypatched wherever a test must not find the real data.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from bayes_dc import data
from bayes_dc.data import (DATASETS, CorruptDataError, DatasetNotFoundError, ImageDataset, UnreadableImagesError, load_dataset, read_idx)

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


# ---- helpers ---------------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as an IDX file: 00 00 08 ndim, big-endian uint32 dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, compress: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = idx_bytes(array)
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def tiny_mnist(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8), rng.integers(0, 10, size=n, dtype=np.uint8)


def write_split(directory: Path, split: str, images: np.ndarray, labels: np.ndarray, compress: bool) -> None:
    prefix = {"train": "train", "test": "t10k"}[split]
    write_idx(directory / f"{prefix}-images-idx3-ubyte", images, compress)
    write_idx(directory / f"{prefix}-labels-idx1-ubyte", labels, compress)


@pytest.fixture
def no_real_data(tmp_path, monkeypatch):
    """Hide every real copy and make the download fail, so only what a test writes can be found."""
    empty = tmp_path / "empty_system"
    empty.mkdir()
    monkeypatch.setattr(data, "SYSTEM_DATA_DIRS", (str(empty),))
    monkeypatch.setattr(data, "CACHE_DIR", tmp_path / "empty_cache")
    monkeypatch.delenv(data.DATA_ENV_VAR, raising=False)

    def offline_download(spec_name, dest):
        raise ConnectionError("network disabled in tests")

    monkeypatch.setattr(data, "download_idx", offline_download)
    return empty


def save_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


# ---- IDX parsing and the search order ----------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_roundtrip(tmp_path, compress):
    images, labels = tiny_mnist(0, 5)
    assert np.array_equal(read_idx(write_idx(tmp_path / "img", images, compress), expected_ndim=3), images)
    assert np.array_equal(read_idx(write_idx(tmp_path / "lab", labels, compress), expected_ndim=1), labels)


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_from_root(tmp_path, no_real_data, compress):
    train_x, train_y = tiny_mnist(1, 7)
    test_x, test_y = tiny_mnist(2, 3)
    write_split(tmp_path / "root", "train", train_x, train_y, compress)
    write_split(tmp_path / "root", "test", test_x, test_y, compress)

    train = load_dataset("fashion-mnist", "train", root=str(tmp_path / "root"))
    test = load_dataset("fashion-mnist", "test", root=str(tmp_path / "root"))
    assert train.images.shape == (7, 1, 28, 28) and train.images.dtype == torch.uint8
    assert np.array_equal(train.images[:, 0].numpy(), train_x)
    assert train.labels.dtype == np.int64 and np.array_equal(train.labels, train_y)
    assert np.array_equal(test.images[:, 0].numpy(), test_x) and np.array_equal(test.labels, test_y)
    assert train.num_channels == 1 and train.image_size == 28 and len(train) == 7
    assert train.classes[0] == "T-shirt/top" and len(train.classes) == 10
    assert train.name == "fashion-mnist"


def test_fashion_mnist_torchvision_layout(tmp_path, no_real_data):
    x, y = tiny_mnist(3, 4)
    write_split(tmp_path / "root" / "FashionMNIST" / "raw", "train", x, y, compress=True)
    ds = load_dataset("fashion-mnist", root=str(tmp_path / "root"))
    assert np.array_equal(ds.images[:, 0].numpy(), x) and np.array_equal(ds.labels, y)


@pytest.mark.parametrize("layout", ["", "fashion-mnist", "FashionMNIST/raw"])
def test_fashion_mnist_from_env(tmp_path, no_real_data, monkeypatch, layout):
    x, y = tiny_mnist(4, 6)
    write_split(tmp_path / "env" / layout, "train", x, y, compress=False)
    monkeypatch.setenv(data.DATA_ENV_VAR, str(tmp_path / "env"))
    ds = load_dataset("fashion-mnist")
    assert np.array_equal(ds.images[:, 0].numpy(), x) and np.array_equal(ds.labels, y)


def test_root_is_searched_before_env_and_system(tmp_path, no_real_data, monkeypatch):
    root_x, root_y = tiny_mnist(5, 3)
    other_x, other_y = tiny_mnist(6, 4)
    write_split(tmp_path / "root", "train", root_x, root_y, compress=True)
    write_split(tmp_path / "env", "train", other_x, other_y, compress=True)
    write_split(no_real_data / "fashion-mnist", "train", other_x, other_y, compress=True)
    monkeypatch.setenv(data.DATA_ENV_VAR, str(tmp_path / "env"))
    assert len(load_dataset("fashion-mnist", root=str(tmp_path / "root"))) == 3
    assert len(load_dataset("fashion-mnist")) == 4            # env, then system
    monkeypatch.delenv(data.DATA_ENV_VAR)
    ds = load_dataset("fashion-mnist")                       # system dir (monkeypatched)
    assert len(ds) == 4 and ds.source == str(no_real_data / "fashion-mnist")


def test_download_is_used_last(tmp_path, no_real_data, monkeypatch):
    x, y = tiny_mnist(7, 2)
    calls = []

    def fake_download(spec_name, dest):
        calls.append((spec_name, dest))
        raw = Path(dest) / "MNIST" / "raw"
        write_split(raw, "train", x, y, compress=True)
        return raw

    monkeypatch.setattr(data, "download_idx", fake_download)
    ds = load_dataset("mnist", root=str(tmp_path / "dl"))
    assert calls == [("mnist", tmp_path / "dl")] and np.array_equal(ds.labels, y)
    load_dataset("mnist", root=str(tmp_path / "dl"))         # second time: found in root/MNIST/raw
    assert len(calls) == 1


def test_missing_everywhere_names_every_place(tmp_path, no_real_data, monkeypatch):
    monkeypatch.setenv(data.DATA_ENV_VAR, str(tmp_path / "envdir"))
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashion-mnist", root=str(tmp_path / "myroot"))
    message = str(info.value)
    for place in [tmp_path / "myroot", tmp_path / "myroot" / "FashionMNIST" / "raw", tmp_path / "envdir",
                  tmp_path / "envdir" / "fashion-mnist", no_real_data / "fashion-mnist"]:
        assert str(place) in message
    assert "network disabled in tests" in message            # why the download failed
    for fix in ["apt-get install -y dataset-fashion-mnist", "--data-root", data.DATA_ENV_VAR, "download"]:
        assert fix in message
    assert isinstance(info.value, FileNotFoundError)


def test_missing_with_download_disabled(no_real_data):
    with pytest.raises(DatasetNotFoundError, match=r"(?s)not set.*download=False"):
        load_dataset("mnist", download=False)


def test_missing_labels_file_is_not_a_match(tmp_path, no_real_data):
    x, _ = tiny_mnist(8, 2)
    write_idx(tmp_path / "root" / "train-images-idx3-ubyte", x, compress=True)
    with pytest.raises(DatasetNotFoundError, match="no train-labels-idx1-ubyte"):
        load_dataset("fashion-mnist", root=str(tmp_path / "root"))


def test_corrupt_idx_bad_magic(tmp_path, no_real_data):
    x, y = tiny_mnist(9, 3)
    write_split(tmp_path / "root", "train", x, y, compress=False)
    bad = tmp_path / "root" / "train-images-idx3-ubyte"
    bad.write_bytes(b"\x12\x34" + bad.read_bytes()[2:])
    with pytest.raises(CorruptDataError, match="not an IDX file") as info:
        load_dataset("fashion-mnist", root=str(tmp_path / "root"))
    assert str(bad) in str(info.value)


@pytest.mark.parametrize("compress", [True, False])
def test_corrupt_idx_truncated(tmp_path, no_real_data, compress):
    x, y = tiny_mnist(10, 3)
    write_split(tmp_path / "root", "train", x, y, compress=compress)
    bad = tmp_path / "root" / ("train-images-idx3-ubyte" + (".gz" if compress else ""))
    bad.write_bytes(bad.read_bytes()[:-100])
    with pytest.raises(CorruptDataError, match="truncated") as info:
        load_dataset("fashion-mnist", root=str(tmp_path / "root"))
    assert str(bad) in str(info.value)


def test_idx_wrong_dimensions(tmp_path):
    labels_file = write_idx(tmp_path / "labels", np.zeros(4, np.uint8), compress=False)
    with pytest.raises(CorruptDataError, match="3 dimensions|has 1 dimensions"):
        read_idx(labels_file, expected_ndim=3)


def test_image_label_count_mismatch(tmp_path, no_real_data):
    x, y = tiny_mnist(11, 3)
    write_split(tmp_path / "root", "train", x, y[:2], compress=False)
    with pytest.raises(CorruptDataError, match="3 images but .* 2 labels"):
        load_dataset("fashion-mnist", root=str(tmp_path / "root"))


@pytest.mark.skipif(not (DEBIAN_FASHION / "train-images-idx3-ubyte.gz").exists(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_real_debian_fashion_mnist(monkeypatch):
    monkeypatch.delenv(data.DATA_ENV_VAR, raising=False)
    train = load_dataset("fashion-mnist", "train", download=False)
    test = load_dataset("fashion-mnist", "test", download=False)
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 1, 28, 28)
    for ds in (train, test):
        assert ds.labels.shape == (len(ds),) and ds.labels.min() == 0 and ds.labels.max() == 9
    assert np.array_equal(np.bincount(test.labels), np.full(10, 1000))


# ---- imagefolder -------------------------------------------------------------------------------------


def test_imagefolder_class_subfolders(tmp_path):
    rng = np.random.default_rng(0)
    for cls, count in [("cat", 3), ("ant", 2), ("bee", 1)]:
        for i in range(count):
            size = (40 + 7 * i, 30)   # non-square: centre-cropped, then resized
            save_png(tmp_path / cls / f"{i}.PNG", rng.integers(0, 256, size=size + (3,), dtype=np.uint8))
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    ds = load_dataset("imagefolder", root=str(tmp_path))
    assert ds.classes == ["ant", "bee", "cat"]                # sorted folder names
    assert ds.images.shape == (6, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert sorted(ds.labels.tolist()) == [0, 0, 1, 2, 2, 2]
    assert load_dataset("imagefolder", root=str(tmp_path), image_size=16).images.shape == (6, 3, 16, 16)


def test_imagefolder_flat_greyscale_nested(tmp_path):
    save_png(tmp_path / "a.png", np.full((20, 20), 100, np.uint8))
    save_png(tmp_path / "deeper" / "b.jpg", np.full((50, 30), 200, np.uint8))
    with pytest.warns(UserWarning, match="flat, unlabelled"):   # top-level images + a sub-folder: ambiguous
        ds = load_dataset("imagefolder", root=str(tmp_path), image_size=8)
    assert ds.labels is None and ds.classes is None
    assert ds.images.shape == (2, 1, 8, 8)                    # all greyscale -> 1 channel
    assert sorted(ds.images.float().mean((1, 2, 3)).round().tolist()) == [100.0, 200.0]


def test_imagefolder_mixed_grey_and_colour_gives_rgb(tmp_path):
    save_png(tmp_path / "grey.png", np.full((10, 10), 50, np.uint8))
    save_png(tmp_path / "colour.png", np.zeros((10, 10, 3), np.uint8))
    ds = load_dataset("imagefolder", root=str(tmp_path), image_size=10)
    assert ds.images.shape == (2, 3, 10, 10)


def test_imagefolder_corrupt_file_listed(tmp_path):
    save_png(tmp_path / "dogs" / "ok.png", np.zeros((8, 8, 3), np.uint8))
    broken = tmp_path / "dogs" / "broken.jpg"
    broken.write_bytes(b"this is not a jpeg")
    with pytest.raises(UnreadableImagesError) as info:
        load_dataset("imagefolder", root=str(tmp_path))
    assert str(broken) in str(info.value) and info.value.paths == [str(broken)]
    assert "Remove" in str(info.value)


def test_imagefolder_train_test_split_dirs(tmp_path):
    for split, classes in [("train", ["a", "b"]), ("test", ["b"])]:
        for cls in classes:
            save_png(tmp_path / split / cls / "x.png", np.zeros((8, 8), np.uint8))
    assert load_dataset("imagefolder", "train", root=str(tmp_path)).classes == ["a", "b"]
    test = load_dataset("imagefolder", "test", root=str(tmp_path))
    assert test.labels.tolist() == [1] and test.classes == ["a", "b"]   # ids follow the train split


def test_imagefolder_errors(tmp_path):
    save_png(tmp_path / "x.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="train and .*test"):
        load_dataset("imagefolder", "test", root=str(tmp_path))
    with pytest.raises(ValueError, match="needs root"):
        load_dataset("imagefolder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="no images"):
        load_dataset("imagefolder", root=str(tmp_path / "empty"))


# ---- digits and synthetic ------------------------------------------------------------------------------


def test_digits_shapes_and_split():
    train = load_dataset("digits", "train")
    test = load_dataset("digits", "test")
    assert train.images.shape == (1500, 1, 28, 28) and test.images.shape == (297, 1, 28, 28)
    assert train.images.max() > 200 and set(np.unique(train.labels)) == set(range(10))
    assert load_dataset("digits", image_size=8).images.shape == (1500, 1, 8, 8)
    # The split uses a fixed seed: `seed` must not move images between train and test.
    again = load_dataset("digits", "train", seed=123)
    assert torch.equal(train.images, again.images) and np.array_equal(train.labels, again.labels)
    native = load_dataset("digits", "test", image_size=8).images.reshape(297, -1)
    train_native = load_dataset("digits", "train", image_size=8).images.reshape(1500, -1)
    assert len({bytes(r) for r in native.numpy()} | {bytes(r) for r in train_native.numpy()}) > 1700


def test_synthetic_determinism_labels_and_sizes():
    a = load_dataset("synthetic", subset=200, seed=1)
    b = load_dataset("synthetic", subset=200, seed=1)
    c = load_dataset("synthetic", subset=200, seed=2)
    assert torch.equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (200, 1, 28, 28) and np.array_equal(np.bincount(a.labels), np.full(10, 20))
    assert not torch.equal(load_dataset("synthetic", "test", subset=200, seed=1).images, a.images)
    assert len(load_dataset("synthetic")) == 2000 and len(load_dataset("synthetic", "test")) == 500
    assert load_dataset("synthetic", subset=10, image_size=32).images.shape == (10, 1, 32, 32)


def test_synthetic_is_clusterable():
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    ds = load_dataset("synthetic", subset=300, seed=0)
    pixels = ds.images.reshape(len(ds), -1).float().numpy()
    found = KMeans(n_clusters=10, n_init=4, random_state=0).fit_predict(pixels)
    assert normalized_mutual_info_score(ds.labels, found) > 0.8
    # Train and test share prototypes: test images sit near the train cluster means of their own label.
    test = load_dataset("synthetic", "test", subset=100, seed=0)
    means = np.stack([pixels[ds.labels == k].mean(0) for k in range(10)])
    test_pixels = test.images.reshape(len(test), -1).float().numpy()
    nearest = ((test_pixels[:, None] - means[None]) ** 2).sum(-1).argmin(1)
    assert (nearest == test.labels).mean() > 0.9


# ---- subset, registry, container ----------------------------------------------------------------------


def test_subset_is_deterministic_and_mixed():
    a = load_dataset("digits", subset=100, seed=3)
    b = load_dataset("digits", subset=100, seed=3)
    c = load_dataset("digits", subset=100, seed=4)
    assert torch.equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.labels, c.labels)
    assert len(a) == 100 and len(np.unique(a.labels)) == 10   # a permutation, not the first 100


def test_subset_too_large_says_size():
    with pytest.raises(ValueError, match="297"):
        load_dataset("digits", "test", subset=1000)
    with pytest.raises(ValueError, match="positive"):
        load_dataset("digits", subset=0)


def test_imagefolder_subset(tmp_path):
    for i in range(6):
        save_png(tmp_path / f"{i}.png", np.full((8, 8), 10 * i, np.uint8))
    a = load_dataset("imagefolder", root=str(tmp_path), subset=3, seed=1, image_size=8)
    b = load_dataset("imagefolder", root=str(tmp_path), subset=3, seed=1, image_size=8)
    assert len(a) == 3 and torch.equal(a.images, b.images)
    with pytest.raises(ValueError, match="has 6 images"):
        load_dataset("imagefolder", root=str(tmp_path), subset=7)


def test_unknown_dataset_and_split_list_choices():
    with pytest.raises(ValueError) as info:
        load_dataset("imagenet-22k")
    for name in DATASETS:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="train, test"):
        load_dataset("digits", "validation")
    with pytest.raises(ValueError, match="unlabeled"):
        load_dataset("stl10", "val")
    assert load_dataset("Digits", subset=5).name == "digits"    # case and '_' forgiven
    with pytest.raises(ValueError, match="image_size"):
        load_dataset("digits", image_size=0)


def test_registry_contents():
    assert set(DATASETS) == {"fashion-mnist", "mnist", "cifar10", "stl10", "imagefolder", "digits", "synthetic"}


def test_mean_std_matches_numpy():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(9, 3, 5, 5), dtype=np.uint8)
    ds = ImageDataset(torch.from_numpy(pixels), None, "random")
    mean, std = ds.mean_std()
    expected = pixels / 255.0
    assert mean.shape == (3,) and std.shape == (3,) and mean.dtype == torch.float32
    np.testing.assert_allclose(mean.numpy(), expected.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(std.numpy(), expected.std(axis=(0, 2, 3)), rtol=1e-5)


def test_image_dataset_validates():
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset(torch.zeros(2, 1, 4, 4), None, "bad")
    with pytest.raises(ValueError, match="square"):
        ImageDataset(torch.zeros(2, 1, 4, 5, dtype=torch.uint8), None, "bad")
    with pytest.raises(ValueError, match="labels"):
        ImageDataset(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), np.zeros(3), "bad")


def test_torchvision_dataset_missing_without_download(tmp_path, monkeypatch):
    pytest.importorskip("torchvision")
    monkeypatch.setattr(data, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.delenv(data.DATA_ENV_VAR, raising=False)
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("cifar10", root=str(tmp_path / "r"), download=False)
    assert str(tmp_path / "r") in str(info.value) and "download" in str(info.value)
