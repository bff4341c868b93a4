"""``CheckpointError``: a checkpoint that cannot be loaded, with every problem listed at once."""

from __future__ import annotations

#: Offending entries listed per kind of problem before "and N more".
MAX_LISTED = 5


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message lists every problem and the fix."""


def checkpoint_error(source: str, problems: list[str], fixes: list[str] | None = None):
    """One :class:`CheckpointError` listing ``problems`` in ``source``, then how to fix them."""
    if fixes is None:
        fixes = general_fixes(problems)
    return CheckpointError(
        f"Cannot load {source}: {len(problems)} problem(s):\n  - "
        + "\n  - ".join(problems)
        + "\n"
        + " ".join(fixes)
    )


def general_fixes(problems: list[str]) -> list[str]:
    """What to do about ``problems`` when no loader knows better (damaged or mixed files)."""
    fixes = []
    if any(" NaN and " in p for p in problems):
        fixes.append(
            "NaN or infinite weights make every output NaN: the file is damaged, or the "
            "training that wrote it diverged. Re-download it, or use an earlier checkpoint "
            "(for a diverged run: a lower learning rate, or max_grad_norm)."
        )
    fixes.append(
        "Check that the files belong together (same checkpoint and configuration) and "
        "were not modified; re-download them if in doubt."
    )
    return fixes


def listed(items: list[str]) -> str:
    """The first :data:`MAX_LISTED` items, comma-separated, then ``"and N more"``."""
    shown = ", ".join(items[:MAX_LISTED])
    return shown if len(items) <= MAX_LISTED else f"{shown} and {len(items) - MAX_LISTED} more"
