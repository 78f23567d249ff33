"""Streaming image folders, the in-memory / streaming choice, crops, and features written to a memmap.

Tiny folders written to tmp_path; each test takes well under a few seconds (the num_workers=2 ones start two
DataLoader worker processes).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bayes_dc.data import (DEFAULT_MEMORY_BUDGET, ImageDataset, ImageSource, StreamingImageFolder, UnreadableImagesError, in_memory_nbytes, load_dataset, use_streaming)
from bayes_dc.data.imagefolder import _decode_pil, _decode_torchvision
from bayes_dc.data.transforms import random_resized_crop_flip, sample_resized_crop
from bayes_dc.models.features import extract_features, extract_features_to_memmap
from bayes_dc.spaces.whiten import Whitener

SIZE = 16


def save(path: Path, array: np.ndarray, **kwargs) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)


def smooth_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A colour image with structure at several scales (so crops and resizes visibly differ)."""
    y, x = np.mgrid[0:height, 0:width]
    phase = rng.uniform(0, 6, size=3)
    base = np.stack([np.sin(x / 4 + phase[0]), np.cos(y / 5 + phase[1]), np.sin((x + y) / 7 + phase[2])], -1)
    return np.clip(base * 90 + 128 + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture
def photo_folder(tmp_path) -> Path:
    """3 classes x 5 images of assorted sizes (non-square: centre-cropped), PNG and JPEG."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(["ant", "bee", "cat"]):
        for i in range(5):
            height, width = rng.integers(12, 60, size=2)
            ext = "png" if (c + i) % 2 else "jpg"
            save(tmp_path / "photos" / name / f"{i}.{ext}", smooth_image(rng, height, width))
    return tmp_path / "photos"


@pytest.fixture
def square_folder(tmp_path) -> tuple[Path, np.ndarray]:
    """12 SIZE x SIZE colour PNGs (lossless, native size), flat; returns (folder, (12, 3, S, S) pixels)."""
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, size=(12, SIZE, SIZE, 3), dtype=np.uint8)
    for i, image in enumerate(pixels):
        save(tmp_path / "squares" / f"{i:02d}.png", image)
    return tmp_path / "squares", pixels.transpose(0, 3, 1, 2)


def stream(root: Path, **kwargs) -> StreamingImageFolder:
    ds = load_dataset("imagefolder", root=str(root), image_size=SIZE, streaming="always", **kwargs)
    assert isinstance(ds, StreamingImageFolder)
    return ds


def in_memory(root: Path) -> ImageDataset:
    ds = load_dataset("imagefolder", root=str(root), image_size=SIZE, streaming="never")
    assert isinstance(ds, ImageDataset)
    return ds


def train_pass(ds, seed: int, augment: bool = True, batch_size: int = 4) -> list[torch.Tensor]:
    indices = torch.tensor([3, 0, 7, 7, 11, 2, 5, 1, 9, 4])
    return list(ds.train_batches(indices, batch_size, torch.Generator().manual_seed(seed), augment))


# ---- the same images either way ----------------------------------------------------------------------


def test_eval_batches_equal_the_in_memory_loader(photo_folder):
    memory, streamed = in_memory(photo_folder), stream(photo_folder)
    assert isinstance(streamed, ImageSource) and isinstance(memory, ImageSource)
    batches = list(streamed.eval_batches(4))
    assert [len(b) for b in batches] == [4, 4, 4, 3]
    assert torch.equal(torch.cat(batches), memory.images)
    assert np.array_equal(streamed.labels, memory.labels) and streamed.classes == memory.classes == ["ant", "bee", "cat"]
    assert (len(streamed), streamed.num_channels, streamed.image_size) == (15, 3, SIZE)
    for a, b in zip(streamed.mean_std(), memory.mean_std()):   # the sample covers all 15 images: exact
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0)


def test_eval_batches_give_the_file_pixels_at_native_size(square_folder):
    root, pixels = square_folder
    assert torch.equal(torch.cat(list(stream(root).eval_batches(5))), torch.from_numpy(pixels))


def test_torchvision_and_pil_decoders_agree(photo_folder):
    """The PIL fallback must not change pixels (JPEG and PNG, grey and colour)."""
    for path in sorted(photo_folder.rglob("*"))[:6]:
        if path.is_file():
            for channels in (1, 3):
                tv = _decode_torchvision(path, channels)
                assert tv is not None and torch.equal(tv, _decode_pil(path, channels)), path


def test_imagenet_layout_val_is_the_test_split(tmp_path):
    rng = np.random.default_rng(2)
    for split, classes in [("train", ["n01", "n02"]), ("val", ["n02"])]:
        for name in classes:
            save(tmp_path / split / name / "x.png", smooth_image(rng, 20, 20))
    test = load_dataset("imagefolder", "test", root=str(tmp_path), image_size=SIZE, streaming="always")
    assert test.labels.tolist() == [1] and test.classes == ["n01", "n02"]


# ---- training batches: seeded crops ------------------------------------------------------------------


def test_train_batches_same_seed_same_crops_different_seed_different(photo_folder):
    ds = stream(photo_folder)
    first, again, other = train_pass(ds, 5), train_pass(ds, 5), train_pass(ds, 6)
    assert [len(b) for b in first] == [4, 4, 2]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(torch.cat(first), torch.cat(other))
    plain = torch.cat(list(ds.eval_batches(15)))
    assert not torch.equal(torch.cat(first), plain[[3, 0, 7, 7, 11, 2, 5, 1, 9, 4]])   # augmentation did happen


def test_train_batches_do_not_depend_on_the_number_of_workers(photo_folder):
    serial, parallel = stream(photo_folder, num_workers=0), stream(photo_folder, num_workers=2)
    assert all(torch.equal(a, b) for a, b in zip(train_pass(serial, 3), train_pass(parallel, 3)))
    assert torch.equal(torch.cat(list(serial.eval_batches(4))), torch.cat(list(parallel.eval_batches(4))))


def test_train_batches_without_augment_are_the_eval_view_in_index_order(photo_folder):
    ds = stream(photo_folder)
    plain = torch.cat(list(ds.eval_batches(15)))
    assert torch.equal(torch.cat(train_pass(ds, 0, augment=False)), plain[[3, 0, 7, 7, 11, 2, 5, 1, 9, 4]])
    with pytest.raises(IndexError, match="0..14"):
        next(ds.train_batches(torch.tensor([0, 15]), 4, torch.Generator()))


def test_in_memory_and_streamed_augmentation_agree_on_square_images(square_folder):
    root, _ = square_folder
    memory, streamed = in_memory(root), stream(root)
    for a, b in zip(train_pass(memory, 9), train_pass(streamed, 9)):
        assert torch.equal(a, b)


def test_augmentation_consumes_one_draw_of_the_generator(square_folder):
    """The caller's generator advances the same way whatever the epoch length (one draw per pass)."""
    ds = in_memory(square_folder[0])
    gen = torch.Generator().manual_seed(4)
    list(ds.train_batches(torch.arange(12), 5, gen, augment=True))
    reference = torch.Generator().manual_seed(4)
    torch.randint(0, 2**62, (1,), generator=reference)
    assert torch.equal(torch.rand(3, generator=gen), torch.rand(3, generator=reference))


def test_streaming_leaves_the_global_torch_rng_alone(photo_folder):
    torch.manual_seed(0)
    expected = torch.rand(2)
    torch.manual_seed(0)
    list(stream(photo_folder).eval_batches(8))
    assert torch.equal(torch.rand(2), expected)


def test_sample_resized_crop_stays_inside_and_respects_scale_and_ratio():
    gen = torch.Generator().manual_seed(0)
    height, width = 60, 100
    for _ in range(300):
        top, left, h, w = sample_resized_crop(height, width, gen, scale=(0.2, 0.6), ratio=(0.5, 2.0))
        assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
        # Rounding w and h to whole pixels moves area and ratio by at most ~one pixel's worth.
        assert 0.2 * 0.95 <= h * w / (height * width) <= 0.6 * 1.05
        assert 0.5 * 0.9 <= w / h <= 2.0 * 1.1
    # Impossible scale: the fallback is the centre crop with the ratio clamped into range.
    assert sample_resized_crop(40, 100, gen, scale=(5.0, 6.0), ratio=(1.0, 1.5)) == (0, 20, 40, 60)


def test_full_crop_without_resize_returns_the_image_or_its_mirror():
    image = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
    gen = torch.Generator().manual_seed(1)
    outs = [random_resized_crop_flip(image, 8, gen, scale=(1.0, 1.0), ratio=(1.0, 1.0)) for _ in range(20)]
    assert all(torch.equal(o, image) or torch.equal(o, image.flip(-1)) for o in outs)
    assert any(torch.equal(o, image) for o in outs) and any(torch.equal(o, image.flip(-1)) for o in outs)


# ---- unreadable files ------------------------------------------------------------------------------------


def test_unreadable_file_in_a_batch_is_named(photo_folder):
    broken = photo_folder / "bee" / "zz_truncated.jpg"
    save(broken, smooth_image(np.random.default_rng(3), 64, 64))
    good = broken.read_bytes()
    broken.write_bytes(good[:len(good) * 2 // 3])      # the header reads, the pixels do not
    for workers in (0, 2):
        ds = stream(photo_folder, num_workers=workers)
        with pytest.raises(UnreadableImagesError) as info:
            list(ds.eval_batches(4))
        assert str(broken) in str(info.value) and info.value.paths == [str(broken)]
    assert stream(photo_folder).find_unreadable() == [str(broken)]


def test_file_with_unreadable_header_is_named_when_opening(photo_folder):
    broken = photo_folder / "ant" / "garbage.png"
    broken.write_bytes(b"not an image at all")
    with pytest.raises(UnreadableImagesError, match="garbage.png"):
        stream(photo_folder)


# ---- the automatic choice ------------------------------------------------------------------------------


def test_automatic_choice_follows_the_memory_budget(photo_folder):
    needed = in_memory_nbytes(15, SIZE)                       # counted as RGB, before decoding anything
    assert needed == 15 * 3 * SIZE * SIZE
    assert use_streaming("auto", needed, needed) is False and use_streaming("auto", needed + 1, needed) is True
    assert use_streaming("auto", DEFAULT_MEMORY_BUDGET + 1) and not use_streaming("auto", DEFAULT_MEMORY_BUDGET)
    assert use_streaming("always", 1, 10**12) and not use_streaming("never", 10**12, 1)
    small = load_dataset("imagefolder", root=str(photo_folder), image_size=SIZE, memory_budget=needed)
    large = load_dataset("imagefolder", root=str(photo_folder), image_size=SIZE, memory_budget=needed - 1)
    assert isinstance(small, ImageDataset) and isinstance(large, StreamingImageFolder)
    with pytest.raises(AttributeError, match="streaming='never'"):
        large.images


def test_streaming_option_errors_name_the_option_and_choices(photo_folder):
    with pytest.raises(ValueError, match=r"--streaming.*auto, always, never"):
        load_dataset("imagefolder", root=str(photo_folder), streaming="sometimes")
    with pytest.raises(ValueError, match="cannot stream.*--streaming"):
        load_dataset("digits", streaming="always")
    with pytest.raises(ValueError, match="memory_budget"):
        load_dataset("imagefolder", root=str(photo_folder), memory_budget=0)
    assert isinstance(load_dataset("digits", subset=5, streaming="auto"), ImageDataset)


# ---- features to a memmap --------------------------------------------------------------------------------


def small_trunk(channels: int) -> torch.nn.Module:
    torch.manual_seed(0)
    trunk = torch.nn.Sequential(torch.nn.Conv2d(channels, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())
    trunk.train()   # extraction must switch to eval mode and back
    return trunk


def test_memmap_features_equal_in_memory_extraction(tmp_path):
    images = torch.randint(0, 256, (70, 3, 12, 12), dtype=torch.uint8)
    ds = ImageDataset(images, None, "random")
    mean, std = ds.mean_std()
    trunk = small_trunk(3)
    expected = extract_features(trunk, images, mean, std, batch_size=32)
    assert trunk.training
    full = extract_features_to_memmap(trunk, ds.eval_batches(16), 70, 16, tmp_path / "f32.npy", mean, std)
    assert isinstance(full, np.memmap) and full.shape == (70, 16) and full.dtype == np.float32
    assert torch.equal(torch.from_numpy(full), expected)
    assert np.array_equal(np.load(tmp_path / "f32.npy", mmap_mode="r"), full)      # a self-describing .npy
    half = extract_features_to_memmap(trunk, ds.eval_batches(16), 70, 16, tmp_path / "f16.npy", mean, std,
                                      dtype="float16")
    assert half.dtype == np.float16
    assert torch.equal(torch.from_numpy(half), expected.half())                    # round-to-nearest, nothing else


def test_whitener_fitted_from_the_memmap_equals_one_fitted_from_the_tensor(tmp_path):
    images = torch.randint(0, 256, (90, 1, 10, 10), dtype=torch.uint8)
    mean, std = torch.tensor([0.5]), torch.tensor([0.3])
    trunk = small_trunk(1)
    tensor = extract_features(trunk, images, mean, std)
    mapped = torch.from_numpy(extract_features_to_memmap(trunk, (images[s:s + 40] for s in range(0, 90, 40)),
                                                         90, 16, tmp_path / "f.npy", mean, std))
    a, b = Whitener(dim=6).fit(tensor), Whitener(dim=6).fit(mapped)
    assert torch.equal(a.mean_, b.mean_) and torch.equal(a.components_, b.components_)
    assert torch.equal(a.transform(tensor), b.transform(mapped))


def test_memmap_features_from_a_streamed_folder(photo_folder, tmp_path):
    streamed, memory = stream(photo_folder, num_workers=2), in_memory(photo_folder)
    mean, std = memory.mean_std()
    trunk = small_trunk(3)
    mapped = extract_features_to_memmap(trunk, streamed.eval_batches(4), len(streamed), 16, tmp_path / "s.npy",
                                        mean, std)
    assert torch.equal(torch.from_numpy(mapped), extract_features(trunk, memory.images, mean, std))


def test_memmap_extraction_refuses_wrong_counts_and_dtypes(tmp_path):
    images = torch.randint(0, 256, (10, 1, 8, 8), dtype=torch.uint8)
    mean, std, trunk = torch.tensor([0.5]), torch.tensor([0.3]), small_trunk(1)
    with pytest.raises(ValueError, match="held 10 images but n=11"):
        extract_features_to_memmap(trunk, [images], 11, 16, tmp_path / "a.npy", mean, std)
    with pytest.raises(ValueError, match="more than n=9"):
        extract_features_to_memmap(trunk, [images], 9, 16, tmp_path / "b.npy", mean, std)
    with pytest.raises(ValueError, match=r"expected \(8,\)"):
        extract_features_to_memmap(trunk, [images], 10, 8, tmp_path / "c.npy", mean, std)
    with pytest.raises(ValueError, match="float32"):
        extract_features_to_memmap(trunk, [images], 10, 16, tmp_path / "d.npy", mean, std, dtype="float64")
    assert not any(tmp_path.iterdir())   # an incomplete feature file is deleted, never left to be used


# ---- the pipeline on a streamed folder ------------------------------------------------------------------


@pytest.fixture
def split_folder(tmp_path) -> Path:
    """train/ (3 classes x 24) and test/ (3 x 6) lossless 16 px colour PNGs: a tiny ImageNet layout."""
    rng = np.random.default_rng(2)
    for split, count in (("train", 24), ("test", 6)):
        for c, name in enumerate(["ant", "bee", "cat"]):
            for i in range(count):
                image = smooth_image(rng, SIZE, SIZE)
                image[..., c] = np.clip(image[..., c].astype(int) + 60, 0, 255)   # a class colour cast
                save(tmp_path / "split" / split / name / f"{i}.png", image)
    return tmp_path / "split"


def test_a_streamed_run_equals_the_in_memory_run(split_folder, tmp_path):
    """--streaming always (batches from DataLoader workers, features through a memmap on disk) trains and clusters
    exactly as --streaming never on the same folder."""
    from bayes_dc.loop import pipeline
    from bayes_dc.config.schema import Config, merge
    from bayes_dc.rundir.jsonl import read_jsonl

    base = merge(Config(), {
        "data": {"dataset": "imagefolder", "data_root": str(split_folder), "image_size": SIZE},
        "model": {"width": 4}, "features": {"pca_dim": 8, "extract_batch": 32},
        "cluster": {"prior": "kmeans", "k": 6}, "train": {"epochs": 2, "batch_size": 16},
        "run": {"out_dir": str(tmp_path / "runs"), "progress": False, "figures": False, "knn_every": 1}})
    pipeline.run(merge(base, {"data": {"streaming": "never"}, "run": {"name": "memory"}}))
    pipeline.run(merge(base, {"data": {"streaming": "always", "num_workers": 2},
                              "run": {"name": "streamed"}}))

    def comparable(name):
        return [{k: v for k, v in r.items() if "seconds" not in k and "share" not in k and k != "backend_info"}
                for r in read_jsonl(tmp_path / "runs" / name / "metrics.jsonl")]

    assert comparable("streamed") == comparable("memory")
    assert len(comparable("memory")) == 3 and all("knn" in r for r in comparable("memory"))
    a, b = (torch.load(tmp_path / "runs" / n / "last.pt", weights_only=False)["model"] for n in ("memory", "streamed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list((tmp_path / "runs" / "streamed" / "scratch").iterdir())   # features were on disk, then removed

    # the linear probe reads a streamed run's images as that run did (streamed), and scores what the in-memory run does
    import importlib.util
    import json
    script = Path(__file__).resolve().parent.parent / "experiments" / "linear_probe.py"
    spec = importlib.util.spec_from_file_location("linear_probe", script)
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    scores = {}
    for name in ("memory", "streamed"):
        assert probe.main([str(tmp_path / "runs" / name), "--device", "cpu"]) == 0
        scores[name] = json.loads((tmp_path / "runs" / name / "linear_probe.json").read_text())["linear_probe_acc"]
    assert scores["streamed"] == scores["memory"]
    assert not list((tmp_path / "runs" / "streamed" / "scratch").iterdir())


def test_cluster_grid_reads_a_streamed_set_through_the_dataset(split_folder):
    pytest.importorskip("torchvision")
    from bayes_dc.rundir.tblog import cluster_grid

    streamed, memory = stream(split_folder / "train"), in_memory(split_folder / "train")
    labels = np.arange(len(memory)) % 4
    weights = np.bincount(labels) / len(labels)
    assert torch.equal(cluster_grid(streamed, labels, weights, n_clusters=3, per_cluster=5),
                       cluster_grid(memory.images, labels, weights, n_clusters=3, per_cluster=5))


# ---- the benchmark script ------------------------------------------------------------------------------


def test_bench_scale_parts_a_and_b_smoke(tmp_path):
    """Both parts' main() in this process (their measurements run in child processes either way)."""
    import importlib.util

    script = Path(__file__).resolve().parent.parent / "experiments" / "bench_scale.py"
    spec = importlib.util.spec_from_file_location("bench_scale", script)
    bench_scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_scale)
    assert bench_scale.main(["--part", "a", "--cache", str(tmp_path / "cache"), "--sizes", "30", "--workers", "0",
                             "--image-px", "12", "--batch-size", "8", "--markdown", str(tmp_path / "a.md")]) == 0
    rows = [line for line in (tmp_path / "a.md").read_text().splitlines() if line.startswith("| 30 |")]
    assert len(rows) == 2                                  # one throughput row, one feature-extraction row
    assert len(list((tmp_path / "cache" / "n30").rglob("*.jpg"))) == 30
    # part (b) on a few thousand points (its rows come from a child process per setting); part (c) launches
    # run.py under torchrun as tests/test_distributed.py does
    assert bench_scale.main(["--part", "b", "--points", "3000", "--dp-settings", "12:diag:4", "--dp-iters", "3",
                             "--true-clusters", "5", "--markdown", str(tmp_path / "b.md")]) == 0
    rows = [line.split("|")[1:-1] for line in (tmp_path / "b.md").read_text().splitlines() if line.startswith("| 12 |")]
    assert [(r[1].strip(), r[2].strip()) for r in rows] == [("diag", "4")]
    assert all(1 <= int(r[5]) <= 3 for r in rows)          # iterations within --dp-iters
