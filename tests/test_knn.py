"""bayes_dc.spaces.knn: the one exact kNN search of the clustering spaces, against brute force and scikit-learn."""
import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

from bayes_dc.spaces.knn import nearest_neighbors


def points(n=120, dim=5, seed=3):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


def test_every_row_matches_brute_force_and_each_point_comes_first():
    x = points()
    distances, indices = nearest_neighbors(x, 6)
    expected = torch.cdist(x.double(), x.double()).topk(6, largest=False)
    assert torch.equal(indices[:, 0], torch.arange(len(x)))
    assert distances.dtype == torch.float32 and indices.dtype == torch.int64
    np.testing.assert_allclose(distances.numpy(), expected.values.numpy(), atol=1e-4)


def test_new_queries_match_scikit_learn():
    x, queries = points(), points(n=30, seed=4)
    distances, indices = nearest_neighbors(x.numpy(), 7, queries=queries)
    ref_d, ref_i = NearestNeighbors(n_neighbors=7).fit(x.numpy()).kneighbors(queries.numpy())
    assert np.array_equal(indices.numpy(), ref_i)
    np.testing.assert_allclose(distances.numpy(), ref_d, atol=1e-4)


def test_chosen_rows_are_those_rows_of_the_full_search():
    """Under torchrun each rank queries its own rows (the parametric graph), and UMAP's probe queries a random
    sample: the same neighbours (global ids, each point first) as those rows of one search over every row."""
    x = points()
    x[70] = x[71]                                                  # a duplicate among the rows
    full_d, full_i = nearest_neighbors(x, 6)
    rows = torch.arange(50, 90)
    part_d, part_i = nearest_neighbors(x, 6, rows=rows)
    assert torch.equal(part_i, full_i[50:90]) and torch.allclose(part_d, full_d[50:90])
    assert torch.equal(part_i[:, 0], rows) and full_i[70, 1] == 71 and full_i[71, 1] == 70
    sample = np.array([0, 5, 17, 70, 119])                         # the k nearest *other* points: drop column 0
    others = nearest_neighbors(x, 8, rows=sample)[1][:, 1:].numpy()
    ref = NearestNeighbors(n_neighbors=8).fit(x.numpy()).kneighbors(x.numpy()[sample], return_distance=False)
    assert [set(a) for a in others] == [set(b) - {row} for row, b in zip(sample, ref)]


def test_queries_and_rows_together_are_refused():
    with pytest.raises(ValueError, match="not both"):
        nearest_neighbors(points(), 3, queries=points(n=2), rows=np.array([0]))
