"""Tools: embeddings, fine-tuning, pretraining and risk groups on AnnData/MuData."""

from .._lazy import lazy_module

_ATTRIBUTES = {
    "embed": "._embed",
    "finetune": "._finetune",
    "predict": "._finetune",
    "load_finetuned": "._finetune",
    "FinetunedModel": "._finetune",
    "pretrain": "._pretrain",
    "PretrainCheckpointError": "._pretrain",
    "risk_groups": "._risk_groups",
}
__all__, __getattr__, __dir__ = lazy_module(__name__, _ATTRIBUTES)
