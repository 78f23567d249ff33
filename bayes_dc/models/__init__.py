"""ConvNets: the trunks and heads (:mod:`.nets`, torch only, copied by ``export.py``), feature extraction
(:mod:`.features`) and the model a run's config describes (:mod:`.build`)."""
