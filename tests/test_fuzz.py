"""The clustering step fuzzed over shapes, scales and degenerate data (hypothesis): what a diverging trunk, a dataset
of near-duplicates or a tiny subset hands it.

Inputs: N from 1 to 2,000, d from 1 to 256, T above and below N, duplicated points, constant and collinear
columns, scales from 1e-6 to 1e6, a few NaN/inf rows. Every fit either returns a result whose numbers are finite,
whose weights sum to 1 (and leave a new-component weight >= 0), whose labels are component ids, whose ELBO never
decreased, and which a second fit with the same seed repeats exactly; or it raises a one-line ValueError naming the
problem. Never a NaN result, another exception or a hang (max_iter bounds every fit).

Deterministic for CI: ``derandomize=True`` (examples drawn from a fixed seed) and no example database; few examples
on small sizes, so the file runs in seconds.
"""
from __future__ import annotations

import math
import os
import warnings

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from bayes_dc.clustering.dpgmm import DPGMM  # noqa: E402
from bayes_dc.clustering.kmeans import KMeansBackend  # noqa: E402

FUZZ = settings(max_examples=int(os.environ.get("BAYES_DC_FUZZ_EXAMPLES", 12)), deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# The ELBO is a float64 sum, but the E-step's products and the per-chunk statistics are float32 (sweep.py), so it is
# exact to ~1e-7 of the energy terms sum_n E[(x_n - mu)^T Lambda (x_n - mu)] (~ N d), not of its own value: on tight
# near-duplicate clusters the ELBO is small while those terms are not (a 2e-4 dip at ELBO -83, N d = 40).
ELBO_SLACK = 1e-6


@st.composite
def features(draw, max_cells: int = 20_000, allow_bad: bool = True) -> tuple[np.ndarray, str]:
    """(x (N, d) float32, a description of how it was made) for the failure report."""
    d = draw(st.sampled_from([1, 2, 3, 7, 16, 64, 256]))
    n = draw(st.integers(1, max(1, min(2000, max_cells // d))))
    seed = draw(st.integers(0, 2 ** 16))
    rng = np.random.default_rng(seed)
    clusters = draw(st.integers(1, 5))
    centres = rng.normal(0.0, 5.0, (clusters, d))
    x = centres[rng.integers(0, clusters, n)] + rng.normal(0.0, 1.0, (n, d))
    shape = draw(st.sampled_from(["plain", "duplicates", "one point", "constant column", "collinear", "low rank"]))
    if shape == "duplicates":          # near-duplicates: a few distinct rows, each repeated
        x = x[rng.integers(0, max(1, min(n, 3)), n)] + rng.normal(0.0, 1e-7, (n, d))
    elif shape == "one point":         # every row the same point
        x = np.repeat(x[:1], n, axis=0)
    elif shape == "constant column":
        x[:, rng.integers(0, d)] = rng.normal()
    elif shape == "collinear" and d > 1:
        x[:, 1:] = x[:, :1] * rng.normal(size=(1, d - 1))
    elif shape == "low rank" and d > 2:
        x = x[:, :2] @ rng.normal(size=(2, d))
    scale = 10.0 ** draw(st.integers(-6, 6))
    x = (x * scale).astype(np.float32)
    bad = draw(st.integers(0, 2)) if allow_bad and draw(st.booleans()) and n > 1 else 0
    for row in rng.choice(n, size=min(bad, n), replace=False) if bad else []:
        x[row, rng.integers(0, d)] = rng.choice([np.nan, np.inf, -np.inf])
    return x, f"N={n} d={d} {shape} scale={scale:g} bad_rows={bad} seed={seed}"


def one_line_value_error(err: ValueError) -> None:
    message = str(err)
    assert message and len(message.splitlines()) == 1, repr(message)


def check_dp_fit(model: DPGMM, x: torch.Tensor, truncation: int) -> None:
    """The properties every DP fit must have (see the module docstring)."""
    n = x.shape[0]
    weights = model.weights_.double()
    assert torch.isfinite(weights).all() and (weights >= 0).all()
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-6)
    for name in ("means_", "precisions_", "mean_precision_", "counts_"):
        assert torch.isfinite(getattr(model, name)).all(), name
    assert math.isfinite(model.lower_bound_) and all(math.isfinite(v) for v in model.history_)
    assert math.isfinite(model.alpha_) and model.alpha_ > 0
    values, index = model.resp_values_, model.resp_index_
    assert values.shape[0] == n and torch.isfinite(values).all() and (values >= 0).all()
    np.testing.assert_allclose(values.sum(1).numpy(), 1.0, atol=1e-4)
    assert ((index >= 0) & (index < truncation)).all()
    labels = model.labels_
    assert labels.shape == (n,) and ((labels >= 0) & (labels < truncation)).all()
    trace = model.elbo_trace_
    scale = abs(trace[0]) + n * x.shape[1] if trace else 0.0
    for before, after in zip(trace, trace[1:]):   # every accepted state: iterations and moves
        assert after >= before - ELBO_SLACK * (abs(before) + scale), (before, after)
    pred = model.predictor()
    new_weight = math.exp(pred["predictive"]["log_new_weight"])
    assert new_weight >= 0 and math.isfinite(new_weight)
    live_weights = pred["predictive"]["log_weights"].exp()
    assert float(live_weights.sum()) + new_weight <= 1.0 + 1e-6
    assert ((pred["live"] >= 0) & (pred["live"] < truncation)).all()


def fit_or_refuse(make, x: np.ndarray, **fit_kwargs):
    """The fitted model, or None when the fit refused the input with a one-line ValueError."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # convergence / cluster-count warnings are expected on such data
        try:
            return make().fit(torch.from_numpy(x), **fit_kwargs)
        except ValueError as err:
            one_line_value_error(err)
            event(f"refused: {str(err)[:60]}")   # --hypothesis-show-statistics lists what was refused, how often
            if not np.isfinite(x).all():
                assert "NaN or inf" in str(err)
            return None


@FUZZ
@given(data=features(), covariance=st.sampled_from(["full", "diag", "spherical"]), truncation=st.integers(2, 40),
       moves=st.booleans(), seed=st.integers(0, 3))
def test_a_cold_dp_fit_is_finite_normalised_monotone_and_repeatable_or_refused(data, covariance, truncation, moves,
                                                                              seed):
    x, how = data
    event(how.split(" scale")[0].split(" ", 2)[-1])   # the shape of the data, counted in the statistics
    def make():
        return DPGMM(truncation=truncation, covariance=covariance, moves=moves, max_iter=25, init_iter=5)
    model = fit_or_refuse(make, x, seed=seed)
    if not np.isfinite(x).all():
        assert model is None, f"{how}: NaN/inf rows were fitted"
        return
    if model is None:
        return
    check_dp_fit(model, torch.from_numpy(x), truncation)
    again = fit_or_refuse(make, x, seed=seed)
    assert again is not None
    assert torch.equal(again.labels_, model.labels_) and torch.equal(again.weights_, model.weights_), how
    assert again.lower_bound_ == model.lower_bound_


@FUZZ
@given(data=features(max_cells=8_000, allow_bad=False), covariance=st.sampled_from(["full", "diag", "spherical"]),
       warm=st.sampled_from(["init", "prior"]), moves=st.booleans(), jitter=st.sampled_from([0.0, 1e-3, 1.0]))
def test_a_warm_dp_fit_from_the_previous_state_keeps_the_properties(data, covariance, warm, moves, jitter):
    """A second round on moved features (the trunk trained between rounds), started from the first round's state."""
    x, how = data
    truncation = max(2, min(12, x.shape[0]))
    def make():
        return DPGMM(truncation=truncation, covariance=covariance, moves=moves, warm_start=warm, max_iter=25,
                     init_iter=5)
    first = fit_or_refuse(make, x, seed=0)
    if first is None:
        return
    moved = (x + jitter * np.abs(x).max() * np.random.default_rng(1).normal(size=x.shape)).astype(np.float32)
    second = fit_or_refuse(make, moved, seed=1, warm_state=first.state_)
    if second is None:
        return
    check_dp_fit(second, torch.from_numpy(moved), truncation)
    again = fit_or_refuse(make, moved, seed=1, warm_state=first.state_)
    assert torch.equal(again.labels_, second.labels_) and torch.equal(again.weights_, second.weights_), how


@FUZZ
@given(data=features(), k=st.integers(2, 40), seed=st.integers(0, 3))
def test_kmeans_is_finite_in_range_and_repeatable_or_refused(data, k, seed):
    x, how = data
    def make():
        return KMeansBackend(k=k, niter=10)
    try:
        result = make().fit(torch.from_numpy(x), seed=seed)
    except ValueError as err:
        one_line_value_error(err)
        return
    assert np.isfinite(x).all(), f"{how}: NaN/inf rows were clustered"
    assert np.isfinite(result.weights).all() and result.weights.sum() == pytest.approx(1.0, abs=1e-6)
    assert ((result.labels >= 0) & (result.labels < k)).all() and math.isfinite(result.objective)
    again = make().fit(torch.from_numpy(x), seed=seed)
    np.testing.assert_array_equal(again.labels, result.labels)
