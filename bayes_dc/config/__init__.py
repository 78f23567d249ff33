"""Options: the typed run configuration (:mod:`.schema`), the rules every option obeys (:mod:`.rules`) and the
command line generated from both (:mod:`.cli`)."""
from bayes_dc.config.schema import *  # noqa: F401,F403  (``bayes_dc.config.Config`` is the public name)
