"""bayes_dc: DeepCluster with a variational Dirichlet-process Gaussian mixture as its clustering step."""
__version__ = "0.1.0"
