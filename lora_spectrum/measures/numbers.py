"""How the measures write numbers: JSON-safe floats (None, never NaN) and percentages, and the progress callback."""

from __future__ import annotations

import math
from collections.abc import Callable

Progress = Callable[[int, int, str], None]  # progress(done, total, label)


def rounded(x: float | None, digits: int = 6) -> float | None:
    """``x`` to ``digits`` significant digits; None when it is None, NaN or infinite."""
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")


def percent(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def number(v) -> float | None:
    """``v`` as a float when it is a finite number (never a bool), else None."""
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")
    return float(v) if ok else None
