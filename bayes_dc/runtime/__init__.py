"""Processes and threads: torch.distributed helpers and CPU thread settings."""
