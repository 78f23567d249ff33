"""The generated command line (bayes_dc.config.cli): precedence, None-able options, choices, round trip, help text,
and the config metadata it and the sweeps rely on."""
import dataclasses
import json
import re
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest

from bayes_dc.config import schema as C
from bayes_dc.config.cli import CLIError, check_command_line, config_from_args, list_presets, one_line, to_args
from bayes_dc.config.schema import OPTIONS, Config
from bayes_dc.config.rules import (CROSS_RULES, RANGES, OptionError, check_config, check_option, check_ranges,
                                   command_line_message, describe, flag, parse_interval)

ROOT = Path(__file__).resolve().parent.parent
HINTS = {name: typing.get_type_hints(type(getattr(Config(), section)))[name] for name, (section, _) in OPTIONS.items()}


def choices(tp) -> tuple | None:
    """The values of a Literal (or Literal | None) type, else None."""
    if typing.get_origin(tp) is typing.Literal:
        return typing.get_args(tp)
    inner = [choices(a) for a in typing.get_args(tp)]
    return next((c for c in inner if c), None)


def optional(tp) -> bool:
    return type(None) in typing.get_args(tp)


def other_value(tp, default):
    """A valid value of type ``tp`` that differs from ``default`` (to show a field really travels)."""
    if choices(tp):
        return next(c for c in choices(tp) if c != default)
    base = [a for a in typing.get_args(tp) if a is not type(None)][0] if optional(tp) else tp
    if base is bool:
        return not default
    if base is int:
        return 7 if default is None else default + 3
    if base is float:
        return 0.375 if default is None else default * 2 + 0.125
    if base is str:
        return "other-value"
    if typing.get_origin(base) is tuple:
        return (2.5, 0.75)
    raise AssertionError(f"no test value for type {tp}")


def values_of(cfg: Config) -> dict:
    return {name: getattr(getattr(cfg, section), name) for name, (section, _) in OPTIONS.items()}


def test_every_field_round_trips_through_the_command_line():
    defaults = C.option_defaults()
    changed = {name: other_value(HINTS[name], defaults[name]) for name in OPTIONS}
    parsed = values_of(config_from_args(to_args(changed)))
    assert parsed == changed  # every field reached its section with its type (tuples stay tuples)
    assert all(parsed[n] != defaults[n] for n in OPTIONS)


def test_precedence_defaults_preset_config_file_command_line(tmp_path):
    preset = json.loads((ROOT / "experiments" / "configs" / "quick.json").read_text())
    assert preset["train"]["epochs"] != 3 and preset["data"]["subset"] != Config().data.subset
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"train": {"epochs": 3}, "cluster": {"k": 7}}))
    cfg = config_from_args(["--preset", "quick", "--config", str(path), "--k", "9"])
    assert cfg.data.subset == preset["data"]["subset"]      # preset over defaults
    assert cfg.train.epochs == 3                              # config file over preset
    assert cfg.cluster.k == 9                                 # command line over config file
    assert cfg.train.lr == Config().train.lr                  # set by nobody: the default
    # A run's config.json is a valid --config and reproduces the run's config exactly.
    saved = tmp_path / "saved.json"
    cfg.to_json(saved)
    assert config_from_args(["--config", str(saved)]) == cfg


@pytest.mark.parametrize("name", [n for n in OPTIONS if optional(HINTS[n])])
def test_none_able_option_can_be_set_back_to_none(tmp_path, name):
    section = OPTIONS[name][0]
    value = other_value(HINTS[name], None)
    path = tmp_path / "c.json"
    path.write_text(json.dumps({section: {name: value}}))
    assert getattr(getattr(config_from_args(["--config", str(path)]), section), name) == value
    flag = "--" + name.replace("_", "-")
    assert getattr(getattr(config_from_args(["--config", str(path), flag, "None"]), section), name) is None


@pytest.mark.parametrize("name", [n for n in OPTIONS if choices(HINTS[n])])
def test_enumerated_option_rejects_other_values_listing_the_choices(name):
    flag = "--" + name.replace("_", "-")
    with pytest.raises(CLIError) as err:
        config_from_args([flag, "not-a-choice"])
    message = str(err.value)
    assert "\n" not in message and flag in message and "not-a-choice" in message
    assert all(c in message for c in choices(HINTS[name]))


