"""Typed configuration. One :class:`Config` describes a run completely; it round-trips through JSON.

Each section is a dataclass whose fields are the command-line options of ``experiments/run.py``, generated
from this file by tyro (:mod:`bayes_dc.config.cli`): field ``pca_dim`` is the option ``--pca-dim`` (flat names, no
section prefix, so a field name must be unique across sections), a ``bool`` field is ``--x`` / ``--no-x``, a
``... | None`` field accepts ``None``. Presets in ``experiments/configs/*.json`` are partial dicts merged over
the defaults.

Conventions for a field (a new field written this way is a new, documented option with no further code):

- ``name: type = default  # one-line help text``: the comment on the same line is the ``--help`` text;
  say what the value means, its unit, and what ``None`` means where it is allowed.
- An enumerated option is a ``Literal[...]`` (``--help`` lists the choices and the parser rejects anything
  else). Where the names come from a registry (datasets, architectures, backends, target kinds, ...),
  ``tests/test_cli.py`` checks that the ``Literal`` and the registry agree.
- A field read by one clustering backend only carries ``field(default=..., metadata={"backend": "dp"})``
  (or ``"kmeans"``: a key of ``bayes_dc.clustering.BACKENDS``); a backend that reads another's options lists that
  tag in its ``BackendTraits.option_tags``.
- A field read only when other options have certain values adds ``"only_if": {"option": [values, ...]}`` to
  its metadata, e.g. ``prior_decay`` only with ``warm_start: prior``. Every condition must hold.

Sweeps read the metadata through :func:`unused_options` to drop options that cannot change a run (and so
never make the same run twice); nothing else lists which option matters when.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

# Names of registries elsewhere (bayes_dc.data.DATASETS, bayes_dc.models.nets.ARCHS, bayes_dc.clustering.BACKENDS,
# ...), repeated here so the command line can list them without importing torch; tests/test_cli.py checks
# that each Literal agrees with its registry.
Dataset = Literal["fashion-mnist", "mnist", "cifar10", "stl10", "imagefolder", "digits", "synthetic"]
Split = Literal["train", "test", "unlabeled", "none"]
Arch = Literal["vgg-small", "alexnet-bn", "vgg16-bn"]
Backend = Literal["kmeans", "dp", "dirichlet"]
Inference = Literal["cavi", "svi"]
Covariance = Literal["full", "diag", "spherical", "mfa"]
WarmStart = Literal["none", "init", "prior"]
TargetKind = Literal["hard", "soft", "multilabel"]
HeadPolicy = Literal["reset", "keep"]
RelabelRule = Literal["fixed", "adaptive"]
Reduce = Literal["pca", "umap", "pumap", "none"]
PumapInit = Literal["spectral", "random"]
ClusterOn = Literal["trunk", "projection"]
Augment = Literal["none", "crop-flip", "resized-crop"]
Streaming = Literal["auto", "always", "never"]
MemmapDtype = Literal["float32", "float16"]
GroupMethod = Literal["none", "overlap", "entropy"]

DP = {"backend": "dp"}
KMEANS = {"backend": "kmeans"}
WITH_EVAL = {"only_if": {"eval_split": ["train", "test", "unlabeled"]}}
DP_SVI = {**DP, "only_if": {"inference": ["svi"]}}
ADAPTIVE = {"only_if": {"relabel": ["adaptive"]}}
DP_PRIOR = {**DP, "only_if": {"warm_start": ["prior"]}}
SOFT = {"only_if": {"targets": ["soft", "multilabel"]}}
PCA_ONLY = {"only_if": {"reduce": ["pca"]}}
UMAP_ONLY = {"only_if": {"reduce": ["umap", "pumap"]}}
PUMAP_ONLY = {"only_if": {"reduce": ["pumap"]}}
PROJECTION = {"only_if": {"cluster_on": ["projection"]}}
CROP_FLIP = {"only_if": {"augment": ["crop-flip"]}}
RESIZED_CROP = {"only_if": {"augment": ["resized-crop"]}}
GROUPED = {"only_if": {"group": ["overlap", "entropy"]}}
IMAGEFOLDER = {"only_if": {"dataset": ["imagefolder"]}}  # the only dataset that can stream (bayes_dc.data.STREAMABLE)


@dataclass
class DataConfig:
    """Training and evaluation data."""

    dataset: Dataset = "fashion-mnist"  # dataset to train on (its labels are used for evaluation only)
    data_root: str | None = None  # folder searched first (imagefolder: the images); None: $BAYES_DC_DATA, system paths
    subset: int | None = None  # train on N images (a seeded shuffle of the training split); None: all
    eval_split: Split = "test"  # split scored by kNN accuracy; none: no kNN evaluation
    eval_subset: int | None = field(default=None, metadata=WITH_EVAL)  # kNN on N seeded eval images; None: all
    image_size: int | None = None  # resize images to this side in pixels (imagefolder, digits); None: as stored
    download: bool = True  # let torchvision download the dataset when no local copy is found
    streaming: Streaming = field(default="auto", metadata=IMAGEFOLDER)  # auto (stream an image folder larger than --memory-budget-gb), always or never
    memory_budget_gb: float | None = field(default=None, metadata=IMAGEFOLDER)  # GiB of uint8 pixels above which --streaming auto streams; None: 8
    num_workers: int = field(default=0, metadata=IMAGEFOLDER)  # DataLoader worker processes decoding image files (imagefolder); 0: in the main process


@dataclass
class ModelConfig:
    """The ConvNet trunk (the classifier head's size follows the clustering)."""

    arch: Arch = "vgg-small"  # trunk architecture (bayes_dc.models.nets.ARCHS)
    sobel: bool = False  # feed fixed Sobel edge filters instead of the pixels (DeepCluster on ImageNet)
    width: int | None = None  # vgg-small channel width; None: WIDTH_DEFAULTS (16 for digits/synthetic, else 64)
    projection_dim: int = field(default=32, metadata=PROJECTION)  # output dimension of the projection head
    projection_hidden: int = field(default=512, metadata=PROJECTION)  # hidden width of the projection head's MLP
    projection_l2: bool = field(default=True, metadata=PROJECTION)  # L2-normalise the projection (points on a sphere)


@dataclass
class FeatureConfig:
    """From trunk features to the space that is clustered (refitted every round)."""

    cluster_on: ClusterOn = "trunk"  # what is clustered: trunk features, or a projection head trained with the head on top
    pca_dim: int | None = None  # PCA dimension before clustering (capped by F and N-1); None: PRIOR_DEFAULTS["pca_dim"][--prior], 50 before UMAP
    whiten: bool = field(default=True, metadata=PCA_ONLY)  # whiten the PCA components (unit variance each)
    l2: bool = field(default=True, metadata=PCA_ONLY)  # L2-normalise each point after PCA
    extract_batch: int = 1024  # images per forward pass when extracting features (memory only)
    memmap_dtype: MemmapDtype = field(default="float32", metadata=IMAGEFOLDER)  # float32 or float16 (half the disk) features of a streamed set on disk
    reduce: Reduce | None = None  # clustering space: pca (whitened PCA + L2, DeepCluster), umap (PCA, then UMAP to --reduce-dim), pumap (PCA, then an encoder trained with UMAP's loss, warm across rounds) or none; None: PRIOR_DEFAULTS (umap for dp, pca for kmeans)
    reduce_dim: int = field(default=10, metadata=UMAP_ONLY)  # UMAP output dimension
    umap_neighbors: int = field(default=20, metadata=UMAP_ONLY)  # UMAP n_neighbors: the size of a local neighbourhood
    umap_min_dist: float = field(default=0.0, metadata=UMAP_ONLY)  # UMAP min_dist; 0 packs clusters tightly (clustering)
    pumap_hidden: int = field(default=128, metadata=PUMAP_ONLY)  # hidden width of the parametric UMAP encoder (an MLP on the PCA of the features)
    pumap_epochs: int = field(default=10, metadata=PUMAP_ONLY)  # encoder epochs (passes over the graph's edges) of a cold round
    pumap_warm_epochs: int = field(default=3, metadata=PUMAP_ONLY)  # encoder epochs of a warm round (the encoder keeps its weights; only the graph is new)
    pumap_init: PumapInit = field(default="spectral", metadata=PUMAP_ONLY)  # a cold encoder's start: regressed onto the kNN graph's spectral embedding (umap-learn's layout init), or random weights


@dataclass(frozen=True)
class BackendTraits:
    """What the round loop needs to know about a clustering backend, readable without importing it (no torch: the
    command line's ``--help`` and sweeps read it). Each backend class points at its entry of :data:`BACKEND_TRAITS`
    (``ClusterBackend.traits``), so the pipeline and the config ask the traits, never the backend's name."""

    size_option: str  # the option that sets the number of components, hence the head's outputs ("k", "truncation")
    size_label: str  # its letter in default run names ("k100", "T300")
    soft: bool  # gives responsibilities (soft / multilabel targets); False: hard labels only
    identities: bool  # component ids persist across rounds (warm starts), so --head keep can keep the head's rows
    assigns_new_points: bool  # assigns new points to a fitted clustering (--two-views, a loaded run's assign)
    warm_starts: bool  # reads --warm-start (its value goes into default run names)
    reduce: str  # default clustering space (--reduce None)
    pca_dim: int  # default PCA dimension (--pca-dim None, space pca)
    relabel_every: int  # default epochs between reclusterings (--relabel-every None)
    option_tags: tuple[str, ...]  # the ``metadata["backend"]`` tags of the options it reads (its own name, shared ones)
    ignores: tuple[str, ...] = ()  # options among those tagged that it does not read
    one_process: tuple[tuple[str, str], ...] = ()  # (option, value) pairs it runs in one process only (no torchrun)
    summary: str = ""  # what it is, for messages (parameters in backquotes: the command line shows them as flags)


# Each backend's traits; the keys are the names of ``Backend`` and of ``bayes_dc.clustering.BACKENDS``.
# Defaults (BENCHMARKS.md sections 6-7): k-means keeps DeepCluster's whitened PCA-256, relabelled every epoch. The DP-GMM
# models its space with Gaussians, so it clusters UMAP-10 by default (whitened PCA of ConvNet features makes it tile
# each class with many components); its rounds cost a UMAP fit, so it relabels every 2 epochs. With --reduce pca it
# gets PCA-64 (on 256 whitened dimensions of random-init features it collapses to a few components).
BACKEND_TRAITS: dict[str, BackendTraits] = {
    "kmeans": BackendTraits(size_option="k", size_label="k", soft=False, identities=False, assigns_new_points=False,
                            warm_starts=False, reduce="pca", pca_dim=256, relabel_every=1, option_tags=("kmeans",),
                            summary="k-means clusters are renumbered every run and give hard labels only"),
    "dp": BackendTraits(size_option="truncation", size_label="T", soft=True, identities=True, assigns_new_points=True,
                        warm_starts=True, reduce="umap", pca_dim=64, relabel_every=2, option_tags=("dp",),
                        one_process=(("inference", "svi"),),
                        summary="the DP-GMM infers K below `truncation`"),
    # the finite Bayesian GMM: the DP's engine, options and defaults, a symmetric Dirichlet(alpha / T) on the weights
    "dirichlet": BackendTraits(size_option="truncation", size_label="T", soft=True, identities=True,
                               assigns_new_points=True, warm_starts=True, reduce="umap", pca_dim=64, relabel_every=2,
                               option_tags=("dirichlet", "dp"), ignores=("alpha_prior", "inference"),
                               summary="the finite Dirichlet GMM prunes the `truncation` components it does not need"),
}
# Options whose default depends on --prior, read from the traits.
PRIOR_DEFAULTS: dict[str, dict[str, Any]] = {
    option: {name: getattr(traits, option) for name, traits in BACKEND_TRAITS.items()}
    for option in ("reduce", "relabel_every", "pca_dim")}


def backend_traits(prior: str) -> BackendTraits:
    """The traits of backend ``prior``; ValueError listing the choices for an unknown name."""
    if prior not in BACKEND_TRAITS:
        raise ValueError(f"unknown clustering prior {prior!r}; choose one of {sorted(BACKEND_TRAITS)}")
    return BACKEND_TRAITS[prior]


def backends_where(trait: str) -> list[str]:
    """Names of the backends whose boolean ``trait`` holds (for messages that suggest one)."""
    return [name for name, traits in BACKEND_TRAITS.items() if getattr(traits, trait)]


# PCA dimension before UMAP (as in N2D / the eval protocol's UMAP baseline); UMAP then reduces to reduce_dim.
UMAP_PCA_DEFAULT = 50
# Small demo datasets get a small trunk so they run in a minute on a CPU.
WIDTH_DEFAULTS = {"digits": 16, "synthetic": 16}


@dataclass
class ClusterConfig:
    """The clustering step: faiss k-means (DeepCluster's baseline), the variational DP-GMM or a finite Bayesian GMM."""

    prior: Backend = "dp"  # clustering backend: dp (DP-GMM, K inferred), dirichlet (finite Bayesian GMM, symmetric Dirichlet(alpha/T) weights, unused components pruned) or kmeans (DeepCluster, K fixed)
    k: int = field(default=100, metadata=KMEANS)  # number of k-means clusters
    truncation: int = field(default=300, metadata=DP)  # truncation T: the most clusters the DP-GMM (or the dirichlet GMM) can use
    kmeans_niter: int = field(default=20, metadata=KMEANS)  # k-means iterations (faiss)
    inference: Inference = field(default="cavi", metadata=DP)  # cavi (closed-form, fast) or svi (Pyro)
    covariance: Covariance = field(default="full", metadata=DP)  # full (Normal-Wishart), diag (per dimension), spherical, or mfa (factor analysers: diag + low rank)
    factors: int = field(default=4, metadata={**DP, "only_if": {"covariance": ["mfa"]}})  # mfa: most factors per component (ARD prunes the unused; <= the feature dim)
    alpha: float = field(default=1.0, metadata=DP)  # concentration (more: more clusters): the DP's, or the dirichlet prior's total (alpha/T per component); start if --alpha-prior
    alpha_prior: tuple[float, float] | None = field(default=None, metadata=DP)  # Gamma(shape, rate); None: alpha fixed
    prior_scale: float = field(default=0.3, metadata=DP)  # prior E[cluster covariance] = this x the data covariance
    prior_dof: float | None = field(default=None, metadata=DP)  # pseudo-observations per variance (> 2); None: 3 (nu0 = d + 2)
    kappa0: float | None = field(default=None, metadata=DP)  # prior precision factor of the means (Bishop's beta0); None: 0.01
    prior_scale_update: bool = field(default=False, metadata=DP)  # re-estimate --prior-scale between sweeps (max ELBO)
    topk: int = field(default=8, metadata=DP)  # responsibilities kept per point (soft targets, warm starts)
    max_iter: int = field(default=100, metadata=DP)  # most coordinate-ascent iterations per round
    tol: float = field(default=1e-2, metadata=DP)  # converged when an E-step moved less than this share of the responsibility mass (mean total variation per point, in (0, 1))
    min_size: float = field(default=1.0, metadata=DP)  # expected count below which a component is reset to the prior
    moves: str = field(default="all", metadata=DP)  # moves between sweeps: all, none, or a comma list of merge,split,birth,delete
    move_every: int = field(default=5, metadata=DP)  # CAVI iterations between move rounds (plus one round before stopping)
    warm_start: WarmStart = field(default="init", metadata=DP)  # none (cold), init (last responsibilities), prior
    prior_decay: float = field(default=0.5, metadata=DP_PRIOR)  # weight rho in (0, 1] of the last posterior in the prior
    svi_steps: int = field(default=2000, metadata=DP_SVI)  # Pyro SVI optimisation steps per round
    svi_batch: int = field(default=1024, metadata=DP_SVI)  # Pyro SVI mini-batch size (points)
    svi_lr: float = field(default=0.05, metadata=DP_SVI)  # Pyro SVI learning rate (Adam)
    group: GroupMethod = "none"  # clusters reported as groups of components: none (the components), overlap (Hennig's misclassification probability) or entropy (Baudry et al.); K_active then counts groups, k_fine the components (bayes_dc.clustering.grouping)
    group_cut: float | None = field(default=None, metadata=GROUPED)  # merge pairs of groups while the best score exceeds this; None: 0.01 (overlap) / 0.19 bits (entropy)

    @property
    def traits(self) -> BackendTraits:
        """What the backend ``prior`` can do (:data:`BACKEND_TRAITS`)."""
        return backend_traits(self.prior)

    @property
    def n_components(self) -> int:
        """Components (head outputs) of the backend in force: ``k`` or ``truncation``, as its traits say."""
        return getattr(self, self.traits.size_option)


@dataclass
class TargetConfig:
    """What the ConvNet learns to predict from a clustering."""

    targets: TargetKind = "hard"  # hard (argmax, CE), soft (CE to responsibilities), multilabel (per-cluster BCE)
    sharpen: float = field(default=1.0, metadata=SOFT)  # temperature tau of soft targets, q ~ r^(1/tau); <1 sharpens
    balanced: bool = True  # cluster-balanced sampling (DeepCluster's uniform-per-cluster sampler)
    head: HeadPolicy = "reset"  # at a relabel: reset (fresh head) or keep (rows follow DP component ids)
    coarse_head: bool = field(default=False, metadata=GROUPED)  # also train a second head on the groups (--group), reset every relabel; loss = mean of the two heads' losses


@dataclass
class TrainConfig:
    """Training schedule and optimiser (SGD, as DeepCluster)."""

    epochs: int = 10  # training epochs
    relabel_every: int | None = field(default=None, metadata={"only_if": {"relabel": ["fixed"]}})  # recluster every E epochs; None: PRIOR_DEFAULTS (1 for kmeans as DeepCluster, 2 for dp)
    relabel: RelabelRule = "fixed"  # fixed (every --relabel-every epochs) or adaptive (once targets are learned)
    relabel_agreement: float = field(default=0.8, metadata=ADAPTIVE)  # relabel once the head agrees with this share
    relabel_max_gap: int = field(default=5, metadata=ADAPTIVE)  # relabel at the latest after this many epochs
    batch_size: int = 256  # images per optimiser step
    lr: float = 0.05  # SGD learning rate
    momentum: float = 0.9  # momentum of the SGD updates
    weight_decay: float = 1e-5  # SGD weight decay (L2)
    head_lr: float | None = None  # learning rate of the classifier head; None: --lr
    # none, crop-flip (pad, random crop, flip) or resized-crop (random-resized crop + flip, as DeepCluster and
    # SwAV train). resized-crop by default: higher NMI and kNN on every seed, for the DP and k-means (BENCHMARKS.md section 7.4)
    augment: Augment = "resized-crop"
    crop_padding: int = field(default=4, metadata=CROP_FLIP)  # zero padding (pixels) before the random crop
    crop_scale: tuple[float, float] = field(default=(0.3, 1.0), metadata=RESIZED_CROP)  # area share range of the crops
    two_views: bool = False  # swapped prediction: each of two views learns the DP responsibilities of the other view
    space_weight: float = field(default=0.0, metadata={"only_if": {"two_views": [True]}})  # weight of the clustering space's UMAP loss on the two views (--reduce pumap): the trunk also learns to keep an image's views close in that space and random pairs apart; 0: off
    epoch_samples: int | None = None  # images the balanced sampler draws per epoch; None: N, as DeepCluster


@dataclass
class RunConfig:
    """Where the run goes and how it reports."""

    name: str | None = None  # run directory name under --out-dir; None: derived from the config
    out_dir: str = "runs"  # parent folder of run directories
    seed: int = 0  # the one seed every random choice is derived from (per purpose and round)
    device: str = "auto"  # auto (cuda if available), cpu, cuda or cuda:N
    threads: int | None = None  # torch and faiss CPU threads (set when runs share a machine); None: library default
    knn_every: int = field(default=5, metadata=WITH_EVAL)  # kNN eval every N epochs, and at the end; 0: only at the end
    knn_k: int = field(default=20, metadata=WITH_EVAL)  # neighbours of the kNN evaluation (cosine, weighted votes)
    figures: bool = True  # write figures/rounds.{png,pdf} when the run ends
    tensorboard: bool = False  # also log scalars and cluster image grids to <run dir>/tensorboard
    progress: bool = True  # show progress bars
    resume: bool = False  # continue the run in --out-dir/--name from its last checkpoint (same config)
    scratch_dir: str | None = field(default=None, metadata=IMAGEFOLDER)  # folder for the on-disk features of a streamed set; None: <run dir>/scratch


@dataclass
class Config:
    """A whole run: one section per stage (each field of each section is a command-line option)."""

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
    def reduce(self) -> str:
        """The clustering space in force: ``features.reduce``, else the prior's default (:data:`PRIOR_DEFAULTS`)."""
        return resolve_prior_default("reduce", self.features.reduce, self.cluster.prior)

    @property
    def relabel_every(self) -> int:
        """Epochs between reclusterings in force: ``train.relabel_every``, else the prior's default."""
        return resolve_prior_default("relabel_every", self.train.relabel_every, self.cluster.prior)

    @property
    def pca_dim(self) -> int:
        """The PCA dimension in force: ``features.pca_dim``, else the backend's default."""
        if self.features.pca_dim is not None:
            return self.features.pca_dim
        if self.reduce in ("umap", "pumap"):
            return UMAP_PCA_DEFAULT
        return resolve_prior_default("pca_dim", None, self.cluster.prior)

    @property
    def width(self) -> int:
        """The trunk width in force: ``model.width``, else the dataset's default (64 for real datasets)."""
        if self.model.width is not None:
            return self.model.width
        return WIDTH_DEFAULTS.get(self.data.dataset, 64)

    def default_name(self) -> str:
        """``<dataset>-<prior>-<k or T-warm start>-<targets>-e<epochs>-s<seed>-<hash>``: readable, and unique per
        config: the hash covers every option that changes results and differs from its default, so two configs
        that the readable part cannot tell apart (another --lr, --pca-dim, ...) get different directories."""
        c = self.cluster
        traits = c.traits
        k = f"{traits.size_label}{c.n_components}" + (f"-{c.warm_start}" if traits.warm_starts else "")
        readable = f"{self.data.dataset}-{c.prior}-{k}-{self.targets.targets}-e{self.train.epochs}-s{self.run.seed}"
        return f"{readable}-{self.options_hash()}"

    def options_hash(self) -> str:
        """6 hex digits of the options that differ from their defaults, leaving out ``NAME_IGNORED`` (where the
        run goes, cosmetics, the schedule length): the same for configs that make the same run."""
        defaults = Config().to_dict()
        changed = {f"{section}.{key}": value for section, values in self.to_dict().items()
                   for key, value in values.items()
                   if f"{section}.{key}" not in NAME_IGNORED and value != defaults[section][key]}
        text = json.dumps(changed, sort_keys=True, default=list)
        return hashlib.sha256(text.encode()).hexdigest()[:6]


# Fields that may differ when resuming: growing the schedule or changing cosmetics does not change the past.
RESUMABLE_CHANGES = {"train.epochs", "run.resume", "run.progress", "run.figures", "run.threads", "run.knn_every",
                     "run.tensorboard", "run.device", "run.out_dir", "run.scratch_dir", "data.num_workers"}
# Left out of the hash in default run names: where the run goes, and what --resume may change.
NAME_IGNORED = RESUMABLE_CHANGES | {"run.name"}


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}


