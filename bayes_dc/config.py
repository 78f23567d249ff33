"""Typed configuration. One :class:`Config` describes a run completely; it round-trips through JSON.

Each section is a dataclass whose fields are the CLI options of ``experiments/run.py`` (same names,
``-`` for ``_``). Presets in ``experiments/configs/*.json`` are partial dicts merged over the defaults.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class DataConfig:
    dataset: str = "fashion-mnist"
    data_root: str | None = None      # searched first; then $BAYES_DC_DATA, system paths, download
    subset: int | None = None         # use the first N training images (deterministic, seeded shuffle)
    eval_split: str = "test"          # split for kNN / linear probe; "none" to skip
    eval_subset: int | None = None
    image_size: int | None = None     # resize (imagefolder / digits); None = dataset's native size
    download: bool = True             # allow torchvision's download when no local copy is found


@dataclass
class ModelConfig:
    arch: str = "vgg-small"           # see bayes_dc.models.ARCHS
    sobel: bool = False
    # vgg-small channel width; None: WIDTH_DEFAULTS[dataset] (the small demo datasets get a small trunk so
    # they run in about a minute on a CPU), else 64 as the reference DeepCluster setting.
    width: int | None = None


@dataclass
class FeatureConfig:
    # None: the backend's default, PCA_DEFAULTS below (k-means 256 as DeepCluster; the DP-GMM collapses to
    # 1-3 components on 256 whitened dimensions of random-init features, so 64). Capped by F and N - 1.
    pca_dim: int | None = None
    whiten: bool = True
    l2: bool = True
    extract_batch: int = 1024         # images per forward pass during feature extraction


PCA_DEFAULTS = {"kmeans": 256, "dp": 64}
WIDTH_DEFAULTS = {"digits": 16, "synthetic": 16}


@dataclass
class ClusterConfig:
    prior: str = "dp"                 # backend registry key: "dp" (DP-GMM) | "kmeans" (DeepCluster baseline)
    k: int = field(default=100, metadata={"backend": "kmeans"})  # k-means clusters
    truncation: int = field(default=300, metadata={"backend": "dp"})  # DP truncation T (upper bound on the number of clusters)
    kmeans_niter: int = field(default=20, metadata={"backend": "kmeans"})  # k-means iterations
    # DP-GMM
    inference: str = field(default="cavi", metadata={"backend": "dp"})  # DP inference: "cavi" (closed form) | "svi" (Pyro)
    covariance: str = field(default="full", metadata={"backend": "dp"})  # DP component covariance: "full" | "diag" | "spherical"
    alpha: float = field(default=1.0, metadata={"backend": "dp"})  # DP concentration (fixed unless alpha_prior is set)
    alpha_prior: tuple[float, float] | None = field(default=None, metadata={"backend": "dp"})  # Gamma(shape, rate) prior on alpha
    prior_scale: float = field(default=0.3, metadata={"backend": "dp"})  # E[cluster covariance] under the prior = prior_scale x data covariance
    prior_dof: float | None = field(default=None, metadata={"backend": "dp"})  # pseudo-observations per variance (> 2); None: 3, i.e. nu0 = d + 2 (full)
    kappa0: float | None = field(default=None, metadata={"backend": "dp"})  # prior mean precision factor (Bishop's beta0); None: 0.01
    prior_scale_update: bool = field(default=False, metadata={"backend": "dp"})  # re-estimate prior_scale between sweeps by maximising the ELBO
    topk: int = field(default=8, metadata={"backend": "dp"})  # responsibilities kept per point
    max_iter: int = field(default=100, metadata={"backend": "dp"})  # CAVI iteration cap
    tol: float = field(default=1e-4, metadata={"backend": "dp"})  # relative ELBO change for convergence
    min_size: float = field(default=1.0, metadata={"backend": "dp"})  # expected count below which a component is reset to the prior
    moves: str = field(default="all", metadata={"backend": "dp"})  # moves between sweeps: "all" | "none" | comma list of merge,split,birth,delete
    move_every: int = field(default=5, metadata={"backend": "dp"})  # CAVI iterations between move rounds (plus one round before stopping)
    warm_start: str = field(default="init", metadata={"backend": "dp"})  # DP warm start between rounds: "none" | "init" | "prior"
    prior_decay: float = field(default=0.5, metadata={"backend": "dp"})  # rho in (0, 1] for warm_start="prior"
    svi_steps: int = field(default=2000, metadata={"backend": "dp"})  # Pyro SVI steps (inference="svi")
    svi_batch: int = field(default=1024, metadata={"backend": "dp"})  # Pyro SVI minibatch size
    svi_lr: float = field(default=0.05, metadata={"backend": "dp"})  # Pyro SVI Adam learning rate


@dataclass
class TargetConfig:
    targets: str = "hard"             # "hard" | "soft" | "multilabel"
    sharpen: float = 1.0              # temperature tau for soft targets (<1 sharpens)
    balanced: bool = True             # cluster-balanced sampling (DeepCluster's uniform-per-cluster)
    head: str = "reset"               # "reset" | "keep"


@dataclass
class TrainConfig:
    epochs: int = 10
    relabel_every: int = 1            # recluster every E epochs (DeepCluster: 1)
    relabel: str = "fixed"            # "fixed" (every relabel_every) | "adaptive" (when the targets go stale)
    relabel_agreement: float = 0.8    # adaptive: relabel once the head agrees with this share of its targets
    relabel_max_gap: int = 5          # adaptive: relabel at the latest after this many epochs
    batch_size: int = 256
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-5
    head_lr: float | None = None      # None: same as lr
    augment: bool = True              # random crop + flip on tensors
    crop_padding: int = 4
    epoch_samples: int | None = None  # samples per epoch (None: N, as DeepCluster)


@dataclass
class RunConfig:
    name: str | None = None           # run directory name under out_dir (default: derived from config)
    out_dir: str = "runs"
    seed: int = 0
    device: str = "auto"              # "auto" | "cpu" | "cuda"
    threads: int | None = None        # torch/faiss CPU threads (None: library default)
    knn_every: int = 5                # kNN eval every N rounds (and always at the end); 0 = only at the end
    knn_k: int = 20
    figures: bool = True
    tensorboard: bool = False         # scalars + cluster image grids under <run dir>/tensorboard
    progress: bool = True
    resume: bool = False


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    targets: TargetConfig = field(default_factory=TargetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)

    # ---- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        return merge(cls(), d)

    @classmethod
    def from_json(cls, path: str | Path) -> "Config":
        return cls.from_dict(json.loads(Path(path).read_text()))

    @property
    def pca_dim(self) -> int:
        """The PCA dimension in force: ``features.pca_dim``, else the backend's default."""
        if self.features.pca_dim is not None:
            return self.features.pca_dim
        return PCA_DEFAULTS.get(self.cluster.prior, 256)

    @property
    def width(self) -> int:
        """The trunk width in force: ``model.width``, else the dataset's default (64 for real datasets)."""
        if self.model.width is not None:
            return self.model.width
        return WIDTH_DEFAULTS.get(self.data.dataset, 64)

    def default_name(self) -> str:
        c = self.cluster
        k = f"k{c.k}" if c.prior == "kmeans" else f"T{c.truncation}-{c.warm_start}"
        return f"{self.data.dataset}-{c.prior}-{k}-{self.targets.targets}-e{self.train.epochs}-s{self.run.seed}"


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}


