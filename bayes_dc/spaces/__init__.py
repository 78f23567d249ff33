"""Clustering spaces: where a round's features are mapped before they are clustered. One interface
(:mod:`bayes_dc.spaces.base`), one kNN search (:mod:`bayes_dc.spaces.knn`), one module per space (``identity``,
``pca`` with its ``whiten`` maths, ``umap``, ``parametric``) and the registry (:mod:`bayes_dc.spaces.registry`)."""
