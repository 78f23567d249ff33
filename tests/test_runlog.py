"""Checkpoints that cannot corrupt a run, file permissions in the run directory, and the Ctrl-C helper."""
from __future__ import annotations

import dataclasses
import functools
import os
import signal
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from bayes_dc.config.schema import Config, merge
from bayes_dc.models.nets import build_model
from bayes_dc.rundir.runlog import (CheckpointError, CheckpointWarning, RunDir, atomic_write_text, graceful_interrupt, load_checkpoint, manifest_path, previous_path, save_checkpoint, write_manifest)
from bayes_dc.loop.targets import Targets


@functools.lru_cache(maxsize=None)   # built once per epoch value; tests only read it
def pipeline_checkpoint(epoch: int) -> dict:
    """What pipeline.run checkpoints: model and optimiser state dicts, the loop state, the config."""
    torch.manual_seed(epoch)
    model = build_model("vgg-small", 1, width=4, num_outputs=6)
    trunk_opt = torch.optim.SGD(model.trunk.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-5)
    head_opt = torch.optim.SGD(model.head.parameters(), lr=0.05, momentum=0.9)
    model(torch.randn(4, 1, 28, 28)).sum().backward()
    trunk_opt.step()
    head_opt.step()                                        # momentum buffers now exist
    n, k = 12, 3
    targets = Targets(kind="soft", labels=torch.randint(0, 6, (n,)), resp_values=torch.rand(n, k),
                      resp_index=torch.randint(0, 6, (n, k)), used=torch.rand(6) > 0.3,
                      sample_weights=torch.rand(n, dtype=torch.float64))
    # The DP-GMM warm state (clustering.dpgmm: state_): CPU tensors, ints, a tuple of floats or None.
    warm = {"version": 1, "resp_values": torch.rand(n, k), "resp_index": torch.randint(0, 6, (n, k)),
            "n_points": n, "dim": 4, "truncation": 6, "alpha_posterior": (2.5, 1.25)}
    state = {"epoch": epoch, "round": 2, "targets": targets, "warm_state": warm,
             "prev_labels": np.arange(n, dtype=np.int64) % 5, "last_relabel": None, "agreement": 0.75}
    return {"model": model.state_dict(), "trunk_opt": trunk_opt.state_dict(), "head_opt": head_opt.state_dict(),
            "state": state, "config": Config().to_dict()}


def assert_same(a, b, where="checkpoint"):
    """Exact equality, types included (tensors: dtype and values; numpy: dtype, shape and values)."""
    assert type(a) is type(b), f"{where}: {type(a)} != {type(b)}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b), where
    elif dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        assert getattr(a, "_metadata", None) == getattr(b, "_metadata", None), f"{where}._metadata"
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def zero_middle(path: Path, count: int = 64) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + count] = bytes(count)
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# ---- content: round trip under weights_only=True ---------------------------------------------------------


def test_pipeline_checkpoint_round_trips_exactly(tmp_path):
    original = pipeline_checkpoint(epoch=3)
    save_checkpoint(original, tmp_path / "last.pt")
    torch.load(tmp_path / "last.pt", weights_only=True)    # the file itself needs no unpickling of code
    loaded = load_checkpoint(tmp_path / "last.pt")
    assert_same(original, loaded)
    assert isinstance(loaded["model"], OrderedDict) and loaded["state"]["prev_labels"].flags.writeable
    model = build_model("vgg-small", 1, width=4, num_outputs=6)
    model.load_state_dict(loaded["model"])                 # strict: every key and shape fits
    torch.optim.SGD(model.trunk.parameters(), lr=0.05, momentum=0.9).load_state_dict(loaded["trunk_opt"])


def test_numpy_scalars_and_dtypes_round_trip(tmp_path):
    original = {"f32": np.float32(1.5), "u16": np.arange(6, dtype=np.uint16).reshape(2, 3),
                "be": np.arange(3, dtype=">i4"), "empty": np.zeros((0, 4)), "bools": np.array([True, False])}
    save_checkpoint(original, tmp_path / "last.pt")
    assert_same(original, load_checkpoint(tmp_path / "last.pt"))


@pytest.mark.parametrize("bad,where", [({"state": {"fn": lambda x: x}}, "['state']['fn']"),
                                       ({"ids": {1, 2}}, "['ids']"),
                                       ({"labels": np.array([object()])}, "['labels']")])
def test_content_that_would_not_load_safely_is_refused_at_save(tmp_path, bad, where):
    with pytest.raises(TypeError) as info:
        save_checkpoint(bad, tmp_path / "last.pt")
    assert where in str(info.value)
    assert not any(tmp_path.iterdir())                     # nothing written, no temporary left behind


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tmp_path / "last.pt"
    torch.save({"model": Exploit()}, path)
    write_manifest(path)                                   # even a valid checksum does not make it safe
    with pytest.raises(CheckpointError, match="weights_only=True") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and not marker.exists()


