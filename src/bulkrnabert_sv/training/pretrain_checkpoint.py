"""Pretraining checkpoints (orbax): the training state, its history, and the run's configuration.

A checkpoint folder holds

* ``pretrain_config.json``: everything that must be identical to continue a run (architecture,
  tokenizer, gene list and data fingerprints, training settings); written before the first step
  and compared, field by field, before a run resumes;
* ``<step>/``: orbax checkpoints of the training state (model parameters, optimiser state, step)
  and a JSON item with the metrics history so far; the latest few are kept. Orbax writes each to
  a temporary folder and renames it when complete, so an interrupted save is never picked up.

A run killed while saving leaves that temporary folder (``<step>.orbax-checkpoint-tmp``), and one
killed between a save's rename and the deletion of the oldest checkpoint leaves one checkpoint too
many; orbax removes neither by itself until a later save happens to do so, so :class:`Checkpointer`
removes both when it opens a folder to resume. A checkpoint that cannot be read (damaged files, a
missing item) is set aside as ``<step>.corrupt`` and the run resumes from the one before, with a
:class:`CorruptCheckpointWarning`.

The random numbers of step ``k`` (mask, batch order) are functions of ``random_state`` and ``k``,
so the step number is all the RNG state there is.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np

from .._files import PRETRAIN_CONFIG_FILE as CONFIG_FILE
from .._logging import user_stacklevel

FORMAT = "bulkrnabert-sv-pretrain"
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^\d+$")


#: The items of a step's checkpoint, as named in messages.
ITEMS = {"state": "the training state", "meta": "the metrics history"}
#: Suffix of a step folder that could not be read, set aside (orbax ignores it).
CORRUPT_SUFFIX = ".corrupt"


class PretrainCheckpointError(ValueError):
    """A checkpoint folder that does not belong to this run, or cannot be used for it."""


class UnreadableCheckpointError(PretrainCheckpointError):
    """One step's checkpoint is damaged: a missing item, unreadable or inconsistent files."""


class CorruptCheckpointWarning(UserWarning):
    """The latest checkpoint could not be read; the run resumed from an earlier one."""


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


