"""Argument checks shared by every layer (types and ranges, with the fix in the message)."""

from __future__ import annotations

import numbers


def check_positive_int(value, name: str) -> int:
    """``value`` as an ``int`` if it is an integer >= 1 (``bool`` excluded).

    Raises
    ------
    TypeError
        ``value`` is not an integer (a string, a float, ``True``/``False``, None...).
    ValueError
        ``value`` is below 1.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{name} must be a positive integer, got {value!r} ({type(value).__name__}). "
            f"Pass an int, e.g. {name}=8."
        )
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}.")
    return int(value)


def check_layer_index(value, name: str = "embedding_layer") -> int:
    """``value`` as an ``int`` if it is an integer block index (``bool`` excluded).

    The range is checked by the model (``1..num_layers`` or ``-num_layers..-1``).

    Raises
    ------
    TypeError
        ``value`` is not an integer: ``2.0``, ``"2"`` or ``True`` (which would be taken as 1).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{name} must be an integer block index (1-indexed; -1 = the last block), got "
            f"{value!r} ({type(value).__name__}). Pass an int, e.g. {name}=-1."
        )
    return int(value)


def check_int_at_least(value, name: str, minimum: int) -> int:
    """``value`` as an ``int`` if it is an integer >= ``minimum`` (``bool`` excluded).

    For settings whose message states the bound (``"inner_folds must be an integer >= 2"``):
    one :class:`ValueError` whatever is wrong, unlike :func:`check_positive_int`.

    Raises
    ------
    ValueError
        ``value`` is not an integer, or is below ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)