def merge(cfg: Config, overrides: dict[str, Any]) -> Config:
    """Return a copy of ``cfg`` with ``overrides`` ({section: {field: value}}) applied.

    Unknown sections or fields raise ValueError listing the valid names, so a typo in a preset or a
    JSON config never silently does nothing.
    """
    cfg = dataclasses.replace(cfg)
    for section, values in overrides.items():
        if section not in SECTIONS:
            raise ValueError(f"unknown config section {section!r}; valid sections: {sorted(SECTIONS)}")
        if not isinstance(values, dict):
            raise ValueError(f"config section {section!r} must be a mapping, got {type(values).__name__}")
        current = getattr(cfg, section)
        valid = {f.name for f in dataclasses.fields(current)}
        unknown = set(values) - valid
        if unknown:
            raise ValueError(f"unknown field(s) {sorted(unknown)} in config section {section!r}; "
                             f"valid fields: {sorted(valid)}")
        values = dict(values)
        if section == "cluster" and isinstance(values.get("alpha_prior"), list):
            values["alpha_prior"] = tuple(values["alpha_prior"])
        setattr(cfg, section, dataclasses.replace(current, **values))
    return cfg


def diff(a: Config, b: Config, ignore: tuple[str, ...] = ("run.resume", "run.progress")) -> dict[str, tuple]:
    """Fields where two configs differ, as {"section.field": (a_value, b_value)}."""
    out = {}
    da, db = a.to_dict(), b.to_dict()
    for section in da:
        for key in da[section]:
            name = f"{section}.{key}"
            va, vb = da[section][key], db[section][key]
            if isinstance(va, tuple):
                va = list(va)
            if isinstance(vb, tuple):
                vb = list(vb)
            if name not in ignore and va != vb:
                out[name] = (va, vb)
    return out
