"""A user's folder of images: listing, decoding, batch decoding with DataLoader workers, the in-memory loader.

Layouts: ``root/<class>/**/img`` (labels = index of the class in the sorted folder names), or a flat
``root/**/img`` (labels None). If ``root/train`` exists next to ``root/test`` (or ``root/val``, ImageNet's
name), those are the two splits.

Every image, in memory or streamed, goes through the same two steps, so the two paths give identical pixels:

1. :func:`decode_image_file`: torchvision's decoder for JPEG/PNG/WebP (libjpeg-turbo, libpng), PIL for the
   other formats and as the fallback (both give the same pixels for JPEG and PNG; torchvision is about
   twice as fast on small JPEGs). Grey images become 1 channel, colour ones 3 (alpha dropped).
2. a crop and a bilinear, antialiased resize in torch (``transforms``): the centred square for evaluation,
   a random-resized crop + flip for training.
"""
from __future__ import annotations

import os
import signal
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from bayes_dc.data.base import DatasetNotFoundError, ImageDataset, UnreadableImagesError, _subset_indices
from bayes_dc.data.transforms import (DEFAULT_CROP_RATIO, DEFAULT_CROP_SCALE, centre_crop_resize, random_resized_crop_flip)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DEFAULT_IMAGE_SIZE = 32       # side of the output when image_size is None
TEST_DIR_NAMES = ("test", "val")   # the test split's folder next to root/train; "val" is ImageNet's layout
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_TORCHVISION_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}   # GIF goes to PIL: torchvision returns every frame
_PROGRESS_THRESHOLD = 1000    # files; below this a progress bar is noise
_DECODE_BATCH = 256           # images per DataLoader item when loading a folder into memory

# torchvision 0.29 deprecates its decoders in favour of torchcodec and warns on every call; the PIL
# fallback below keeps this module working once they are removed.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)


# --------------------------------------------------------------------------------------------------
# Listing
# --------------------------------------------------------------------------------------------------


@dataclass
class FolderListing:
    """The image files of one split, in a fixed order, with their labels.

    ``relpaths`` is a ``(N,)`` numpy bytes array of paths relative to ``directory`` (not a list of ``Path``
    objects: about 40 bytes per image instead of several hundred, and DataLoader workers can share it
    without the copy-on-access that Python objects suffer under fork).
    """

    directory: Path
    relpaths: np.ndarray
    labels: np.ndarray | None     # (N,) int64 class ids, or None for a flat folder
    classes: list[str] | None

    def __len__(self) -> int:
        return int(self.relpaths.shape[0])

    def path(self, i: int) -> Path:
        return self.directory / os.fsdecode(self.relpaths[i])

    def subset(self, idx: np.ndarray) -> "FolderListing":
        return FolderListing(self.directory, self.relpaths[idx], None if self.labels is None else self.labels[idx],
                             self.classes)


def _is_image_name(name: str) -> bool:
    # Skip hidden files: macOS "._x.jpg" resource forks carry image extensions but are not images.
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _image_files(directory: Path) -> list[str]:
    """Relative POSIX paths of all image files under ``directory``, recursively, in a reproducible order.

    Sorted by path components (as ``pathlib`` orders paths); hidden files and folders are skipped, symlinked
    folders are not followed (``Path.rglob``'s behaviour). ``os.scandir`` rather than ``rglob``: it reuses
    the directory entries' types, which matters for a million files.
    """
    found: list[tuple[str, ...]] = []

    def walk(folder: str, parts: tuple[str, ...]) -> None:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    walk(entry.path, parts + (entry.name,))
                elif _is_image_name(entry.name) and entry.is_file():
                    found.append(parts + (entry.name,))

    walk(str(directory), ())
    found.sort()
    return ["/".join(parts) for parts in found]


def _as_relpaths(paths: list[str]) -> np.ndarray:
    return np.array([os.fsencode(p) for p in paths], dtype=np.bytes_) if paths else np.array([], dtype="S1")


