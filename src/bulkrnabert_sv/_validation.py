"""Argument checks shared by every layer (types and ranges, with the fix in the message)."""

from __future__ import annotations

import functools
import numbers
import warnings
from collections.abc import Callable
from typing import TypeVar

_F = TypeVar("_F", bound=Callable)

#: Why ``layer`` was renamed where it named a transformer block (see :func:`renamed_keywords`).
BLOCK_NOT_LAYER = "the transformer block; layer means an AnnData layer in bulkrnabert-sv"


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


def check_block_index(value, name: str = "embedding_block") -> int:
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


def renamed_keywords(function_name: str, why: str = BLOCK_NOT_LAYER, **renames: str):
    """Decorator: accept the old names of renamed keyword arguments, with a warning.

    ``@renamed_keywords("tl.embed", embedding_layer="embedding_block")`` lets callers still
    pass ``embedding_layer=``: its value is passed on as ``embedding_block`` with a
    :class:`DeprecationWarning` attributed to the caller's line
    (:func:`~bulkrnabert_sv._logging.user_stacklevel`). Passing both names is a
    :class:`TypeError`. The signature and documentation show the new names only.

    Parameters
    ----------
    function_name
        How the warning names the function (``"tl.embed"``).
    why
        Why the name changed (appended to the warning).
    renames
        ``old_name="new_name"`` pairs.
    """

    def decorate(function: _F) -> _F:
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            for old, new in renames.items():
                if old not in kwargs:
                    continue
                if new in kwargs:
                    raise TypeError(
                        f"{function_name} got both {new}= and its deprecated name {old}=; "
                        f"pass {new}= only."
                    )
                from ._logging import user_stacklevel

                warnings.warn(
                    f"{function_name}({old}=...) is deprecated; pass {new}=... ({why}).",
                    DeprecationWarning,
                    stacklevel=user_stacklevel(),
                )
                kwargs[new] = kwargs.pop(old)
            return function(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