def check_folder_path(folder: Path) -> None:
    """Refuse a ``checkpoint_dir`` that is a file, or lies inside one (before any work is done).

    Raises
    ------
    PretrainCheckpointError
        Naming the file and what to pass instead.
    """
    folder = Path(folder)
    for path in (folder, *folder.parents):
        if not path.exists():
            continue
        if not path.is_dir():
            where = "is a file" if path == folder else f"is inside {path}, which is a file"
            raise PretrainCheckpointError(
                f"checkpoint_dir {str(folder)!r} {where}, not a folder. Pass the path of a "
                "folder: a new or empty one for a new run, or this run's checkpoint folder to "
                "resume it (the file is left untouched)."
            )
        return


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
    check_folder_path(folder)
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
    """Save and restore the training state of one run in ``folder`` (orbax CheckpointManager).

    Opening a folder removes the temporary folders of saves that a killed run left unfinished
    (orbax keeps them otherwise); :meth:`restore_latest` also deletes checkpoints beyond
    ``max_to_keep`` and sets aside unreadable ones.
    """

    def __init__(self, folder: Path, *, max_to_keep: int = 2):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.folder = Path(folder).resolve()
        self.max_to_keep = max_to_keep
        self.manager = ocp.CheckpointManager(
            self.folder,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True
            ),
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

    def restore_latest(self, like) -> tuple[int, Any, dict] | None:
        """Restore the newest readable checkpoint into ``like``'s structure; None if there is none.

        Newer checkpoints that cannot be read are renamed ``<step>.corrupt`` (kept for
        inspection, ignored from then on) with a :class:`CorruptCheckpointWarning`; checkpoints
        older than the ``max_to_keep`` newest are deleted (a killed run can leave one too many).

        Returns
        -------
        ``(step, state, meta)``, or None when the folder holds no checkpoint.

        Raises
        ------
        PretrainCheckpointError
            No checkpoint can be read (the message lists why for each), or they store another
            training state.
        """
        steps = sorted(self.manager.all_steps(), reverse=True)
        failures: list[tuple[int, str]] = []
        for step in steps:
            try:
                state, meta = self.restore(step, like)
            except UnreadableCheckpointError as error:
                failures.append((step, str(error)))
                continue
            except PretrainCheckpointError:
                raise  # readable, but another run's state: falling back would not help
            except Exception as error:  # orbax and TensorStore raise many types on damaged files
                failures.append(
                    (step, f"{self.folder / str(step)} cannot be read: {_brief(error)}")
                )
                continue
            if failures:
                moved = self._set_aside([s for s, _ in failures])
                warnings.warn(
                    f"Resuming from step {step}: the later checkpoint(s) in {self.folder} cannot "
                    "be read and were set aside as "
                    + ", ".join(m.name for m in moved)
                    + ":\n  - "
                    + "\n  - ".join(reason for _, reason in failures)
                    + f"\nThe steps after {step} are trained again. Delete the set-aside "
                    "folders once you no longer need them.",
                    CorruptCheckpointWarning,
                    stacklevel=user_stacklevel(),  # the line calling tl.pretrain
                )
            self._prune()
            return step, state, meta
        if not failures:
            return None
        raise PretrainCheckpointError(
            f"No checkpoint in {self.folder} can be read:\n  - "
            + "\n  - ".join(reason for _, reason in failures)
            + "\nTo start this run over, delete the numbered step folders (or the whole "
            "folder); or pass a new checkpoint_dir."
        )

    def _set_aside(self, steps: list[int]) -> list[Path]:
        """Rename step folders ``<step>.corrupt`` (``.corrupt-1``, ... if taken) so orbax skips them."""
        targets = []
        for step in steps:
            source = self.folder / str(step)
            target = source.with_name(source.name + CORRUPT_SUFFIX)
            n = 0
            while target.exists():
                n += 1
                target = source.with_name(f"{source.name}{CORRUPT_SUFFIX}-{n}")
            targets.append(target)
            if jax.process_index() == 0:
                source.rename(target)
        self._sync("bulkrnabert_sv:set_aside")
        self.manager.reload()
        return targets

    def _prune(self) -> None:
        """Delete the checkpoints older than the ``max_to_keep`` newest."""
        steps = sorted(self.manager.all_steps())
        for step in steps[: max(len(steps) - self.max_to_keep, 0)]:
            self.manager.delete(step)

    @staticmethod
    def _sync(name: str) -> None:
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(name)

    def restore(self, step: int, like) -> tuple[Any, dict]:
        """Restore checkpoint ``step`` into the structure and shardings of ``like``.

        Raises
        ------
        UnreadableCheckpointError
            An item of the checkpoint is missing, or its metadata are not what a save writes.
        PretrainCheckpointError
            The checkpoint stores another training state (arrays, shapes or dtypes).
        """
        ocp = self._ocp
        where = self.folder / str(step)
        missing = [name for name in ITEMS if not (where / name).is_dir()]
        if missing:
            raise UnreadableCheckpointError(
                f"{where} is incomplete: "
                + ", ".join(f"the item {name!r} ({ITEMS[name]})" for name in missing)
                + f" {'is' if len(missing) == 1 else 'are'} missing (files were deleted or "
                "moved after the save)"
            )
        meta = self.manager.restore(
            int(step), args=ocp.args.Composite(meta=ocp.args.JsonRestore())
        )["meta"]
        if (
            not isinstance(meta, dict)
            or not isinstance(meta.get("history"), list)
            or not isinstance(meta.get("leaves"), list)
        ):
            raise UnreadableCheckpointError(
                f"{where / 'meta'} does not hold the metrics history and state layout that a "
                "save writes (it was edited or damaged)"
            )
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


def _brief(error: BaseException) -> str:
    """An exception as one short line (TensorStore's messages run to pages)."""
    text = " ".join(str(error).split())
    text = text if len(text) <= 240 else text[:237] + "..."
    return f"{type(error).__name__}: {text}"


def fingerprint(array: np.ndarray) -> str:
    """SHA-256 of an array's bytes, shape and dtype."""
    import hashlib

    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.shape}{array.dtype}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()
