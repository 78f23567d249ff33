"""Runs that are stopped, killed, damaged or diverge: what is kept, what resumes, and what it then gives.

The stopped and killed runs are real ``experiments/run.py`` processes (a signal cannot be faked in-process);
each is compared with the same run left alone, record by record (wall-clock fields aside) and weight by weight.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bayes_dc import pipeline
from bayes_dc.config import merge
from bayes_dc.jsonl import read_jsonl
from bayes_dc.runlog import CheckpointWarning
from test_errors import run_py   # experiments/run.py as a module

ROOT = Path(__file__).resolve().parent.parent
RUN_PY = ROOT / "experiments" / "run.py"
TIMING = ("seconds", "share")


def comparable(run_dir: Path) -> list[dict]:
    """metrics.jsonl without wall-clock fields (they legitimately differ between runs)."""
    return [{k: v for k, v in r.items() if not any(t in k for t in TIMING) and k != "backend_info"}
            for r in read_jsonl(run_dir / "metrics.jsonl")]


def same_weights(a: Path, b: Path) -> bool:
    sa, sb = (torch.load(d / "last.pt", weights_only=False)["model"] for d in (a, b))
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def six_epochs(tiny_config):
    """tiny_config over 6 epochs (long enough to be stopped in the middle) on one thread, in this process and in
    run.py alike (the same thread count gives the same float sums). The test process gets its thread counts back."""
    import faiss

    threads, faiss_threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    yield merge(tiny_config, {"train": {"epochs": 6, "relabel_every": 2}, "run": {"threads": 1, "knn_every": 3}})
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(faiss_threads)


def start_run(cfg, tmp_path: Path, *extra: str) -> subprocess.Popen:
    path = tmp_path / f"{cfg.run.name}.json"
    cfg.to_json(path)
    return subprocess.Popen([sys.executable, str(RUN_PY), "--config", str(path), *extra], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_records(run_dir: Path, count: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until metrics.jsonl holds ``count`` records (the run is then inside epoch ``count``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (run_dir / "metrics.jsonl").exists() and len(read_jsonl(run_dir / "metrics.jsonl")) >= count:
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before epoch {count}: {proc.communicate()}")
        time.sleep(0.02)
    raise AssertionError(f"no {count} records after {timeout} s")


def test_sigint_finishes_the_epoch_exits_130_and_resume_completes_the_same_run(six_epochs, tmp_path):
    runs = tmp_path / "runs"
    pipeline.run(merge(six_epochs, {"run": {"name": "alone"}}))
    proc = start_run(merge(six_epochs, {"run": {"name": "stopped"}}), tmp_path)
    wait_for_records(runs / "stopped", 1, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    message = err.strip().splitlines()[-1]
    assert message.startswith("interrupted: SIGINT received: stopped after epoch") and "--resume" in message
    stopped_at = int(message.split("after epoch ")[1].split()[0])
    state = torch.load(runs / "stopped" / "last.pt", weights_only=False)["state"]
    assert stopped_at < 5 and state["epoch"] == stopped_at + 1               # that epoch finished and checkpointed
    assert [r["epoch"] for r in read_jsonl(runs / "stopped" / "metrics.jsonl")] == list(range(stopped_at + 1))

    pipeline.run(merge(six_epochs, {"run": {"name": "stopped", "resume": True}}))
    assert comparable(runs / "stopped") == comparable(runs / "alone")
    assert same_weights(runs / "stopped", runs / "alone")


def test_sigkill_mid_round_loses_at_most_the_current_epoch(six_epochs, tmp_path):
    runs = tmp_path / "runs"
    pipeline.run(merge(six_epochs, {"run": {"name": "alone"}}))
    proc = start_run(merge(six_epochs, {"run": {"name": "killed"}}), tmp_path)
    wait_for_records(runs / "killed", 2, proc)       # inside epoch 2: a relabel epoch (relabel_every 2)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    kept = torch.load(runs / "killed" / "last.pt", weights_only=False)["state"]["epoch"]
    logged = len(read_jsonl(runs / "killed" / "metrics.jsonl"))
    assert kept >= logged - 1 >= 1           # killed in epoch `logged` or in the checkpoint of epoch `logged - 1`

    pipeline.run(merge(six_epochs, {"run": {"name": "killed", "resume": True}}))
    assert comparable(runs / "killed") == comparable(runs / "alone")
    assert same_weights(runs / "killed", runs / "alone")


def damage(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_damaged_last_checkpoint_is_never_used(tiny_config, tmp_path, capsys):
    """Through the pipeline: a damaged last.pt resumes from prev.pt with a warning naming it, and the run ends as the
    undisturbed one; with prev.pt damaged too, run.py stops naming both files (exit 2) and writes nothing."""
    runs = tmp_path / "runs"
    cfg = merge(tiny_config, {"train": {"epochs": 4}})
    pipeline.run(merge(cfg, {"run": {"name": "alone"}}))
    short = merge(cfg, {"train": {"epochs": 2}, "run": {"name": "damaged"}})
    pipeline.run(short)                         # last.pt: after epoch 1, prev.pt: after epoch 0
    damage(runs / "damaged" / "last.pt")
    resumed = merge(cfg, {"run": {"name": "damaged", "resume": True}})
    with pytest.warns(CheckpointWarning, match=r"last\.pt is unusable.*prev\.pt"):
        pipeline.run(resumed)
    assert comparable(runs / "damaged") == comparable(runs / "alone")
    assert same_weights(runs / "damaged", runs / "alone")

    damage(runs / "damaged" / "last.pt")
    damage(runs / "damaged" / "prev.pt")
    before = {p.name: p.read_bytes() for p in (runs / "damaged").iterdir() if p.is_file()}
    resumed.to_json(tmp_path / "resume.json")
    assert run_py.main(["--config", str(tmp_path / "resume.json")]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: no usable checkpoint") and "last.pt" in error and "prev.pt" in error
    assert {p.name: p.read_bytes() for p in (runs / "damaged").iterdir() if p.is_file()} == before


def test_a_diverging_run_stops_naming_the_epoch_and_keeps_the_last_good_checkpoint(tiny_config, tmp_path,
                                                                                   monkeypatch):
    cfg = merge(tiny_config, {"train": {"epochs": 4}, "run": {"name": "diverged"}})
    real_train_epoch = pipeline.train_epoch

    def poisoned_in_epoch_2(ctx, *args, **kwargs):
        stats = real_train_epoch(ctx, *args, **kwargs)
        if kwargs["desc"] == "epoch 2":     # the weights blow up during the epoch (the loss check comes too late)
            with torch.no_grad():
                ctx.model.trunk.mlp[1].weight.fill_(float("nan"))
        return stats

    monkeypatch.setattr(pipeline, "train_epoch", poisoned_in_epoch_2)
    with pytest.raises(pipeline.RunDiverged, match=r"^epoch 2 diverged: .*NaN/inf weights.*checkpoint of epoch 1 is kept"):
        pipeline.run(cfg)
    run_dir = tmp_path / "runs" / "diverged"
    kept = torch.load(run_dir / "last.pt", weights_only=False)
    assert kept["state"]["epoch"] == 2                                  # the end of epoch 1
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())
    assert [r["epoch"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [0, 1]      # epoch 2 is not logged

    # the loss itself turning NaN is caught inside the epoch, with the same message and the same checkpoint
    monkeypatch.setattr(pipeline, "train_epoch", real_train_epoch)
    nan_lr = merge(tiny_config, {"train": {"epochs": 2, "lr": 1e30}, "run": {"name": "nan-loss"}})
    with pytest.raises(pipeline.RunDiverged, match=r"^epoch \d diverged: training loss became (nan|inf)"):
        pipeline.run(nan_lr)
