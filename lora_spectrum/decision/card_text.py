"""Values from files as card text: inline plain text (no markup can come from a file), fenced code blocks, numbers.
Shared by the model card's sections."""

from __future__ import annotations

import re

from lora_spectrum.errors import shorten

VALUE_LIMIT = 200  # characters of one metadata value shown in the card
_MARKUP = re.compile(r"([\\`*_\[\]#!|~])")  # with [ ] escaped, ( ) and { } open nothing


def text(value, limit: int | None = VALUE_LIMIT) -> str:
    """``value`` as inline plain text: one line, cut to ``limit``, Markdown punctuation backslash-escaped and
    ``& < >`` as HTML entities (so no tag, link, image or emphasis can come from a file)."""
    line = shorten(str(value), limit) if limit else " ".join(str(value).split())
    line = line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MARKUP.sub(r"\\\1", line)


def code_block(body: str, lang: str = "") -> str:
    """A fenced code block holding ``body`` literally: the fence is longer than any backtick run inside."""
    runs = [len(m) for m in re.findall(r"`+", body)]
    fence = "`" * max(3, max(runs, default=0) + 1)
    return f"{fence}{lang}\n{body}\n{fence}"


def number(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return text(value)
    return str(value) if isinstance(value, int) else f"{value:.4g}"
