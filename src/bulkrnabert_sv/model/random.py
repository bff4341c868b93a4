"""Randomly initialised models (for tests, benchmarks and tutorials without the real weights)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from flax import nnx

from .config import BulkRNABertConfig
from .modeling import BulkRNABert
from .vocabulary import published_genes


def random_model(
    config: BulkRNABertConfig | str = "tiny",
    *,
    genes: Sequence[str] | Literal["published"] | None = "published",
    seed: int = 0,
    **overrides,
) -> BulkRNABert:
    """A model with random weights: a preset name or a config, and its gene list.

    Parameters
    ----------
    config
        A preset name (:data:`~bulkrnabert_sv.model.PRESETS`) or a config.
    genes
        The vocabulary, unversioned Ensembl ids in model order. ``"published"`` (default): the
        first ``n_genes`` genes of the published model's vocabulary (all 19,062 for ``"tcga"``),
        shipped with the package; ``None``: no gene list. With a sequence and a preset name,
        ``n_genes`` follows the gene list.
    seed
        Seed of the initial weights.
    **overrides
        Config fields to change.
    """
    explicit = genes is not None and not isinstance(genes, str)
    if isinstance(config, str):
        if explicit:
            overrides.setdefault("n_genes", len(genes))
        config = BulkRNABertConfig.from_preset(config, **overrides)
    elif overrides:
        config = config.replace(**overrides)
    if isinstance(genes, str):
        if genes != "published":
            raise ValueError(f"genes must be a sequence, 'published' or None, got {genes!r}.")
        vocabulary = published_genes()
        genes = vocabulary[: config.n_genes] if config.n_genes <= len(vocabulary) else None
    return BulkRNABert(config, rngs=nnx.Rngs(seed), genes=genes)
