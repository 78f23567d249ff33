"""The DeepCluster round loop: :mod:`.pipeline` (rounds, relabelling, checkpoints), :mod:`.trainer` (one epoch),
:mod:`.targets` (what the head learns from a clustering), :mod:`.batches` and :mod:`.context`."""
