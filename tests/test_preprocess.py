"""bayes_dc.spaces.whiten.Whitener: whitening invariants, capping, determinism, sklearn agreement, errors."""
import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from bayes_dc.spaces import whiten as preprocess
from bayes_dc.spaces.whiten import Whitener


def _correlated(n=400, f=12, seed=0):
    """(n, f) float32 with a non-zero mean and strongly unequal, correlated variances."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(f, f)) * np.linspace(3.0, 0.3, f)[:, None]
    x = rng.normal(size=(n, f)) @ mixing + rng.normal(size=f) * 5
    return torch.tensor(x, dtype=torch.float32)


def _sample_cov(z):
    z = z.double()
    zc = z - z.mean(0)
    return zc.T @ zc / (z.shape[0] - 1)


def test_whitened_output_has_identity_covariance_and_zero_mean():
    x = _correlated()
    z = Whitener(dim=6, l2=False).fit_transform(x)
    assert z.shape == (400, 6) and z.dtype == torch.float32
    assert torch.allclose(z.double().mean(0), torch.zeros(6, dtype=torch.float64), atol=1e-4)
    assert torch.allclose(_sample_cov(z), torch.eye(6, dtype=torch.float64), atol=1e-3)


def test_unwhitened_output_variances_are_eigenvalues():
    x = _correlated()
    w = Whitener(dim=6, whiten=False, l2=False).fit(x)
    cov = _sample_cov(w.transform(x))
    assert torch.allclose(cov, torch.diag(w.explained_variance_), rtol=1e-4, atol=1e-4)
    assert (w.explained_variance_[:-1] >= w.explained_variance_[1:]).all()  # largest first


def test_l2_rows_have_unit_norm():
    z = Whitener(dim=6).fit_transform(_correlated())
    assert torch.allclose(z.norm(dim=1), torch.ones(400), atol=1e-5)


def test_zero_row_after_projection_stays_finite():
    x = _correlated()
    w = Whitener(dim=6).fit(x)
    z = w.transform(w.mean_.float()[None, :])  # the mean projects to the zero vector
    assert torch.isfinite(z).all() and z.abs().max() < 1e-3


@pytest.mark.parametrize("dim,n,f,expected", [(256, 400, 12, 12),   # capped by F
                                               (256, 9, 12, 8),     # capped by N - 1
                                               (5, 400, 12, 5),
                                               (None, 400, 12, 12),  # no reduction
                                               (0, 400, 12, 12)])
def test_dim_capping(dim, n, f, expected):
    w = Whitener(dim=dim).fit(_correlated(n=n, f=f))
    assert w.dim_ == expected
    assert w.components_.shape == (f, expected) and w.explained_variance_.shape == (expected,)
    assert w.transform(_correlated(n=3, f=f, seed=1)).shape == (3, expected)


def test_deterministic_and_sign_convention():
    x = _correlated()
    a = Whitener(dim=6).fit_transform(x)
    b = Whitener(dim=6).fit_transform(x.clone())
    assert torch.equal(a, b)
    comps = Whitener(dim=6).fit(x).components_
    pivots = comps.abs().argmax(0)
    assert (comps[pivots, torch.arange(6)] > 0).all()
    assert torch.allclose(comps.T @ comps, torch.eye(6, dtype=torch.float64), atol=1e-10)


def test_chunked_accumulation_matches_single_chunk(monkeypatch):
    x = _correlated(n=500)
    one_chunk = Whitener(dim=6, l2=False).fit(x)
    monkeypatch.setattr(preprocess, "_CHUNK_ELEMENTS", 12 * 7)  # 7 rows per chunk, ragged last chunk
    many = Whitener(dim=6, l2=False).fit(x)
    assert torch.allclose(one_chunk.mean_, many.mean_, atol=1e-10)
    assert torch.allclose(one_chunk.components_, many.components_, atol=1e-8)
    assert torch.allclose(one_chunk.transform(x), many.transform(x), atol=1e-5)


def test_agrees_with_sklearn_pca_whiten():
    # Both use the (N - 1)-normalised covariance; with eps = 0 they differ only by per-component sign.
    x = _correlated()
    ours = Whitener(dim=6, l2=False, eps=0.0).fit_transform(x).double().numpy()
    ref = PCA(n_components=6, whiten=True).fit_transform(x.double().numpy())
    signs = np.sign((ours * ref).sum(0))
    assert np.allclose(ours, ref * signs, atol=1e-4)
    # The default eps only perturbs components whose variance is comparable to eps.
    ours_eps = Whitener(dim=6, l2=False).fit_transform(x).double().numpy()
    assert np.allclose(ours_eps, ref * signs, atol=1e-3)
    # With L2 on top, this is DeepCluster's preprocessing; compare against sklearn + row normalisation.
    ours_l2 = Whitener(dim=6, eps=0.0).fit_transform(x).double().numpy()
    ref_l2 = ref * signs / np.linalg.norm(ref, axis=1, keepdims=True)
    assert np.allclose(ours_l2, ref_l2, atol=1e-4)


def test_accepts_numpy_and_keeps_device_and_dtype():
    x = _correlated().double().numpy()
    z = Whitener(dim=4).fit_transform(x)
    assert isinstance(z, torch.Tensor) and z.dtype == torch.float32 and z.device.type == "cpu"


def test_errors():
    x = _correlated()
    bad = x.clone()
    bad[3, 2] = float("nan")
    bad[10, 0] = float("inf")
    with pytest.raises(ValueError, match=r"NaN or inf in 2 of 400 rows.*\[3, 10\]"):
        Whitener().fit(bad)
    w = Whitener(dim=4).fit(x)
    with pytest.raises(ValueError, match="NaN or inf in 2 of 400"):
        w.transform(bad)
    with pytest.raises(ValueError, match="at least 2 rows"):
        Whitener().fit(x[:1])
    with pytest.raises(ValueError, match="before fit"):
        Whitener().transform(x)
    with pytest.raises(ValueError, match="11 features .* fitted on 12"):
        w.transform(x[:, :11])
    with pytest.raises(ValueError, match="2-D"):
        Whitener().fit(x[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x = _correlated()
    cpu = Whitener(dim=6).fit_transform(x)
    w = Whitener(dim=6).fit(x.cuda())
    gpu = w.transform(x.cuda())
    assert gpu.device.type == "cuda" and w.components_.device.type == "cuda"
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-4)
