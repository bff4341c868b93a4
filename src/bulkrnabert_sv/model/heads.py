"""The released downstream head: an MLP on mean embeddings (SELU hidden layers, optional LayerNorm)."""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .errors import CheckpointError
from .files import read_json
from .params import HAIKU_HEAD_RULES, assign, flat_state, flatten_haiku, map_tensors

_ACTIVATIONS = {
    "selu": jax.nn.selu,
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "tanh": jnp.tanh,
    "identity": lambda x: x,
}


class HeadSettings(Mapping):
    """A head's settings: a read-only, hashable mapping (lists are stored as tuples).

    Hashable so that a head's :class:`flax.nnx.GraphDef`, which holds its settings, can key
    a cache of compiled functions (``functools.lru_cache``, or a static argument of
    ``jax.jit``). :meth:`to_dict` gives the JSON form (tuples as lists).
    """

    __slots__ = ("_items",)

    def __init__(self, settings: Mapping):
        self._items = tuple(
            (str(k), tuple(v) if isinstance(v, list | tuple) else v) for k, v in settings.items()
        )

    def __getitem__(self, key: str):
        for name, value in self._items:
            if name == key:
                return value
        raise KeyError(key)

    def __iter__(self):
        return (name for name, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(frozenset(self._items))

    def __eq__(self, other) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        if not isinstance(other, HeadSettings):
            other = HeadSettings(other)
        return frozenset(self._items) == frozenset(other._items)

    def __repr__(self) -> str:
        return f"HeadSettings({self.to_dict()!r})"

    def to_dict(self) -> dict:
        """The settings as a plain dict, sequences as lists (what ``finetuned.json`` holds)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self._items}


class MLPHead(nnx.Module):
    """MLP head: ``Linear + activation`` per hidden layer, optional LayerNorm, final ``Linear``.

    Parameters
    ----------
    in_features
        Input width (the encoder's ``embed_dim``).
    hidden_sizes
        Widths of the hidden layers (``(256, 128)`` for the released classifier).
    n_outputs
        Number of logits (classes), or 1 for a Cox risk score.
    layer_norm
        Apply a LayerNorm after the hidden layers (the released survival head does).
    activation
        Hidden activation; ``"selu"`` as released.
    final_activation
        Activation on the output (``"identity"`` as released).
    """

    def __init__(
        self,
        in_features: int,
        hidden_sizes: Sequence[int],
        n_outputs: int,
        *,
        layer_norm: bool = False,
        activation: str = "selu",
        final_activation: str = "identity",
        rngs: nnx.Rngs,
    ):
        for name in (activation, final_activation):
            if name not in _ACTIVATIONS:
                raise ValueError(
                    f"Unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}."
                )
        self.settings = HeadSettings(
            {
                "in_features": int(in_features),
                "hidden_sizes": [int(h) for h in hidden_sizes],
                "n_outputs": int(n_outputs),
                "layer_norm": bool(layer_norm),
                "activation": activation,
                "final_activation": final_activation,
            }
        )
        sizes = [int(in_features), *(int(h) for h in hidden_sizes)]
        self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in itertools.pairwise(sizes)])
        self.norm = (
            nnx.LayerNorm(sizes[-1], epsilon=1e-5, use_fast_variance=False, rngs=rngs)
            if layer_norm
            else nnx.data(None)
        )
        self.output = nnx.Linear(sizes[-1], int(n_outputs), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        act = _ACTIVATIONS[self.settings["activation"]]
        for layer in self.hidden:
            x = act(layer(x))
        if self.norm is not None:
            x = self.norm(x)
        return _ACTIVATIONS[self.settings["final_activation"]](self.output(x))

    @classmethod
    def from_haiku_config(
        cls, config: Mapping, in_features: int, *, rngs: nnx.Rngs | None = None
    ) -> MLPHead:
        """Build from an upstream head config (``hidden_sizes``, ``final_layer_n_logits``, ...)."""
        return cls(
            in_features,
            config.get("hidden_sizes", ()),
            config["final_layer_n_logits"],
            layer_norm=bool(config.get("layer_norm", False)),
            activation=config.get("mlp_activation", "selu"),
            final_activation=config.get("final_activation", "identity"),
            rngs=rngs or nnx.Rngs(0),
        )

    def load_haiku_params(self, params: Mapping, *, source: str = "Haiku head params") -> MLPHead:
        """Load Haiku params: nested ``{module: {name: array}}`` or flat ``{"module/name": array}``."""
        targets = flat_state(self, nnx.Param)
        assign(self, map_tensors(flatten_haiku(params), HAIKU_HEAD_RULES, targets, source=source))
        return self


def load_head(path, *, in_features: int | None = None, allow_pickle: bool = False) -> MLPHead:
    """Load a released Haiku head from a folder with ``config.json`` and ``params.joblib``/``.npz``.

    ``params.joblib`` is a pickle: it is read only with ``allow_pickle=True``. ``in_features`` is
    taken from the first layer's weights when not given.
    """
    folder = Path(path)
    config = read_json(folder / "config.json")
    config = config.get("model", config)
    npz, joblib_file = folder / "params.npz", folder / "params.joblib"
    if npz.is_file():
        with np.load(npz) as data:
            params = {k: data[k] for k in data.files}
    elif joblib_file.is_file():
        if not allow_pickle:
            raise CheckpointError(
                f"{joblib_file} is a joblib pickle, and unpickling can run arbitrary code; "
                "pass allow_pickle=True only if you trust its origin."
            )
        import joblib

        params = joblib.load(joblib_file)
    else:
        raise CheckpointError(f"{folder} has neither params.npz nor params.joblib.")
    if in_features is None:
        first = [v for k, v in flatten_haiku(params).items() if re.search(r"linear_0/w$", k)]
        if not first:
            raise CheckpointError(f"{folder}: cannot infer in_features; pass in_features=.")
        in_features = first[0].shape[0]
    head = MLPHead.from_haiku_config(config, in_features)
    return head.load_haiku_params(params, source=str(folder))
