"""Shared plumbing of the interpretation tools (``tl.gene_attention``, ``tl.attribute``,
``tl.perturb``): model genes back onto the input's genes, group summaries, argument checks and
all-or-nothing writes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .. import _logging as logg
from .._anndata import get_modality
from .._validation import check_positive_int
from ._embed import warn_overwrite

#: The ``varm`` summary column of all samples (next to one column per group).
ALL = "all"


def check_key(key_added, function: str) -> str:
    if not isinstance(key_added, str) or not key_added:
        raise ValueError(f"{function}: key_added must be a non-empty string, got {key_added!r}.")
    return key_added


def check_batch_size(batch_size) -> int:
    return check_positive_int(batch_size, "batch_size")


def load_encoder(model, function: str):
    """A BulkRNABert from a model or a source; a fine-tuned model is refused with the fix."""
    from ..model import BulkRNABert, load_model
    from ..training.finetuned import FinetunedModel

    if isinstance(model, FinetunedModel):
        raise TypeError(
            f"{function} takes an encoder (BulkRNABert) or a model source, got a fine-tuned "
            f"model. Pass its encoder: {function}(adata, tuned.encoder, ...)."
        )
    return model if isinstance(model, BulkRNABert) else load_model(model)


def load_tuned(finetuned, function: str):
    """A FinetunedModel from itself or a folder written by ``FinetunedModel.save``."""
    from ..model import BulkRNABert
    from ..training.finetuned import FinetunedModel, load_finetuned

    if isinstance(finetuned, FinetunedModel):
        return finetuned
    if isinstance(finetuned, BulkRNABert):
        raise TypeError(
            f"{function} explains a fine-tuned model's output and got an encoder alone. "
            "Fine-tune one first: tuned = tl.finetune(adata, 'cohort', model=model), then "
            f"{function}(adata, tuned)."
        )
    return load_finetuned(finetuned)


def model_positions(alignment, n_vars: int) -> np.ndarray:
    """For each input gene, its position in the model vocabulary (-1: not a model gene).

    Input genes that share a vocabulary gene (duplicates, summed by the alignment) get the
    same position; input genes the alignment dropped or could not map get -1.
    """
    matrix = alignment.matrix.tocsr()
    if matrix.shape[0] != n_vars:
        raise ValueError(f"The alignment has {matrix.shape[0]} input genes, the data {n_vars}.")
    positions = np.full(n_vars, -1, dtype=np.int64)
    counts = np.diff(matrix.indptr)
    rows = np.flatnonzero(counts > 0)
    positions[rows] = matrix.indices[matrix.indptr[rows]]
    return positions


def to_input_genes(values: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Values in model order (..., n_genes) on the input's genes (..., n_vars): NaN where an
    input gene is not a model gene."""
    out = np.take(values, np.maximum(positions, 0), axis=-1).astype(np.float32, copy=False)
    out[..., positions < 0] = np.nan
    return out


def group_labels(adata, groupby: str | None) -> pd.Categorical | None:
    if groupby is None:
        return None
    if groupby not in adata.obs:
        raise KeyError(
            f"obs[{groupby!r}] is missing; obs has {list(adata.obs.columns)[:15]}. Pass the "
            "column of the groups to summarise by (groupby=)."
        )
    labels = pd.Categorical(adata.obs[groupby])
    if ALL in [str(c) for c in labels.categories]:
        raise ValueError(f"obs[{groupby!r}] has a group named {ALL!r}, the column of all samples.")
    return labels


def group_means(values: np.ndarray, labels: pd.Categorical | None, var_names) -> pd.DataFrame:
    """Mean over samples, per gene: column ``"all"`` and one column per group (NaN-aware).

    Samples without a group (NaN) count in ``"all"`` only; genes NaN in every sample (not model
    genes) stay NaN.
    """
    columns = {ALL: _nanmean(values)}
    if labels is not None:
        codes = np.asarray(labels.codes)
        for code, name in enumerate(labels.categories):
            members = codes == code
            if members.any():
                columns[str(name)] = _nanmean(values[members])
    return pd.DataFrame(columns, index=pd.Index(var_names).copy(), dtype=np.float32)


def _nanmean(values: np.ndarray) -> np.ndarray:
    counts = np.isfinite(values).sum(axis=0)
    totals = np.nansum(values.astype(np.float64), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, totals / np.maximum(counts, 1), np.nan)


def top_genes(summary: pd.DataFrame, n_top: int, *, ascending: bool = False) -> pd.DataFrame:
    """The ``n_top`` genes of each column of ``summary`` (highest first): a frame of names with
    one column per group and rows = ranks 0, 1, ...; genes that are NaN are left out."""
    n_top = check_positive_int(n_top, "n_top")
    columns = {}
    for name in summary.columns:
        ranked = summary[name].dropna().sort_values(ascending=ascending, kind="stable")
        names = [str(g) for g in ranked.index[:n_top]]
        columns[str(name)] = names + [""] * (n_top - len(names))
    return pd.DataFrame(columns)


def write_fields(target, mod: str, fields: Mapping[tuple[str, str], object], function: str):
    """Write ``{(slot, key): value}`` into ``target`` (slots ``layers``, ``obsm``, ``varm``,
    ``obs``, ``uns``), all or nothing, warning first about fields that will be replaced."""
    adata = get_modality(target, mod)
    existing = [f"{slot}[{key!r}]" for slot, key in fields if key in getattr(adata, slot)]
    warn_overwrite(existing, function)
    sentinel = object()
    old: dict = {}
    try:
        for (slot, key), value in fields.items():
            store = getattr(adata, slot)
            old[slot, key] = store[key] if key in store else sentinel
            store[key] = value
    except BaseException:
        for (slot, key), value in old.items():
            store = getattr(adata, slot)
            if value is sentinel:
                if slot == "obs":
                    store.drop(columns=[key], inplace=True, errors="ignore")
                else:
                    store.pop(key, None)
            else:
                store[key] = value
        raise


def log_added(start, target, mod: str, fields: Sequence[tuple[str, str, str]]) -> None:
    """``logg.added`` for ``(key, description, slot)``."""
    logg.added(start, *[(key, what, logg.where(target, mod, slot)) for key, what, slot in fields])


def model_record(model) -> dict:
    """Where the encoder came from, for ``uns[...]["params"]``."""
    from ._embed import model_fingerprint

    return {
        "model": str(model.source) if model.source is not None else "in-memory model",
        "revision": str(model.revision) if model.revision is not None else "",
        "model_sha256": model_fingerprint(model),
        "n_genes": int(model.config.n_genes),
    }


def copy_target(data, adata, copy: bool):
    if not copy:
        return data
    return data.to_memory() if adata.isbacked and data is adata else data.copy()
