"""Randomly initialised models (for tests, benchmarks and tutorials without the real weights)."""

from __future__ import annotations

from collections.abc import Sequence

from flax import nnx

from .config import BulkRNABertConfig
from .modeling import BulkRNABert


def random_model(
    config: BulkRNABertConfig | str = "tiny",
    *,
    genes: Sequence[str] | None = None,
    seed: int = 0,
    **overrides,
) -> BulkRNABert:
    """A model with random weights: a preset name or a config, and optionally its gene list.

    With ``genes`` and a preset name, ``n_genes`` follows the gene list.
    """
    if isinstance(config, str):
        if genes is not None:
            overrides.setdefault("n_genes", len(genes))
        config = BulkRNABertConfig.from_preset(config, **overrides)
    elif overrides:
        config = config.replace(**overrides)
    return BulkRNABert(config, rngs=nnx.Rngs(seed), genes=genes)
