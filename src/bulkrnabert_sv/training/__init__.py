"""Training internals used by ``tl``: targets, head fitting, survival, metrics, masking,
pretraining checkpoints, the inference and embedding loops, sharding and ``FinetunedModel``.

Not a user-facing namespace: the public classes defined here are exported by
:mod:`bulkrnabert_sv.tl` (``tl.FinetunedModel``, ``tl.PretrainCheckpointError``).
"""
