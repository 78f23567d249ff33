#!/usr/bin/env python
"""Assign a folder of images (any size: streamed batch by batch) to a finished run's final clusters.

    python experiments/assign.py runs/my-run --images photos/ --out assignments.csv --montage montage.png

One CSV row per image, in the folder's sorted order: ``path`` (relative to --images), ``cluster``,
``responsibility`` (of that cluster), ``top3`` (``id:value`` of the three largest responsibilities), then

* DP runs: ``novelty_probability``, the probability that the image starts a new component of the posterior (the
  Chinese-restaurant "new table" probability, ``bayes_dc.clustering.dpgmm.predictive``), and ``novel`` (1 when it
  exceeds 0.5: a new component explains the image better than all the existing ones together);
* k-means runs: ``centroid_distance``, the Euclidean distance to the nearest centroid in the clustering space.
  It is not a probability, so there is no ``novel`` flag.

``--montage`` draws one row per cluster (largest first): its most confident images, then its most novel ones.
Images are decoded as the run's training images were (evaluation view: centred square resized to the run's size);
their channels must match the run's (grey or RGB). The CSV is written to a temporary file and renamed at the
end, so a failure leaves no partial file. Nothing is written into the run directory.

Exit codes: 0 done; 2 bad input or an output that cannot be written (one line: a run without final.pt or with a
damaged one, an unreadable image, images whose channels differ from the run's, a run from an incompatible
version, an empty folder, a full disk or a read-only folder for --out / --montage).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path


import bayes_dc  # noqa: E402,F401  first: sets the OpenMP thread settings before torch loads (runtime/threads.py)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from bayes_dc.data import StreamingImageFolder, UnreadableImagesError  # noqa: E402
from bayes_dc.data.imagefolder import scan_folder  # noqa: E402
from bayes_dc.rundir.atomic import replace_into, writing  # noqa: E402
from bayes_dc.trained.load import TrainedRun, load_run  # noqa: E402

TOP = 3          # responsibilities listed per image
MONTAGE_PER_ROW = 8   # most confident and most novel images shown per cluster


class Montage:
    """The ``per_row`` most confident and most novel images of each cluster, kept while streaming."""

    def __init__(self, per_row: int):
        self.per_row = per_row
        self.best: dict[int, dict[str, list[tuple[float, int, torch.Tensor]]]] = {}
        self.counts: dict[int, int] = {}

    def add(self, start: int, images: torch.Tensor, labels: np.ndarray, confidence: np.ndarray,
            novelty: np.ndarray) -> None:
        for cluster in np.unique(labels):
            rows = np.flatnonzero(labels == cluster)
            self.counts[int(cluster)] = self.counts.get(int(cluster), 0) + len(rows)
            kept = self.best.setdefault(int(cluster), {"confident": [], "novel": []})
            for key, score in (("confident", confidence), ("novel", novelty)):
                top = rows[np.argsort(-score[rows], kind="stable")[:self.per_row]]
                merged = kept[key] + [(float(score[i]), start + int(i), images[i].clone()) for i in top]
                kept[key] = sorted(merged, key=lambda item: (-item[0], item[1]))[:self.per_row]

    def save(self, path: Path, kind: str) -> None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        clusters = sorted(self.counts, key=lambda c: (-self.counts[c], c))
        any_image = next(iter(self.best.values()))["confident"][0][2]
        channels, size = any_image.shape[0], any_image.shape[-1]
        gap, cols = size // 2, 2 * self.per_row
        canvas = np.full((len(clusters) * size, cols * size + gap, channels), 255, dtype=np.uint8)
        for r, cluster in enumerate(clusters):
            for half, key in enumerate(("confident", "novel")):
                for j, (_, _, image) in enumerate(self.best[cluster][key]):
                    x0 = (half * self.per_row + j) * size + half * gap
                    canvas[r * size:(r + 1) * size, x0:x0 + size] = image.permute(1, 2, 0).numpy()
        fig, ax = plt.subplots(figsize=(max(4.0, canvas.shape[1] / 40), max(2.0, canvas.shape[0] / 40)))
        ax.imshow(canvas[:, :, 0] if channels == 1 else canvas, cmap="gray" if channels == 1 else None,
                  vmin=0, vmax=255)
        ax.set_yticks([(r + 0.5) * size for r in range(len(clusters))])
        ax.set_yticklabels([f"{c} (n={self.counts[c]})" for c in clusters], fontsize=6)
        ax.set_xticks([self.per_row * size / 2, self.per_row * size + gap + self.per_row * size / 2])
        ax.set_xticklabels(["most confident", f"most novel ({kind})"], fontsize=8)
        fig.tight_layout()
        try:
            with writing(path):
                path.parent.mkdir(parents=True, exist_ok=True)
                fig.savefig(path, dpi=150)
        finally:
            plt.close(fig)


def open_images(run: TrainedRun, directory: Path, num_workers: int) -> StreamingImageFolder:
    """The folder, streamed at the run's image size; ValueError naming the problem when it cannot be used."""
    if not directory.is_dir():
        raise ValueError(f"--images {directory} is not a folder; pass a folder of images (sub-folders are read too)")
    listing = scan_folder(directory)
    if not len(listing):
        raise ValueError(f"--images {directory} holds no images (looked recursively for .png, .jpg, ...)")
    folder = StreamingImageFolder(listing, image_size=run.image_size, num_workers=num_workers)
    if folder.num_channels != run.channels:
        names = {1: "grey", 3: "colour"}
        raise ValueError(f"the images under {directory} are {names[folder.num_channels]} but the run was trained on "
                         f"{names[run.channels]} images ({run.channels} channel(s)); convert them first")
    return folder


