"""The ``bulkrnabert-sv`` command line: ``embed`` files and run the ``demo``.

Exit codes: 0 success, 2 bad usage or input (one line on stderr), 3 the model could not be loaded.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

EXIT_OK = 0
EXIT_INPUT = 2
EXIT_MODEL = 3

TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz", ".txt.gz")
OUTPUT_SUFFIXES = (".h5ad", ".h5mu", ".csv", ".tsv", ".npy")


class CliError(Exception):
    """A problem reported on one line, with an exit code."""

    def __init__(self, message: str, code: int = EXIT_INPUT):
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__

    parser = argparse.ArgumentParser(
        prog="bulkrnabert-sv",
        description="BulkRNABert embeddings for AnnData/MuData files and expression tables.",
        epilog="Exit codes: 0 success, 2 bad usage or input, 3 model could not be loaded.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show full tracebacks instead of one-line errors"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    embed = sub.add_parser(
        "embed",
        help="embed the samples of a .h5ad/.h5mu file or a samples x genes CSV/TSV",
        description=(
            "Embed every sample of INPUT with BulkRNABert and write OUTPUT. INPUT is a .h5ad or "
            ".h5mu file (read backed: one batch of samples in memory at a time) or a table "
            "(.csv/.tsv, optionally .gz) with samples in rows and genes (Ensembl ids or HGNC "
            "symbols) in columns; non-numeric columns become sample annotations, the first one "
            "the sample ids. Values must be TPM. OUTPUT: .h5ad/.h5mu (the input plus "
            "obsm[KEY] and uns), .csv/.tsv (one row per sample) or .npy (the array)."
        ),
    )
    embed.add_argument("input", type=Path, help="input .h5ad, .h5mu, .csv or .tsv")
    embed.add_argument("-o", "--output", type=Path, required=True, help="output file")
    _model_arguments(embed)
    embed.add_argument("--layer", help="layer holding TPM (default: X)")
    embed.add_argument("--gene-key", help="var column with gene ids (default: var_names)")
    embed.add_argument("--mod", default="rna", help="modality of a .h5mu input (default: rna)")
    embed.add_argument(
        "--transpose",
        action="store_true",
        help="the table has genes in rows and samples in columns (first column: gene ids)",
    )
    embed.add_argument(
        "--embedding-layer",
        type=int,
        default=-1,
        help="block whose output is averaged (1-indexed, -1 = last; default -1)",
    )
    embed.add_argument("--batch-size", type=_positive_int, default=8, help="default 8")
    embed.add_argument(
        "--key-added", default="X_bulkrnabert", help="obsm key (default: X_bulkrnabert)"
    )
    embed.add_argument("--no-progress", action="store_true", help="no progress bar")

    demo = sub.add_parser(
        "demo",
        help="embed the 4 TCGA samples shipped with the model and print their similarities",
        description=(
            "Load BulkRNABert (the Hugging Face repo by default), embed the 4 TCGA samples in "
            "its data/tcga_sample.csv, print the embedding shapes and the cosine similarities, "
            "and write them to an .h5ad."
        ),
    )
    _model_arguments(demo)
    demo.add_argument(
        "--output", type=Path, default=Path("bulkrnabert_demo.h5ad"), help="output .h5ad"
    )
    demo.add_argument("--batch-size", type=_positive_int, default=4, help="default 4")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        help=(
            "Hugging Face repo id or checkpoint folder (default: $BULKRNABERT_MODEL, else "
            "InstaDeepAI/BulkRNABert)"
        ),
    )
    parser.add_argument("--revision", help="hub revision (branch, tag or commit)")
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="allow reading a Haiku params.joblib pickle (only for files you trust)",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version and usage errors
        return int(stop.code or 0)
    command = {"embed": run_embed, "demo": run_demo}[args.command]
    try:
        with _warnings_to_stderr():
            return command(args)
    except CliError as error:
        if args.debug:
            raise
        print(f"bulkrnabert-sv: error: {error}", file=sys.stderr)
        return error.code
    except (ValueError, KeyError, TypeError, OSError) as error:
        if args.debug:
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"bulkrnabert-sv: error: {message}", file=sys.stderr)
        return EXIT_INPUT


@contextmanager
def _warnings_to_stderr():
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"bulkrnabert-sv: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = show
        yield


# ------------------------------------------------------------------------------------ embed
def run_embed(args: argparse.Namespace) -> int:
    from .tl._embed import embed, uns_key_for

    output_kind = _output_kind(args.output)
    data, kind = read_input(args.input, mod=args.mod, transpose=args.transpose)
    if output_kind in ("h5ad", "h5mu") and kind != output_kind and kind != "table":
        raise CliError(f"cannot write a {kind} input to a .{output_kind} file; use .{kind}")
    if output_kind == "h5mu" and kind == "table":
        raise CliError("a table input is written as .h5ad, .csv, .tsv or .npy, not .h5mu")
    model = _load_model(args)
    embed(
        data,
        model,
        layer=args.layer,
        gene_key=args.gene_key,
        mod=args.mod,
        embedding_layer=args.embedding_layer,
        batch_size=args.batch_size,
        key_added=args.key_added,
        progress=not args.no_progress,
    )
    adata = data.mod[args.mod] if kind == "h5mu" else data
    embeddings = adata.obsm[args.key_added]
    result = adata.uns[uns_key_for(args.key_added)]
    write_output(args, data, kind, embeddings, result)
    report = result["genes"]
    print(
        f"embedded {embeddings.shape[0]} samples into {embeddings.shape[1]} dimensions "
        f"({report['n_matched']} of {report['n_vocabulary']} model genes matched) -> "
        f"{args.output}"
    )
    return EXIT_OK


def _output_kind(path: Path) -> str:
    name = path.name.lower()
    for suffix in OUTPUT_SUFFIXES:
        if name.endswith(suffix):
            return suffix[1:]
    raise CliError(f"unsupported output {path.name!r}: use one of {', '.join(OUTPUT_SUFFIXES)}")


def read_input(path: Path, *, mod: str = "rna", transpose: bool = False):
    """(data, kind): a backed AnnData/MuData, or an in-memory AnnData built from a table."""
    if not path.exists():
        raise CliError(f"input file {path} does not exist")
    name = path.name.lower()
    if name.endswith(".h5ad"):
        import anndata as ad

        return ad.read_h5ad(path, backed="r"), "h5ad"
    if name.endswith(".h5mu"):
        import mudata as md

        data = md.read_h5mu(path, backed=True)
        if mod not in data.mod:
            raise CliError(f"{path.name} has no modality {mod!r}: use --mod {sorted(data.mod)}")
        return data, "h5mu"
    if name.endswith(TABLE_SUFFIXES):
        return read_table(path, transpose=transpose), "table"
    raise CliError(
        f"unsupported input {path.name!r}: use .h5ad, .h5mu or a .csv/.tsv table "
        "(samples in rows, genes in columns)"
    )


def read_table(path: Path, *, transpose: bool = False):
    """A samples × genes AnnData from a CSV/TSV (non-numeric columns go to ``obs``)."""
    import anndata as ad
    import pandas as pd

    name = path.name.lower().removesuffix(".gz")
    sep = "," if name.endswith(".csv") else "\t"
    if transpose:
        table = pd.read_csv(path, sep=sep, index_col=0)
        table = table.select_dtypes("number").T
    else:
        table = pd.read_csv(path, sep=sep)
    if table.empty:
        raise CliError(f"{path.name} has no rows or columns")
    numeric = table.select_dtypes("number")
    annotations = table.drop(columns=numeric.columns)
    if numeric.shape[1] == 0:
        raise CliError(f"{path.name} has no numeric columns (genes); is the separator right?")
    obs = pd.DataFrame(index=numeric.index.astype(str))
    if not transpose and annotations.shape[1]:
        first = annotations.columns[0]
        ids = annotations[first].astype(str)
        if ids.is_unique:
            obs.index = pd.Index(ids.values, name=str(first))
            annotations = annotations.drop(columns=[first])
        for column in annotations.columns:
            obs[str(column)] = annotations[column].values
    var = pd.DataFrame(index=pd.Index(numeric.columns.astype(str)))
    return ad.AnnData(X=numeric.to_numpy(dtype="float64"), obs=obs, var=var)


def write_output(args, data, kind: str, embeddings, result: dict) -> None:
    import numpy as np
    import pandas as pd

    from .tl._embed import uns_key_for

    output = args.output
    output_kind = _output_kind(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    adata = data.mod[args.mod] if kind == "h5mu" else data
    if output_kind == "npy":
        np.save(output, embeddings)
    elif output_kind in ("csv", "tsv"):
        columns = [f"{uns_key_for(args.key_added)}_{i}" for i in range(embeddings.shape[1])]
        frame = pd.DataFrame(embeddings, index=adata.obs_names, columns=columns)
        frame.index.name = "sample"
        frame.to_csv(output, sep="," if output_kind == "csv" else "\t")
    elif kind == "table":
        data.write_h5ad(output)
    else:
        prefix = f"mod/{args.mod}/" if kind == "h5mu" else ""
        data.file.close()  # release the backed input (it may be the output)
        _add_to_file(args.input, output, prefix, args.key_added, embeddings, result)


def _add_to_file(source: Path, output: Path, prefix: str, key, embeddings, result) -> None:
    """Copy ``source`` to ``output`` and add obsm/uns there, without loading X."""
    import h5py
    from anndata.io import write_elem

    from .tl._embed import uns_key_for

    if output.resolve() != source.resolve():
        shutil.copyfile(source, output)
    with h5py.File(output, "r+") as handle:
        for group, name, value in (
            (f"{prefix}obsm", key, embeddings),
            (f"{prefix}uns", uns_key_for(key), result),
        ):
            target = handle.require_group(group)
            if name in target:
                del target[name]
            write_elem(target, name, value)


# ------------------------------------------------------------------------------------ model
def _load_model(args):
    from .model import CheckpointError, load_model

    try:
        return load_model(args.model, revision=args.revision, allow_pickle=args.allow_pickle)
    except (CheckpointError, OSError, ValueError) as error:
        raise CliError(f"could not load the model: {error}", EXIT_MODEL) from error


def _model_folder(args) -> tuple[Path, object]:
    """The checkpoint folder (downloaded if a repo id) and the model loaded from it."""
    from .model import CheckpointError, load_model
    from .model.loading import _looks_like_repo_id, _snapshot_revision, default_source, download

    source = args.model or default_source()
    path = Path(os.path.expanduser(str(source)))
    try:
        if path.is_dir():
            folder = path
            model = load_model(folder, allow_pickle=args.allow_pickle)
        elif _looks_like_repo_id(str(source)):
            folder = download(str(source), revision=args.revision)
            model = load_model(folder)
            model.source = str(source)
            model.revision = args.revision or _snapshot_revision(folder)
        else:
            model = load_model(source)  # raises a CheckpointError naming the problem
            folder = path
    except (CheckpointError, OSError, ValueError) as error:
        raise CliError(
            f"could not load the model: {error}\nProvide it with --model /path/to/folder (the "
            "Hugging Face repo layout) or $BULKRNABERT_MODEL, or download it once with "
            "`hf download InstaDeepAI/BulkRNABert`.",
            EXIT_MODEL,
        ) from error
    return folder, model


# ------------------------------------------------------------------------------------ demo
def run_demo(args: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd

    from .model.checkpoints import HF_GENES_FILE
    from .tl._embed import embed

    if not args.output.name.lower().endswith(".h5ad"):
        raise CliError(f"the demo writes an .h5ad file, got {args.output.name!r}")
    folder, model = _model_folder(args)
    csv = folder / HF_GENES_FILE
    if not csv.is_file():
        raise CliError(
            f"{folder} has no {HF_GENES_FILE} (the 4 TCGA samples of the Hugging Face repo); "
            "pass --model with a folder in the repo's layout",
            EXIT_MODEL,
        )
    adata = read_table(csv)
    print(
        f"model: {model.source} ({model.config.num_layers} layers, {model.num_parameters():,} "
        f"parameters, {model.config.n_genes} genes)"
    )
    print(f"samples: {adata.n_obs} from {csv}")
    embed(adata, model, batch_size=args.batch_size, progress=not args.no_progress)
    embeddings = adata.obsm["X_bulkrnabert"]
    report = adata.uns["bulkrnabert"]["genes"]
    print(f"genes matched: {report['n_matched']} of {report['n_vocabulary']}")
    for name, row in zip(adata.obs_names, embeddings):
        print(f"  {name}: embedding shape {row.shape}")
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    names = list(adata.obs_names)
    similarity = pd.DataFrame(unit @ unit.T, index=names, columns=names)
    adata.obsp["bulkrnabert_cosine"] = similarity.to_numpy()
    print("cosine similarity:")
    with pd.option_context("display.width", 200, "display.precision", 4):
        print(similarity.to_string())
    args.output.parent.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(args.output)
    print(f"wrote {args.output}")
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
