"""The grid on screen: epochs as columns or rows and seeds, strengths or prompts the other way (the person's choice,
display only), each cell with its caption, its error in place, and each column's swap time; small renders enlarged
by whole multiples (nearest-neighbour), and the full-size viewer over it. Reads a render result; renders nothing."""

from __future__ import annotations

import io

import streamlit as st
from PIL import Image

from lora_spectrum.render.plan import cell_at, index_cells
from lora_spectrum.ui.grid_layout import (
    EPOCHS_AS,
    GAP,
    GRID_WIDTH,
    OTHER_AXES,
    Layout,
    Spot,
    column_room,
    enlarge,
    whole_factor,
)
from lora_spectrum.ui.language import _, active
from lora_spectrum.ui.lightbox import GRID_KEY, viewer_html
from lora_spectrum.ui.text import md_escape

# The px width of the row labels' column: short names (epoch 20, seed 1) or whole prompts.
LABEL_WIDTH = {"short": 110, "prompt": 220}
MIN_CELL = 120  # px: the least an image's column is given, for its caption
VIEWER_MB = 24  # PNGs up to this size are carried by the viewer by itself; beyond it, on request


def draw_grid(state: dict) -> None:
    plan, cells = state["plan"], state["cells"]
    if state.get("reopened"):
        st.info(md_escape(_("Reopened from History: {when}; nothing was rendered again.").format(
            when=state["reopened"])))
    if state.get("status") == "running":
        st.info(_("The last render was interrupted; showing the cells it finished."))
    elif state.get("status") == "cancelled":
        st.info(_("Cancelled; showing the cells that finished."))
    # 1. The person's layout (display only: nothing renders again).
    epochs_as, other = axes_choice()
    with active():  # the layout's words (labels, headings) in the session's language
        _draw(plan, cells, Layout(plan, other), epochs_as)


def _viewer_wanted(cells) -> bool:
    """Whether the page carries the full-size viewer: it holds every PNG once more, sent on each rerun, so a grid
    whose PNGs weigh more than ``VIEWER_MB`` gets it only when the person turns it on (and the page says how much)."""
    mb = sum(len(c.png) for c in cells if c.png is not None) / 2**20
    if mb <= VIEWER_MB:
        return True
    return st.toggle(_("Full-size viewer (sends {mb} MB more to the browser on each change)").format(mb=f"{mb:.0f}"),
                     value=False, key="grid_viewer")


def _draw(plan, cells, layout: Layout, epochs_as: str) -> None:
    index = index_cells(cells)
    # 2. How big each image is drawn: the largest whole multiple that fits its column.
    width, height = _render_size(plan, cells)
    weights, factor = _weights(layout, epochs_as, width, height)
    if factor > 1:
        st.caption(_("{width}×{height} px renders shown ×{factor}: each pixel repeated, never blurred").format(
            width=width, height=height, factor=factor))
    # 3. The viewer (its open button and keys; the overlay is hidden until an image is clicked), then the grid.
    order = [s for s in _drawn(layout, epochs_as) if getattr(_cell(layout, index, s), "png", None) is not None]
    viewer = viewer_html(layout, cells, order) if _viewer_wanted(cells) else ""
    st.html(_grid_style(factor > 1) + viewer, unsafe_allow_javascript=True)
    with st.container(key=GRID_KEY):
        for block in layout.blocks:
            _draw_block(layout, block, epochs_as, index, cells, weights, factor)


def _grid_style(pixelated: bool) -> str:
    """Captions and labels take their column's width (not the image's) and break only between label parts, never
    inside "seed 1"; enlarged images stay blocky even where the browser must shrink them to fit."""
    grid = f".st-key-{GRID_KEY}"
    return (f"<style>{grid} [data-testid='stImageCaption']{{width:auto!important;overflow-wrap:normal;"
            "text-align:left}"
            f"{grid} [data-testid='stImageContainer']{{width:100%}}"
            f"{grid} [data-testid='stMarkdownContainer'] p{{overflow-wrap:normal}}"
            + (f"{grid} img{{image-rendering:pixelated}}" if pixelated else "") + "</style>")


