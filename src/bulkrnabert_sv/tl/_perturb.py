"""``tl.perturb``: in-silico deletion or overexpression of genes (Geneformer style)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from .. import _logging as logg
from .._anndata import get_modality
from .._keys import BLOCK_KEY, PERTURB_KEY
from .._validation import check_positive_int, renamed_keywords
from .._version import __version__
from ._embed import check_data
from ._interpret import (
    check_batch_size,
    check_key,
    copy_target,
    log_added,
    model_positions,
    model_record,
    write_fields,
)

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

MODES = ("delete", "overexpress")


def resolve_genes(
    genes, adata, alignment, model_genes, *, gene_symbols: str | None
) -> dict[str, np.ndarray]:
    """``{perturbation name: model positions}`` for genes or gene sets.

    ``genes``: one name, a sequence of names (each perturbed alone) or a mapping
    ``{set name: names}`` (each set perturbed together). A name is looked up in ``var_names``,
    then in ``var[gene_symbols]``, then among the model's own gene ids.
    """
    if isinstance(genes, str):
        genes = [genes]
    if isinstance(genes, Mapping):
        sets = {str(name): _as_list(members, name) for name, members in genes.items()}
    elif isinstance(genes, Sequence | np.ndarray | pd.Index):
        sets = {str(g): [str(g)] for g in genes}
    else:
        raise TypeError(
            f"genes must be a gene name, a list of names or a dict of gene sets, not "
            f"{type(genes).__name__}."
        )
    if not sets:
        raise ValueError("genes is empty: name at least one gene or gene set.")
    positions = model_positions(alignment, adata.n_vars)
    var_index = {str(g): i for i, g in enumerate(adata.var_names)}
    symbol_index: dict[str, list[int]] = {}
    if gene_symbols is not None:
        if gene_symbols not in adata.var:
            raise KeyError(
                f"var[{gene_symbols!r}] is missing; var has {list(adata.var.columns)[:15]}."
            )
        for i, s in enumerate(adata.var[gene_symbols].astype(str)):
            symbol_index.setdefault(s, []).append(i)
    model_index = {} if model_genes is None else {g: i for i, g in enumerate(model_genes)}
    resolved, unknown, outside = {}, [], []
    for name, members in sets.items():
        found: list[int] = []
        for gene in members:
            rows = [var_index[gene]] if gene in var_index else symbol_index.get(gene, [])
            if rows:
                hits = [int(positions[r]) for r in rows if positions[r] >= 0]
                if not hits:
                    outside.append(gene)
                found.extend(hits)
            elif gene in model_index:
                found.append(model_index[gene])
            else:
                unknown.append(gene)
        resolved[name] = np.unique(np.asarray(found, dtype=np.int64))
    if unknown:
        where = "var_names" + (f" or var[{gene_symbols!r}]" if gene_symbols else "")
        raise KeyError(
            f"Not found in {where} nor among the model's genes: {sorted(set(unknown))[:20]}."
            + ("" if gene_symbols else " Pass gene_symbols='symbol' to look up symbols.")
        )
    if outside:
        raise ValueError(
            f"Not in the model's vocabulary (the model does not see them): "
            f"{sorted(set(outside))[:20]}."
        )
    return resolved


def _as_list(members, name) -> list[str]:
    if isinstance(members, str):
        return [members]
    members = [str(m) for m in members]
    if not members:
        raise ValueError(f"The gene set {name!r} is empty.")
    return members


def cosine_shift(reference: np.ndarray, perturbed: np.ndarray) -> np.ndarray:
    """``1 - cos(reference, perturbed)`` per row, in float64 (0 = same direction)."""
    a = reference.astype(np.float64)
    b = perturbed.astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(norms > 0, (a * b).sum(axis=1) / norms, 1.0)
    return np.clip(1.0 - cos, 0.0, 2.0)


@renamed_keywords("tl.perturb", embedding_layer="embedding_block")
def perturb(
    data,
    model,
    genes: str | Sequence[str] | Mapping[str, Sequence[str]],
    *,
    mode: Literal["delete", "overexpress"] = "delete",
    token: int | None = None,
    gene_symbols: str | None = None,
    embedding_block: int = -1,
    layer: str | None = None,
    gene_key: str | None = None,
    mod: str = "rna",
    batch_size: int = 8,
    key_added: str = PERTURB_KEY,
    copy: bool = False,
    progress: bool = True,
) -> AnnData | Any | None:
    """In-silico perturbation: how far the embedding (and prediction) moves when genes change.

    For each perturbation (one gene, or a gene set changed together) every sample's tokens
    for those genes are set to 0 (``"delete"``: not expressed) or to ``token`` (``"overexpress"``,
    default the top bin), the sample is embedded again and compared with its unperturbed
    embedding, as Geneformer's in-silico deletion does. Only samples whose tokens change are
    re-embedded (the others have a shift of exactly 0).

    Parameters
    ----------
    data
        AnnData (or MuData, modality ``mod``) with TPM.
    model
        An encoder (:class:`~bulkrnabert_sv.model.BulkRNABert`), a model source, or a
        :class:`~bulkrnabert_sv.tl.FinetunedModel`: then its encoder and embedding block are
        used and the change of its output is reported too.
    genes
        A gene, a list of genes (each perturbed alone) or ``{name: [genes]}`` (each set
        perturbed together). Names are looked up in ``var_names``, then in
        ``var[gene_symbols]``, then among the model's gene ids.
    mode
        ``"delete"`` or ``"overexpress"``.
    token
        ``"overexpress"``: the token given to the genes (1..n_bins-1; default the top bin,
        ``n_bins - 1``, which needs a TPM above about 350,000 with the published tokenizer: an
        extreme, not a realistic level; pass a lower bin for a milder one).
    gene_symbols
        ``var`` column of gene symbols to look names up in (e.g. ``"symbol"``).
    embedding_block
        Encoder block whose mean is the embedding (1-indexed, -1 = last); a fine-tuned model's
        own block is used instead. ``embedding_layer=`` is its deprecated name.
    layer, gene_key, mod
        Where the TPM values, gene ids and modality are.
    batch_size
        Samples per forward pass.
    key_added
        Key of the fields written (see Returns).
    copy
        Write into a copy of ``data`` and return it.
    progress
        Show a progress bar (perturbations).

    Returns
    -------
    ``None``, or the annotated copy with ``copy=True``. Written (``key`` = ``key_added``):

    ``obsm[key]``
        DataFrame (n_obs × perturbations): ``1 - cos(e, e')`` between each sample's embedding
        ``e`` and its perturbed embedding ``e'`` (0 = unchanged; small numbers: mean embeddings
        of thousands of genes move little when one changes, so compare perturbations with each
        other, not with a fixed threshold).
    ``obsm[f"{key}_output"]``
        With a fine-tuned model: DataFrame (n_obs × perturbations) of the output's change,
        perturbed minus original. Classification: the margin of the sample's originally
        predicted class, ``logit[predicted] - max(other logits)`` (logit units; negative = less
        confident, and the prediction changes once the margin falls below 0; unlike
        probabilities, margins do not saturate for confident predictions). Survival: the risk
        score.
    ``uns[key]``
        ``params`` (mode, token, the encoder's source and fingerprint, embedding block) and
        ``summary``: DataFrame per perturbation with ``genes`` (model ids, ``;``-joined),
        ``n_genes``, ``n_changed`` (samples whose tokens changed), ``mean_shift``,
        ``median_shift``, ``max_shift`` and, with a fine-tuned model, ``mean_output_change``
        (the mean of ``obsm[f"{key}_output"]``) and, for a classifier,
        ``mean_probability_change`` (of the predicted class) and ``n_prediction_changed``.

    What the numbers do not mean: a shift says how much the model's summary of the sample
    moves, not that the gene matters biologically; deleting a gene the model barely expresses
    moves little by construction, and the top bin of ``"overexpress"`` is far outside the
    training data.

    Raises
    ------
    KeyError
        A gene that is neither in the data nor in the model.
    ValueError
        A gene outside the model's vocabulary, an unknown mode, a bad token.
    """
    from ..pp._tokens import all_tokens
    from ..training.finetuned import FinetunedModel
    from ..training.inference import embed_token_array
    from ._interpret import load_encoder

    check_data(data, "tl.perturb")
    key_added = check_key(key_added, "tl.perturb")
    batch_size = check_batch_size(batch_size)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    tuned = model if isinstance(model, FinetunedModel) else None
    encoder = tuned.encoder if tuned is not None else load_encoder(model, "tl.perturb")
    block = tuned.embedding_block if tuned is not None else encoder.resolve_block(embedding_block)
    n_bins = encoder.config.n_expressions_bins
    if mode == "delete":
        if token is not None:
            raise ValueError("token= is for mode='overexpress'; deletion sets tokens to 0.")
        value = 0
    else:
        value = n_bins - 1 if token is None else check_positive_int(token, "token")
        if value > n_bins - 1:
            raise ValueError(f"token must be 1..{n_bins - 1} (the model's bins), got {value}.")
    adata = get_modality(data, mod)
    tokens, alignment = all_tokens(
        adata, encoder, layer=layer, gene_key=gene_key, batch_size=batch_size
    )
    sets = resolve_genes(genes, adata, alignment, encoder.genes, gene_symbols=gene_symbols)
    start = logg.info(
        f"perturbing {len(sets)} gene{' set' if any(len(v) > 1 for v in sets.values()) else ''}"
        f"{'s' if len(sets) > 1 else ''} ({mode}) in {adata.n_obs} samples"
    )
    embed = lambda t: embed_token_array(encoder, t, block=block, batch_size=batch_size)  # noqa: E731
    reference = embed(tokens)
    reference_out = tuned.outputs(reference) if tuned is not None else None
    shifts = np.zeros((adata.n_obs, len(sets)), np.float64)
    changes = np.zeros((adata.n_obs, len(sets)), np.float64) if tuned is not None else None
    probability = np.zeros((adata.n_obs, len(sets)), np.float64)
    summary = []
    predicted = None
    if tuned is not None and tuned.task == "classification":
        predicted = reference_out.argmax(axis=1)
        reference_margin = margin(reference_out, predicted)
        reference_p = _softmax(reference_out)[np.arange(len(predicted)), predicted]
    for column, (_name, where) in enumerate(
        logg.progress_bar(sets.items(), progress=progress, desc="perturbations", unit="set")
    ):
        changed = (tokens[:, where] != value).any(axis=1)
        rows = np.flatnonzero(changed)
        record = {
            "genes": ";".join(encoder.genes[i] if encoder.genes else str(i) for i in where),
            "n_genes": len(where),
            "n_changed": len(rows),
        }
        if len(rows):
            altered = tokens[rows].copy()
            altered[:, where] = value
            moved = embed(altered)
            shifts[rows, column] = cosine_shift(reference[rows], moved)
            if tuned is not None:
                out = tuned.outputs(moved)
                if predicted is not None:
                    pick = predicted[rows]
                    changes[rows, column] = margin(out, pick) - reference_margin[rows]
                    p = _softmax(out)[np.arange(len(rows)), pick]
                    probability[rows, column] = p - reference_p[rows]
                    record["n_prediction_changed"] = int((out.argmax(axis=1) != pick).sum())
                else:
                    changes[rows, column] = out[:, 0] - reference_out[rows, 0]
        elif predicted is not None:
            record["n_prediction_changed"] = 0
        record["mean_shift"] = float(shifts[:, column].mean())
        record["median_shift"] = float(np.median(shifts[:, column]))
        record["max_shift"] = float(shifts[:, column].max())
        if tuned is not None:
            record["mean_output_change"] = float(changes[:, column].mean())
        if predicted is not None:
            record["mean_probability_change"] = float(probability[:, column].mean())
        summary.append(record)
    names = pd.Index(list(sets), dtype=object)
    obs_index = adata.obs_names.copy()
    fields: dict = {
        ("obsm", key_added): pd.DataFrame(shifts, index=obs_index, columns=names),
    }
    described = [(key_added, "cosine shift of the embedding per perturbation", "obsm")]
    if tuned is not None:
        fields["obsm", f"{key_added}_output"] = pd.DataFrame(
            changes, index=obs_index.copy(), columns=names.copy()
        )
        what = (
            "change of the predicted class's logit margin"
            if predicted is not None
            else "change of the risk score"
        )
        described.append((f"{key_added}_output", what, "obsm"))
    params = {
        **model_record(encoder),
        "mode": mode,
        "token": int(value),
        BLOCK_KEY: int(block),
        "finetuned": tuned is not None,
        "task": "" if tuned is None else tuned.task,
        "gene_coverage": float(alignment.coverage),
        "layer": "X" if layer is None else layer,
        "gene_key": "var_names" if gene_key is None else gene_key,
        "package_version": __version__,
    }
    fields["uns", key_added] = {
        "params": params,
        "summary": pd.DataFrame(summary, index=names.copy()),
    }
    described.append((key_added, "parameters and summary per perturbation", "uns"))
    target = copy_target(data, adata, copy)
    write_fields(target, mod, fields, "tl.perturb")
    log_added(start, target, mod, described)
    return target if copy else None


def margin(logits: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """``logit[class] - max(other logits)`` per row (float64): > 0 while ``class`` is predicted."""
    logits = np.asarray(logits, dtype=np.float64)
    rows = np.arange(len(classes))
    own = logits[rows, classes]
    others = logits.copy()
    others[rows, classes] = -np.inf
    return own - others.max(axis=1)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
