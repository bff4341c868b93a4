"""``tl.attribute``: per sample and gene, the contribution of the gene's expression to a
fine-tuned head's output (integrated gradients or gradient × input)."""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from .. import _logging as logg
from .._anndata import get_modality
from .._keys import ATTRIBUTION_KEY, BLOCK_KEY
from .._settings import COMPILE_CACHE_SIZE
from .._validation import check_positive_int
from .._version import __version__
from ._embed import check_data
from ._interpret import (
    ALL,
    _nanmean,
    check_batch_size,
    check_key,
    copy_target,
    group_labels,
    load_tuned,
    log_added,
    model_positions,
    model_record,
    to_input_genes,
    top_genes,
    write_fields,
)

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

    from ..training.finetuned import FinetunedModel

METHODS = ("integrated_gradients", "gradient_x_input")
#: Risk groups of a survival model's samples when no ``groupby`` is given (median split).
RISK_GROUPS = ("low risk", "high risk")
RANK_BY = ("mean", "contrast")


def integration_rule(method: str, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Points ``alpha`` in (0, 1] and weights of the path integral (weights sum to one).

    Integrated gradients: Gauss-Legendre on [0, 1] with ``n_steps`` points (exact for
    integrands that are polynomials of degree < 2 n_steps along the path). Gradient × input:
    the single point ``alpha = 1``.
    """
    if method == "gradient_x_input":
        return np.ones(1, np.float32), np.ones(1, np.float32)
    nodes, weights = np.polynomial.legendre.leggauss(n_steps)
    return ((nodes + 1) / 2).astype(np.float32), (weights / 2).astype(np.float32)


def _attribution_function(tuned, remat: bool):
    """The compiled attribution of a batch for a fine-tuned model (see :func:`_attribution`)."""
    from flax import nnx

    enc_graph, _ = nnx.split(tuned.encoder)
    head_graph, _ = nnx.split(tuned.head)
    return _attribution(enc_graph, head_graph, tuned.embedding_block, remat)


@functools.lru_cache(maxsize=COMPILE_CACHE_SIZE)
def _attribution(enc_graph, head_graph, block: int, remat: bool):
    """The jitted attribution of a batch, built once per encoder and head structure."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from ..model.modeling import encode_embeddings, input_embeddings

    def attribute_batch(enc_state, head_state, tokens, columns, alphas, weights):
        encoder = nnx.merge(enc_graph, enc_state)
        head = nnx.merge(head_graph, head_state)
        table = encoder.expression_embedding.embedding[...]
        # zero-expression baseline: every gene at token 0 (its gene embedding kept)
        base = input_embeddings(encoder, jnp.zeros_like(tokens))
        delta = jnp.take(table, tokens, axis=0, mode="clip") - table[0]

        def outputs(x):
            hidden = encode_embeddings(encoder, x, num_layers=block, remat=remat)
            return head(hidden.astype(jnp.float32).mean(axis=1))

        out = outputs(base + delta)
        out_base = outputs(base[:1])[0]
        # one backward pass per explained output column, one after the other (lax.map:
        # the memory of one backward pass), sharing the forward pass
        picks = jax.nn.one_hot(columns, out.shape[-1], dtype=out.dtype)  # (K, n_outputs)
        cotangents = jnp.broadcast_to(picks[:, None, :], (len(columns), *out.shape))

        def step(total, point):
            alpha, weight = point
            _, pullback = jax.vjp(outputs, base + alpha * delta)

            def column(cotangent):  # (B, L): d_j . dF_k/dx_j
                return jnp.sum(pullback(cotangent)[0] * delta, axis=-1)

            scores = jax.lax.map(column, cotangents)  # (K, B, L)
            return total + weight * jnp.moveaxis(scores, 0, 1), None

        init = jnp.zeros((tokens.shape[0], len(columns), tokens.shape[1]), jnp.float32)
        scores, _ = jax.lax.scan(step, init, (alphas, weights))
        return scores, out, out_base

    return jax.jit(attribute_batch)


def resolve_columns(tuned, target) -> list[int]:
    """The head outputs to explain: every class (``target=None``), one class, or the risk."""
    if tuned.task == "survival":
        if target not in (None, "risk"):
            raise ValueError(
                f"A survival model has one output, the risk score: pass target=None or 'risk', "
                f"not {target!r}."
            )
        return [0]
    names = [str(c) for c in tuned.classes]
    if target is None:
        return list(range(len(names)))
    if str(target) not in names:
        raise ValueError(
            f"target={target!r} is not a class of this classifier; its classes are {names} "
            "(or None: every class)."
        )
    return [names.index(str(target))]


def contrast(values: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Per gene: the mean over ``members`` minus the mean over the other samples (NaN-aware);
    the mean over ``members`` when there are no others."""
    inside = _nanmean(values[members])
    if members.all():
        return inside
    return inside - _nanmean(values[~members])


def attribute(
    data,
    finetuned: FinetunedModel | str | os.PathLike,
    *,
    target: str | None = None,
    method: Literal["integrated_gradients", "gradient_x_input"] = "integrated_gradients",
    n_steps: int = 32,
    groupby: str | None = None,
    layer: str | None = None,
    gene_key: str | None = None,
    mod: str = "rna",
    batch_size: int = 1,
    remat: bool = True,
    rank_by: Literal["mean", "contrast"] = "mean",
    n_top: int = 50,
    key_added: str = ATTRIBUTION_KEY,
    copy: bool = False,
    progress: bool = True,
) -> AnnData | Any | None:
    """Per sample and gene, how much the gene's expression moves a fine-tuned head's output.

    The encoder's input for gene ``j`` with token ``t_j`` is ``x_j = ExprEmbed[t_j] +
    GeneEmbed_j``; the baseline ``x0`` puts every gene at token 0 (not expressed) and keeps the
    gene embeddings. With ``F`` the explained output (a class logit, or the Cox risk score) and
    ``d_j = ExprEmbed[t_j] - ExprEmbed[0]``:

    ``"integrated_gradients"``
        ``A_j = d_j . ∫_0^1 ∂F/∂x_j (x0 + α (x - x0)) dα`` (Sundararajan et al. 2017), the
        integral by Gauss-Legendre quadrature with ``n_steps`` points. Completeness:
        ``sum_j A_j = F(x) - F(x0)`` up to the quadrature error, reported per sample.
    ``"gradient_x_input"``
        ``A_j = d_j . ∂F/∂x_j (x)``: one gradient, a first-order approximation whose sum need
        not equal ``F(x) - F(x0)`` (the gap is reported the same way).

    Genes at token 0 get exactly 0 (they are at the baseline).

    Per group ``g`` (a class, or a risk half) explained by output ``F_g`` (the class's logit, or
    the risk), genes are ranked by their mean attribution to ``F_g`` over the group's samples
    (``rank_by="mean"``), or by that mean minus the mean over the other samples
    (``rank_by="contrast"``): genes whose expression pushes ``F_g`` up more in ``g`` than
    elsewhere. The mean credits genes that are expressed in the group and not at the baseline
    (markers, but also genes every sample expresses, which add similar amounts everywhere); the
    contrast cancels what all samples share, but also credits genes whose *absence* marks the
    group (other groups' markers, negative elsewhere).

    Parameters
    ----------
    data
        AnnData (or MuData, modality ``mod``) with TPM.
    finetuned
        A :class:`~bulkrnabert_sv.tl.FinetunedModel` (from :func:`~bulkrnabert_sv.tl.finetune`)
        or the folder it was saved to.
    target
        Classification: None (every class's logit: one backward pass per class and step; each
        class's ranking uses its own logit) or a class name (that logit only, for every sample
        and group). Survival: None or ``"risk"`` (the risk score; higher = shorter survival).
    method
        ``"integrated_gradients"`` or ``"gradient_x_input"``.
    n_steps
        Integrated gradients: quadrature points, each a forward and (per explained output) a
        backward pass per sample; 32 by default. Raise it when ``uns[key]["max_relative_error"]``
        is large.
    groupby
        ``obs`` column of the groups ranked. Default: the predicted class (classification) or
        the risk half (``"low risk"``/``"high risk"`` at the median risk of the samples;
        survival). With ``target=None`` its groups must be classes (each is explained by its
        class's logit).
    layer, gene_key, mod
        Where the TPM values, gene ids and modality are.
    batch_size
        Samples per pass (1 at full size; results do not depend on it beyond float rounding).
    remat
        Recompute each block in the backward pass: about a third more time, much less memory.
    rank_by
        ``"mean"`` or ``"contrast"``: the score of ``uns[key]["top_genes"]`` (both are written
        to ``varm``).
    n_top
        Genes listed per group in ``uns[key]["top_genes"]``.
    key_added
        Key of the fields written (see Returns).
    copy
        Write into a copy of ``data`` and return it.
    progress
        Show a progress bar (samples).

    Returns
    -------
    ``None``, or the annotated copy with ``copy=True``. Written (``key`` = ``key_added``):

    ``layers[key]``
        float32 (n_obs, n_vars): ``A_j`` for each sample's explained output (its predicted
        class with ``target=None``, else the target class, or the risk), in units of that output
        (logit or risk); positive = the gene's expression raises it. Aligned to the input genes:
        NaN for input genes that are not model genes; input genes mapped onto one model gene
        share its value (so check completeness over model genes, as ``obs`` below does).
    ``obsm[f"{key}_by_class"]``
        Classification with ``target=None``: float32 (n_obs, n_classes, n_vars), the
        attributions to every class's logit (classes in ``params["classes"]`` order).
    ``obs[f"{key}_target"]``
        The output explained in ``layers[key]`` (class name, or ``"risk"``).
    ``obs[f"{key}_delta"]``
        ``F(x) - F(x0)`` of that output: its value minus its value with no gene expressed.
    ``obs[f"{key}_error"]``
        ``sum_j A_j - (F(x) - F(x0))`` over the model's genes: the integration error
        (integrated gradients) or the first-order gap (gradient × input).
    ``varm[key]``
        DataFrame (n_vars × groups): the mean attribution to each group's output over the
        group's samples, and ``"all"``: the mean of ``layers[key]`` over all samples.
    ``varm[f"{key}_contrast"]``
        DataFrame (n_vars × groups): that mean minus the mean over the group's other samples
        (the mean alone when the group holds every sample).
    ``uns[key]``
        ``params`` (method, n_steps, target, groupby, the fine-tuned model's task, method and
        classes, the encoder's source and fingerprint), ``max_abs_error`` and
        ``max_relative_error`` (``|error| / |delta|``, worst sample and output), and
        ``top_genes`` (DataFrame: per group the ``n_top`` genes of highest ``rank_by`` score,
        highest first; ``params["rank_by"]`` says which).

    What the numbers do not mean: an attribution is relative to the all-zero baseline (no
    gene expressed), not to another sample or class; it explains this model's output, right
    or wrong, not the biology; correlated genes share credit in ways the method does not
    control; and a gene's rank moves with the groups it is contrasted against.

    Raises
    ------
    TypeError
        ``finetuned`` is an encoder alone; ``data`` is not an AnnData or MuData.
    ValueError
        An unknown method or target, bad ``n_steps`` or ``batch_size``, groups that are not
        classes with ``target=None``.
    KeyError
        ``groupby`` is not an ``obs`` column.
    """
    import jax
    from flax import nnx

    from ..pp._tokens import token_batches
    from ._risk_groups import quantile_groups

    check_data(data, "tl.attribute")
    key_added = check_key(key_added, "tl.attribute")
    batch_size = check_batch_size(batch_size)
    n_steps = check_positive_int(n_steps, "n_steps")
    n_top = check_positive_int(n_top, "n_top")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    if rank_by not in RANK_BY:
        raise ValueError(f"rank_by must be one of {RANK_BY}, got {rank_by!r}.")
    tuned = load_tuned(finetuned, "tl.attribute")
    columns = resolve_columns(tuned, target)
    adata = get_modality(data, mod)
    labels = group_labels(adata, groupby)
    classes = None if tuned.classes is None else [str(c) for c in tuned.classes]
    if labels is not None and target is None and classes is not None:
        strangers = [str(g) for g in labels.categories if str(g) not in classes]
        if strangers:
            raise ValueError(
                f"obs[{groupby!r}] has groups that are not classes of the model ({strangers}); "
                "with target=None each group is explained by its class's logit. Pass "
                "target=<class> to explain one logit in every group."
            )
    encoder, cfg = tuned.encoder, tuned.encoder.config
    steps = n_steps if method == "integrated_gradients" else 1
    start = logg.info(
        f"computing {method.replace('_', ' ')} of {adata.n_obs} samples ({steps} step"
        f"{'s' if steps > 1 else ''} x {len(columns)} output{'s' if len(columns) > 1 else ''}, "
        f"{cfg.n_genes} genes, {tuned.task} head)"
    )
    batches = token_batches(adata, encoder, layer=layer, gene_key=gene_key, batch_size=batch_size)
    positions = model_positions(batches.alignment, adata.n_vars)
    alphas, weights = integration_rule(method, n_steps)
    function = _attribution_function(tuned, bool(remat))
    enc_state, head_state = nnx.state(tuned.encoder), nnx.state(tuned.head)
    n_obs, n_genes, k = adata.n_obs, cfg.n_genes, len(columns)
    size = min(batch_size, max(n_obs, 1))
    scores = np.zeros((n_obs, k, n_genes), np.float32)
    outputs = np.zeros((n_obs, tuned.head.settings["n_outputs"]), np.float32)
    baseline = None
    picked = np.asarray(columns, np.int32)
    with logg.progress_bar(
        total=n_obs, progress=progress, desc="attributions", unit="sample"
    ) as bar:
        for begin, stop, tokens in batches:
            n = stop - begin
            tokens = np.asarray(tokens, dtype=np.int32)
            if n < size:  # one compiled shape: pad with unexpressed rows, sliced away
                tokens = np.concatenate([tokens, np.zeros((size - n, n_genes), np.int32)])
            part, out, out_base = function(
                enc_state, head_state, jax.device_put(tokens), picked, alphas, weights
            )
            scores[begin:stop] = np.asarray(part)[:n]
            outputs[begin:stop] = np.asarray(out)[:n]
            baseline = np.asarray(out_base)
            bar.update(n)
    if baseline is None:
        raise ValueError("tl.attribute: the data has no samples.")
    # every explained output: delta and completeness error (n_obs, k)
    deltas = outputs[:, columns].astype(np.float64) - baseline[columns]
    errors = scores.astype(np.float64).sum(axis=2) - deltas
    with np.errstate(invalid="ignore", divide="ignore"):
        relative = np.abs(errors) / np.maximum(np.abs(deltas), 1e-12)
    predicted = outputs.argmax(axis=1)
    if tuned.task == "classification":
        # the output shown per sample: its predicted class (target=None) or the target
        shown = predicted if k > 1 else np.zeros(n_obs, np.int64)
        explained = pd.Categorical.from_codes(
            predicted if k > 1 else np.full(n_obs, columns[0]), categories=classes
        )
        if labels is None:
            labels = pd.Categorical.from_codes(predicted, categories=classes)
    else:
        shown = np.zeros(n_obs, np.int64)
        explained = pd.Categorical(["risk"] * n_obs)
        if labels is None:
            labels = quantile_groups(outputs[:, 0], 2, list(RISK_GROUPS))
    rows = np.arange(n_obs)
    aligned = to_input_genes(scores, positions)  # (n_obs, k, n_vars)
    values = aligned[rows, shown]
    contrasts, means = {}, {ALL: _nanmean(values)}
    codes = np.asarray(labels.codes)
    for code, name in enumerate(labels.categories):
        members = codes == code
        if not members.any():
            continue
        column = classes.index(str(name)) if (k > 1 and classes is not None) else 0
        group_values = aligned[:, column]
        contrasts[str(name)] = contrast(group_values, members)
        means[str(name)] = _nanmean(group_values[members])
    index = pd.Index(adata.var_names).copy()
    contrasts = pd.DataFrame(contrasts, index=index, dtype=np.float32)
    means = pd.DataFrame(means, index=index.copy(), dtype=np.float32)
    ranked = means.drop(columns=[ALL]) if rank_by == "mean" else contrasts
    params = {
        **model_record(encoder),
        "method": method,
        "n_steps": int(steps),
        "target": _target_name(tuned, target),
        "groupby": groupby if groupby is not None else _default_groups(tuned),
        "baseline": "token 0 (no expression) for every gene",
        "rank_by": rank_by,
        "task": tuned.task,
        "finetune_method": tuned.method,
        "classes": [] if classes is None else classes,
        BLOCK_KEY: int(tuned.embedding_block),
        "gene_coverage": float(batches.alignment.coverage),
        "layer": "X" if layer is None else layer,
        "gene_key": "var_names" if gene_key is None else gene_key,
        "package_version": __version__,
    }
    obs_index = adata.obs_names
    fields: dict = {("layers", key_added): values}
    described = [(key_added, "attributions per sample and gene", "layers")]
    if k > 1:
        fields["obsm", f"{key_added}_by_class"] = aligned
        described.append((f"{key_added}_by_class", "attributions to every class", "obsm"))
    fields.update(
        {
            ("obs", f"{key_added}_target"): pd.Series(explained, index=obs_index),
            ("obs", f"{key_added}_delta"): pd.Series(
                deltas[rows, shown].astype(np.float32), index=obs_index
            ),
            ("obs", f"{key_added}_error"): pd.Series(
                errors[rows, shown].astype(np.float32), index=obs_index
            ),
            ("varm", key_added): means,
            ("varm", f"{key_added}_contrast"): contrasts,
            ("uns", key_added): {
                "params": params,
                "max_abs_error": float(np.abs(errors).max()),
                "max_relative_error": float(np.nanmax(relative)),
                "top_genes": top_genes(ranked, n_top),
            },
        }
    )
    described += [
        (f"{key_added}_target", "output explained", "obs"),
        (f"{key_added}_delta", "output minus baseline output", "obs"),
        (f"{key_added}_error", "completeness error", "obs"),
        (key_added, "mean attribution per group", "varm"),
        (f"{key_added}_contrast", "group minus other samples", "varm"),
        (key_added, "parameters, errors and top genes", "uns"),
    ]
    target_data = copy_target(data, adata, copy)
    write_fields(target_data, mod, fields, "tl.attribute")
    log_added(start, target_data, mod, described)
    logg.info(
        f"    completeness: max |error| {np.abs(errors).max():.3g}, "
        f"max |error| / |delta| {np.nanmax(relative):.3g}"
    )
    return target_data if copy else None


def _target_name(tuned, target) -> str:
    if tuned.task == "survival":
        return "risk"
    return "every class" if target is None else str(target)


def _default_groups(tuned) -> str:
    return "predicted class" if tuned.task == "classification" else "risk half (median)"
