"""Evaluation: clustering and kNN metrics, round-to-round lineage, reports of run directories and their figures."""
