"""``experiments/run.py`` killed with SIGKILL at a chosen point of a chosen epoch (for tests/test_faults.py).

    python tests/_kill_at.py [--repo DIR] POINT EPOCH [run.py options...]

``--repo``: the checkout whose ``bayes_dc`` and ``experiments/run.py`` run (default: this one), so that
``experiments/bench_resume.py`` can kill an older commit at the same points.

POINT is where the process kills itself (nothing after it runs: no ``finally``, no cleanup, as after ``kill -9``):

- ``train-step``: inside epoch EPOCH's training, after its second optimiser step;
- ``cluster``: inside the relabel that opens epoch EPOCH, when the features go into the reducer (UMAP);
- ``snapshot``: inside that relabel, after its cluster snapshot and lineage record are written;
- ``checkpoint``: inside the checkpoint write after epoch EPOCH, between its renames: the old ``last.pt`` has become
  ``prev.pt`` and the new one is not in place yet (only ``prev.pt`` is left);
- ``after-checkpoint``: between epochs, right after the checkpoint of epoch EPOCH is complete.

The point is armed by wrapping a function of the pipeline in this process only; the run itself is unchanged. If
the point is never reached the run ends as usual and the exit code says so (the test expects -SIGKILL).
"""
from __future__ import annotations

import importlib.util
import os
import signal
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # as experiments/run.py, before torch loads
ROOT = Path(sys.argv[2] if sys.argv[1:2] == ["--repo"] else Path(__file__).resolve().parent.parent).resolve()
sys.path.insert(0, str(ROOT))

from bayes_dc.loop import pipeline  # noqa: E402

POINTS = ("train-step", "cluster", "snapshot", "checkpoint", "after-checkpoint")


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(point: str, epoch: int) -> None:
    """Wrap the pipeline function that reaches ``point`` of ``epoch`` so that it kills the process there."""
    if point == "train-step":
        real_train = pipeline.train_epoch

        def train_epoch(ctx, *args, **kwargs):
            if kwargs.get("desc") == f"epoch {epoch}":
                step, steps = ctx.trunk_opt.step, []

                def counted_step(*a, **kw):
                    out = step(*a, **kw)
                    steps.append(1)
                    if len(steps) == 2:
                        die()
                    return out
                ctx.trunk_opt.step = counted_step
            return real_train(ctx, *args, **kwargs)
        pipeline.train_epoch = train_epoch
    elif point in ("cluster", "snapshot"):
        real_relabel, real_reduce, real_snapshot = pipeline._relabel, pipeline._reduce, pipeline._snapshot_and_lineage
        armed = []

        def relabel(ctx, state, at_epoch):
            armed.append(at_epoch == epoch)
            return real_relabel(ctx, state, at_epoch)

        def reduce(*args, **kwargs):
            if point == "cluster" and armed and armed[-1]:
                die()
            return real_reduce(*args, **kwargs)

        def snapshot(*args, **kwargs):
            real_snapshot(*args, **kwargs)
            if point == "snapshot" and armed and armed[-1]:
                die()
        pipeline._relabel, pipeline._reduce, pipeline._snapshot_and_lineage = relabel, reduce, snapshot
    elif point in ("checkpoint", "after-checkpoint"):
        real_save, real_replace = pipeline._save_checkpoint, os.replace
        saving = []

        def save(ctx, state):
            saving.append(state["epoch"] == epoch + 1)   # state["epoch"]: the next epoch to run
            real_save(ctx, state)
            if point == "after-checkpoint" and saving[-1]:
                die()

        def replace(src, dst, **kwargs):
            real_replace(src, dst, **kwargs)
            if point == "checkpoint" and saving and saving[-1] and Path(dst).name == "prev.pt.json":
                die()
        pipeline._save_checkpoint, os.replace = save, replace
    else:
        raise SystemExit(f"unknown kill point {point!r}; choose one of {POINTS}")


def main(argv: list[str]) -> int:
    if argv[:1] == ["--repo"]:   # read before the imports above
        argv = argv[2:]
    point, epoch, *run_args = argv
    arm(point, int(epoch))
    spec = importlib.util.spec_from_file_location("run_py", ROOT / "experiments" / "run.py")
    run_py = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_py)
    return run_py.main(run_args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
