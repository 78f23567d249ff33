"""A trained run, used: ``load_run`` (assign new images, novelty from the DP predictive) and the standalone trunk
loader that ``export.py`` ships. Never imports the training loop."""
