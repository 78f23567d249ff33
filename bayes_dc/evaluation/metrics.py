"""Evaluation metrics (the project's eval protocol (``shared/eval-protocol.md``), section Metrics).

Clustering quality against the classes (NMI, ARI, ACC, purity), stability between rounds (NMI(t, t-1): :func:`nmi` of two rounds' labels),
how many clusters a result uses (K_used, K_active, K_eff), and the representation-quality probes that
score frozen trunk features (weighted kNN, linear probe).

Labels may be numpy arrays, torch tensors (any device) or lists; they are compared as 1-D integer
arrays of equal length. NMI/ARI/contingency tables come from scikit-learn, the one-to-one matching
for ACC from scipy, so the numbers agree with what other papers compute with the same libraries.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.stats import entropy
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix

from bayes_dc.clustering.base import active_threshold

ArrayLike = Any  # np.ndarray | torch.Tensor | sequence


# ----------------------------------------------------------------------------- input checks


def _as_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _as_label_array(labels: ArrayLike, name: str) -> np.ndarray:
    arr = _as_numpy(labels)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty; metrics need at least one point")
    return arr


def _check_label_pair(labels_true: ArrayLike, labels_pred: ArrayLike,
                      names: tuple[str, str] = ("labels_true", "labels_pred")) -> tuple[np.ndarray, np.ndarray]:
    """Return both labelings as 1-D numpy arrays; ValueError if empty or of different lengths."""
    a = _as_label_array(labels_true, names[0])
    b = _as_label_array(labels_pred, names[1])
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{names[0]} has {a.shape[0]} entries but {names[1]} has {b.shape[0]}; "
                         "they must label the same points")
    return a, b


def _as_weight_array(weights: ArrayLike) -> np.ndarray:
    """Weights as a normalised 1-D float64 distribution (raw counts are accepted and normalised)."""
    w = _as_numpy(weights).astype(np.float64)
    if w.ndim != 1:
        raise ValueError(f"weights must be 1-D (T,), got shape {w.shape}")
    if w.shape[0] == 0:
        raise ValueError("weights is empty")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("weights must be finite and non-negative")
    total = w.sum()
    if total <= 0:
        raise ValueError("weights sum to 0; cannot normalise")
    return w / total


# ----------------------------------------------------------------------------- agreement with classes


def nmi(labels_true: ArrayLike, labels_pred: ArrayLike) -> float:
    """Normalised mutual information, arithmetic normalisation (scikit-learn's default).

    NMI = I(Y; C) / ((H(Y) + H(C)) / 2). Symmetric, in [0, 1], invariant to relabelling.
    """
    a, b = _check_label_pair(labels_true, labels_pred)
    return float(normalized_mutual_info_score(a, b, average_method="arithmetic"))


def ari(labels_true: ArrayLike, labels_pred: ArrayLike) -> float:
    """Adjusted Rand index (Hubert & Arabie 1985): 1 for identical partitions, ~0 for independent ones."""
    a, b = _check_label_pair(labels_true, labels_pred)
    return float(adjusted_rand_score(a, b))


def acc(labels_true: ArrayLike, labels_pred: ArrayLike) -> float:
    """Clustering accuracy under the best one-to-one cluster -> class matching (Hungarian algorithm).

    The contingency table C (classes x clusters) is matched with
    ``scipy.optimize.linear_sum_assignment(C, maximize=True)``; ACC = matched counts / N. The matching is
    one-to-one even when #clusters != #classes, so with 100 clusters and 10 classes only 10 clusters are
    matched and the points in the other 90 count as errors: over-clustering is penalised (use
    :func:`purity` for a many-to-one score).
    """
    a, b = _check_label_pair(labels_true, labels_pred)
    table = contingency_matrix(a, b)  # (n_classes, n_clusters)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / a.shape[0])


def purity(labels_true: ArrayLike, labels_pred: ArrayLike) -> float:
    """Purity: each cluster votes for its majority class (many-to-one); fraction of points in the majority.

    Reaches 1 trivially when every point is its own cluster, so report it with K_used.
    """
    a, b = _check_label_pair(labels_true, labels_pred)
    table = contingency_matrix(a, b)  # (n_classes, n_clusters)
    return float(table.max(axis=0).sum() / a.shape[0])


# ----------------------------------------------------------------------------- how many clusters


def k_used(labels: ArrayLike) -> int:
    """Number of distinct labels actually assigned (K_used)."""
    return int(np.unique(_as_label_array(labels, "labels")).shape[0])


def k_active(weights: ArrayLike, threshold: float | None = None) -> int:
    """Number of components with normalised weight >= ``threshold`` (K_active).

    ``weights`` (T,) are mixture weights or cluster sizes; they are normalised to sum to 1 first.
    ``threshold`` None: ``clustering.base.active_threshold(T)`` (the protocol's 0.5 % for T <= 100, 1/(2T) above).
    """
    w = _as_weight_array(weights)
    return int((w >= (active_threshold(w.shape[0]) if threshold is None else threshold)).sum())


def k_eff(weights: ArrayLike) -> float:
    """Effective number of clusters, exp(H(w)) with H the Shannon entropy in nats (zeros contribute 0).

    Equals K for K equal weights and 1 for a single component; unlike K_active it needs no threshold.
    """
    return float(np.exp(entropy(_as_weight_array(weights))))


def cluster_metrics(labels_true: ArrayLike, labels_pred: ArrayLike, weights: ArrayLike | None = None) -> dict:
    """All label-based clustering metrics in one dict.

    Keys: ``nmi``, ``ari``, ``acc``, ``purity``, ``k_used``, ``k_active``, ``k_eff``. ``weights`` (T,) are the
    backend's mixture weights; if None, the cluster fractions of ``labels_pred`` are used (then K_active
    counts clusters holding >= 0.5 % of the points).
    """
    a, b = _check_label_pair(labels_true, labels_pred)
    if weights is None:
        _, counts = np.unique(b, return_counts=True)
        weights = counts / counts.sum()
    return {
        "nmi": nmi(a, b),
        "ari": ari(a, b),
        "acc": acc(a, b),
        "purity": purity(a, b),
        "k_used": k_used(b),
        "k_active": k_active(weights),
        "k_eff": k_eff(weights),
    }


# ----------------------------------------------------------------------------- feature probes


def _as_feature_tensor(x: ArrayLike, name: str, device: torch.device | None = None) -> torch.Tensor:
    t = torch.from_numpy(np.asarray(x)) if not isinstance(x, torch.Tensor) else x.detach()
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D (N, F), got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    return t.to(device=device if device is not None else t.device, dtype=torch.float32)


def _as_label_tensor(y: ArrayLike, name: str, device: torch.device) -> torch.Tensor:
    t = torch.from_numpy(np.asarray(y)) if not isinstance(y, torch.Tensor) else y.detach()
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    return t.to(device=device, dtype=torch.long)


@torch.no_grad()
def knn_accuracy(train_features: ArrayLike, train_labels: ArrayLike, test_features: ArrayLike,
                 test_labels: ArrayLike, k: int = 20, temperature: float = 0.07, batch_size: int = 1024,
                 num_classes: int | None = None) -> float:
    """Weighted k-nearest-neighbour accuracy on cosine similarity (Wu et al. 2018, InstDisc; DINO's
    ``eval_knn.py::knn_classifier``).

    Both feature sets are L2-normalised; each test point takes its ``k`` most similar training points, each
    neighbour votes for its class with weight exp(similarity / temperature), and the class with the largest
    summed vote is predicted (ties: the lowest class id).

    Args:
        train_features: (N_train, F). The computation runs on this tensor's device.
        train_labels: (N_train,) class ids in [0, num_classes), numpy or torch.
        test_features: (N_test, F).
        test_labels: (N_test,).
        k: neighbours per test point (capped at N_train).
        temperature: vote temperature (protocol: 0.07).
        batch_size: test points per chunk; memory is O(batch_size x N_train).
        num_classes: number of classes; default max label + 1.

    Returns:
        Fraction of test points whose predicted class equals their label.
    """
    train = _as_feature_tensor(train_features, "train_features")
    device = train.device
    test = _as_feature_tensor(test_features, "test_features", device)
    y_train = _as_label_tensor(train_labels, "train_labels", device)
    y_test = _as_label_tensor(test_labels, "test_labels", device)
    if y_train.shape[0] != train.shape[0]:
        raise ValueError(f"train_features has {train.shape[0]} rows but train_labels has {y_train.shape[0]}")
    if y_test.shape[0] != test.shape[0]:
        raise ValueError(f"test_features has {test.shape[0]} rows but test_labels has {y_test.shape[0]}")
    if train.shape[1] != test.shape[1]:
        raise ValueError(f"train_features have {train.shape[1]} dims but test_features have {test.shape[1]}")
    if k < 1 or temperature <= 0 or batch_size < 1:
        raise ValueError(f"need k >= 1, temperature > 0, batch_size >= 1; got k={k}, "
                         f"temperature={temperature}, batch_size={batch_size}")
    if min(int(y_train.min()), int(y_test.min())) < 0:
        raise ValueError("knn_accuracy needs non-negative integer class ids")
    if num_classes is None:
        num_classes = int(max(int(y_train.max()), int(y_test.max()))) + 1
    elif int(y_train.max()) >= num_classes:
        raise ValueError(f"train_labels contain class {int(y_train.max())} >= num_classes={num_classes}")

    train = torch.nn.functional.normalize(train, dim=1)
    test = torch.nn.functional.normalize(test, dim=1)
    k = min(int(k), train.shape[0])
    n_correct = 0
    for start in range(0, test.shape[0], batch_size):
        chunk = test[start:start + batch_size]                              # (B, F)
        similarity = chunk @ train.T                                         # (B, N_train)
        top_sim, top_idx = similarity.topk(k, dim=1, largest=True, sorted=True)  # (B, k)
        neighbour_labels = y_train[top_idx]                                  # (B, k)
        vote_weights = (top_sim / temperature).exp()                         # (B, k)
        votes = torch.zeros(chunk.shape[0], num_classes, device=device, dtype=vote_weights.dtype)
        votes.scatter_add_(1, neighbour_labels, vote_weights)               # (B, C)
        predictions = votes.argmax(dim=1)                                    # first max on ties
        n_correct += int((predictions == y_test[start:start + batch_size]).sum())
    return n_correct / test.shape[0]


def linear_probe(train_features: ArrayLike, train_labels: ArrayLike, test_features: ArrayLike,
                 test_labels: ArrayLike, *, C: float = 1.0, max_iter: int = 1000, seed: int = 0) -> float:
    """Linear-probe accuracy: multinomial logistic regression on frozen features.

    Features are standardised with statistics fitted on the training set only, then scikit-learn's
    ``LogisticRegression`` (lbfgs, multinomial softmax loss, L2 penalty with inverse strength ``C``) is
    trained on (N_train, F) and scored on (N_test, F). Runs on CPU (features are copied from any device).

    Returns:
        Test accuracy in [0, 1].
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x_train, x_test = _as_numpy(train_features), _as_numpy(test_features)
    y_train, y_test = _as_numpy(train_labels), _as_numpy(test_labels)
    for name, x in (("train_features", x_train), ("test_features", x_test)):
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"{name} must be a non-empty 2-D (N, F) array, got shape {x.shape}")
    _check_label_pair(y_train, np.empty(x_train.shape[0]), names=("train_labels", "train_features"))
    _check_label_pair(y_test, np.empty(x_test.shape[0]), names=("test_labels", "test_features"))
    if x_train.shape[1] != x_test.shape[1]:
        raise ValueError(f"train_features have {x_train.shape[1]} dims but test_features have {x_test.shape[1]}")

    scaler = StandardScaler().fit(x_train)
    # lbfgs fits the multinomial (softmax) loss for more than two classes in scikit-learn >= 1.5.
    clf = LogisticRegression(C=C, solver="lbfgs", max_iter=max_iter, random_state=seed)
    clf.fit(scaler.transform(x_train), y_train)
    return float(clf.score(scaler.transform(x_test), y_test))


__all__ = ["acc", "ari", "cluster_metrics", "k_active", "k_eff", "k_used", "knn_accuracy", "linear_probe",
           "nmi", "purity"]