def test_unknown_preset_is_one_line_listing_presets():
    with pytest.raises(CLIError) as err:
        config_from_args(["--preset", "nope"])
    assert "\n" not in str(err.value) and "'nope'" in str(err.value)
    assert all(p in str(err.value) for p in list_presets())
    with pytest.raises(CLIError, match="--preset: expected one argument"):
        config_from_args(["--k", "3", "--preset"])


@pytest.mark.parametrize("contents, named", [("{not json", "not valid JSON"),
                                              ('{"cluster": {"kk": 3}}', "valid fields")])
def test_bad_config_file_is_a_clear_error(tmp_path, contents, named):
    path = tmp_path / "bad.json"
    path.write_text(contents)
    with pytest.raises(CLIError, match=f"--config {re.escape(str(path))}: .*{named}"):
        config_from_args(["--config", str(path)])
    with pytest.raises(CLIError, match="no such file"):
        config_from_args(["--config", str(tmp_path / "missing.json")])


@pytest.mark.parametrize("argv, named", [
    (["--preset", "nope"], "choose one of"),
    (["--prior", "gmm"], "--prior"),
    (["--truncaton", "20"], "--truncation"),          # a typo gets a suggestion
    (["--subset", "many"], "--subset"),
    (["--alpha-prior", "1"], "--alpha-prior"),
    (["--dataset", "synthetic", "--prior", "kmeans", "--head", "keep"], "--head keep"),  # pipeline.validate
])
def test_run_py_bad_options_fail_in_one_line_with_exit_2_and_write_nothing(tmp_path, argv, named):
    out = subprocess.run([sys.executable, "experiments/run.py", *argv, "--out-dir", str(tmp_path / "runs")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "runs").exists()


def help_entries(text: str) -> dict[str, str]:
    """--help output -> {flag: its help text}, reading tyro's boxes (one column: not a terminal)."""
    entries, current = {}, None
    for line in re.sub(r"[\u2500-\u257f]", " ", text).splitlines():
        match = re.match(r"^\s{1,4}(--[\w-]+)", line)
        if match:
            current = match.group(1)
            entries[current] = line[match.end():]
        elif current and line.startswith(" " * 10) and line.strip():
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


def test_help_describes_every_option_and_lists_choices(capsys):
    with pytest.raises(SystemExit) as stop:
        config_from_args(["--help"])
    assert stop.value.code == 0
    entries = help_entries(capsys.readouterr().out)
    for name in OPTIONS:
        flag = "--" + name.replace("_", "-")
        assert flag in entries, f"{flag} missing from --help"
        described = re.sub(r"\(default:[^)]*\)|\{[^}]*\}|\b[A-Z]{3,}\b", " ", entries[flag])
        assert len(re.findall(r"[a-z]{3,}", described)) >= 2, f"{flag} has no description: {entries[flag]!r}"
        if choices(HINTS[name]):
            listed = ",".join(choices(HINTS[name]))
            # an Optional choice (None: the prior's default) lists None first
            assert "{" + listed + "}" in entries[flag] or "{None," + listed + "}" in entries[flag], \
                f"{flag} does not list choices"
    assert "{" + ",".join(["None", *list_presets()]) + "}" in entries["--preset"]


def test_one_line_keeps_the_message_only():
    panel = ("╭─ Invalid choice ──╮\n│ invalid choice 'x' for argument '--head'. │\n│ ─────── │\n"
             "│ Argument helptext: │\n│   --head {reset,keep} │\n│ For full helptext, run run.py --help │\n╰────╯\n")
    assert one_line(panel) == "invalid choice 'x' for argument '--head'."


# ---- the Literal types repeat registry names: they must agree, or a new dataset / backend would be missed ----
def test_literal_choices_agree_with_the_registries():
    from bayes_dc.clustering import BACKENDS, dpgmm
    from bayes_dc.data import DATASETS, SPLITS
    from bayes_dc.models.nets import ARCHS
    from bayes_dc.spaces.registry import REDUCERS
    from bayes_dc.loop.targets import TARGET_KINDS

    assert set(typing.get_args(C.Dataset)) == set(DATASETS)
    assert set(typing.get_args(C.Split)) == {s for splits in SPLITS.values() for s in splits} | {"none"}
    assert set(typing.get_args(C.Arch)) == set(ARCHS)
    assert set(typing.get_args(C.Backend)) == set(BACKENDS)
    assert set(typing.get_args(C.TargetKind)) == set(TARGET_KINDS)
    assert set(typing.get_args(C.Inference)) == set(dpgmm.INFERENCES)
    assert set(typing.get_args(C.Covariance)) == set(dpgmm.COVARIANCES)
    assert set(typing.get_args(C.WarmStart)) == set(dpgmm.WARM_STARTS)
    assert set(typing.get_args(C.Reduce)) == set(REDUCERS)
    from bayes_dc.spaces.parametric import PUMAP_INITS
    assert set(typing.get_args(C.PumapInit)) == set(PUMAP_INITS)
    from bayes_dc.data import STREAMING_CHOICES
    from bayes_dc.models.features import MEMMAP_DTYPES
    assert set(typing.get_args(C.Streaming)) == set(STREAMING_CHOICES)
    assert set(typing.get_args(C.MemmapDtype)) == set(MEMMAP_DTYPES)


def test_field_metadata_names_real_backends_options_and_values():
    from bayes_dc.clustering import BACKENDS

    for name, (_, f) in OPTIONS.items():
        assert set(f.metadata) <= {"backend", "only_if"}, (name, dict(f.metadata))
        assert f.metadata.get("backend", "dp") in BACKENDS, name
        for other, allowed in f.metadata.get("only_if", {}).items():
            assert other in OPTIONS and other != name, (name, other)
            valid = choices(HINTS[other]) or ((True, False) if HINTS[other] is bool else None)
            assert valid is not None and set(allowed) <= set(valid), (name, other, allowed)


def test_unused_options_follow_backend_and_conditions():
    assert C.unused_options({"prior": "kmeans", "k": 5, "alpha": 2.0, "warm_start": "prior", "prior_decay": 1.0}) \
        == {"alpha", "warm_start", "prior_decay"}
    assert C.unused_options({"prior": "dp", "k": 5, "warm_start": "init", "prior_decay": 1.0}) == {"k", "prior_decay"}
    assert C.unused_options({"warm_start": "prior", "prior_decay": 1.0, "targets": "hard", "sharpen": 0.5}) \
        == {"sharpen"}
    assert C.unused_options({"relabel": "adaptive", "relabel_every": 3, "relabel_max_gap": 2}) == {"relabel_every"}
    assert C.unused_options({"inference": "svi", "svi_steps": 10}) == set()
    # A condition on an option that is itself unused fails too: k-means reads neither inference nor svi_steps.
    assert C.unused_options({"prior": "kmeans", "inference": "svi", "svi_steps": 10}) == {"inference", "svi_steps"}


def test_flat_option_names_are_unique_across_sections():
    names = [f.name for s in dataclasses.fields(Config) for f in dataclasses.fields(s.default_factory)]
    assert len(names) == len(set(names)) == len(OPTIONS)


# ---- numeric ranges (bayes_dc.config.rules) -----------------------------------------------------------------


def base_type(tp):
    """``int | None`` -> int; ``tuple[float, float]`` stays as it is."""
    return [a for a in typing.get_args(tp) if a is not type(None)][0] if optional(tp) else tp


def numeric(tp) -> bool:
    """int / float options, optional or not, and tuples of them (bool is not numeric here)."""
    base = base_type(tp)
    if typing.get_origin(base) is tuple:
        return all(a in (int, float) for a in typing.get_args(base))
    return base in (int, float)


def test_every_numeric_option_has_a_range_and_every_default_lies_in_it():
    assert set(RANGES) == {name for name in OPTIONS if numeric(HINTS[name])}
    check_ranges(Config())


def outside(name: str) -> list:
    """Values of option ``name`` just outside its range, and NaN and infinity for floats (tuples: the first value)."""
    low, high, low_in, high_in = parse_interval(RANGES[name])
    base = base_type(HINTS[name])
    is_tuple = typing.get_origin(base) is tuple
    is_int = base is int
    step = 1 if is_int else 1e-6
    bad = [low - step if low_in else low] + ([high + step if high_in else high] if high != float("inf") else [])
    if not is_int:
        bad += [float("nan"), float("inf")]
    return [(v, 0.5) if is_tuple else v for v in bad]


@pytest.mark.parametrize("name", sorted(RANGES))
def test_a_numeric_option_outside_its_range_is_refused_by_validate_naming_it(name):
    """The library names the parameter (`` `lr` must be``), the command line shows the flag (``--lr must be``)."""
    from bayes_dc.loop.pipeline import validate

    section = OPTIONS[name][0]
    for value in outside(name):
        with pytest.raises(OptionError, match=f"^`{name}` must be ") as err:
            validate(C.merge(Config(), {section: {name: value}}))
        assert err.value.option == name
        assert command_line_message(err.value).startswith(f"{flag(name)} must be ")


# ---- --no-progress -----------------------------------------------------------------------------------------------

TQDM_BAR = re.compile(r"\d+%\||\d+/\d+ \[|it/s\]|s/it\]")   # "40%|", "3/5 [", rates


def test_no_progress_silences_every_bar_including_the_image_loading_one(tmp_path, capsys, monkeypatch):
    """A short run on an image folder: with --progress it shows bars (loading, epochs, steps), with --no-progress
    none at all. The folder is small, so the loading bar's size threshold is lowered to show it."""
    from PIL import Image

    from bayes_dc.data import imagefolder
    from test_errors import run_py

    rng = np.random.default_rng(0)
    for i in range(24):
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(tmp_path / f"{i:02d}.png")
    monkeypatch.setattr(imagefolder, "_PROGRESS_THRESHOLD", 0)
    argv = ["--dataset", "imagefolder", "--data-root", str(tmp_path), "--image-size", "16", "--eval-split", "none",
            "--width", "4", "--epochs", "1", "--batch-size", "8", "--prior", "kmeans", "--k", "3", "--pca-dim", "4",
            "--no-figures", "--threads", "1", "--out-dir", str(tmp_path / "runs")]
    assert run_py.main([*argv, "--name", "bars", "--progress"]) == 0
    shown = capsys.readouterr().err
    assert f"loading {tmp_path}" in shown and TQDM_BAR.search(shown)      # the check below can fail
    assert run_py.main([*argv, "--name", "quiet", "--no-progress"]) == 0
    quiet = capsys.readouterr().err
    assert not TQDM_BAR.search(quiet) and "loading" not in quiet, quiet


def _backend_name_comparisons(path: Path) -> list[str]:
    """``file:line`` of every comparison (==, !=, in, not in, is) with a string literal that names a backend, in
    the source of ``path``, read from its syntax tree (so ``prior == "dp"``, ``"kmeans" != c.prior`` and
    ``c.prior in ("dp", "x")`` all count, in whatever spacing or quotes)."""
    import ast

    def literals(node) -> list[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return [node.value]
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return [v for elt in node.elts for v in literals(elt)]
        return []

    tree = ast.parse(path.read_text())
    return [f"{path.name}:{node.lineno}" for node in ast.walk(tree) if isinstance(node, ast.Compare)
            and set(literals(node.left) + [v for c in node.comparators for v in literals(c)]) & set(C.BACKEND_TRAITS)]


@pytest.mark.parametrize("relative", ["bayes_dc/loop/pipeline.py", "bayes_dc/config/schema.py",
                                      "bayes_dc/config/rules.py", "bayes_dc/models/build.py"])
def test_the_loop_and_the_config_never_compare_a_backend_name(relative):
    """What the loop needs to know about a backend is on its traits (``BackendTraits``), so adding a backend touches
    its module, the registry and its config section only: no ``prior == "kmeans"`` / ``!= "dp"`` anywhere here."""
    assert _backend_name_comparisons(ROOT / relative) == []


def test_the_name_check_sees_every_spelling(tmp_path):
    source = tmp_path / "probe.py"
    source.write_text('a = p == "dp"\nb = "kmeans" != p\nc = p in ("x", \'dp\')\nd = p == "other"\n')
    assert _backend_name_comparisons(source) == ["probe.py:1", "probe.py:2", "probe.py:3"]


def test_every_backend_points_at_its_traits():
    """The registry, the ``Backend`` Literal and the traits name the same backends, and each built backend carries
    its own traits (which the pipeline reads, e.g. ``has_identities``)."""
    from bayes_dc.clustering import BACKENDS, make_backend

    assert set(BACKENDS) == set(C.BACKEND_TRAITS) == set(typing.get_args(C.Backend))
    for name, traits in C.BACKEND_TRAITS.items():
        cfg = dataclasses.replace(C.ClusterConfig(), prior=name)
        backend = make_backend(cfg)
        assert backend.name == name and backend.traits is traits and backend.has_identities == traits.identities
        assert cfg.n_components == getattr(cfg, traits.size_option)
        assert traits.size_option in OPTIONS and all(option in OPTIONS for option, _ in traits.one_process)
        assert set(traits.ignores) <= set(OPTIONS)
        assert traits.reduce in typing.get_args(C.Reduce) and name in traits.option_tags


# ---- option rules in one place (bayes_dc.config.rules) -----------------------------------------------------------

def test_command_line_message_spells_parameters_as_flags_and_leaves_prose_alone():
    text = ("`pca_dim` must be >= 1; k=61 exceeds 60 images, so lower `k`; use head='reset' with prior='kmeans', "
            "two_views=True, whiten=False; the k-means clusters, alpha (the DP's), foo=3 and `bar` stay")
    assert command_line_message(text) == (
        "--pca-dim must be >= 1; --k 61 exceeds 60 images, so lower --k; use --head reset with --prior kmeans, "
        "--two-views, --no-whiten; the k-means clusters, alpha (the DP's), foo=3 and `bar` stay")


def test_a_config_read_from_json_gets_its_choices_checked():
    """The parser checks a Literal's choices, a JSON config does not pass through it: check_config does."""
    for section, name, value in (("cluster", "covariance", "banded"), ("targets", "head", "freeze"),
                                 ("features", "reduce", "tsne")):
        with pytest.raises(OptionError, match=f"unknown `{name}` '{value}'; choose one of") as err:
            check_config(C.merge(Config(), {section: {name: value}}))
        assert err.value.option == name


@pytest.mark.parametrize("overrides, option", [
    ({"cluster": {"prior": "kmeans"}, "targets": {"head": "keep"}}, "head"),
    ({"cluster": {"prior": "kmeans"}, "targets": {"targets": "soft"}}, "targets"),
    ({"cluster": {"prior": "kmeans"}, "train": {"two_views": True}}, "two_views"),
    ({"train": {"space_weight": 1.0}}, "space_weight"),
])
def test_each_rule_between_options_blames_its_option_and_the_command_line_shows_flags(overrides, option):
    assert option in dict(CROSS_RULES)
    with pytest.raises(OptionError) as err:
        check_config(C.merge(Config(), overrides))
    assert err.value.option == option and flag(option) in command_line_message(err.value)
    with pytest.raises(CLIError, match=re.escape(flag(option))):
        check_command_line(config_from_args(to_args({k: v for section in overrides.values() for k, v in section.items()})))


def test_constructors_and_the_table_accept_the_same_values():
    """One source: the engine checks its arguments against RANGES, and the parametric space accepts 0 warm epochs
    (reuse the encoder as it is) as the table does."""
    from bayes_dc.clustering.dpgmm import DPGMM
    from bayes_dc.spaces.registry import make_reducer

    cfg = C.merge(Config(), {"features": {"reduce": "pumap", "pumap_warm_epochs": 0}})
    check_config(cfg)
    assert make_reducer(cfg).warm_epochs == 0
    for name, low_bad, low_ok in (("topk", 0, 1), ("min_size", -0.5, 0.0), ("max_iter", 0, 1), ("tol", 1.0, 0.5),
                                  ("prior_decay", 0.0, 1.0), ("move_every", 0, 1), ("alpha", 0.0, 0.1)):
        DPGMM(10, **{name: low_ok})
        with pytest.raises(OptionError, match=f"^`{name}` must be {re.escape(describe(RANGES[name]))}"):
            DPGMM(10, **{name: low_bad})
