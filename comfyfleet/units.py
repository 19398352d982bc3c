"""Sizes and numbers as people read and write them: one formatter for every message, table and
report, and one check for every numeric option (command line, flow parameter, settings)."""

from __future__ import annotations

import math


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'; used in every message that states a size."""
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    value = float(n)
    for unit in units:
        if abs(value) < 1024 or unit == units[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def number_problem(value: float, *, minimum: float | None, inclusive: bool) -> str | None:
    """Why ``value`` is refused ("must be >= 1, got 0"), or ``None`` when it is fine.

    ``nan`` and ``inf`` are refused first: ``float()`` accepts them and ``nan`` compares false
    with everything, so a bare range check would let it through. Callers add the option's name
    and raise their own error (``ConfigError``, ``argparse.ArgumentTypeError``)."""
    if not math.isfinite(value):
        return f"must be a finite number, got {value}"
    if minimum is None or value > minimum or (value == minimum and inclusive):
        return None
    relation = ">=" if inclusive else ">"
    return f"must be {relation} {minimum:g}, got {value:g}"


def parse_number(
    text: str, kind: type[int] | type[float], *, minimum: float | None, inclusive: bool
) -> int | float:
    """``text`` as ``kind`` within the range; ``ValueError`` with a reader's reason otherwise."""
    try:
        value = kind(text)
    except ValueError:
        expected = "an integer" if kind is int else "a number"
        raise ValueError(f"expected {expected}, got {text!r}") from None
    problem = number_problem(value, minimum=minimum, inclusive=inclusive)
    if problem is not None:
        raise ValueError(problem)
    return value