def assign_folder(run: TrainedRun, folder: StreamingImageFolder, out: Path, *, batch_size: int, progress: bool,
                  montage: Montage | None) -> dict:
    """Write the CSV (see the module docstring); return a summary."""
    dp = run.backend.novelty_kind == "probability"
    header = ["path", "cluster", "responsibility", f"top{TOP}"] + (["novelty_probability", "novel"] if dp
                                                                  else ["centroid_distance"])
    partial = out.with_name(f".{out.name}.partial")
    n, novel, used = 0, 0, set()
    bar = tqdm(total=len(folder), disable=not progress, unit="img", desc="assign")
    try:
        with writing(out):   # a full disk, a read-only folder: WriteError naming the CSV
            out.parent.mkdir(parents=True, exist_ok=True)
            f = open(partial, "w", newline="")
        with f:
            writer = csv.writer(f)
            with writing(out):
                writer.writerow(header)
            for batch in folder.eval_batches(batch_size):
                points = run.points(batch)
                labels, values, index = run.assign_points(points)
                nov = run.novelty_points(points)
                if nov.warning and n == 0:
                    print(f"warning: {nov.warning}", file=sys.stderr)
                rows = []
                for i in range(len(labels)):
                    top = " ".join(f"{c}:{v:.4f}" for c, v in zip(index[i, :TOP], values[i, :TOP]) if v > 0)
                    row = [os.fsdecode(folder.listing.relpaths[n + i]), int(labels[i]), f"{values[i, 0]:.6f}", top]
                    row += ([f"{nov.score[i]:.6g}", int(nov.flag[i])] if dp else [f"{nov.score[i]:.6g}"])
                    rows.append(row)
                with writing(out):
                    writer.writerows(rows)
                if montage is not None:
                    montage.add(n, batch, labels, values[:, 0], nov.score)
                novel += int(nov.flag.sum()) if dp else 0
                used.update(np.unique(labels).tolist())
                n += len(labels)
                bar.update(len(labels))
            with writing(out):
                f.flush()
                os.fsync(f.fileno())
        replace_into(partial, out)
    finally:
        bar.close()
        partial.unlink(missing_ok=True)
    return {"images": n, "clusters_used": len(used), "novelty": run.backend.novelty_kind,
            "novel": novel if dp else None, "out": str(out)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="a finished run directory (holding final.pt)")
    p.add_argument("--images", type=Path, required=True, help="folder of images (read recursively)")
    p.add_argument("--out", type=Path, default=Path("assignments.csv"), help="CSV to write")
    p.add_argument("--montage", type=Path, default=None, help="PNG of the most confident / most novel images")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader processes decoding images")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--threads", type=int, default=None, help="torch and faiss CPU threads")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.num_workers < 0:
        print("error: --batch-size must be >= 1 and --num-workers >= 0", file=sys.stderr)
        return 2
    if args.threads:
        import faiss
        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    try:
        run = load_run(args.run_dir, args.device)
        folder = open_images(run, args.images, args.num_workers)
        montage = Montage(MONTAGE_PER_ROW) if args.montage else None
        summary = assign_folder(run, folder, args.out, batch_size=args.batch_size, progress=args.progress,
                                montage=montage)
        if montage is not None and montage.counts:
            montage.save(args.montage, run.backend.novelty_kind)
    except UnreadableImagesError as err:
        print(f"error: cannot read {len(err.paths)} image(s) under {args.images}, first {err.paths[0]}; remove or "
              f"repair them and run again", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError, OSError) as err:   # RunLoadError, CheckpointError, channels, empty folder
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
