"""Tools: embeddings, fine-tuning and pretraining on AnnData/MuData."""

from .._lazy import lazy_getattr

_ATTRIBUTES = {
    "embed": "._embed",
    "finetune": "._finetune",
    "predict": "._finetune",
    "load_finetuned": "._finetune",
    "FinetunedModel": "._finetune",
    "pretrain": "._pretrain",
    "PretrainCheckpointError": "._pretrain",
}
__all__ = sorted(_ATTRIBUTES)
__getattr__ = lazy_getattr(__name__, _ATTRIBUTES)


def __dir__():
    return __all__
