"""Text from files is shown as plain text: nothing a file says becomes Markdown or HTML."""

from __future__ import annotations


def test_md_escape_leaves_no_markdown_or_html_active():
    from lora_spectrum.ui.text import md_escape

    nasty = "![x](https://e.x/p.png) **b** <img src=x> `c` [l](http://x) # h"
    escaped = md_escape(nasty)
    for active in ("![", "](", "**", "`c`", "[l]"):
        assert active not in escaped
    assert "\\<img" in escaped  # Streamlit never renders raw HTML in markdown; the bracket is escaped too
    assert escaped.replace("\\", "") == nasty
