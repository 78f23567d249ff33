"""Clustering spaces: where a round's features are mapped before they are clustered (one interface, a registry)."""
