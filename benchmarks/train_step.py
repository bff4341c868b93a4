"""Training step time over forward time at the published size (19,062 genes), on CPU.

For each method a fresh subprocess builds ``random_model("tcga")`` (4 layers, 8 heads of 32,
random weights: only the shapes matter), compiles a training step and the forward pass of the
same loss on the same batch, then times them interleaved (forward, step, forward, step, ...), so
that other work on a shared machine slows both alike. It prints one JSON line per method:

* ``forward_s``, ``step_s``: the fastest repeat of each;
* ``step/forward``: the median over repeats of the step time divided by the mean of the forward
  times right before and after it (the figure of issue 18: at most 4 at batch 1);
* ``cpu_step/forward``: the same ratio of process CPU seconds (all threads), which other work on
  the machine disturbs less than wall time (it cannot take CPU time away, only slow it through
  shared caches);
* ``per_sample_s``: the step time divided by the batch size;
* ``peak_rss_gb``: the subprocess's peak resident memory (VmHWM), compilation included, also
  polled by the parent;
* ``load``: the 1-minute load average before and after (other work on the machine).

Methods: ``ia3`` and ``full`` are the fine-tuning step of ``tl.finetune`` (its trainer: encoder
and a (256, 128) MLP head, classification loss, AdamW with gradient clipping); ``pretrain`` is
the masked-expression step of ``tl.pretrain`` (mask embedding, 15% of the genes masked,
cross-entropy over the masked positions, AdamW), built here as in ``tl._pretrain._train_step``
without its micro-batch scan. The forward of a method is its loss without the gradient.
Each block is rematerialised (``remat=True``, the fine-tuning default) unless ``--no-remat``.

``--attention`` instead times one layer's attention alone (shape (batch, 19062, 8, 32)): the
host kernel's forward, its backward (:mod:`bulkrnabert_sv.model._host_backward`) and the JAX-loop
backward (``attention._jax_backward``, what the host path ran before), interleaved, in GFLOP/s
(forward ``4 L^2 H D``, backward ``10 L^2 H D``: five products instead of two).

Usage::

    PYTHONPATH=src python benchmarks/train_step.py                       # ia3 full pretrain
    PYTHONPATH=src python benchmarks/train_step.py --methods ia3 --batch-sizes 1 2 4
    PYTHONPATH=src python benchmarks/train_step.py --attention
    BENCH_GENES=1024 PYTHONPATH=src python benchmarks/train_step.py --repeats 1   # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GENES = Path(os.environ.get("BULKRNABERT_SHARED", ROOT.parent / "shared")) / (
    "data/bulkrnabert_gene_ids.txt"
)
N_GENES = 19_062


def _genes() -> list[str]:
    """The published vocabulary (its first ``BENCH_GENES`` genes for a quick check)."""
    count = int(os.environ.get("BENCH_GENES", N_GENES))
    if GENES.exists():
        return [g.strip() for g in GENES.read_text().splitlines() if g.strip()][:count]
    return [f"ENSG{i:011d}" for i in range(count)]


def _vmhwm_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024**2
    return float("nan")


def _timed(function, *args) -> float:
    return _timed_cpu(function, *args)[0]


def _timed_cpu(function, *args) -> tuple[float, float]:
    """Wall and process CPU seconds (all threads) of one call."""
    import jax

    start, cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(function(*args))
    return time.perf_counter() - start, time.process_time() - cpu


def finetune_setup(method: str, batch: int, remat: bool, genes):
    """A full-size encoder with the released classification head, split for ``tl.finetune``'s
    trainer: ``(trainer, params, opt_state, frozen, tokens, rng)`` (shared with
    ``finetune_step_memory.py``)."""
    import numpy as np
    from flax import nnx

    from bulkrnabert_sv.model import MLPHead, random_model
    from bulkrnabert_sv.tl._finetune import _trainable, _trainer
    from bulkrnabert_sv.training.finetuned import EncoderWithHead

    encoder = random_model("tcga", genes=genes, remat=remat)
    if method == "ia3":
        encoder.enable_ia3()
    head = MLPHead(encoder.config.embed_dim, (256, 128), 5, rngs=nnx.Rngs(0))
    block = encoder.config.num_layers
    bundle = EncoderWithHead(encoder, head, block)
    graphdef, params, frozen = nnx.split(bundle, _trainable(method, block), ...)
    trainer = _trainer(graphdef, "classification")
    opt_state = trainer.optimizer(learning_rate=1e-3, weight_decay=1e-4).init(params)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 64, (batch, len(genes)), dtype=np.int32)
    return trainer, params, opt_state, frozen, tokens, rng


def _finetune_functions(method: str, batch: int, remat: bool):
    import jax
    import numpy as np

    trainer, params, opt_state, frozen, tokens, rng = finetune_setup(method, batch, remat, _genes())
    targets = {
        "label": rng.integers(0, 5, batch).astype(np.int32),
        "weight": np.ones(batch, np.float32),
    }
    mask = np.ones(batch, bool)

    def loss(params, frozen, tokens, targets, mask):
        frozen = jax.tree_util.tree_map(lambda x: x, frozen)
        return trainer.loss(trainer.apply(params, frozen, tokens), targets, mask)

    forward = jax.jit(loss)
    args = (params, opt_state, frozen, tokens, targets, mask)
    return (
        lambda: forward(params, frozen, tokens, targets, mask),
        lambda: trainer._step(*args)[2],
        sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)),
    )


def _pretrain_functions(batch: int, remat: bool):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from bulkrnabert_sv.model import random_model
    from bulkrnabert_sv.tl._pretrain import _optimizer
    from bulkrnabert_sv.training.masking import marginal_log_probs, masked_sums, sample_mask

    genes = _genes()
    model = random_model("tcga", genes=genes, remat=remat).enable_mask_embedding()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = _optimizer(1e-2, 1.0)
    opt_state = tx.init(params)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 64, (batch, len(genes)), dtype=np.int32)
    log_baseline = jnp.asarray(marginal_log_probs(tokens, model.config.n_expressions_bins))
    mask = sample_mask(jax.random.key(0), tokens.shape, 0.15)

    def loss_fn(params, tokens, mask):
        net = nnx.merge(graphdef, params, rest)
        logits = net(tokens, mask=mask)["logits"]
        out = masked_sums(logits, tokens, mask, log_baseline)
        return out["loss"] / jnp.maximum(out["count"], 1.0)

    def step(params, opt_state, tokens, mask):
        value, grads = jax.value_and_grad(loss_fn)(params, tokens, mask)
        updates, opt_state = tx.update(grads, opt_state, params)
        updates = jax.tree.map(lambda u: -1e-4 * u, updates)
        return jax.tree.map(jnp.add, params, updates), opt_state, value

    forward, step = jax.jit(loss_fn), jax.jit(step)
    return (
        lambda: forward(params, tokens, mask),
        lambda: step(params, opt_state, tokens, mask)[2],
        sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)),
    )


def child_step(method: str, batch: int, remat: bool, repeats: int) -> None:
    import jax

    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    if method == "pretrain":
        forward, step, trainable = _pretrain_functions(batch, remat)
    else:
        forward, step, trainable = _finetune_functions(method, batch, remat)
    build_s = time.perf_counter() - t0
    first_forward_s = _timed(forward)
    first_step_s = _timed(step)
    forwards, steps = [_timed_cpu(forward)], []
    for _ in range(repeats):
        steps.append(_timed_cpu(step))
        forwards.append(_timed_cpu(forward))
    ratios = [s / ((a + b) / 2) for (s, _), (a, _), (b, _) in zip(steps, forwards, forwards[1:])]
    cpu_ratios = [
        s / ((a + b) / 2) for (_, s), (_, a), (_, b) in zip(steps, forwards, forwards[1:])
    ]
    forwards, forward_cpu = [t for t, _ in forwards], [c for _, c in forwards]
    steps, step_cpu = [t for t, _ in steps], [c for _, c in steps]
    print(
        json.dumps(
            {
                "method": method,
                "batch": batch,
                "remat": remat,
                "backend": jax.default_backend(),
                "trainable_parameters": trainable,
                "build_s": round(build_s, 1),
                "first_forward_s": round(first_forward_s, 1),
                "first_step_s": round(first_step_s, 1),
                "forward_s": round(min(forwards), 2),
                "step_s": round(min(steps), 2),
                "forward_all_s": [round(x, 2) for x in forwards],
                "step_all_s": [round(x, 2) for x in steps],
                "step/forward": round(statistics.median(ratios), 2),
                "step/forward_all": [round(r, 2) for r in ratios],
                "cpu_step/forward": round(statistics.median(cpu_ratios), 2),
                "forward_cpu_s": [round(x, 1) for x in forward_cpu],
                "step_cpu_s": [round(x, 1) for x in step_cpu],
                "per_sample_s": round(min(steps) / batch, 2),
                "peak_rss_gb": round(_vmhwm_gb(), 2),
                "load": [round(load_before, 1), round(os.getloadavg()[0], 1)],
            }
        ),
        flush=True,
    )


def child_attention(batch: int, repeats: int) -> None:
    import functools

    import jax
    import jax.numpy as jnp
    import numpy as np

    from bulkrnabert_sv.model import attention as attn
    from bulkrnabert_sv.model._host_attention import attention_forward
    from bulkrnabert_sv.model._host_backward import attention_backward

    length, heads, d = len(_genes()), 8, 32
    rng = np.random.default_rng(0)
    shape = (batch, length, heads, d)
    q = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.25)
    k, v, dout = (rng.standard_normal(shape, dtype=np.float32) for _ in range(3))
    out, lse = attention_forward(q, k, v, layout="bshd")

    def heads_first(x):
        return jnp.asarray(x.transpose(0, 2, 1, 3).reshape(batch * heads, length, d))

    loop_inputs = [heads_first(x) for x in (q, k, v, out, dout)]
    loop_inputs.insert(4, jnp.asarray(lse.reshape(batch * heads, length)))
    loop_backward = jax.jit(functools.partial(attn._jax_backward, block_q=256, block_k=256))
    jax.block_until_ready(loop_backward(*loop_inputs))
    attention_backward(q, k, v, out, lse, dout, layout="bshd")  # compile / load the cache
    flops = 4 * batch * length * length * heads * d
    rows = {"forward": [], "host backward": [], "JAX-loop backward": []}
    for _ in range(repeats):
        rows["forward"].append(_timed(lambda: attention_forward(q, k, v, layout="bshd")))
        rows["host backward"].append(
            _timed(lambda: attention_backward(q, k, v, out, lse, dout, layout="bshd"))
        )
        rows["JAX-loop backward"].append(_timed(loop_backward, *loop_inputs))
    result = {"batch": batch, "load": round(os.getloadavg()[0], 1)}
    for name, times in rows.items():
        work = flops * (1.0 if name == "forward" else 2.5)
        result[name] = {
            "s": round(min(times), 2),
            "GFLOP/s": round(work / min(times) / 1e9, 1),
            "all_s": [round(t, 2) for t in times],
        }
    paired = [h / f for h, f in zip(rows["host backward"], rows["forward"])]
    result["host backward / forward"] = round(statistics.median(paired), 2)
    loops = [j / h for j, h in zip(rows["JAX-loop backward"], rows["host backward"])]
    result["JAX-loop / host backward"] = round(statistics.median(loops), 2)
    result["peak_rss_gb"] = round(_vmhwm_gb(), 2)
    print(json.dumps(result), flush=True)


def _run(command: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    peak = 0.0
    while process.poll() is None:
        try:
            for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024**2)
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.5)
    out, _ = process.communicate()
    lines = [line for line in out.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else {"status": "failed"}
    result["parent_peak_rss_gb"] = round(peak, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["ia3", "full", "pretrain"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-remat", action="store_true")
    parser.add_argument("--attention", action="store_true", help="time one layer's attention")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "attention":
        child_attention(args.batch_sizes[0], args.repeats)
        return
    if args.child:
        child_step(args.child, args.batch_sizes[0], not args.no_remat, args.repeats)
        return
    base = [sys.executable, __file__, "--repeats", str(args.repeats)]
    if args.attention:
        for batch in args.batch_sizes:
            result = _run([*base, "--child", "attention", "--batch-sizes", str(batch)])
            print(json.dumps(result), flush=True)
        return
    base += ["--no-remat"] if args.no_remat else []
    for method in args.methods:
        for batch in args.batch_sizes:
            result = _run([*base, "--child", method, "--batch-sizes", str(batch)])
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
