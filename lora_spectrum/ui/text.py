"""Showing text that came from files (names, metadata, tags) as plain text, never as Markdown or HTML."""

from __future__ import annotations

import re

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~:$])")


def md_escape(text: str) -> str:
    """Escape Markdown so that a caption or label shows ``text`` literally."""
    return _MD_SPECIAL.sub(r"\\\1", str(text)).replace("\n", " ")
