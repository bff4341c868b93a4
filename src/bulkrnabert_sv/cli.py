"""The ``bulkrnabert-sv`` command line: ``embed`` files and run the ``demo``.

Exit codes: 0 success, 2 bad usage or input (one line on stderr), 3 the model could not be loaded
or is unusable (for example it has no gene list).

Files: ``embed`` never replaces an existing OUTPUT unless ``--overwrite`` is given, and never
writes over a table INPUT. With ``--overwrite``, an ``.h5ad``/``.h5mu`` INPUT named as OUTPUT is
updated in place (``obsm``/``uns`` added, everything else kept). The output is checked (name,
folder, permissions) before the model is loaded and any sample is embedded. ``demo`` writes its
own result file and replaces it on every run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

from ._keys import EMBEDDING_KEY, uns_key_for

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
    _debug_argument(parser, default=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    embed = sub.add_parser(
        "embed",
        help="embed the samples of a .h5ad/.h5mu file or a samples x genes CSV/TSV",
        description=(
            "Embed every sample of INPUT with BulkRNABert and write OUTPUT. INPUT is a .h5ad or "
            ".h5mu file (read backed: one batch of samples in memory at a time) or a table "
            "(.csv/.tsv, optionally .gz) with samples in rows and genes (Ensembl ids or HGNC "
            "symbols) in columns; non-numeric columns become sample annotations, the first one "
            "the sample ids (kept as they are, also when repeated). Values must be TPM. OUTPUT: "
            ".h5ad/.h5mu (the input plus obsm[KEY] and uns), .csv/.tsv (one row per sample) or "
            ".npy (the array). An existing OUTPUT is replaced only with --overwrite; a table "
            "INPUT is never overwritten."
        ),
    )
    embed.add_argument("input", type=Path, help="input .h5ad, .h5mu, .csv or .tsv")
    embed.add_argument("-o", "--output", type=Path, required=True, help="output file")
    embed.add_argument(
        "--overwrite",
        action="store_true",
        help=(
            "replace OUTPUT if it exists; an .h5ad/.h5mu INPUT given as OUTPUT is then updated "
            "in place (obsm/uns added, the rest kept). A table INPUT is never overwritten."
        ),
    )
    _model_arguments(embed)
    _debug_argument(embed)
    embed.add_argument("--layer", help="layer holding TPM (default: X)")
    embed.add_argument("--gene-key", help="var column with gene ids (default: var_names)")
    embed.add_argument("--mod", default="rna", help="modality of a .h5mu input (default: rna)")
    embed.add_argument(
        "--transpose",
        action="store_true",
        help="the table has genes in rows and samples in columns (first column: gene ids)",
    )
    embed.add_argument(
        "--embedding-block",
        type=int,
        default=None,
        help="block whose output is averaged (1-indexed, -1 = last; default -1)",
    )
    embed.add_argument(
        "--embedding-layer",
        type=int,
        default=None,
        help="deprecated name of --embedding-block",
    )
    embed.add_argument("--batch-size", type=_positive_int, default=8, help="default 8")
    embed.add_argument(
        "--key-added", default=EMBEDDING_KEY, help=f"obsm key (default: {EMBEDDING_KEY})"
    )
    embed.add_argument("--no-progress", action="store_true", help="no progress bar")

    demo = sub.add_parser(
        "demo",
        help="embed 48 real TCGA tumours (shipped) and compare the cohorts' separation with PCA",
        description=(
            "Embed the 48 TCGA tumours of five cohorts shipped with the package, print how well "
            "the cohorts separate (5-NN leave-one-out accuracy, silhouette) next to PCA of log "
            "TPM on the same samples, and write OUTPUT (.h5ad) and OUTPUT_umap.png. The model: "
            "--model (or $BULKRNABERT_SV_MODEL) when given; else the published weights from the "
            "Hugging Face cache or network (5 s timeout); else the bundled compact model, which "
            "works offline. One line says which model was used and why."
        ),
    )
    _model_arguments(demo)
    _debug_argument(demo)
    demo.add_argument(
        "--output",
        type=Path,
        default=Path("bulkrnabert_demo.h5ad"),
        help="output .h5ad (replaced if it exists; default bulkrnabert_demo.h5ad)",
    )
    demo.add_argument("--batch-size", type=_positive_int, default=8, help="default 8")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _debug_argument(parser: argparse.ArgumentParser, default: object = argparse.SUPPRESS) -> None:
    """Add ``--debug``, accepted before and after the subcommand.

    Subcommands get ``default=SUPPRESS`` so that a subparser that does not see ``--debug`` leaves
    the value set by the main parser alone (argparse would otherwise reset it to False).
    """
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default,
        help="show full tracebacks instead of one-line errors",
    )


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        help=(
            "Hugging Face repo id or checkpoint folder (default: $BULKRNABERT_SV_MODEL, else "
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
    """An argparse ``type``: the text of a positive integer (see ``check_positive_int``)."""
    from ._validation import check_positive_int

    try:
        return check_positive_int(int(text), "the value")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None


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
def _embedding_block(args: argparse.Namespace) -> int:
    """``--embedding-block`` (default -1), or its deprecated name ``--embedding-layer``."""
    if args.embedding_layer is None:
        return -1 if args.embedding_block is None else args.embedding_block
    if args.embedding_block is not None:
        raise CliError("pass --embedding-block only (--embedding-layer is its deprecated name)")
    warnings.warn(
        "--embedding-layer is deprecated; pass --embedding-block (the transformer block; "
        "--layer names the AnnData layer holding TPM).",
        DeprecationWarning,
        stacklevel=2,
    )
    return args.embedding_layer


def run_embed(args: argparse.Namespace) -> int:
    from .tl._embed import embed

    # Everything that the names and the file system tell is checked before the input is read,
    # the model loaded and the samples embedded, so that a bad OUTPUT fails in a second.
    output_kind = _output_kind(args.output)
    input_kind = _input_kind(args.input)
    if output_kind in ("h5ad", "h5mu") and input_kind not in (output_kind, "table"):
        raise CliError(
            f"cannot write a {input_kind} input to a .{output_kind} file; use .{input_kind}"
        )
    if output_kind == "h5mu" and input_kind == "table":
        raise CliError("a table input is written as .h5ad, .csv, .tsv or .npy, not .h5mu")
    if args.transpose and input_kind != "table":
        raise CliError(
            f"--transpose applies to .csv/.tsv tables; transpose the .{input_kind} in Python "
            "(adata = adata.T) and save it again"
        )
    check_output(
        args.output,
        source=args.input,
        output_kind=output_kind,
        input_kind=input_kind,
        overwrite=args.overwrite,
    )
    data, kind = read_input(args.input, mod=args.mod, transpose=args.transpose)
    model = _load_model(args)
    embed(
        data,
        model,
        layer=args.layer,
        gene_key=args.gene_key,
        mod=args.mod,
        embedding_block=_embedding_block(args),
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


def _input_kind(path: Path) -> str:
    """``"h5ad"``, ``"h5mu"`` or ``"table"`` from the name of an existing input file."""
    if not os.path.exists(path):
        raise CliError(f"input file {path} does not exist")
    name = path.name.lower()
    if name.endswith(".h5ad"):
        return "h5ad"
    if name.endswith(".h5mu"):
        return "h5mu"
    if name.endswith(TABLE_SUFFIXES):
        return "table"
    raise CliError(
        f"unsupported input {path.name!r}: use .h5ad, .h5mu or a .csv/.tsv table "
        "(samples in rows, genes in columns)"
    )


def check_output(
    output: Path, *, source: Path, output_kind: str, input_kind: str, overwrite: bool = False
) -> None:
    """Refuse an output that must not or cannot be written, before any work is done.

    Parameters
    ----------
    output
        The output file.
    source
        The input file (compared with ``output`` as files, so symbolic links, hard links and
        relative paths naming the input are recognised).
    output_kind, input_kind
        ``"h5ad"``, ``"h5mu"``, ``"csv"``, ``"tsv"``, ``"npy"``; the input also ``"table"``.
    overwrite
        Whether an existing output may be replaced (``--overwrite``). Even then, the input is
        only written to when it is an ``.h5ad``/``.h5mu`` written back as the same kind: that
        adds ``obsm``/``uns`` and keeps the rest.

    Raises
    ------
    CliError
        The output is a folder, is the input (and would lose it), exists without ``overwrite``,
        is not writable, or its folder can neither be used nor created.
    """
    if output.is_dir():
        raise CliError(
            f"output {output} is a folder; give a file name ending in one of "
            f"{', '.join(OUTPUT_SUFFIXES)}"
        )
    if os.path.lexists(output):  # lexists: a dangling link would be written through too
        same = output.exists() and os.path.samefile(source, output)
        if same and (input_kind == "table" or output_kind != input_kind):
            what = "expression table" if input_kind == "table" else f".{input_kind} file"
            raise CliError(
                f"output {output} is the input file {source}: writing the embeddings there would "
                f"replace the {what}. Choose another -o (--overwrite never applies to that)."
            )
        if not overwrite and same:
            raise CliError(
                f"output {output} is the input file; pass --overwrite to add the embeddings to "
                "it in place (obsm and uns; the rest is kept) or choose another -o"
            )
        if not overwrite:
            raise CliError(
                f"output {output} already exists; pass --overwrite to replace it or choose "
                "another -o"
            )
        if not os.access(output, os.W_OK):
            raise CliError(f"output {output} is not writable; choose another -o")
    _check_output_folder(output.parent)


def _check_output_folder(folder: Path) -> None:
    """``folder`` is a writable folder, or can be created (it is, at write time)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise CliError(
            f"cannot create the output folder {folder}: {existing} is a file, not a folder; "
            "choose another -o"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        where = f"{existing} (where {folder} would be created)" if existing != folder else folder
        raise CliError(f"the output folder {where} is not writable; choose another -o")


def read_input(path: Path, *, mod: str = "rna", transpose: bool = False):
    """(data, kind): a backed AnnData/MuData, or an in-memory AnnData built from a table."""
    kind = _input_kind(path)
    if kind == "table":
        return read_table(path, transpose=transpose), "table"
    _check_hdf5(path, kind)
    try:
        if kind == "h5ad":
            import anndata as ad

            data = ad.read_h5ad(path, backed="r")
        else:
            import mudata as md

            data = md.read_h5mu(path, backed=True)
    except (OSError, KeyError, ValueError, TypeError) as error:
        # HDF5, but not laid out as AnnData/MuData: say which file could not be read.
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        raise CliError(f"cannot read {path} as .{kind}: {message}") from error
    if kind == "h5mu" and mod not in data.mod:
        raise CliError(f"{path.name} has no modality {mod!r}: use --mod {sorted(data.mod)}")
    return data, kind


def _check_hdf5(path: Path, kind: str) -> None:
    """Refuse an ``.h5ad``/``.h5mu`` that is not an HDF5 file, naming it and what it is."""
    import h5py

    if path.is_dir():
        raise CliError(
            f"{path} is a folder, not an .{kind} file (a zarr store? read it with "
            f"anndata.read_zarr and save it with write_h5ad)"
        )
    if not h5py.is_hdf5(path):
        writer = "AnnData.write_h5ad" if kind == "h5ad" else "MuData.write"
        raise CliError(
            f"{path} is not an .{kind} file: {_describe_file(path)}. .{kind} files are HDF5 "
            f"files written by {writer}."
        )


def _describe_file(path: Path) -> str:
    """What a file that is not HDF5 holds, judged from its first bytes (for error messages)."""
    with open(path, "rb") as handle:
        head = handle.read(512)
    if not head:
        return "it is empty (0 bytes)"
    if head.startswith(b"\x1f\x8b"):
        return "it is gzip-compressed (decompress it first)"
    if head.startswith(b"PK\x03\x04"):
        return "it is a zip archive (extract it first)"
    if head.startswith(b"version https://git-lfs"):
        return "it is a Git LFS pointer, not the data (fetch the data with `git lfs pull`)"
    if b"\x00" in head:  # text files hold no NUL bytes
        return f"it holds binary data of another format (first bytes {head[:8]!r})"
    first = head.decode("utf-8", errors="replace").splitlines()[0][:60]
    table = " (a table? name it .csv or .tsv)" if ("," in first or "\t" in first) else ""
    return f"it is a text file starting with {first!r}{table}"


def read_table(path: Path, *, transpose: bool = False):
    """A samples × genes AnnData from a CSV/TSV.

    Parameters
    ----------
    path
        A ``.csv``/``.tsv``/``.txt`` table, optionally gzipped (``.txt``: tab-separated).
    transpose
        False: samples in rows; numeric columns are genes, the other columns sample annotations
        (``obs``), the first of them the sample ids (kept as they are, with a warning when
        repeated). True: genes in rows, the first column the gene ids; numeric columns are
        samples and the other columns (gene annotations) are dropped.

    Returns
    -------
    An in-memory AnnData, samples × genes, ``X`` in float64.

    Raises
    ------
    CliError
        The file cannot be parsed, has no numeric columns, has a text cell in a column of
        numbers (named by row, column and value), or looks transposed (the message says to add
        or drop ``--transpose``).
    """
    import anndata as ad
    import pandas as pd

    name = path.name.lower().removesuffix(".gz")
    sep = "," if name.endswith(".csv") else "\t"
    try:
        table = pd.read_csv(path, sep=sep, index_col=0 if transpose else None)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as error:
        kind = "comma" if sep == "," else "tab"
        raise CliError(f"cannot read {path.name} as a {kind}-separated table: {error}") from error
    if table.empty:
        raise CliError(f"{path.name} has no rows or columns")
    _refuse_text_in_numbers(table, path, transpose=transpose)
    numeric = table.select_dtypes("number")
    if numeric.shape[1] == 0:
        what = "samples" if transpose else "genes"
        raise CliError(f"{path.name} has no numeric columns ({what}); is the separator right?")
    if transpose:
        if _looks_transposed(numeric.columns, numeric.index):
            raise CliError(
                f"{path.name} has genes in its columns (e.g. {numeric.columns[0]}), so samples "
                "are already in rows: drop --transpose"
            )
        obs = pd.DataFrame(index=pd.Index(numeric.columns.astype(str)))
        var = pd.DataFrame(index=pd.Index(numeric.index.astype(str)))
        return ad.AnnData(X=numeric.T.to_numpy(dtype="float64"), obs=obs, var=var)
    annotations = table.drop(columns=numeric.columns)
    obs = pd.DataFrame(index=numeric.index.astype(str))
    if annotations.shape[1]:
        first = annotations.columns[0]
        ids = annotations[first].astype(str)
        if _looks_transposed(ids, numeric.columns):
            raise CliError(
                f"{path.name} looks transposed: its column {first!r} holds gene ids (e.g. "
                f"{ids.iloc[0]}) and its other columns samples (e.g. {numeric.columns[0]}). "
                "Pass --transpose (genes in rows, samples in columns)."
            )
        repeated = ids[ids.duplicated()].unique()
        if len(repeated):
            warnings.warn(
                f"{path.name}: the sample ids in column {first!r} are not unique ({len(repeated)} "
                f"repeated, e.g. {repeated[0]!r}); they are kept as they are and the output rows "
                "follow the input rows",
                UserWarning,
                stacklevel=2,
            )
        obs.index = pd.Index(ids.values, name=str(first))
        annotations = annotations.drop(columns=[first])
        for column in annotations.columns:
            obs[str(column)] = annotations[column].values
    var = pd.DataFrame(index=pd.Index(numeric.columns.astype(str)))
    with warnings.catch_warnings():
        # Repeated ids were reported above; anndata's advice (make them unique) is not wanted.
        warnings.filterwarnings("ignore", message="Observation names are not unique")
        return ad.AnnData(X=numeric.to_numpy(dtype="float64"), obs=obs, var=var)


def _refuse_text_in_numbers(table, path: Path, *, transpose: bool) -> None:
    """Raise if a column of numbers holds text, naming the row, column and value.

    pandas reads such a column as text, which would make the gene (or, with ``transpose``, the
    sample) an annotation and lose it for every sample; as the first text column it would even
    replace the sample ids. A text column counts as a column of numbers when its header is an
    Ensembl gene id or when at least half its non-empty cells are numbers.
    """
    import numpy as np
    import pandas as pd

    from .pp._align import strip_ensembl_version

    for column in table.columns:
        values = table[column]
        if pd.api.types.is_numeric_dtype(values):
            continue
        numbers = pd.to_numeric(values, errors="coerce").notna()
        text = values.notna() & ~numbers
        n_text = int(text.sum())
        gene_header = strip_ensembl_version(str(column).strip()) is not None
        if n_text == 0 or not (gene_header or int(numbers.sum()) >= n_text):
            continue
        row = int(np.flatnonzero(text.to_numpy())[0])
        value = str(values.iloc[row])
        label = f" (gene {table.index[row]!r})" if transpose else ""
        decimal = value.replace(",", ".", 1)
        comma = (
            "; decimal commas are not read as numbers, write 0.5 rather than 0,5"
            if "," in value and not pd.isna(pd.to_numeric(decimal, errors="coerce"))
            else ""
        )
        what = "sample" if transpose else "gene"
        others = f" ({n_text} text cells in that column)" if n_text > 1 else ""
        where = f"{path.name}: row {row + 1}{label}, column {str(column)!r} holds {value!r}"
        if gene_header or (not transpose and _gene_id_share([column], symbols=True) == 1):
            raise CliError(
                f"{where}, which is not a number, among the TPM values of gene {column}{others}. "
                f"Replace it with a number{comma}."
            )
        raise CliError(
            f"{where}, which is not a number, while {int(numbers.sum())} other cells of that "
            f"column are numbers (the TPM values of a {what}?){others}. Replace it with a "
            f"number{comma}, or remove the column if it is not a {what}."
        )


def _looks_transposed(row_names, column_names) -> bool:
    """Whether rows named ``row_names`` are genes and columns named ``column_names`` samples.

    Most row names must be gene ids and (almost) no column name. Ensembl ids decide alone;
    HGNC symbols also need more rows than columns, since sample names such as S1 or C3 are
    symbols too.
    """
    if _gene_id_share(column_names) >= 0.1:
        return False
    if _gene_id_share(row_names) >= 0.5:
        return True
    return (
        len(row_names) > len(column_names)
        and _gene_id_share(row_names, symbols=True) >= 0.5
        and _gene_id_share(column_names, symbols=True) < 0.1
    )


def _gene_id_share(names, *, symbols: bool = False) -> float:
    """Share of ``names`` (the first 2,000) that are Ensembl gene ids (or HGNC symbols)."""
    from .pp._align import strip_ensembl_version

    sample = [str(n).strip() for n in list(names)[:2000]]
    if not sample:
        return 0.0
    table: dict = {}
    if symbols:
        from .pp._symbols import symbol_table

        table = symbol_table().mapping
    return sum(strip_ensembl_version(n) is not None or n in table for n in sample) / len(sample)


def write_output(args, data, kind: str, embeddings, result: dict) -> None:
    import numpy as np
    import pandas as pd

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

    # samefile, not resolved paths: a hard link to the input is the input too.
    if not (output.exists() and os.path.samefile(source, output)):
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
        model = load_model(args.model, revision=args.revision, allow_pickle=args.allow_pickle)
    except (CheckpointError, OSError, ValueError) as error:
        raise CliError(f"could not load the model: {error}", EXIT_MODEL) from error
    _require_genes(model)
    return model


def _require_genes(model) -> None:
    """Refuse (exit 3, a model problem) a model without the gene list the input is aligned to."""
    from .model.files import GENES_FILE, HF_GENES_FILE

    if not model.genes:
        name = f"the model {model.source}" if model.source else "the model"
        raise CliError(
            f"{name} has no gene list, so the input genes cannot be "
            f"aligned to it: use a checkpoint folder with its {GENES_FILE} (saved by "
            f"model.save) or, in the Hugging Face layout, its {HF_GENES_FILE}",
            EXIT_MODEL,
        )


# ------------------------------------------------------------------------------------ demo
def run_demo(args: argparse.Namespace) -> int:
    from . import _demo
    from .model import CheckpointError

    if not args.output.name.lower().endswith(".h5ad"):
        raise CliError(f"the demo writes an .h5ad file, got {args.output.name!r}")
    if args.output.is_dir():
        raise CliError(f"output {args.output} is a folder; give a file name ending in .h5ad")
    _check_output_folder(args.output.parent)  # before the model is loaded
    try:
        _demo.run(
            args.output,
            source=args.model,
            revision=args.revision,
            allow_pickle=args.allow_pickle,
            batch_size=args.batch_size,
            progress=not args.no_progress,
        )
    except (CheckpointError, OSError) as error:
        raise CliError(f"could not load the model: {error}", EXIT_MODEL) from error
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
