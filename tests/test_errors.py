"""Runs that cannot work stop before anything is written: one line naming the option, exit code 2, no run directory
left behind (so the corrected command runs), an existing one untouched. And default run names do not collide."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from bayes_dc.config.schema import Config, merge

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("run_py", ROOT / "experiments" / "run.py")
run_py = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_py)

# 60 synthetic 28 px images: everything below is checked against these sizes
TINY = ["--dataset", "synthetic", "--subset", "60", "--eval-subset", "20", "--width", "4", "--epochs", "1",
        "--batch-size", "16", "--prior", "kmeans", "--k", "5", "--pca-dim", "8", "--no-progress", "--no-figures"]


def tree(path: Path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def run_main(capsys, argv: list[str]) -> tuple[int, str]:
    code = run_py.main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("options, named", [
    (["--arch", "alexnet-bn"], "--arch alexnet-bn needs images of at least 63 px, but synthetic images are 28 px"),
    (["--arch", "vgg16-bn"], "--arch vgg16-bn needs images of at least 32 px"),
    (["--k", "61"], "--k 61 exceeds the number of training images (60)"),
    (["--prior", "dp", "--truncation", "61"], "--truncation 61 exceeds the number of training images (60)"),
    (["--batch-size", "61"], "--batch-size 61 is larger than the 60 images an epoch draws"),
    (["--epoch-samples", "30", "--batch-size", "32"], "--batch-size 32 is larger than the 30 images"),
    (["--reduce", "umap", "--umap-neighbors", "59"], "--umap-neighbors 59 needs more than 60 training images"),
    (["--reduce", "umap", "--reduce-dim", "59"], "--reduce-dim 59 must be below N - 1 = 59"),
    (["--num-workers", "-1"], "--num-workers must be >= 0"),
    (["--memory-budget-gb", "0"], "--memory-budget-gb must be > 0"),
    # numeric options: not finite or out of range (bayes_dc.config.rules), refused before the run directory
    (["--lr", "nan"], "--lr must be > 0 (a finite number), got nan"),
    (["--lr", "inf"], "--lr must be > 0 (a finite number), got inf"),
    (["--lr", "0"], "--lr must be > 0 (a finite number), got 0.0"),
    (["--head-lr", "-0.5"], "--head-lr must be > 0"),
    (["--weight-decay", "-0.1"], "--weight-decay must be >= 0"),
    (["--weight-decay", "nan"], "--weight-decay must be >= 0 (a finite number), got nan"),
    (["--momentum", "1"], "--momentum must be >= 0 and < 1"),
    (["--momentum", "-inf"], "--momentum must be >= 0 and < 1"),
    (["--crop-scale", "0", "1"], "--crop-scale must be each value > 0 and <= 1 (a finite number), got 0.0 1.0"),
    (["--prior", "dp", "--alpha", "nan"], "--alpha must be > 0"),
    (["--seed", "-1"], "--seed must be >= 0 (an integer), got -1"),
    (["--knn-k", "0"], "--knn-k must be >= 1"),
])
def test_a_run_that_cannot_work_fails_before_writing(tmp_path, capsys, options, named):
    code, err = run_main(capsys, [*TINY, *options, "--out-dir", str(tmp_path / "runs"), "--name", "bad"])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], err
    assert not (tmp_path / "runs").exists()


def test_alexnet_on_small_images_exits_2_and_the_suggested_size_passes_the_check(tmp_path):
    """The case that used to leave a run directory behind and block the rerun with "already exists"."""
    from bayes_dc.config.cli import config_from_args
    from bayes_dc.loop.pipeline import _load_data, check_sizes

    argv = [*TINY, "--out-dir", str(tmp_path / "runs"), "--name", "a", "--arch", "alexnet-bn"]
    bad = subprocess.run([sys.executable, "experiments/run.py", *argv], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().startswith("error: --arch alexnet-bn needs images of at least 63 px")
    assert "--image-size 63" in bad.stderr and not (tmp_path / "runs").exists()
    fixed = config_from_args(argv + ["--image-size", "63"])
    check_sizes(fixed, *_load_data(fixed))            # the suggested option is enough (63 px is the smallest)
    with pytest.raises(ValueError, match="at least 63 px"):
        small = config_from_args(argv + ["--image-size", "62"])
        check_sizes(small, *_load_data(small))


def test_a_bad_resume_leaves_the_existing_run_untouched(tmp_path, capsys):
    out = ["--out-dir", str(tmp_path / "runs"), "--name", "r"]
    assert run_main(capsys, [*TINY, *out])[0] == 0
    before = tree(tmp_path / "runs" / "r")
    for options, named in [(["--batch-size", "100"], "--batch-size 100 is larger"),   # a check against N
                           (["--k", "7"], "the config differs from the saved run")]:    # a different run
        code, err = run_main(capsys, [*TINY, *out, "--resume", *options])
        assert code == 2 and named in err
    (tmp_path / "runs" / "r" / "last.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "runs" / "r" / "prev.pt").unlink(missing_ok=True)
    damaged = tree(tmp_path / "runs" / "r")
    code, err = run_main(capsys, [*TINY, *out, "--resume", "--epochs", "2"])
    assert code == 2 and "last.pt" in err and "no usable checkpoint" in err
    assert tree(tmp_path / "runs" / "r") == damaged            # config.json / environment.json not rewritten either
    assert before.keys() == damaged.keys()


def test_default_run_names_differ_when_a_result_changing_option_differs():
    base = Config()
    names = {base.default_name(), merge(base, {"train": {"lr": 0.01}}).default_name(),
             merge(base, {"features": {"pca_dim": 32}}).default_name(),
             merge(base, {"cluster": {"alpha": 2.0}}).default_name()}
    assert len(names) == 4
    assert len({n.rsplit("-", 1)[0] for n in names}) == 1       # the readable part cannot tell them apart
    # what --resume may change does not change the name, so the same command finds its run again
    same = merge(base, {"run": {"progress": False, "figures": False, "threads": 1, "out_dir": "elsewhere"},
                        "train": {"epochs": base.train.epochs}})
    assert same.default_name() == base.default_name()
    assert merge(base, {"run": {"seed": 1}}).default_name().startswith("fashion-mnist-dp-T300-init-hard-e10-s1-")


def test_runs_without_name_one_after_another_do_not_collide(tmp_path, capsys):
    out = ["--out-dir", str(tmp_path / "runs")]
    assert run_main(capsys, [*TINY, *out])[0] == 0
    assert run_main(capsys, [*TINY, *out, "--lr", "0.01"])[0] == 0
    assert len(list((tmp_path / "runs").iterdir())) == 2
