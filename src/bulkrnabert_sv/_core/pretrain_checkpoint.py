"""Pretraining checkpoints (orbax): the training state, its history, and the run's configuration.

A checkpoint folder holds

* ``pretrain_config.json``: everything that must be identical to continue a run (architecture,
  tokenizer, gene list and data fingerprints, training settings); written before the first step
  and compared, field by field, before a run resumes;
* ``<step>/``: orbax checkpoints of the training state (model parameters, optimiser state, step)
  and a JSON item with the metrics history so far; the latest few are kept. Orbax writes each to
  a temporary folder and renames it when complete, so an interrupted save is never picked up.

The random numbers of step ``k`` (mask, batch order) are functions of ``random_state`` and ``k``,
so the step number is all the RNG state there is.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jax
import numpy as np

CONFIG_FILE = "pretrain_config.json"
FORMAT = "bulkrnabert-sv-pretrain"
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^\d+$")


class PretrainCheckpointError(ValueError):
    """A checkpoint folder that does not belong to this run."""


def _describe(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def _differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    lines = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            lines += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            lines.append(f"{prefix}{key}: {_describe(a)} in the folder, {_describe(b)} now")
    return lines


def _has_steps(folder: Path) -> bool:
    return any(_STEP_DIR.match(p.name) for p in folder.iterdir() if p.is_dir())


def prepare_folder(folder: Path, config: dict, *, resume: bool) -> None:
    """Check ``folder`` against this run's ``config`` (write it for a new run).

    Raises
    ------
    PretrainCheckpointError
        The folder belongs to a run with another configuration, is not a pretraining folder, or
        holds checkpoints while ``resume=False``.
    """
    config = json.loads(json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, **config}))
    path = folder / CONFIG_FILE
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise PretrainCheckpointError(
                f"{path} is not valid JSON ({error}); the folder is damaged. Use another "
                "checkpoint_dir."
            ) from None
        if not resume and _has_steps(folder):
            raise PretrainCheckpointError(
                f"{folder} already holds checkpoints of a pretraining run, and resume=False. "
                "Pass resume=True to continue it, or choose a new (empty) checkpoint_dir."
            )
        differences = _differences(saved, config)
        if differences:
            raise PretrainCheckpointError(
                f"{folder} holds a pretraining run with another configuration:\n  - "
                + "\n  - ".join(differences)
                + "\nPass the same model, data and settings to resume it, or choose a new "
                "(empty) checkpoint_dir for this run."
            )
        return
    if folder.exists() and any(folder.iterdir()):
        raise PretrainCheckpointError(
            f"{folder} is not empty and holds no {CONFIG_FILE}: it is not a pretraining "
            "checkpoint folder. Choose a new or empty checkpoint_dir."
        )
    folder.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(config, indent=1, sort_keys=True))
        tmp.replace(path)


# ------------------------------------------------------------------------------------ state I/O
def key_name(entry) -> str:
    for attribute in ("key", "name", "idx"):
        if hasattr(entry, attribute):
            return str(getattr(entry, attribute))
    return str(entry)


def leaf_names(tree) -> list[str]:
    """Dotted paths of the leaves of ``tree`` in flattening order (for validation and messages)."""
    paths = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [".".join(key_name(e) for e in path) for path, _ in paths]


class Checkpointer:
    """Save and restore the training state of one run in ``folder`` (orbax CheckpointManager)."""

    def __init__(self, folder: Path, *, max_to_keep: int = 2):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.folder = Path(folder).resolve()
        self.manager = ocp.CheckpointManager(
            self.folder,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, meta: dict) -> None:
        ocp = self._ocp
        leaves = jax.tree_util.tree_leaves(state)
        items = {f"leaf_{i:05d}": leaf for i, leaf in enumerate(leaves)}
        meta = {**meta, "step": int(step), "leaves": leaf_names(state)}
        self.manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(items), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )

    def restore(self, step: int, like) -> tuple[Any, dict]:
        """Restore checkpoint ``step`` into the structure and shardings of ``like``."""
        ocp = self._ocp
        meta = self.manager.restore(
            int(step), args=ocp.args.Composite(meta=ocp.args.JsonRestore())
        )["meta"]
        names = leaf_names(like)
        leaves, treedef = jax.tree_util.tree_flatten(like)
        if meta.get("leaves") != names:
            raise PretrainCheckpointError(
                f"The checkpoint {self.folder / str(step)} stores another training state "
                f"({len(meta.get('leaves', []))} arrays, {len(names)} expected). It was written "
                "by another version or model; choose a new checkpoint_dir."
            )
        target = {
            f"leaf_{i:05d}": jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
            for i, leaf in enumerate(leaves)
        }
        items = self.manager.restore(
            int(step), args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
        )["state"]
        restored = [items[f"leaf_{i:05d}"] for i in range(len(leaves))]
        for name, a, b in zip(names, restored, leaves):
            if a.shape != b.shape or a.dtype != b.dtype:
                raise PretrainCheckpointError(
                    f"{name} in {self.folder / str(step)} has shape {a.shape} {a.dtype}, "
                    f"expected {b.shape} {b.dtype}; choose a new checkpoint_dir."
                )
        return jax.tree_util.tree_unflatten(treedef, restored), meta

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def fingerprint(array: np.ndarray) -> str:
    """SHA-256 of an array's bytes, shape and dtype."""
    import hashlib

    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.shape}{array.dtype}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()
