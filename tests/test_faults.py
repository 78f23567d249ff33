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

from bayes_dc.loop import pipeline
from bayes_dc.config.schema import merge
from bayes_dc.rundir.jsonl import read_jsonl
from bayes_dc.rundir.runlog import CheckpointWarning
from test_errors import run_py   # experiments/run.py as a module

ROOT = Path(__file__).resolve().parent.parent
RUN_PY = ROOT / "experiments" / "run.py"
TIMING = ("seconds", "share")


def without_timings(value):
    """``value`` without the dict entries whose key names a wall-clock quantity, at any depth."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if not any(t in k for t in TIMING)}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def comparable(run_dir: Path) -> list[dict]:
    """metrics.jsonl without wall-clock fields (they legitimately differ between runs), backend_info kept: the DP's
    move counts, q(alpha), convergence and ELBOs must repeat too."""
    return [without_timings(r) for r in read_jsonl(run_dir / "metrics.jsonl")]


def same_weights(a: Path, b: Path) -> bool:
    sa, sb = (torch.load(d / "last.pt", weights_only=True)["model"] for d in (a, b))
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
    state = torch.load(runs / "stopped" / "last.pt", weights_only=True)["state"]
    assert stopped_at < 5 and state["epoch"] == stopped_at + 1               # that epoch finished and checkpointed
    assert [r["epoch"] for r in read_jsonl(runs / "stopped" / "metrics.jsonl")] == list(range(stopped_at + 1))

    pipeline.run(merge(six_epochs, {"run": {"name": "stopped", "resume": True}}))
    assert comparable(runs / "stopped") == comparable(runs / "alone")
    assert same_weights(runs / "stopped", runs / "alone")


KILL_AT = ROOT / "tests" / "_kill_at.py"


@pytest.fixture
def default_tiny(tmp_path):
    """The default configuration (DP-GMM in a UMAP space, relabel every 2 epochs, resized crops, hard targets, a fresh
    head per round) on 300 generated images over 4 epochs (relabels open epochs 0 and 2), on one thread in this
    process and in the killed ones alike. The test process gets its thread counts back."""
    import faiss

    from bayes_dc.config.schema import Config

    threads, faiss_threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    yield merge(Config(), {
        "data": {"dataset": "synthetic", "subset": 300, "eval_subset": 100},
        "model": {"width": 4}, "features": {"extract_batch": 300}, "cluster": {"truncation": 50},
        "train": {"epochs": 4, "batch_size": 64},
        "run": {"out_dir": str(tmp_path / "runs"), "threads": 1, "progress": False, "figures": False}})
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(faiss_threads)


def kill_at(point: str, epoch: int, cfg, tmp_path: Path) -> str:
    """Resume ``cfg``'s run in a new process that SIGKILLs itself at ``point`` of ``epoch`` (tests/_kill_at.py);
    returns its stderr."""
    path = tmp_path / "resume.json"
    merge(cfg, {"run": {"resume": True}}).to_json(path)
    proc = subprocess.run([sys.executable, str(KILL_AT), point, str(epoch), "--config", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, f"not killed at {point} of epoch {epoch}: {proc.stderr[-2000:]}"
    return proc.stderr


def test_the_default_configuration_killed_anywhere_resumes_to_the_uninterrupted_run(default_tiny, tmp_path,
                                                                                   monkeypatch):
    """A clean stop after epoch 0, then five SIGKILLs of the resumed run, one at every point tests/_kill_at.py
    defines: inside a non-relabel epoch (the first epoch after a resume that does not cluster), inside a checkpoint
    write (between its renames), between epochs, inside a relabel's clustering, and after a relabel's snapshot and
    lineage record but before its epoch's checkpoint. Every number of metrics.jsonl, the lineage and the final
    weights equal the uninterrupted run's. On f98c803 (before issue 18) it fails from the first loss on: a process's
    first UMAP fit left torch on numba's thread count, so the runs trained on 1 or 2 threads depending on what the
    process had done before (BENCHMARKS.md section 10)."""
    runs = tmp_path / "runs"
    pipeline.run(merge(default_tiny, {"run": {"name": "alone"}}))
    cfg = merge(default_tiny, {"run": {"name": "killed"}})
    real_save = pipeline._save_checkpoint

    def stop_after_epoch_0(ctx, state):   # what a Ctrl-C during epoch 0 does, without a signal to this test process
        real_save(ctx, state)
        if state["epoch"] == 1:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(pipeline, "_save_checkpoint", stop_after_epoch_0)
    with pytest.raises(pipeline.RunInterrupted, match="stopped after epoch 0"):
        pipeline.run(cfg)
    monkeypatch.setattr(pipeline, "_save_checkpoint", real_save)
    run_dir = runs / "killed"

    kill_at("train-step", 1, cfg, tmp_path)           # epoch 1 has no relabel: it resumes straight into training
    kill_at("checkpoint", 1, cfg, tmp_path)           # the checkpoint of epoch 0 is now prev.pt, and alone
    assert not (run_dir / "last.pt").exists() and (run_dir / "prev.pt").exists()
    err = kill_at("after-checkpoint", 1, cfg, tmp_path)
    assert "resuming from the previous good checkpoint" in err and "prev.pt" in err
    kill_at("cluster", 2, cfg, tmp_path)
    assert torch.load(run_dir / "last.pt", weights_only=True)["state"]["epoch"] == 2
    assert len(list((run_dir / "clusters").glob("round_*.npz"))) == 1     # epoch 2's relabel wrote nothing yet
    kill_at("snapshot", 2, cfg, tmp_path)             # epoch 2's snapshot and lineage written, its checkpoint not
    assert len(list((run_dir / "clusters").glob("round_*.npz"))) == 2
    assert torch.load(run_dir / "last.pt", weights_only=True)["state"]["epoch"] == 2

    pipeline.run(merge(cfg, {"run": {"resume": True}}))
    assert comparable(run_dir) == comparable(runs / "alone")
    assert read_jsonl(run_dir / "lineage.jsonl") == read_jsonl(runs / "alone" / "lineage.jsonl")
    assert same_weights(run_dir, runs / "alone")
    assert not list(run_dir.rglob("*.tmp"))            # the killed writes' temporary files were cleared


def test_the_default_configuration_twice_with_the_default_threads_gives_the_same_run(default_tiny):
    """The same configuration twice, on the libraries' thread counts (no --threads: torch on this process's count, 2
    from conftest, so the float sums are split over threads): every number of metrics.jsonl and every weight equal.
    The first run also pays numba's compilation of UMAP, so the two do not start from the same process state."""
    cfg = merge(default_tiny, {"run": {"threads": None}})
    threads = torch.get_num_threads()
    torch.set_num_threads(2)   # what conftest sets; an earlier test's --threads 1 run may have left 1
    runs = Path(cfg.run.out_dir)
    try:
        for name in ("first", "second"):
            pipeline.run(merge(cfg, {"run": {"name": name}}))
    finally:
        torch.set_num_threads(threads)
    assert comparable(runs / "second") == comparable(runs / "first")
    assert same_weights(runs / "second", runs / "first")


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
    kept = torch.load(run_dir / "last.pt", weights_only=True)
    assert kept["state"]["epoch"] == 2                                  # the end of epoch 1
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())
    assert [r["epoch"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [0, 1]      # epoch 2 is not logged

    # the loss itself turning NaN is caught inside the epoch, with the same message and the same checkpoint
    monkeypatch.setattr(pipeline, "train_epoch", real_train_epoch)
    nan_lr = merge(tiny_config, {"train": {"epochs": 2, "lr": 1e30}, "run": {"name": "nan-loss"}})
    with pytest.raises(pipeline.RunDiverged, match=r"^epoch \d diverged: training loss became (nan|inf)"):
        pipeline.run(nan_lr)


def test_a_full_disk_mid_run_is_one_line_exit_2_and_the_run_resumes_to_the_undisturbed_one(tiny_config, tmp_path,
                                                                                           monkeypatch, capsys):
    """ENOSPC injected at the writer (inside torch.save of the second checkpoint, where torch itself would report
    "unexpected pos ..."): run.py prints one line naming last.pt, the cause and --resume, exits 2, and the first
    checkpoint loads; --resume after "freeing space" ends as the undisturbed run."""
    import errno

    from bayes_dc.rundir import checkpoints
    from bayes_dc.rundir.runlog import load_checkpoint
    runs = tmp_path / "runs"
    pipeline.run(merge(tiny_config, {"run": {"name": "alone"}}))
    real_write_temp, saves = checkpoints.write_temp, []

    def disk_fills_at_the_second_checkpoint(path, write):
        if path.name == "last.pt":
            saves.append(path)
            if len(saves) == 2:
                def write_until_full(f):
                    f.write(b"\0" * 1000)
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return real_write_temp(path, write_until_full)
        return real_write_temp(path, write)

    monkeypatch.setattr(checkpoints, "write_temp", disk_fills_at_the_second_checkpoint)
    cfg = merge(tiny_config, {"run": {"name": "full"}})
    cfg.to_json(tmp_path / "full.json")
    assert run_py.main(["--config", str(tmp_path / "full.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"error: cannot write {runs / 'full' / 'last.pt'}: No space left on device; free space")
    assert "--resume" in err[0]
    monkeypatch.undo()
    assert load_checkpoint(runs / "full" / "last.pt")["state"]["epoch"] == 1          # the first checkpoint, whole
    assert not list((runs / "full").rglob("*.tmp"))
    pipeline.run(merge(cfg, {"run": {"resume": True}}))
    assert comparable(runs / "full") == comparable(runs / "alone")
    assert same_weights(runs / "full", runs / "alone")


def test_a_run_on_a_real_full_filesystem_stops_with_the_cause_and_keeps_its_checkpoint(tiny_config, tmp_path, capsys):
    """A 4 MiB tmpfs (root only; skipped where mount is not permitted): one epoch fits; then the filesystem is filled
    and the resumed run stops with the cause named (exit 2), its checkpoint intact; freed, it finishes."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    from bayes_dc.rundir.runlog import load_checkpoint
    try:
        cfg = merge(tiny_config, {"train": {"epochs": 1}, "run": {"out_dir": str(mount), "name": "small"}})
        pipeline.run(cfg)
        filler = mount / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)   # take every byte left
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        resumed = merge(cfg, {"train": {"epochs": 2}, "run": {"resume": True}})
        resumed.to_json(tmp_path / "resume.json")
        assert run_py.main(["--config", str(tmp_path / "resume.json")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "No space left on device" in err[0] and str(mount / "small") in err[0], err
        assert "--resume" in err[0] and "unexpected pos" not in err[0]
        assert load_checkpoint(mount / "small" / "last.pt")["state"]["epoch"] == 1
        filler.unlink()
        assert run_py.main(["--config", str(tmp_path / "resume.json")]) == 0
        assert 1 in [r["epoch"] for r in read_jsonl(mount / "small" / "metrics.jsonl")]      # epoch 1 trained
        assert load_checkpoint(mount / "small" / "last.pt")["state"]["epoch"] == 2
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_thread_settings_follow_the_cpus_this_process_may_use_and_leave_the_users_alone(monkeypatch):
    """bayes_dc.runtime.threads.thread_environment: passive waiting and one thread per CPU of the affinity mask (not
    the node's count), each only where the user set nothing."""
    from bayes_dc.runtime import threads
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {3, 5, 7}, raising=False)
    env = {}
    assert threads.thread_environment(env) == {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "3"}
    assert env == {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "3"}
    mine = {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "8"}
    assert threads.thread_environment(mine) == {} and mine == {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "8"}


def test_import_bayes_dc_sets_the_threads_before_torch_starts_its_pool(tmp_path):
    """In a fresh process confined to one CPU (taskset), with nothing set: ``import bayes_dc`` then torch gives
    passive waiting and 1 torch thread; a user's OMP_WAIT_POLICY stays."""
    import shutil
    if shutil.which("taskset") is None or not hasattr(os, "sched_getaffinity"):
        pytest.skip("needs taskset and os.sched_getaffinity (Linux)")
    code = ("import os, bayes_dc, torch; print(os.environ['OMP_WAIT_POLICY'], os.environ['OMP_NUM_THREADS'], "
            "torch.get_num_threads())")
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    base["PYTHONPATH"] = str(ROOT)
    cpu = str(min(os.sched_getaffinity(0)))
    out = subprocess.run(["taskset", "-c", cpu, sys.executable, "-c", code], env=base, capture_output=True,
                         text=True, check=True, cwd=tmp_path).stdout.split()
    assert out == ["PASSIVE", "1", "1"]
    out = subprocess.run(["taskset", "-c", cpu, sys.executable, "-c", code], env={**base, "OMP_WAIT_POLICY": "ACTIVE"},
                         capture_output=True, text=True, check=True, cwd=tmp_path).stdout.split()
    assert out == ["ACTIVE", "1", "1"]