def _section_fields() -> dict[str, tuple[str, dataclasses.Field]]:
    """Flat option name -> (section, dataclass field), in declaration order; names must be unique."""
    out: dict[str, tuple[str, dataclasses.Field]] = {}
    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(section.default_factory):
            if f.name in out:  # the command line has flat names (--pca-dim), so a clash would be ambiguous
                raise TypeError(f"config field {f.name!r} is in both sections {out[f.name][0]!r} and "
                                f"{section.name!r}; rename one (options are flat: --{f.name.replace('_', '-')})")
            out[f.name] = (section.name, f)
    return out


#: flat option name (``pca_dim``) -> (section, dataclasses.Field): what the command line and sweeps accept.
OPTIONS = _section_fields()


def resolve_prior_default(name: str, value: Any, prior: str) -> Any:
    """``value``, or when it is None the default of option ``name`` for ``prior`` (:data:`PRIOR_DEFAULTS`)."""
    return PRIOR_DEFAULTS[name][prior] if value is None else value


def option_defaults() -> dict[str, Any]:
    """Flat option name -> default value."""
    defaults = Config()
    return {name: getattr(getattr(defaults, section), name) for name, (section, _) in OPTIONS.items()}


def option_used(name: str, values: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> bool:
    """Whether option ``name`` can change a run whose other options are ``values`` (flat names; missing ones
    take their defaults), read from the field's metadata: its ``backend`` must be the ``prior`` in force, and
    every ``only_if`` option must itself be used and hold one of the listed values."""
    if name not in OPTIONS:
        raise ValueError(f"unknown option {name!r}")
    defaults = option_defaults() if defaults is None else defaults
    meta = OPTIONS[name][1].metadata
    traits = BACKEND_TRAITS.get(values.get("prior", defaults["prior"]))   # None: an unknown prior, refused later
    tag = meta.get("backend")
    if tag is not None and (traits is None or tag not in traits.option_tags or name in traits.ignores):
        return False
    for other, allowed in meta.get("only_if", {}).items():
        value = values.get(other, defaults[other])
        if other in PRIOR_DEFAULTS:
            value = resolve_prior_default(other, value, values.get("prior", defaults["prior"]))
        if value not in allowed or not option_used(other, values, defaults):
            return False
    return True


def unused_options(values: Mapping[str, Any]) -> set[str]:
    """The options among ``values`` (flat names) that cannot change a run with these values (see
    :func:`option_used`); e.g. ``{"prior": "kmeans", "alpha": 5}`` -> ``{"alpha"}``."""
    defaults = option_defaults()
    return {name for name in values if not option_used(name, values, defaults)}


def _holds_tuple(tp: Any) -> bool:
    """``tuple[...]`` or ``tuple[...] | None``: JSON stores these as lists."""
    return typing.get_origin(tp) is tuple or any(typing.get_origin(a) is tuple for a in typing.get_args(tp))


def merge(cfg: Config, overrides: dict[str, Any]) -> Config:
    """Return a copy of ``cfg`` with ``overrides`` ({section: {field: value}}) applied.

    Unknown sections or fields raise ValueError listing the valid names, so a typo in a preset or a
    JSON config never silently does nothing. Lists given for tuple fields (JSON has no tuples) become tuples.
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
        hints = typing.get_type_hints(type(current))
        values = {k: tuple(v) if isinstance(v, list) and _holds_tuple(hints[k]) else v for k, v in values.items()}
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
