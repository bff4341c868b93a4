"""Parameter names: each checkpoint format's tensor names mapped to the model's NNX paths.

Every name table is a list of ``(regex, target template, transform)`` rules (as bonsai's
``params.py``): a checkpoint tensor whose name matches ``regex`` goes to the NNX path the
template makes of the match, after ``transform`` (PyTorch stores Linear weights (out, in):
transposed). Mapping collects *all* problems (unmapped or unexpected tensors, missing parameters,
wrong shapes, NaN or infinite weights) and reports them together in one :class:`CheckpointError`.
No file is read or written here (see :mod:`.files`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .errors import CheckpointError, checkpoint_error

Transform = Callable[[np.ndarray], np.ndarray]


def identity(a: np.ndarray) -> np.ndarray:
    """The tensor as stored (Haiku and our own format: same layout as NNX)."""
    return a


def transpose(a: np.ndarray) -> np.ndarray:
    """A PyTorch Linear weight (out, in) as an NNX kernel (in, out); vectors unchanged."""
    return np.ascontiguousarray(a.T) if a.ndim == 2 else a


#: Haiku parameter names -> NNX variable names (Linear and LayerNorm).
HAIKU_PARAM = {"w": "kernel", "b": "bias", "scale": "scale", "offset": "bias"}
_HK_ATTENTION = {"query": "query", "key": "key", "value": "value", "mha_output": "output"}
_HK_BLOCK_PART = {
    "self_attention_layer_norm": "attention_norm",
    "final_layer_norm": "mlp_norm",
    "fc1": "fc1",
    "fc2": "fc2",
}
_PT_PARAM = {"weight": "kernel", "bias": "bias"}
_PT_NORM_PARAM = {"weight": "scale", "bias": "bias"}
_PT_ATTENTION = {"w_q": "query", "w_k": "key", "w_v": "value", "output": "output"}
_PT_NORM = {"layer_norm_self_attention": "attention_norm", "layer_norm_mlp": "mlp_norm"}

# (pattern, function(match) -> target NNX path, transform)
Rule = tuple[str, Callable[[re.Match], str], Transform]

HAIKU_RULES: list[Rule] = [
    (
        r"bulk_bert/~/expression_embedding/embeddings",
        lambda m: "expression_embedding.embedding",
        identity,
    ),
    (r"bulk_bert/~/gene_embedding/embeddings", lambda m: "gene_embedding.embedding", identity),
    (r"bulk_bert/~/linear/(w|b)", lambda m: f"gene_projection.{HAIKU_PARAM[m[1]]}", identity),
    (
        r"bulk_bert/self_attention_block_(\d+)/~/self_attention/(query|key|value|mha_output)/(w|b)",
        lambda m: f"layers.{m[1]}.attention.{_HK_ATTENTION[m[2]]}.{HAIKU_PARAM[m[3]]}",
        identity,
    ),
    (
        r"bulk_bert/self_attention_block_(\d+)/~/"
        r"(self_attention_layer_norm|final_layer_norm|fc1|fc2)/(w|b|scale|offset)",
        lambda m: f"layers.{m[1]}.{_HK_BLOCK_PART[m[2]]}.{HAIKU_PARAM[m[3]]}",
        identity,
    ),
    (
        r"bulk_bert/~/simple_lm_head/~/lm_final_fc/(w|b)",
        lambda m: f"lm_head.{HAIKU_PARAM[m[1]]}",
        identity,
    ),
]

TORCH_RULES: list[Rule] = [
    (r"expression_embedding_layer\.weight", lambda m: "expression_embedding.embedding", identity),
    (r"gene_embedding_layer\.weight", lambda m: "gene_embedding.embedding", identity),
    (
        r"fc_gene_embedding\.(weight|bias)",
        lambda m: f"gene_projection.{_PT_PARAM[m[1]]}",
        transpose,
    ),
    (
        r"transformer_layers\.(\d+)\.mha\.(w_q|w_k|w_v|output)\.(weight|bias)",
        lambda m: f"layers.{m[1]}.attention.{_PT_ATTENTION[m[2]]}.{_PT_PARAM[m[3]]}",
        transpose,
    ),
    (
        r"transformer_layers\.(\d+)\.(layer_norm_self_attention|layer_norm_mlp)\.(weight|bias)",
        lambda m: f"layers.{m[1]}.{_PT_NORM[m[2]]}.{_PT_NORM_PARAM[m[3]]}",
        identity,
    ),
    (
        r"transformer_layers\.(\d+)\.(fc1|fc2)\.(weight|bias)",
        lambda m: f"layers.{m[1]}.{m[2]}.{_PT_PARAM[m[3]]}",
        transpose,
    ),
    (r"lm_head\.(weight|bias)", lambda m: f"lm_head.{_PT_PARAM[m[1]]}", transpose),
]

#: Our own format stores NNX paths as they are.
OWN_RULES: list[Rule] = [(r"(.+)", lambda m: m[1], identity)]


#: Haiku names of the released heads (``classification_head/~/mlp/~/linear_0/w`` ...); any
#: top-level module name is accepted (the survival head's differs).
HAIKU_HEAD_RULES: list[Rule] = [
    (r"[^/]+/~/mlp/~/linear_(\d+)/(w|b)", lambda m: f"hidden.{m[1]}.{HAIKU_PARAM[m[2]]}", identity),
    (r"[^/]+/~/layer_norm/(scale|offset)", lambda m: f"norm.{HAIKU_PARAM[m[1]]}", identity),
    (r"[^/]+/~/linear/(w|b)", lambda m: f"output.{HAIKU_PARAM[m[1]]}", identity),
]


# ------------------------------------------------------------------------------------ mapping
def flat_state(module: nnx.Module, filter=nnx.Param) -> dict[str, nnx.Variable]:
    """The module's variables keyed by dotted NNX path (``layers.0.fc1.kernel``)."""
    return {
        ".".join(str(p) for p in path): variable
        for path, variable in nnx.to_flat_state(nnx.state(module, filter))
    }


