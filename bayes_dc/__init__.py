"""bayes_dc: DeepCluster with a variational Dirichlet-process Gaussian mixture as its clustering step."""
__version__ = "0.1.0"


def __getattr__(name: str):
    """``bayes_dc.load_run`` without importing torch and the pipeline on ``import bayes_dc``."""
    if name == "load_run":
        from bayes_dc.trained.load import load_run
        return load_run
    raise AttributeError(f"module 'bayes_dc' has no attribute {name!r}")
