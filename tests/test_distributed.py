"""Two processes on localhost with ``jax.distributed`` (one CPU device each, gloo collectives):
sharded embedding and a few pretraining steps give what one process gives."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from flax import nnx

import bulkrnabert_sv as bs
import bulkrnabert_sv.tl as tl
from conftest import ROOT

N_GENES, N_SAMPLES = 128, 6
PRETRAIN = dict(
    model="tiny", steps=3, batch_size=2, learning_rate=1e-2, warmup_steps=1, progress=False
)

_WORKER = textwrap.dedent(
    """
    import json, sys
    import numpy as np, anndata as ad, jax
    from flax import nnx

    process_id, n_processes, port, data_file, out_prefix, settings = sys.argv[1:7]
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=int(n_processes),
        process_id=int(process_id),
        initialization_timeout=120,
    )
    import bulkrnabert_sv as bs
    import bulkrnabert_sv.tl as tl

    assert jax.process_count() == 2 and len(jax.local_devices()) == 1, jax.devices()
    data = np.load(data_file)
    adata = ad.AnnData(data["X"])
    adata.var_names = data["var_names"]
    genes = list(data["var_names"])
    model = bs.model.random_model("tiny", genes=genes, seed=3)
    tl.embed(adata, model, batch_size=4, progress=False, devices=jax.devices())
    trained, history = tl.pretrain(adata, genes=genes, **json.loads(settings))
    np.savez(
        f"{out_prefix}{process_id}.npz",
        embedding=adata.obsm["X_bulkrnabert"],
        **{
            "param." + ".".join(map(str, path)): np.asarray(value[...])
            for path, value in nnx.to_flat_state(nnx.state(trained, nnx.Param))
        },
    )
    history.to_json(f"{out_prefix}{process_id}.json")
    with open(f"{out_prefix}{process_id}.attrs.json", "w") as handle:
        json.dump({k: history.attrs[k] for k in ("n_devices", "n_processes")}, handle)
    jax.distributed.shutdown()
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def cohort() -> ad.AnnData:
    rng = np.random.default_rng(0)
    genes = bs.model.published_genes()[:N_GENES]
    adata = ad.AnnData(rng.lognormal(1.0, 2.0, size=(N_SAMPLES, N_GENES)).astype(np.float32))
    adata.var_names = list(genes)
    return adata


def test_two_processes_match_one(cohort, tmp_path):
    """6 samples in batches of 4 (the last one padded) over 2 processes, and 3 pretraining steps
    with a global batch of 2 (one sample per process), against the same calls in this process."""
    genes = list(cohort.var_names)
    reference = cohort.copy()
    tl.embed(
        reference, bs.model.random_model("tiny", genes=genes, seed=3), batch_size=4, progress=False
    )
    trained, history = tl.pretrain(cohort, genes=genes, **PRETRAIN)

    np.savez(tmp_path / "data.npz", X=cohort.X, var_names=np.asarray(genes, dtype=str))
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
        "PYTHONPATH": os.pathsep.join(
            [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
        ),
    }
    port, prefix = _free_port(), str(tmp_path / "out")
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _WORKER,
                str(rank),
                "2",
                str(port),
                str(tmp_path / "data.npz"),
                prefix,
                json.dumps(PRETRAIN),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(2)
    ]
    logs = []
    try:
        for worker in workers:
            logs.append(worker.communicate(timeout=420)[0])
    finally:
        for worker in workers:
            worker.kill()
    for rank, worker in enumerate(workers):
        assert worker.returncode == 0, f"process {rank}:\n{logs[rank][-3000:]}"

    expected_params = {
        "param." + ".".join(map(str, path)): np.asarray(value[...])
        for path, value in nnx.to_flat_state(nnx.state(trained, nnx.Param))
    }
    columns = ["loss", "masked_accuracy", "baseline_loss"]
    for rank in range(2):
        attrs = json.loads((tmp_path / f"out{rank}.attrs.json").read_text())
        assert attrs == {"n_devices": 2, "n_processes": 2}
        assert history.attrs["n_devices"] == 1 and history.attrs["n_processes"] == 1
        with np.load(tmp_path / f"out{rank}.npz") as out:
            # Every process gets every sample's embedding, equal to one process's.
            np.testing.assert_allclose(
                out["embedding"], reference.obsm["X_bulkrnabert"], rtol=0, atol=2e-6
            )
            assert np.abs(out["embedding"]).max() > 0.1
            assert sorted(k for k in out.files if k.startswith("param.")) == sorted(expected_params)
            for name, value in expected_params.items():
                np.testing.assert_allclose(out[name], value, rtol=0, atol=2e-6, err_msg=name)
        two = pd.read_json(tmp_path / f"out{rank}.json")
        np.testing.assert_allclose(
            two[columns].to_numpy(), history[columns].to_numpy(), rtol=0, atol=1e-6
        )
    # The steps really trained: the parameters moved away from the initial ones.
    initial = tl._pretrain._initial_model("tiny", cohort, genes=genes, gene_key=None, seed=0)
    moved = [
        float(np.abs(expected_params["param." + ".".join(map(str, p))] - np.asarray(v[...])).max())
        for p, v in nnx.to_flat_state(nnx.state(initial, nnx.Param))
    ]
    assert max(moved) > 1e-4


def test_embed_refuses_no_devices(cohort):
    data = cohort.copy()
    model = bs.model.random_model("tiny", genes=list(cohort.var_names), seed=3)
    with pytest.raises(ValueError, match="devices is empty"):
        tl.embed(data, model, progress=False, devices=[])
    assert "X_bulkrnabert" not in data.obsm