def tensor_problems(
    tensors: Mapping[str, np.ndarray],
    rules: list[Rule],
    targets: Mapping[str, nnx.Variable],
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Map checkpoint tensors to NNX paths and list what is wrong with them.

    Returns
    -------
    mapped
        ``{nnx_path: array}`` for every tensor that mapped to a target with the right shape.
    problems
        One line per unmapped, unexpected, duplicated, missing or misshapen tensor, and per
        tensor holding NaN or infinite values (a damaged file, or a training run that
        diverged: such weights make every output NaN).
    """
    problems: list[str] = []
    mapped: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    for name in sorted(tensors):
        array = np.asarray(tensors[name])
        rule = next(
            (
                (re.fullmatch(pattern, name), target_of, transform)
                for pattern, target_of, transform in rules
                if re.fullmatch(pattern, name)
            ),
            None,
        )
        if rule is None:
            problems.append(f"unexpected tensor {name!r} {array.shape}: no parameter of this model")
            continue
        match, target_of, transform = rule
        target = target_of(match)
        if target not in targets:
            problems.append(
                f"unexpected tensor {name!r} {array.shape}: maps to {target!r}, "
                "which this model configuration does not have"
            )
            continue
        if target in origin:
            problems.append(f"tensors {origin[target]!r} and {name!r} both map to {target!r}")
            continue
        origin[target] = name
        non_finite = _non_finite(array)
        if non_finite:
            problems.append(f"tensor {name!r} {tuple(array.shape)} holds {non_finite}")
        value = transform(array)
        expected = tuple(targets[target].shape)
        if tuple(value.shape) != expected:
            problems.append(
                f"tensor {name!r} has shape {tuple(array.shape)}, but {target!r} needs "
                f"{expected}{' (after transposing)' if transform is transpose else ''}"
            )
            continue
        mapped[target] = value
    for target in sorted(set(targets) - set(origin) - {t for t in targets if is_hook(t)}):
        problems.append(f"missing tensor for {target!r} {tuple(targets[target].shape)}")
    return mapped, problems


def _non_finite(array: np.ndarray) -> str:
    """``"3 NaN and 1 infinite values (of 4096)"``, or ``""`` when every value is finite."""
    if array.dtype.kind in "biu" or array.size == 0:
        return ""
    values = array if array.dtype.kind in "fc" else array.astype(np.float32)  # e.g. bfloat16
    if np.isfinite(values).all():
        return ""
    n_nan = int(np.isnan(values).sum())
    n_inf = int(np.isinf(values).sum())
    return f"{n_nan} NaN and {n_inf} infinite values (of {array.size})"


def map_tensors(
    tensors: Mapping[str, np.ndarray],
    rules: list[Rule],
    targets: Mapping[str, nnx.Variable],
    *,
    source: str,
    extra_problems: list[str] | None = None,
) -> dict[str, np.ndarray]:
    """Map checkpoint tensors to NNX paths, checking names, shapes and values.

    Returns ``{nnx_path: array}`` covering every target, or raises :class:`CheckpointError`
    listing every unmapped, unexpected, duplicated, missing, misshapen or non-finite tensor at
    once (and ``extra_problems``).
    """
    mapped, problems = tensor_problems(tensors, rules, targets)
    problems = list(extra_problems or ()) + problems
    if problems:
        raise checkpoint_error(source, problems)
    return mapped


def is_hook(path: str) -> bool:
    """Whether an NNX path is a training hook (IA3 vectors, the mask embedding), not a weight."""
    return path.split(".")[-1] in ("ia3_key", "ia3_value", "ia3_ffn") or path == "mask_embedding"


def assign(module: nnx.Module, mapped: Mapping[str, np.ndarray]) -> None:
    """Write mapped arrays into the module's variables (dtype of each variable kept)."""
    targets = flat_state(module, nnx.Variable)
    for path, array in mapped.items():
        variable = targets[path]
        variable.set_value(jnp.asarray(array, dtype=variable.dtype))


def flatten_haiku(params: Mapping) -> dict[str, np.ndarray]:
    """Haiku params as ``{"module/name": array}``, from nested ``{module: {name: array}}``
    (as ``hk.data_structures`` and the released joblib files hold them) or already flat."""
    flat = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            flat.update({f"{key}/{name}": np.asarray(leaf) for name, leaf in value.items()})
        else:
            flat[key] = np.asarray(value)
    return flat


# ------------------------------------------------------------------------------------ export
_TORCH_NAMES = {"kernel": "weight", "bias": "bias", "scale": "weight", "embedding": "weight"}
_NNX_TO_TORCH_MODULE = {
    "expression_embedding": "expression_embedding_layer",
    "gene_embedding": "gene_embedding_layer",
    "gene_projection": "fc_gene_embedding",
    "lm_head": "lm_head",
    "attention.query": "mha.w_q",
    "attention.key": "mha.w_k",
    "attention.value": "mha.w_v",
    "attention.output": "mha.output",
    "attention_norm": "layer_norm_self_attention",
    "mlp_norm": "layer_norm_mlp",
    "fc1": "fc1",
    "fc2": "fc2",
}


def torch_state_dict(model) -> dict[str, np.ndarray]:
    """The model's weights under the Hugging Face repo's PyTorch names (Linear weights (out, in))."""
    tensors = {}
    for path, variable in flat_state(model, nnx.Param).items():
        if is_hook(path):
            raise CheckpointError(
                "IA3 vectors and the mask embedding have no place in the Hugging Face layout; "
                "use model.save() for fine-tuned or pretrained models."
            )
        *module, leaf = path.split(".")
        prefix = ""
        if module[0] == "layers":
            prefix, module = f"transformer_layers.{module[1]}.", module[2:]
        name = f"{prefix}{_NNX_TO_TORCH_MODULE['.'.join(module)]}.{_TORCH_NAMES[leaf]}"
        array = np.asarray(jax.device_get(variable[...]))
        tensors[name] = np.ascontiguousarray(array.T) if leaf == "kernel" else array
    return tensors