def scan_folder(directory: Path, classes: list[str] | None = None) -> FolderListing:
    """List images and labels. Class sub-folders -> labels from sorted folder names; flat -> labels None.

    ``classes``: a class list to map folder names onto (the test split uses the train split's list, so the
    same id means the same class in both).
    """
    entries = sorted(directory.iterdir())
    top_images = [p for p in entries if p.is_file() and _is_image_name(p.name)]
    # Listed once (a walk over a large tree is slow); folders without images are not classes.
    files_by_dir = {d.name: _image_files(d) for d in entries if d.is_dir() and not d.name.startswith(".")}
    files_by_dir = {name: files for name, files in files_by_dir.items() if files}
    class_dirs = list(files_by_dir)
    if not class_dirs or top_images:
        if class_dirs and top_images:
            warnings.warn(f"{directory} holds both images and sub-folders of images; treating it as one flat, "
                          f"unlabelled folder. Move the top-level images into a class folder to get labels.",
                          stacklevel=3)
        return FolderListing(directory, _as_relpaths(_image_files(directory)), None, None)
    if classes is None:
        classes = list(class_dirs)
    unknown = [name for name in class_dirs if name not in classes]
    if unknown:
        raise ValueError(f"{directory} has class folders {unknown} that the train split lacks "
                         f"(train classes: {classes}); the splits must share class names.")
    relpaths, labels = [], []
    for name, these in files_by_dir.items():
        relpaths += [f"{name}/{p}" for p in these]
        labels += [classes.index(name)] * len(these)
    return FolderListing(directory, _as_relpaths(relpaths), np.asarray(labels, dtype=np.int64), classes)


def list_imagefolder(split: str, root: str | None, subset: int | None, seed: int) -> FolderListing:
    """The files of ``split`` under ``root`` (see the module docstring), after the seeded ``subset``."""
    if root is None:
        raise ValueError("imagefolder needs root=DIR (--data-root DIR): the folder holding your images")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DatasetNotFoundError(f"imagefolder: {base} is not a directory. Pass --data-root DIR with "
                                   f"class sub-folders of images, or a flat folder of images.")
    test_dir = next((base / n for n in TEST_DIR_NAMES if (base / n).is_dir()), None)
    has_split_dirs = (base / "train").is_dir() and test_dir is not None
    if split == "test" and not has_split_dirs:
        raise ValueError(f"imagefolder: split='test' needs {base}/train and {base}/test (or {base}/val) folders; "
                         f"{base} has no such pair. Use split='train' for the whole folder, or arrange it as "
                         f"{base}/train/<class>/... and {base}/test/<class>/...")
    classes = None
    if has_split_dirs:
        directory = base / "train" if split == "train" else test_dir
        if split == "test":   # map test folders onto the train split's class ids
            classes = scan_folder(base / "train").classes
    else:
        directory = base
    listing = scan_folder(directory, classes)
    if not len(listing):
        raise DatasetNotFoundError(f"imagefolder: no images under {directory} (looked recursively for "
                                   f"{', '.join(IMAGE_EXTENSIONS)}, any case).")
    idx = _subset_indices(len(listing), subset, seed, "imagefolder")
    # Choose before decoding: no point reading images that are thrown away.
    return listing if idx is None else listing.subset(idx)


# --------------------------------------------------------------------------------------------------
# Decoding one image
# --------------------------------------------------------------------------------------------------


def image_is_grey(path: Path) -> bool:
    """Whether the file holds a greyscale image, from its header only (PIL opens lazily)."""
    from PIL import Image

    with Image.open(path) as img:
        return img.mode in _GREY_MODES


def rgb_to_grey(rgb: torch.Tensor) -> torch.Tensor:
    """``(3, H, W)`` uint8 -> ``(1, H, W)``: ITU-R 601-2 luma in PIL's integer arithmetic (``convert("L")``).

    Done here rather than by the decoder, whose grey conversions differ from PIL's by a level here and
    there; this way both decoders give the same grey pixels.
    """
    r, g, b = rgb.to(torch.int32)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).to(torch.uint8).unsqueeze(0)


