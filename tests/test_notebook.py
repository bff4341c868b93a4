"""In a notebook: log messages, warnings at the user's line, progress bars, a one-line repr."""

from __future__ import annotations

import io
import logging
import sys
import types
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import bulkrnabert_sv as brb
from bulkrnabert_sv import _logging as logg
from bulkrnabert_sv.model import random_model
from bulkrnabert_sv.pp import DuplicateGenesWarning, ExpressionValueWarning, GeneCoverageWarning


@pytest.fixture(scope="module")
def model():
    return random_model("tiny")  # 128 published genes, 2 tiny layers


@pytest.fixture
def adata(model) -> ad.AnnData:
    """Half the model's genes plus a duplicated one, raw-count-like values: three warnings."""
    genes = [*model.genes[:64], model.genes[0]]
    values = np.random.default_rng(0).integers(0, 3000, size=(4, len(genes))) * 1000.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata: var names not unique
        return ad.AnnData(values.astype(np.float32), var=pd.DataFrame(index=genes))


@pytest.fixture
def package_logger():
    logger = logging.getLogger("bulkrnabert_sv")
    yield logger
    logger.setLevel(logging.NOTSET)


def test_repr_is_one_short_line():
    model = random_model("tiny", n_genes=19_062)  # every published gene: Flax listed them all
    model.source = "InstaDeepAI/BulkRNABert"
    text = repr(model)
    assert len(text) < 200 and "\n" not in text
    assert text == (
        f"BulkRNABert(2 layers, width 16, 19062 genes, "
        f"{model.num_parameters() / 1e3:.1f}k parameters, source='InstaDeepAI/BulkRNABert')"
    )
    model.source = "/data/" + "x" * 500
    model.revision = "0123456789abcdef" * 2
    assert len(repr(model)) < 200 and "revision='0123456789ab'" in repr(model)


def test_embed_is_silent_by_default_and_warns_at_the_callers_line(model, adata, capsys):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        brb.tl.embed(adata, model, progress=False)
        brb.tl.embed(adata, model, progress=False)  # replaces the first run's fields
    assert capsys.readouterr().err == ""  # no log message, no progress bar
    categories = {w.category for w in record}
    assert {GeneCoverageWarning, DuplicateGenesWarning, ExpressionValueWarning} <= categories
    assert any("replaces the existing" in str(w.message) for w in record)
    assert [w.filename for w in record] == [__file__] * len(record)


def test_pretrain_warns_at_the_callers_line_and_logs(model, adata, package_logger, capsys):
    package_logger.setLevel("INFO")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        brb.tl.pretrain(adata, model=model, steps=1, batch_size=2, progress=False)
    assert GeneCoverageWarning in {w.category for w in record}
    assert [w.filename for w in record] == [__file__] * len(record)
    err = capsys.readouterr().err
    assert "pretraining BulkRNABert(2 layers, width 16, 128 genes" in err
    assert "on 4 samples: steps 1 to 1 of 1" in err
    assert "    finished: step 1 of 1, loss " in err


def test_embed_logs_what_it_added(model, adata, package_logger, capsys):
    package_logger.setLevel("INFO")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        brb.tl.embed(adata, model, progress=False)
    err = capsys.readouterr().err
    assert err.startswith(
        "computing BulkRNABert embeddings of 4 samples (block 2 of 2, mean over 128 genes)\n"
        "    finished: added\n"
        "    'X_bulkrnabert', embeddings (adata.obsm)\n"
        "    'bulkrnabert', parameters and gene alignment (adata.uns) (0:00:0"
    )
    assert "model genes found" not in err  # DEBUG detail
    package_logger.setLevel("DEBUG")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        brb.tl.embed(adata, model, progress=False, key_added="X_other")
    assert "    64 of 128 model genes found in var_names (50.0%)" in capsys.readouterr().err


def test_scanpy_verbosity_is_followed(package_logger, capsys):
    sc = pytest.importorskip("scanpy")
    before = sc.settings.verbosity
    try:
        sc.settings.verbosity = "warning"  # scanpy's default
        logg.info("not shown")
        sc.settings.verbosity = "info"
        logg.info("shown at info")
        logg.hint("not a hint at info")
        sc.settings.verbosity = 3  # hint
        logg.hint("a hint")
        logg.debug("no debug at hint")
        package_logger.setLevel("WARNING")  # the logger's own level wins over scanpy's
        logg.info("silenced by the logger level")
    finally:
        sc.settings.verbosity = before
    assert capsys.readouterr().err == "shown at info\n--> a hint\n"


def test_root_logging_level_and_no_propagation(package_logger, capsys):
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)
    try:
        logg.info("via the root level")
    finally:
        root.setLevel(level)
    logg.info("default: silent")
    assert capsys.readouterr().err == "via the root level\n"
    assert package_logger.propagate is False  # a root handler (orbax adds one) prints nothing


def test_warn_helper_points_at_the_caller():
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        logg.warn("message", UserWarning)
    assert [(w.filename, w.category) for w in record] == [(__file__, UserWarning)]


def test_progress_bar_without_progress_is_nothing():
    bar = logg.progress_bar(range(3), progress=False, desc="x", unit="step")
    assert list(bar) == [0, 1, 2]
    with logg.progress_bar(total=5, progress=False) as bar:
        bar.update(2)
        bar.set_postfix(loss="1.0")
        bar.set_postfix_str("x")
        bar.set_description("y")
    bar.close()
    assert bar.n == 2 and bar.disable


@pytest.fixture
def notebook_without_widgets(monkeypatch):
    """What tqdm.autonotebook sees in Jupyter: ipykernel imported; ipywidgets missing."""
    monkeypatch.setitem(sys.modules, "ipykernel.zmqshell", types.ModuleType("ipykernel.zmqshell"))
    for name in ("tqdm.auto", "tqdm.autonotebook"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    import tqdm.notebook

    monkeypatch.setattr(tqdm.notebook, "IProgress", None)
    return tqdm.notebook


def test_no_iprogress_warning_in_a_notebook_without_widgets(notebook_without_widgets, model, adata):
    from tqdm.std import tqdm

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        bar = logg.progress_bar(total=2, progress=True, file=io.StringIO())
        bar.update(2)
        bar.close()
        brb.tl.embed(adata, model, progress=False)
        brb.tl.embed(adata, model, progress=True, key_added="X_bar")
    assert type(bar) is tqdm  # the text bar, as tqdm.auto would fall back to
    assert not [w for w in record if "IProgress" in str(w.message)]
    assert "tqdm.autonotebook" not in sys.modules  # whose import warns, whatever `disable`


def test_widget_bar_in_a_notebook_with_widgets(notebook_without_widgets, monkeypatch):
    monkeypatch.setattr(notebook_without_widgets, "IProgress", object)
    assert logg._tqdm_class() is notebook_without_widgets.tqdm
