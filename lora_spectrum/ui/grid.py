"""The grid on screen: one column per epoch (and the base), one row per prompt, seed and strength, each cell with
its caption, its error in place, and each column's swap time. Reads a render result; renders nothing."""

from __future__ import annotations

import streamlit as st

from lora_spectrum.plan import cell_at, index_cells
from lora_spectrum.ui.controls import caption_for
from lora_spectrum.ui.language import _, column_name
from lora_spectrum.ui.text import md_escape


def draw_grid(state: dict) -> None:
    plan, cells = state["plan"], state["cells"]
    if state.get("reopened"):
        st.info(md_escape(_("Reopened from History: {when}; nothing was rendered again.").format(
            when=state["reopened"])))
    if state.get("status") == "running":
        st.info(_("The last render was interrupted; showing the cells it finished."))
    elif state.get("status") == "cancelled":
        st.info(_("Cancelled; showing the cells that finished."))
    index = index_cells(cells)
    # Header: one column per epoch, with the time its swap took.
    cols = st.columns(len(plan.columns))
    for ci, entry in enumerate(plan.columns):
        swaps = [c.swap_seconds for c in cells if c.column == ci and c.swap_seconds is not None]
        cols[ci].markdown(f"**{md_escape(column_name(entry))}**")
        if swaps:
            cols[ci].caption(_("swap {ms} ms").format(ms=f"{min(swaps) * 1000:.1f}"))
    for prompt, seed, strength in plan.rows:
        cols = st.columns(len(plan.columns))
        for ci, entry in enumerate(plan.columns):
            c = cell_at(index, ci, entry, prompt, seed, strength)
            with cols[ci]:
                if c is not None and c.png is not None:
                    st.image(c.png, caption=caption_for(column_name(entry), None if entry is None else strength,
                                                        seed), width="stretch")
                elif c is not None and c.error:
                    st.error(md_escape(_("{label}, seed {seed}: {error}").format(label=column_name(entry), seed=seed,
                                                                                  error=c.error)))
                else:
                    st.caption(_("not rendered"))
