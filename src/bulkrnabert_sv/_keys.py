"""Key names of the fields this package writes into AnnData, and their naming rules.

One home for every key (as scanpy's ``_keys.py``): the tools write under these names, the plots
and the CLI find their fields by the same rules, and the keys scanpy writes (which the tools
refuse as ``key_added``) are listed here too.
"""

from __future__ import annotations

# ------------------------------------------------------------------------------ embeddings
#: ``obsm`` key of ``tl.embed``'s sample embeddings (its default ``key_added``).
EMBEDDING_KEY = "X_bulkrnabert"


def uns_key_for(key_added: str) -> str:
    """The ``uns`` key for an ``obsm`` key: ``"X_bulkrnabert"`` → ``"bulkrnabert"``."""
    return key_added[2:] if key_added.startswith("X_") and len(key_added) > 2 else key_added


#: ``uns`` key of ``tl.embed``'s parameters and gene alignment, for the default key.
EMBEDDING_UNS_KEY = uns_key_for(EMBEDDING_KEY)

#: Key of the embedding's transformer block (1-indexed) in the records the tools write
#: (``uns[...]["params"]``, ``finetuned.json``).
BLOCK_KEY = "embedding_block"
#: Its former name, still read from records written before the rename.
OLD_BLOCK_KEY = "embedding_layer"


def recorded_block(record, default=None):
    """The block recorded in ``record`` under :data:`BLOCK_KEY`, or else its former name."""
    if BLOCK_KEY in record:
        return record[BLOCK_KEY]
    return record.get(OLD_BLOCK_KEY, default)


# ------------------------------------------------------------------------------ fine-tuning
#: Suffix of the default ``obs`` column of predicted classes: ``f"{obs_key}_bulkrnabert"``.
CLASS_SUFFIX = "_bulkrnabert"
#: Suffix of the default ``obs`` column of risk scores: ``f"{obs_key}_bulkrnabert_risk"``.
RISK_SUFFIX = "_bulkrnabert_risk"
#: ``obs`` column of risk scores looked for when no survival run is recorded in ``uns``.
RISK_KEY = RISK_SUFFIX[1:]
#: Suffix of the ``uns`` record of a fine-tuning run: ``uns[f"{key}_finetune"]``.
UNS_SUFFIX = "_finetune"
#: ``uns`` record looked for when none is recorded (``pl.training_history``).
FINETUNE_KEY = f"{EMBEDDING_UNS_KEY}{UNS_SUFFIX}"
#: Suffix of the ``obsm`` class probabilities of a classification run.
PROBA_SUFFIX = "_proba"
#: Suffix of the ``obsm`` survival curves of a survival run.
SURVIVAL_SUFFIX = "_survival"
#: Column of the risk scores in ``FinetunedModel.predict``'s DataFrame (survival).
RISK_COLUMN = "risk"


def prediction_key(obs_key: str, task: str) -> str:
    """The default ``obs`` column of a run's predictions on the label ``obs_key``."""
    return f"{obs_key}{CLASS_SUFFIX if task == 'classification' else RISK_SUFFIX}"


def class_key(obs_key: str) -> str:
    """The default ``obs`` column of the predicted classes of ``obs_key``."""
    return prediction_key(obs_key, "classification")


def finetune_uns_key(key: str) -> str:
    """The ``uns`` record of the run whose predictions are in ``obs[key]``."""
    return f"{key}{UNS_SUFFIX}"


def is_finetune_uns_key(key) -> bool:
    """Whether an ``uns`` key names a fine-tuning record (see :func:`finetune_uns_key`)."""
    return str(key).endswith(UNS_SUFFIX)


# ------------------------------------------------------------------------------ risk groups
#: Suffix of ``tl.risk_groups``' default ``obs`` column: ``f"{risk_key}_group"``.
GROUP_SUFFIX = "_group"


def risk_group_key(risk_key: str) -> str:
    """The default ``obs`` column of the risk groups cut from ``obs[risk_key]``."""
    return f"{risk_key}{GROUP_SUFFIX}"


#: Suffix of scanpy's palette of a categorical ``obs`` column: ``uns[f"{key}_colors"]``.
COLORS_SUFFIX = "_colors"


def colors_key(key: str) -> str:
    """The ``uns`` key of scanpy's palette of the categorical ``obs`` column ``key``."""
    return f"{key}{COLORS_SUFFIX}"


# ------------------------------------------------------------------------------ interpretation
#: Default ``key_added`` of ``tl.gene_attention``, ``tl.attribute`` and ``tl.perturb``.
ATTENTION_KEY = "bulkrnabert_attention"
ATTRIBUTION_KEY = "bulkrnabert_attribution"
PERTURB_KEY = "bulkrnabert_perturb"


# ------------------------------------------------------------------------------ keys of others
#: ``obsm`` keys written by scanpy (``pp.pca``, ``tl.umap``, ``tl.tsne``, ``tl.diffmap``; and
#: ``tl.draw_graph``, whose keys start with ``"X_draw_graph_"``) and by the integrations of
#: ``scanpy.external`` (harmony, scanorama, phate, trimap). ``tl.embed`` refuses them as
#: ``key_added``.
SCANPY_OBSM_KEYS = frozenset(
    {
        "X_pca",
        "X_umap",
        "X_tsne",
        "X_diffmap",
        "X_pca_harmony",
        "X_scanorama",
        "X_phate",
        "X_trimap",
    }
)
SCANPY_OBSM_PREFIXES = ("X_draw_graph_",)
#: ``uns`` keys written by scanpy tools (plus any ``"<key>_colors"``, its plotting palettes).
#: ``tl.embed`` refuses a ``key_added`` whose ``uns`` key (``key_added`` without ``"X_"``) is
#: one of them.
SCANPY_UNS_KEYS = frozenset(
    {
        "pca",
        "umap",
        "tsne",
        "diffmap_evals",
        "draw_graph",
        "neighbors",
        "leiden",
        "louvain",
        "paga",
        "rank_genes_groups",
        "dendrogram",
        "hvg",
        "log1p",
        "iroot",
    }
)
#: ``obs`` columns written by scanpy (clustering, pseudotime, quality control, doublets).
#: ``tl.finetune`` and ``tl.predict`` refuse them as ``key_added``.
SCANPY_OBS_KEYS = frozenset(
    {
        "leiden",
        "louvain",
        "dpt_pseudotime",
        "dpt_groups",
        "dpt_order",
        "dpt_order_indices",
        "n_genes",
        "n_counts",
        "n_genes_by_counts",
        "total_counts",
        "log1p_n_genes_by_counts",
        "log1p_total_counts",
        "doublet_score",
        "predicted_doublet",
    }
)
