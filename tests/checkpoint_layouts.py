"""Write checkpoint folders laid out exactly like the real ones, from Haiku-named params.

The PyTorch names are produced here independently of the package's name tables, so loading these
folders tests the tables rather than round-tripping them.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import joblib
import numpy as np
from safetensors.numpy import save_file

_PT_ATTENTION = {"query": "w_q", "key": "w_k", "value": "w_v", "mha_output": "output"}
_PT_BLOCK = {
    "self_attention_layer_norm": "layer_norm_self_attention",
    "final_layer_norm": "layer_norm_mlp",
    "fc1": "fc1",
    "fc2": "fc2",
}
_PT_LEAF = {"w": "weight", "b": "bias", "scale": "weight", "offset": "bias", "embeddings": "weight"}


def haiku_to_torch_name(name: str) -> str:
    module, leaf = name.rsplit("/", 1)
    fixed = {
        "bulk_bert/~/expression_embedding": "expression_embedding_layer",
        "bulk_bert/~/gene_embedding": "gene_embedding_layer",
        "bulk_bert/~/linear": "fc_gene_embedding",
        "bulk_bert/~/simple_lm_head/~/lm_final_fc": "lm_head",
    }
    if module in fixed:
        return f"{fixed[module]}.{_PT_LEAF[leaf]}"
    m = re.fullmatch(r"bulk_bert/self_attention_block_(\d+)/~/(.+)", module)
    i, rest = m[1], m[2]
    if rest.startswith("self_attention/"):
        part = "mha." + _PT_ATTENTION[rest.split("/")[1]]
    else:
        part = _PT_BLOCK[rest]
    return f"transformer_layers.{i}.{part}.{_PT_LEAF[leaf]}"


def torch_tensors(haiku_params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for name, value in haiku_params.items():
        value = np.asarray(value)
        if name.endswith("/w"):
            value = np.ascontiguousarray(value.T)  # PyTorch Linear weights are (out, in)
        out[haiku_to_torch_name(name)] = value
    return out


def hf_config(config: dict) -> dict:
    keys = [
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
    ]
    out = {k: config[k] for k in keys}
    out.update(
        embeddings_layers_to_save=[],
        attention_maps_to_save=[],
        architectures=["BulkRNABert"],
        auto_map={"AutoModel": "bulkrnabert.BulkRNABert"},
        torch_dtype="float32",
        model_type="BulkRNABert",
    )
    return out


def tokenizer_config(config: dict) -> dict:
    return {
        "n_expressions_bins": config["n_expressions_bins"],
        "min_omic_value": 0.0,
        "max_omic_value": 1.0,
        "use_max_normalization": True,
        "normalization_factor": config["normalization_factor"],
        "prepend_cls_token": False,
    }


def write_sample_csv(folder: Path, genes, samples: np.ndarray | None = None) -> None:
    (folder / "data").mkdir(parents=True, exist_ok=True)
    lines = [",".join(genes) + ",identifier"]
    if samples is not None:
        for i, row in enumerate(samples):
            lines.append(",".join(repr(float(v)) for v in row) + f",sample_{i}")
    (folder / "data" / "tcga_sample.csv").write_text("\n".join(lines) + "\n")


def write_hf_folder(folder: Path, haiku_params, config: dict, genes) -> Path:
    """The Hugging Face repo layout: model.safetensors, config.json, tokenizer_config.json, data/."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        torch_tensors(haiku_params), str(folder / "model.safetensors"), metadata={"format": "pt"}
    )
    (folder / "config.json").write_text(json.dumps(hf_config(config), indent=1))
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(config), indent=1))
    write_sample_csv(folder, genes)
    return folder


def write_haiku_folder(folder: Path, haiku_params, config: dict, genes) -> Path:
    """The Haiku layout: jax_params/params.joblib (nested dict) + jax_params/config.json."""
    nested: dict[str, dict[str, np.ndarray]] = {}
    for name, value in haiku_params.items():
        module, leaf = name.rsplit("/", 1)
        nested.setdefault(module, {})[leaf] = np.asarray(value)
    (folder / "jax_params").mkdir(parents=True, exist_ok=True)
    joblib.dump(nested, folder / "jax_params" / "params.joblib")
    (folder / "jax_params" / "config.json").write_text(json.dumps(config, indent=1))
    write_sample_csv(folder, genes)
    return folder


def write_hub_cache(
    cache_dir: Path,
    repo_id: str,
    snapshot: Path,
    commit: str = "0123456789abcdef0123456789abcdef01234567",
) -> Path:
    """Lay ``snapshot``'s files out as the Hugging Face cache does (blobs, snapshots, refs)."""
    repo = cache_dir / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit
    for file in snapshot.rglob("*"):
        if file.is_file():
            target = snap / file.relative_to(snapshot)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, target)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snap


def random_haiku_params(config: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Random params with the upstream Haiku names and shapes for ``config``."""
    rng = np.random.default_rng(seed)
    e, g, f = config["embed_dim"], config["init_gene_embed_dim"], config["ffn_embed_dim"]
    w = config["num_attention_heads"] * config["key_size"]
    shapes = {
        "bulk_bert/~/expression_embedding/embeddings": (config["n_expressions_bins"], e),
        "bulk_bert/~/gene_embedding/embeddings": (config["n_genes"], g),
        "bulk_bert/~/linear/w": (g, e),
        "bulk_bert/~/linear/b": (e,),
        "bulk_bert/~/simple_lm_head/~/lm_final_fc/w": (e, config["n_expressions_bins"]),
        "bulk_bert/~/simple_lm_head/~/lm_final_fc/b": (config["n_expressions_bins"],),
    }
    for i in range(config["num_layers"]):
        block = f"bulk_bert/self_attention_block_{i}/~/"
        for name in ("query", "key", "value"):
            shapes[block + f"self_attention/{name}/w"] = (e, w)
            shapes[block + f"self_attention/{name}/b"] = (w,)
        shapes[block + "self_attention/mha_output/w"] = (w, e)
        shapes[block + "self_attention/mha_output/b"] = (e,)
        for norm in ("self_attention_layer_norm", "final_layer_norm"):
            shapes[block + f"{norm}/scale"] = (e,)
            shapes[block + f"{norm}/offset"] = (e,)
        shapes[block + "fc1/w"], shapes[block + "fc1/b"] = (e, f), (f,)
        shapes[block + "fc2/w"], shapes[block + "fc2/b"] = (f, e), (e,)
    return {k: (rng.standard_normal(s) * 0.05).astype(np.float32) for k, s in shapes.items()}
