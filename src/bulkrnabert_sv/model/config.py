"""Configuration of the BulkRNABert encoder, with the published presets.

Two kinds of settings (as flax's gemma example keeps its transformer configuration apart from
how it is run): :class:`BulkRNABertConfig` is the architecture and tokenizer, what a checkpoint
is; :class:`ExecutionConfig` is how a model runs (attention implementation, block sizes,
compute dtype, remat), which changes speed and memory but not the function computed (up to
rounding). A model holds both (``model.config``, ``model.execution``) and changes the latter
with ``model.set_execution(...)`` (in place) or ``model.with_execution(...)`` (a new model on
the same parameter arrays). ``BulkRNABertConfig`` still carries the execution fields: they are
the settings a model built from it starts with (so configs, checkpoints and
``load_model(..., remat=True)`` keep working), forwarded to :class:`ExecutionConfig`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any, Literal, get_args

AttentionImplementation = Literal[
    "auto", "xla", "blockwise", "blockwise_host", "blockwise_jax", "cudnn"
]
#: The attention implementations (see :mod:`.attention`), in one place: the Literal above.
ATTENTION_IMPLEMENTATIONS: tuple[str, ...] = get_args(AttentionImplementation)

#: The execution settings (fields of :class:`ExecutionConfig`, also carried by
#: :class:`BulkRNABertConfig` as a model's initial ones).
EXECUTION_FIELDS = (
    "attention_implementation",
    "attention_block_q",
    "attention_block_k",
    "compute_dtype",
    "remat",
)


def _execution_problems(attention_implementation, compute_dtype) -> list[str]:
    problems = []
    if attention_implementation not in ATTENTION_IMPLEMENTATIONS:
        problems.append(
            f"attention_implementation must be one of {ATTENTION_IMPLEMENTATIONS}, "
            f"got {attention_implementation!r}"
        )
    if compute_dtype not in ("float32", "bfloat16", "float16"):
        problems.append(
            f"compute_dtype must be 'float32', 'bfloat16' or 'float16', got {compute_dtype!r}"
        )
    return problems


@dataclasses.dataclass(frozen=True)
class ExecutionConfig:
    """How a BulkRNABert model runs: speed and memory, never the function (up to rounding).

    Held by the model next to its architecture (``model.execution`` beside ``model.config``);
    change it with :meth:`~bulkrnabert_sv.model.BulkRNABert.set_execution` or
    :meth:`~bulkrnabert_sv.model.BulkRNABert.with_execution`.

    Attributes
    ----------
    attention_implementation
        ``"auto"``, ``"xla"`` (materialised, the reference), ``"blockwise"`` (online softmax,
        memory linear in sequence length: the numba host kernel on CPU, else JAX loops; force one
        with ``"blockwise_host"``/``"blockwise_jax"``) or ``"cudnn"`` (fused GPU kernel,
        bf16/fp16).
    attention_block_q, attention_block_k
        Query and key block sizes of the blockwise implementation (``None``: its defaults).
    compute_dtype
        ``"float32"`` (default) or ``"bfloat16"``/``"float16"`` for mixed precision: matrix products
        in that dtype, parameters and LayerNorm statistics stay float32.
    remat
        Rematerialise each transformer block in the backward pass (saves memory when training).
    """

    attention_implementation: AttentionImplementation = "auto"
    attention_block_q: int | None = None
    attention_block_k: int | None = None
    compute_dtype: str = "float32"
    remat: bool = False

    def __post_init__(self) -> None:
        problems = _execution_problems(self.attention_implementation, self.compute_dtype)
        if problems:
            raise ValueError("Invalid ExecutionConfig: " + "; ".join(problems))

    def replace(self, **changes: Any) -> ExecutionConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


#: Fields of the Hugging Face / Haiku configs that describe the architecture.
ARCHITECTURE_FIELDS = (
    "n_genes",
    "n_expressions_bins",
    "embed_dim",
    "init_gene_embed_dim",
    "use_gene_embedding",
    "project_gene_embedding",
    "num_attention_heads",
    "key_size",
    "ffn_embed_dim",
    "num_layers",
)


@dataclasses.dataclass(frozen=True)
class BulkRNABertConfig:
    """Architecture and tokenizer of a BulkRNABert encoder, and its initial execution settings.

    The architecture fields carry the names used by the upstream Haiku and Hugging Face configs.
    The execution fields (attention implementation, block sizes, compute dtype, remat) are those
    a model built from this config starts with (:attr:`execution`); a model keeps its current
    ones in ``model.execution`` (:class:`ExecutionConfig`). They change speed and memory, never
    the function computed (up to floating-point rounding).

    Attributes
    ----------
    n_genes
        Sequence length: one token per vocabulary gene, always the full vocabulary.
    n_expressions_bins
        Number of expression bins (rows of the expression embedding).
    embed_dim
        Width of the residual stream.
    init_gene_embed_dim
        Width of the gene embedding table before its projection to ``embed_dim``.
    use_gene_embedding
        Add a learned per-gene embedding to the expression embedding.
    project_gene_embedding
        Project the gene embedding with a Linear layer (with bias) to ``embed_dim``.
    num_attention_heads, key_size
        Attention heads and their width (``num_attention_heads * key_size`` is the q/k/v width).
    ffn_embed_dim
        Hidden width of the feed-forward block.
    num_layers
        Number of pre-LayerNorm transformer blocks.
    normalization_factor
        Divisor applied to ``log10(1 + TPM)`` before binning (from ``tokenizer_config.json``).
    layer_norm_eps
        LayerNorm epsilon (1e-5 upstream).
    attention_implementation, attention_block_q, attention_block_k, compute_dtype, remat
        The execution settings a model built from this config starts with, as in
        :class:`ExecutionConfig` (they never change the function the model computes).
    """

    n_genes: int = 19_062
    n_expressions_bins: int = 64
    embed_dim: int = 256
    init_gene_embed_dim: int = 200
    use_gene_embedding: bool = True
    project_gene_embedding: bool = True
    num_attention_heads: int = 8
    key_size: int = 32
    ffn_embed_dim: int = 512
    num_layers: int = 4
    normalization_factor: float = 5.547176906585117
    layer_norm_eps: float = 1e-5
    attention_implementation: AttentionImplementation = "auto"
    attention_block_q: int | None = None
    attention_block_k: int | None = None
    compute_dtype: str = "float32"
    remat: bool = False

    def __post_init__(self) -> None:
        problems = []
        for name in (
            "n_genes",
            "n_expressions_bins",
            "embed_dim",
            "num_attention_heads",
            "key_size",
            "ffn_embed_dim",
            "num_layers",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if self.use_gene_embedding and not self.project_gene_embedding:
            if self.init_gene_embed_dim != self.embed_dim:
                problems.append(
                    "without project_gene_embedding, init_gene_embed_dim must equal embed_dim "
                    f"({self.init_gene_embed_dim} != {self.embed_dim})"
                )
        if not self.normalization_factor > 0:
            problems.append(f"normalization_factor must be > 0, got {self.normalization_factor!r}")
        problems += _execution_problems(self.attention_implementation, self.compute_dtype)
        if problems:
            raise ValueError("Invalid BulkRNABertConfig: " + "; ".join(problems))

    # ----------------------------------------------------------------------------------- presets
    @classmethod
    def tcga(cls, **overrides: Any) -> BulkRNABertConfig:
        """The published TCGA checkpoint (``InstaDeepAI/BulkRNABert``)."""
        return cls(**overrides)

    @classmethod
    def gtex_encode(cls, **overrides: Any) -> BulkRNABertConfig:
        """The GTEx/ENCODE (and GTEx/ENCODE/TCGA) pretraining variants of the paper."""
        return cls(**{"normalization_factor": 5.873553674586928, **overrides})

    @classmethod
    def small(cls, **overrides: Any) -> BulkRNABertConfig:
        """The structure of the published model at the golden fixture's size (64 genes)."""
        values = dict(
            n_genes=64,
            n_expressions_bins=8,
            embed_dim=32,
            init_gene_embed_dim=20,
            num_attention_heads=4,
            key_size=8,
            ffn_embed_dim=64,
            num_layers=2,
            normalization_factor=3.0,
        )
        return cls(**{**values, **overrides})

    @classmethod
    def tiny(cls, **overrides: Any) -> BulkRNABertConfig:
        """A very small model for tests and tutorials run on few genes."""
        values = dict(
            n_genes=128,
            n_expressions_bins=64,
            embed_dim=16,
            init_gene_embed_dim=8,
            num_attention_heads=2,
            key_size=8,
            ffn_embed_dim=32,
            num_layers=2,
        )
        return cls(**{**values, **overrides})

    @classmethod
    def compact(cls, **overrides: Any) -> BulkRNABertConfig:
        """The architecture of the bundled compact model: 2,048 genes, width 64, 3 blocks.

        The tokenizer (64 bins, normalisation factor) is the published TCGA model's. Not in
        :data:`PRESETS`: the name ``"compact"`` means the bundled *weights*
        (``load_model("compact")``, ``tl.pretrain(model="compact")`` continues from them).
        """
        values = dict(
            n_genes=2_048,
            embed_dim=64,
            init_gene_embed_dim=32,
            num_attention_heads=4,
            key_size=16,
            ffn_embed_dim=128,
            num_layers=3,
        )
        return cls(**{**values, **overrides})

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> BulkRNABertConfig:
        """Build a preset by name: one of :data:`PRESETS`."""
        try:
            factory = PRESETS[name]
        except KeyError:
            raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(PRESETS)}.") from None
        return factory(**overrides)

    # ------------------------------------------------------------------------------ conversions
    @property
    def num_parameters(self) -> int:
        """Number of parameters of the encoder with its LM head."""
        e, f, b = self.embed_dim, self.ffn_embed_dim, self.n_expressions_bins
        qkv = self.num_attention_heads * self.key_size
        n = b * e
        if self.use_gene_embedding:
            n += self.n_genes * self.init_gene_embed_dim
            if self.project_gene_embedding:
                n += self.init_gene_embed_dim * e + e
        block = 3 * (e * qkv + qkv) + (qkv * e + e) + 2 * 2 * e + (e * f + f) + (f * e + e)
        n += self.num_layers * block
        n += e * b + b
        return n

    def replace(self, **changes: Any) -> BulkRNABertConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], **overrides: Any) -> BulkRNABertConfig:
        """Build from a dict, ignoring keys that are not fields (e.g. ``architectures``)."""
        names = {f.name for f in dataclasses.fields(cls)}
        kept = {k: v for k, v in values.items() if k in names}
        return cls(**{**kept, **overrides})

    def architecture(self) -> dict[str, Any]:
        """The fields that determine parameter shapes."""
        return {name: getattr(self, name) for name in ARCHITECTURE_FIELDS}

    @property
    def execution(self) -> ExecutionConfig:
        """The execution settings this config carries (a model built from it starts with them)."""
        return ExecutionConfig(**{name: getattr(self, name) for name in EXECUTION_FIELDS})

    def with_execution(self, execution: ExecutionConfig) -> BulkRNABertConfig:
        """This architecture with ``execution``'s settings as its execution fields."""
        return self.replace(**dataclasses.asdict(execution))


PRESETS = {
    "tcga": BulkRNABertConfig.tcga,
    "gtex_encode": BulkRNABertConfig.gtex_encode,
    "gtex_encode_tcga": BulkRNABertConfig.gtex_encode,
    "small": BulkRNABertConfig.small,
    "tiny": BulkRNABertConfig.tiny,
}
