"""The run directory: atomic files, checkpoints, the final-model file, signals, environment records and logs."""
