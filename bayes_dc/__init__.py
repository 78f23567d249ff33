"""bayes_dc: DeepCluster with a variational Dirichlet-process Gaussian mixture as its clustering step."""
from bayes_dc.version import __version__  # noqa: F401

# First, before anything here imports torch: OpenMP settings for a shared or confined machine (passive waiting,
# threads matched to the CPUs this process may use), unless the user set them. See bayes_dc/runtime/threads.py.
from bayes_dc.runtime.threads import thread_environment as _thread_environment  # noqa: E402

_thread_environment()


def __getattr__(name: str):
    """``bayes_dc.load_run`` without importing torch and the pipeline on ``import bayes_dc``."""
    if name == "load_run":
        from bayes_dc.trained.load import load_run
        return load_run
    raise AttributeError(f"module 'bayes_dc' has no attribute {name!r}")