def _decode_torchvision(path: Path, channels: int) -> torch.Tensor | None:
    """torchvision's decoder, or None when it is missing, cannot read this file, or gives 16-bit values."""
    if path.suffix.lower() not in _TORCHVISION_SUFFIXES:
        return None
    try:
        from torchvision.io import ImageReadMode, decode_image
    except ImportError:
        return None
    try:
        # RGB even for a grey result: grey sources come back replicated (R = G = B), which rgb_to_grey maps
        # back exactly, and colour sources get PIL's conversion.
        image = decode_image(str(path), mode=ImageReadMode.RGB)
    except Exception:   # unsupported variant or a damaged file: PIL decides (and names the error)
        return None
    if image.dtype != torch.uint8 or image.ndim != 3:
        return None
    return rgb_to_grey(image) if channels == 1 else image


def _decode_pil(path: Path, channels: int) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as img:
        # First frame of GIFs; drops alpha; grey is replicated to RGB. np.array copies: a writable array.
        array = np.array(img.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    array = array[:, :, None] if array.ndim == 2 else array
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def decode_image_file(path: Path, channels: int) -> torch.Tensor:
    """Decode one image file to ``(channels, H, W)`` uint8 (channels 1: grey, 3: RGB).

    Raises whatever PIL raises for a file neither decoder can read (callers collect these).
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    image = _decode_torchvision(path, channels)
    return _decode_pil(path, channels) if image is None else image


def read_image(path: Path, size: int, channels: int) -> torch.Tensor:
    """The evaluation view of one file: decoded, centred square, resized: ``(channels, size, size)`` uint8."""
    return centre_crop_resize(decode_image_file(path, channels), size)


def unreadable_error(failures: list[tuple[str, str]], total: int, directory: Path,
                     note: str = "") -> UnreadableImagesError:
    """The error for files that failed to decode; ``failures`` are (path, "Error: message") pairs."""
    shown = "\n".join(f"  {path} ({why})" for path, why in failures[:20])
    more = f"\n  ... and {len(failures) - 20} more" if len(failures) > 20 else ""
    return UnreadableImagesError(
        f"imagefolder: {len(failures)} of {total} image files under {directory} could not be read:\n"
        f"{shown}{more}\nRemove (or repair) these files and load again; they are not skipped silently "
        f"because that would change N and the labels without notice.{note}",
        [path for path, _ in failures],
    )


def _failure(path: Path, exc: Exception) -> tuple[str, str]:
    return str(path), f"{type(exc).__name__}: {exc}"


def folder_channels(listing: FolderListing, positions: np.ndarray) -> int:
    """1 if every image at ``positions`` is grey, else 3 (grey images are then replicated to RGB).

    Reads headers only. Raises UnreadableImagesError listing every file whose header cannot be read.
    """
    grey, failures = True, []
    for i in positions:
        path = listing.path(int(i))
        try:
            grey = image_is_grey(path) and grey
        except Exception as exc:   # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError...)
            failures.append(_failure(path, exc))
    if failures:
        raise unreadable_error(failures, len(positions), listing.directory)
    return 1 if grey else 3


# --------------------------------------------------------------------------------------------------
# Decoding batches, in DataLoader workers
# --------------------------------------------------------------------------------------------------


class DecodedBatches(torch.utils.data.Dataset):
    """A map-style dataset whose item b is a whole batch: images ``order[b * B:(b + 1) * B]`` decoded.

    Item b is ``((n, C, S, S) uint8, failures)``, ``failures`` a list of (path, "Error: message") for files
    that could not be decoded (their slots are zero). With ``seeds``, batch b is augmented
    (random-resized crop + flip) with a generator seeded by ``seeds[b]``, so the result does not depend on
    which worker decodes it; without, every image gets the evaluation transform (centred square, resized).
    """

    def __init__(self, listing: FolderListing, order: np.ndarray, batch_size: int, image_size: int, channels: int,
                 seeds: list[int] | None = None, crop_scale: tuple[float, float] = DEFAULT_CROP_SCALE,
                 crop_ratio: tuple[float, float] = DEFAULT_CROP_RATIO):
        self.listing, self.order, self.batch_size = listing, order, batch_size
        self.image_size, self.channels, self.seeds = image_size, channels, seeds
        self.crop_scale, self.crop_ratio = crop_scale, crop_ratio

    def __len__(self) -> int:
        return -(-len(self.order) // self.batch_size)

    def __getitem__(self, b: int) -> tuple[torch.Tensor, list[tuple[str, str]]]:
        ids = self.order[b * self.batch_size:(b + 1) * self.batch_size]
        out = torch.zeros((len(ids), self.channels, self.image_size, self.image_size), dtype=torch.uint8)
        gen = None if self.seeds is None else torch.Generator().manual_seed(self.seeds[b])
        failures = []
        for k, i in enumerate(ids):
            path = self.listing.path(int(i))
            try:
                image = decode_image_file(path, self.channels)
            except Exception as exc:
                failures.append(_failure(path, exc))
                continue
            if gen is None:
                out[k] = centre_crop_resize(image, self.image_size)
            else:
                out[k] = random_resized_crop_flip(image, self.image_size, gen, self.crop_scale, self.crop_ratio)
        return out, failures


def _ignore_sigint(worker_id: int) -> None:
    """DataLoader worker start: leave Ctrl-C to the main process.

    A terminal's Ctrl-C signals the whole process group; a worker that died of it would fail the epoch
    that ``interrupts.graceful_interrupt`` is letting finish. The main process stops its workers itself.
    """
    del worker_id
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def iterate_decoded(batches: DecodedBatches, num_workers: int = 0, pin_memory: bool = False,
                    progress: str | None = None) -> Iterator[tuple[torch.Tensor, list[tuple[str, str]]]]:
    """Yield ``batches[0], batches[1], ...`` in order, decoded by ``num_workers`` DataLoader workers."""
    if not isinstance(num_workers, (int, np.integer)) or num_workers < 0:
        raise ValueError(f"num_workers must be an int >= 0 (0 decodes in this process), got {num_workers!r}")
    loader = torch.utils.data.DataLoader(
        batches, batch_size=None, shuffle=False, num_workers=int(num_workers), pin_memory=pin_memory,
        worker_init_fn=_ignore_sigint,
        # An explicit generator: otherwise creating the iterator draws a worker base seed from the global
        # torch RNG and would shift every later torch.manual_seed-based draw (dropout) of the caller.
        generator=torch.Generator())
    if progress is not None and len(batches.order) > _PROGRESS_THRESHOLD:
        from tqdm.auto import tqdm

        loader = tqdm(loader, desc=progress, unit="batch")
    yield from loader


def read_images(listing: FolderListing, image_size: int, channels: int, num_workers: int = 0,
                progress: bool = True) -> torch.Tensor:
    """Every image of ``listing``, evaluation view, as one ``(N, C, S, S)`` uint8 tensor (``progress``: a bar for
    large folders).

    Raises UnreadableImagesError listing every file that could not be decoded.
    """
    n = len(listing)
    images = torch.empty((n, channels, image_size, image_size), dtype=torch.uint8)
    failures: list[tuple[str, str]] = []
    decoded = DecodedBatches(listing, np.arange(n), _DECODE_BATCH, image_size, channels)
    desc = f"loading {listing.directory}" if progress else None
    for b, (batch, bad) in enumerate(iterate_decoded(decoded, num_workers, progress=desc)):
        images[b * _DECODE_BATCH:b * _DECODE_BATCH + len(batch)] = batch
        failures += bad
    if failures:
        raise unreadable_error(failures, n, listing.directory)
    return images


def listing_in_memory(listing: FolderListing, image_size: int, num_workers: int = 0,
                      progress: bool = True) -> ImageDataset:
    """Decode every file of ``listing`` into an in-memory ImageDataset, (N, C, S, S) uint8.

    C is 1 when every image is greyscale, else 3 (grey images are replicated to RGB).
    """
    channels = folder_channels(listing, np.arange(len(listing)))
    images = read_images(listing, image_size, channels, num_workers, progress)
    return ImageDataset(images, listing.labels, "imagefolder", listing.classes, source=str(listing.directory))


def load_imagefolder(split: str, *, root: str | None, subset: int | None, seed: int, image_size: int | None,
                     download: bool, num_workers: int = 0) -> ImageDataset:
    """A user's image folder in memory: (N, C, S, S) uint8 with S = image_size (default 32)."""
    del download   # nothing to download: the folder is the user's
    size = DEFAULT_IMAGE_SIZE if image_size is None else image_size
    return listing_in_memory(list_imagefolder(split, root, subset, seed), size, num_workers)