def axes_choice() -> tuple[str, str]:
    """The two small controls above the grid: epochs as columns or rows; seeds, strengths or prompts the other way."""
    st.session_state.setdefault("grid_epochs", EPOCHS_AS[0])
    st.session_state.setdefault("grid_other", OTHER_AXES[0])
    names = {"columns": _("columns"), "rows": _("rows"), "seeds": _("Seeds"), "strengths": _("Strengths"),
             "prompts": _("Prompts")}  # taken now: a format_func may run outside the script run
    left, right = st.columns([1, 2])
    epochs_as = left.segmented_control(_("Epochs as"), EPOCHS_AS, key="grid_epochs", format_func=names.__getitem__)
    other = right.segmented_control(_("Other axis"), OTHER_AXES, key="grid_other", format_func=names.__getitem__,
                                    help=_("what runs the other way; what is left over makes one block each"))
    return epochs_as or EPOCHS_AS[0], other or OTHER_AXES[0]  # a segmented control can be cleared


def _weights(layout: Layout, epochs_as: str, width: int, height: int) -> tuple[list[float], int]:
    """``st.columns`` weights of one row, in px of a grid ``GRID_WIDTH`` wide (its label, one per image, and what
    is left over when the images need less), and the whole enlargement of the images."""
    n = len(layout.plan.columns) if epochs_as == "columns" else len(layout.blocks[0].lines)
    label = float(LABEL_WIDTH["prompt" if epochs_as == "columns" and layout.other == "prompts" else "short"])
    room = column_room([label] + [(GRID_WIDTH - label) / n] * n, 1)
    factor = whole_factor(width, height, room)
    cell = min(room, max(width * factor, MIN_CELL) + GAP)  # a caption needs some room beside a small image
    rest = GRID_WIDTH - label - n * (cell + GAP)
    return [label] + [cell] * n + ([rest] if rest > GAP else []), factor


def _render_size(plan, cells) -> tuple[int, int]:
    for c in cells:
        if c.image is not None:
            return c.image.size
    return plan.sampling.width, plan.sampling.height


def _drawn(layout: Layout, epochs_as: str) -> list[Spot]:
    """Every spot in the order the grid draws it (block by block, row by row, left to right)."""
    return [s for block in layout.blocks for _item, spots in layout.table(block, epochs_as)[1] for s in spots]


def _cell(layout: Layout, index: dict, spot: Spot):
    line = layout.lines[spot.line]
    return cell_at(index, spot.column, layout.plan.columns[spot.column], line.prompt, line.seed, line.strength)


def _swap_caption(cells, column: int) -> str | None:
    swaps = [c.swap_seconds for c in cells if c.column == column and c.swap_seconds is not None]
    return _("swap {ms} ms").format(ms=f"{min(swaps) * 1000:.1f}") if swaps else None


def _column_head(where, layout: Layout, cells, column: int) -> None:
    where.markdown(f"**{md_escape(layout.column_name(column))}**")
    swap = _swap_caption(cells, column)
    if swap:
        where.caption(swap)


def _line_head(where, layout: Layout, line: int) -> None:
    name = layout.line_name(line)
    if layout.other == "prompts":
        where.caption(md_escape(name))  # a whole prompt, as plain text
    else:
        where.markdown(f"**{md_escape(name)}**")


def _draw_block(layout: Layout, block, epochs_as: str, index: dict, cells, weights: list[float], factor: int) -> None:
    heading = layout.heading(block)
    if heading:
        st.markdown(f"**{md_escape(heading)}**")
    header, rows = layout.table(block, epochs_as)
    cols = st.columns(weights)
    for i, item in enumerate(header):
        if epochs_as == "columns":
            _column_head(cols[i + 1], layout, cells, item)
        else:
            _line_head(cols[i + 1], layout, item)
    for item, spots in rows:
        cols = st.columns(weights, vertical_alignment="center")
        if epochs_as == "columns":
            _line_head(cols[0], layout, item)
        else:
            _column_head(cols[0], layout, cells, item)
        for i, spot in enumerate(spots):
            with cols[i + 1]:
                _draw_cell(layout, spot, _cell(layout, index, spot), factor)


def _draw_cell(layout: Layout, spot: Spot, c, factor: int) -> None:
    label = layout.label(spot)
    if c is not None and c.png is not None:
        if factor == 1:
            st.image(c.png, caption=md_escape(label), width=_png_width(c), alt=label)
        else:
            big = enlarge(c.image if c.image is not None else Image.open(io.BytesIO(c.png)), factor)
            st.image(big, caption=md_escape(label), width=big.width, output_format="PNG", alt=label)
    elif c is not None and c.error:
        st.error(md_escape(_("{label}: {error}").format(label=label, error=c.error)))
    else:
        st.caption(_("not rendered"))


def _png_width(c) -> int:
    if c.image is not None:
        return c.image.width
    with Image.open(io.BytesIO(c.png)) as im:
        return im.width
