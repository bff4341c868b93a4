"""The BulkRNABert model: configuration, NNX modules, tokenizer, attention, checkpoints, vocabulary."""

from .attention import attention_weights, dot_product_attention
from .config import PRESETS, BulkRNABertConfig, ExecutionConfig
from .errors import CheckpointError
from .files import export_hf_folder
from .heads import MLPHead, load_head
from .loading import DEFAULT_REPO, load_model
from .modeling import BulkRNABert, IA3Param, MaskEmbeddingParam
from .random import random_model
from .tokenizer import bin_log_expression, expression_bins, tokenize
from .vocabulary import COMPACT_SOURCE, published_genes

__all__ = [
    "COMPACT_SOURCE",
    "DEFAULT_REPO",
    "PRESETS",
    "BulkRNABert",
    "BulkRNABertConfig",
    "CheckpointError",
    "ExecutionConfig",
    "IA3Param",
    "MLPHead",
    "MaskEmbeddingParam",
    "attention_weights",
    "bin_log_expression",
    "dot_product_attention",
    "export_hf_folder",
    "expression_bins",
    "load_head",
    "load_model",
    "published_genes",
    "random_model",
    "tokenize",
]
