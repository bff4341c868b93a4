"""Tools: embed, fine-tune, cross-validate, pretrain and risk groups on AnnData/MuData.

Return convention (scanpy's): a tool that annotates its input writes into it and returns None,
or with ``copy=True`` writes into a copy and returns that copy. A tool that fits a model returns
the model instead of None (``finetune``: the ``FinetunedModel``; with ``copy=True`` the
annotated copy only, so call it on a copy you made to keep both). ``pretrain`` and
``cross_validate`` write nothing into the data and return their results.
"""

from .._lazy import lazy_module

_ATTRIBUTES = {
    "embed": "._embed",
    "finetune": "._finetune",
    "predict": "._finetune",
    "load_finetuned": "._finetune",
    "FinetunedModel": "._finetune",
    "cross_validate": "._cross_validate",
    "CrossValidationResult": "._cross_validate",
    "pretrain": "._pretrain",
    "PretrainCheckpointError": "._pretrain",
    "risk_groups": "._risk_groups",
    "gene_attention": "._gene_attention",
    "attribute": "._attribute",
    "perturb": "._perturb",
}
__all__, __getattr__, __dir__ = lazy_module(__name__, _ATTRIBUTES)
