"""What the bench tests ask of a figure."""

from __future__ import annotations


def positive(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0
