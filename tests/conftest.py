import os
import sys
from pathlib import Path

# Before torch and faiss load their two OpenMP runtimes: idle OpenMP threads sleep instead of spinning. On the
# shared 2-core machine two spinning pools made a tiny run.py process 5-8x slower (measured: 48 s vs 7 s).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Two cores: keep torch from oversubscribing when pytest runs alongside faiss's OpenMP threads.
torch.set_num_threads(2)


@pytest.fixture
def one_thread():
    """One intra-op thread for tests of small tensors: on the shared 2-core machine a second thread mostly waits
    for a core, which makes small operations ten times slower when the machine is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_tiny_config(out_root: Path):
    """A seconds-long end-to-end configuration on generated images, writing runs under ``out_root / "runs"``."""
    from bayes_dc.config.schema import Config, merge

    return merge(Config(), {
        "data": {"dataset": "synthetic", "subset": 300, "eval_subset": 100},
        "model": {"width": 4},
        # PCA and a relabel every epoch whatever the prior, so that a test switching to the DP changes only that
        "features": {"pca_dim": 16, "extract_batch": 300, "reduce": "pca"},
        "cluster": {"prior": "kmeans", "k": 10},
        "train": {"epochs": 3, "batch_size": 64, "relabel_every": 1},
        "run": {"out_dir": str(out_root / "runs"), "name": "tiny", "progress": False, "figures": False,
                "knn_every": 2},
    })


@pytest.fixture
def tiny_config(tmp_path):
    """:func:`make_tiny_config` in the test's own directory."""
    return make_tiny_config(tmp_path)
