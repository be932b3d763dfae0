r"""Checking constructor arguments, once for every callback and config.

The error names the argument, says what is accepted and repeats what was given, so a user can fix the call from the
message alone.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any


def check_number(
    name: str,
    value: Any,
    low: float,
    high: float | None = None,
    low_inclusive: bool = False,
    high_inclusive: bool = False,
    allow_none: bool = False,
) -> None:
    r"""Raise ``TypeError`` (not a number) or ``ValueError`` (outside the interval) naming ``name``.

    A number is any real number but a bool: Python's, and NumPy's scalars (``np.float32(0.1)``) too.

    Example::

        >>> check_number("pct_start", 0.3, low=0.0, high=1.0)
        >>> check_number("pct_start", 1.5, low=0.0, high=1.0)
        Traceback (most recent call last):
        ...
        ValueError: `pct_start` must be in (0.0, 1.0), got 1.5
    """
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        # a tensor or a NumPy array (a 0-d one too): `.item()` gives the number
        hint = " (an array or a tensor: pass `.item()`)" if hasattr(value, "item") and hasattr(value, "ndim") else ""
        raise TypeError(f"`{name}` must be a number{hint}, got {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float: out of any interval this package asks for
        number = math.inf
    above = number >= low if low_inclusive else number > low
    below = high is None or (number <= high if high_inclusive else number < high)
    if not (math.isfinite(number) and above and below):
        interval = (
            f"{'[' if low_inclusive else '('}{low}, {high if high is not None else 'inf'}"
            f"{']' if high_inclusive and high is not None else ')'}"
        )
        # an infinite value is outside an interval written with "inf" as its end, which read as a contradiction
        finite = "" if math.isfinite(number) else "a finite number "
        raise ValueError(f"`{name}` must be {finite}in {interval}, got {value}")


def check_integer(name: str, value: Any, low: int, why: str = "", zero_means: str = "", none_means: str = "") -> None:
    r"""Raise ``TypeError`` (not an integer) or ``ValueError`` (below ``low``) naming ``name``.

    An integer is Python's or NumPy's, never a bool or a float (``50.0`` is a ``TypeError``, as in ``range(50.0)``);
    0 is accepted too where ``zero_means`` says what it means, and None where ``none_means`` does.

    Example::

        >>> check_integer("trial_steps", 0, low=50, zero_means="no trials")
        >>> check_integer("trial_steps", 20, low=50, zero_means="no trials")
        Traceback (most recent call last):
        ...
        ValueError: `trial_steps` must be 0 (no trials) or an integer >= 50, got 20
        >>> check_integer("trial_steps", "100", low=50)
        Traceback (most recent call last):
        ...
        TypeError: `trial_steps` must be an integer >= 50, got '100'
        >>> check_integer("trial_steps", 1.5, low=50, zero_means="no trials", none_means="sized to the run")
        Traceback (most recent call last):
        ...
        TypeError: `trial_steps` must be None (sized to the run), 0 (no trials) or an integer >= 50, got 1.5
    """
    if value is None and none_means:
        return
    integer = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if integer and (value >= low or (zero_means and value == 0)):
        return
    others = [f"{what} ({means})" for what, means in (("None", none_means), ("0", zero_means)) if means]
    zero = ", ".join(others) + " or " if others else ""
    reason = f" ({why})" if why else ""
    raise (ValueError if integer else TypeError)(f"`{name}` must be {zero}an integer >= {low}{reason}, got {value!r}")


def check_pair(name: str, value: Any, what: str) -> tuple[Any, Any]:
    """``value``'s two elements, or a ``TypeError`` naming ``name`` and saying what a pair must hold (``what``).

    A pair is a tuple or a list of two, or a NumPy array or tensor of two numbers (read as Python numbers).
    """
    if hasattr(value, "tolist") and getattr(value, "ndim", None) == 1:
        value = value.tolist()
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"`{name}` must be a pair {what} (a tuple or a list of two), got {value!r}")
    return value[0], value[1]


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """``value`` as a plain ``str`` if it is one of ``choices``, else an error naming ``name``.

    A ``ValueError``; a ``TypeError`` for a value that is no string.

    NumPy's strings (``np.str_``) and string enums count and come back as the plain ``str`` they equal: a callback
    keeps the value in its checkpoint, which must load with ``torch.load(weights_only=True)`` (found trying the
    package as a new user: an ``np.str_`` was kept and the checkpoint did not load). Anything else, a 0-d array of a
    string included, is refused.

    Example::

        >>> check_choice("mode", "linear", ("exponential", "linear"))
        'linear'
        >>> check_choice("mode", "log", ("exponential", "linear"))
        Traceback (most recent call last):
        ...
        ValueError: `mode` must be 'exponential' or 'linear', got 'log'
    """
    if not isinstance(value, str) or value not in choices:
        accepted = " or ".join(repr(c) for c in choices) if len(choices) <= 2 else ", ".join(repr(c) for c in choices)
        # not a string: the wrong type, as the classes' docstrings say (found in a review: `mode=None` a ValueError)
        error = ValueError if isinstance(value, str) else TypeError
        raise error(f"`{name}` must be {'one of ' if len(choices) > 2 else ''}{accepted}, got {value!r}")
    return choices[choices.index(value)]  # the choice itself: `str()` of a `(str, Enum)` member is its name


def check_bool(name: str, value: Any, allow_none: bool = False) -> Any:
    """``value`` as a plain bool (or None when allowed), or a ``TypeError`` naming ``name``.

    NumPy's booleans (``np.bool_``) count, as NumPy's numbers do for :func:`check_number`.
    """
    if value is None and allow_none:
        return None
    if type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_"):
        value = value.item()
    if not isinstance(value, bool):
        accepted = "True, False or None" if allow_none else "True or False"
        raise TypeError(f"`{name}` must be {accepted}, got {value!r}")
    return value


def check_state_version(state_dict: dict[str, Any], who: str, known: int) -> None:
    """Warn when a checkpoint's callback state was written by a newer release: the keys it added are ignored."""
    version = state_dict.get("version", known)
    if isinstance(version, int) and version > known:
        warnings.warn(
            f"{who}: the checkpoint's state was written by a newer lightning-superconv (state version {version}, this "
            f"release reads up to {known}); what it added is ignored.",
            RuntimeWarning,
            stacklevel=3,
        )
