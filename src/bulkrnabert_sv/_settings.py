"""Package settings read from the environment, all under one prefix: ``BULKRNABERT_SV_``.

========================================  =================================================
``BULKRNABERT_SV_MODEL``                  default model source of ``load_model``, the tools
                                          and the CLI (a folder or a Hugging Face repo id);
                                          else :data:`DEFAULT_REPO`
``BULKRNABERT_SV_NUM_THREADS``            worker threads of the CPU attention kernel (default:
                                          the CPUs this process may use)
``BULKRNABERT_SV_HOST_KERNEL``            CPU attention micro-kernel: ``auto`` (default),
                                          ``simd`` or ``blas``
========================================  =================================================

``BULKRNABERT_MODEL``, the former name of ``BULKRNABERT_SV_MODEL``, is still read (with a
:class:`DeprecationWarning`) when the new name is not set.
"""

from __future__ import annotations

import os

from . import _logging as logg

#: Prefix of every environment variable the package reads.
ENV_PREFIX = "BULKRNABERT_SV_"
#: Default model source (a folder or a Hugging Face repo id).
MODEL_ENV = f"{ENV_PREFIX}MODEL"
#: Worker threads of the CPU attention kernel.
NUM_THREADS_ENV = f"{ENV_PREFIX}NUM_THREADS"
#: CPU attention micro-kernel (``auto``, ``simd`` or ``blas``).
HOST_KERNEL_ENV = f"{ENV_PREFIX}HOST_KERNEL"
#: Former names, still read when the new one is not set.
DEPRECATED_ENV = {MODEL_ENV: "BULKRNABERT_MODEL"}

#: The published weights on the Hugging Face Hub.
DEFAULT_REPO = "InstaDeepAI/BulkRNABert"

#: Compiled functions kept per builder (``functools.lru_cache(maxsize=...)`` of the fitting,
#: head and attribution builders, keyed by model structure: hashable NNX GraphDefs).
COMPILE_CACHE_SIZE = 16


def env(name: str) -> str | None:
    """The value of the environment variable ``name`` (empty counts as unset).

    Falls back to the variable's former name (see :data:`DEPRECATED_ENV`), with a
    :class:`DeprecationWarning` naming the new one.
    """
    value = os.environ.get(name)
    if value:
        return value
    old = DEPRECATED_ENV.get(name)
    if old and os.environ.get(old):
        logg.warn(
            f"${old} is deprecated and will stop being read; set ${name} instead.",
            DeprecationWarning,
        )
        return os.environ[old]
    return None


def default_model_source() -> str:
    """``$BULKRNABERT_SV_MODEL`` if set, else :data:`DEFAULT_REPO`."""
    return env(MODEL_ENV) or DEFAULT_REPO