# ---- damaged files: never used silently ---------------------------------------------------------------


@pytest.mark.parametrize("damage", [zero_middle, truncate, Path.unlink])
def test_damaged_last_falls_back_to_the_previous_checkpoint(tmp_path, damage):
    path = tmp_path / "last.pt"
    save_checkpoint(pipeline_checkpoint(epoch=1), path)
    save_checkpoint(pipeline_checkpoint(epoch=2), path)
    damage(path)
    with pytest.warns(CheckpointWarning, match=str(path)):
        loaded = load_checkpoint(path)
    assert loaded["state"]["epoch"] == 1
    assert_same(pipeline_checkpoint(epoch=1), loaded)


@pytest.mark.parametrize("damage", [zero_middle, truncate])
def test_damaged_checkpoint_without_a_good_one_raises_naming_it(tmp_path, damage):
    path = tmp_path / "last.pt"
    save_checkpoint(pipeline_checkpoint(epoch=1), path)
    damage(path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and ("sha256" in message or "bytes" in message)


def test_a_damaged_last_is_not_rotated_over_the_good_previous(tmp_path):
    path = tmp_path / "last.pt"
    for epoch in (1, 2):
        save_checkpoint(pipeline_checkpoint(epoch=epoch), path)
    zero_middle(path)                                      # epoch 2 damaged on disk
    save_checkpoint(pipeline_checkpoint(epoch=3), path)   # must keep epoch 1 as prev.pt, not the damaged 2
    zero_middle(path)
    with pytest.warns(CheckpointWarning):
        assert load_checkpoint(path)["state"]["epoch"] == 1


def test_a_crash_between_the_renames_of_a_save_leaves_a_usable_checkpoint(tmp_path):
    """The save renames last.pt -> prev.pt, then last.pt.json -> prev.pt.json: stop after the first."""
    path = tmp_path / "last.pt"
    for epoch in (1, 2):
        save_checkpoint(pipeline_checkpoint(epoch=epoch), path)
    os.replace(path, previous_path(path))                  # prev.pt is now epoch 2, prev.pt.json still epoch 1's
    with pytest.warns(CheckpointWarning, match="missing"):
        assert load_checkpoint(path)["state"]["epoch"] == 2


def test_checkpoint_without_manifest_needs_explicit_consent(tmp_path):
    path = tmp_path / "last.pt"
    torch.save({"state": {"epoch": 4}}, path)             # as written before manifests existed
    with pytest.raises(CheckpointError, match="allow_unverified"):
        load_checkpoint(path)
    with pytest.warns(CheckpointWarning, match="unverified"):
        assert load_checkpoint(path, allow_unverified=True)["state"]["epoch"] == 4


def test_no_checkpoint_means_none_but_an_orphan_manifest_is_an_error(tmp_path):
    path = tmp_path / "last.pt"
    assert load_checkpoint(path) is None
    save_checkpoint({"state": {"epoch": 1}}, path)
    path.unlink()
    with pytest.raises(CheckpointError, match="moved or deleted"):
        load_checkpoint(path)


# ---- permissions -------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600)])
def test_run_files_follow_the_umask_like_open(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        cfg = merge(Config(), {"run": {"out_dir": str(tmp_path), "name": "r", "device": "cpu"}})
        run = RunDir.open(cfg, torch.device("cpu"))
        run.save_checkpoint({"state": {"epoch": 0}})
        run.save_checkpoint({"state": {"epoch": 1}})
        run.save_snapshot(0, np.zeros(3, int), np.ones((3, 1)), np.zeros((3, 1), int), np.ones(1))
        atomic_write_text(run.path / "note.txt", "x")
        with open(run.path / "plain.txt", "w") as f:      # the reference: what open() gives
            f.write("x")
    finally:
        os.umask(old)
    files = ["config.json", "environment.json", "last.pt", "last.pt.json", "prev.pt", "prev.pt.json",
             "clusters/round_0000.npz", "note.txt", "plain.txt"]
    assert {name: (run.path / name).stat().st_mode & 0o777 for name in files} == {name: mode for name in files}
    assert manifest_path(run.checkpoint_path).exists()


# ---- Ctrl-C -----------------------------------------------------------------------------------------------


def wait_for(condition, seconds: float = 2.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)   # signal handlers run between bytecodes of the main thread
    return condition()


def test_first_sigint_sets_the_flag_second_raises_and_handler_is_restored():
    before = signal.getsignal(signal.SIGINT)
    with graceful_interrupt() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGINT)
        assert wait_for(lambda: stop.requested) and stop.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            wait_for(lambda: False)
    assert signal.getsignal(signal.SIGINT) is before


# ---- failed writes and racing runs (issue 26) ----------------------------------------------------------------------
def full_after(room: int, code: int):
    """A stand-in for ``atomic._RecordingFile``: every file the atomic writer opens takes ``room`` bytes, then its
    writes fail with errno ``code`` (what a disk filling up, a quota, a read-only remount or lost permissions do)."""
    from bayes_dc.rundir.atomic import _RecordingFile

    class Failing(_RecordingFile):
        written = 0

        def write(self, data):
            size = len(memoryview(data).cast("B"))
            if self.written + size > room:
                self.error = OSError(code, os.strerror(code))
                raise self.error
            self.written += size
            return self._file.write(data)
    return Failing


@pytest.mark.parametrize("code", ["ENOSPC", "EDQUOT", "EROFS", "EACCES"])
def test_a_checkpoint_write_that_fails_names_the_file_and_cause_and_keeps_the_last_good_one(tmp_path, monkeypatch,
                                                                                             code):
    """The OSError raised inside torch.save (which torch itself reports as "unexpected pos ...") comes out as one
    WriteError line naming last.pt and the cause; last.pt and prev.pt are left as they were and still load."""
    import errno

    from bayes_dc.rundir import atomic
    from bayes_dc.rundir.atomic import WriteError
    path = tmp_path / "run" / "last.pt"
    save_checkpoint(pipeline_checkpoint(1), path)
    save_checkpoint(pipeline_checkpoint(2), path)
    before = {p.name: p.read_bytes() for p in path.parent.iterdir()}
    monkeypatch.setattr(atomic, "_RecordingFile", full_after(4096, getattr(errno, code)))
    with pytest.raises(WriteError) as info:
        save_checkpoint(pipeline_checkpoint(3), path)
    message = str(info.value)
    assert len(message.splitlines()) == 1 and str(path) in message, message
    assert os.strerror(getattr(errno, code)) in message and "unexpected pos" not in message
    assert info.value.errno == getattr(errno, code)
    assert {p.name: p.read_bytes() for p in path.parent.iterdir()} == before    # no temporary file left either
    monkeypatch.undo()
    assert_same(load_checkpoint(path), load_checkpoint_reference(2))


def load_checkpoint_reference(epoch: int) -> dict:
    from bayes_dc.rundir.checkpoints import decode_checkpoint, encode_checkpoint
    return decode_checkpoint(encode_checkpoint(pipeline_checkpoint(epoch)))


def test_a_full_real_filesystem_gives_the_same_error(tmp_path):
    """On a 1 MiB tmpfs (root only; skipped where mount is not permitted): a checkpoint that does not fit."""
    import subprocess

    from bayes_dc.rundir.atomic import WriteError
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        path = mount / "last.pt"
        save_checkpoint({"w": torch.zeros(1000)}, path)
        with pytest.raises(WriteError, match=rf"cannot write {path}: No space left on device; free space"):
            save_checkpoint({"w": torch.zeros(400_000)}, path)   # 1.6 MB
        assert torch.equal(load_checkpoint(path)["w"], torch.zeros(1000))
        assert sorted(p.name for p in mount.iterdir()) == ["last.pt", "last.pt.json"]
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.parametrize("made_beforehand", [False, True])
def test_two_runs_started_at_once_under_one_name_exactly_one_runs(tmp_path, made_beforehand):
    """Both pass RunDir.prepare (the directory is absent, or empty) before either writes; then they race in start():
    exactly one claims the directory, the other gets the "already exists" RunDirError. Repeated to give the race
    every chance."""
    import threading

    from bayes_dc.rundir.runlog import RunDirError
    for attempt in range(20):
        cfg = merge(Config(), {"run": {"out_dir": str(tmp_path / "runs"), "name": f"race-{attempt}"}})
        if made_beforehand:
            (tmp_path / "runs" / f"race-{attempt}").mkdir(parents=True)
        both_prepared = threading.Barrier(2)
        outcomes: list = []

        def start():
            try:
                run = RunDir.prepare(cfg)
                both_prepared.wait()
                run.start(cfg, torch.device("cpu"))
                outcomes.append("ran")
            except RunDirError as err:
                outcomes.append(str(err))
        threads = [threading.Thread(target=start) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes, key=len)[0] == "ran", outcomes
        assert outcomes.count("ran") == 1 and "already exists" in max(outcomes, key=len), outcomes
        assert Config.from_json(tmp_path / "runs" / f"race-{attempt}" / "config.json") == cfg
