"""Showing text that came from files (names, metadata, tags) as plain text, never as Markdown or HTML; tables
without a raw ``None``; chart titles that wrap instead of being cut."""

from __future__ import annotations

import math
import re

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~:$])")


def md_escape(text: str) -> str:
    """Escape Markdown so that a caption or label shows ``text`` literally."""
    return _MD_SPECIAL.sub(r"\\\1", str(text)).replace("\n", " ")


def shown_value(value) -> str:
    """One table cell as shown: "—" where a value is missing, numbers to four significant digits."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def no_none(df):
    """A table as shown: a missing value reads "—", never a raw ``None`` or ``nan`` (the data stays numbers, for
    sorting)."""
    return df.style.format(shown_value)


def titled(col, title: str, chart) -> None:
    """A chart under its title in Markdown, which wraps with the column where a chart's own title is cut; the
    title is also the chart's description (what a screen reader, and the tests, find it by)."""
    col.markdown(f"**{md_escape(title)}**")
    col.altair_chart(chart.properties(description=title), width="stretch")
