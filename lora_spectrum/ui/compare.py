"""The side-by-side view: render the plan with a progress bar and a cancel button, say when the grid on screen is
not what the sidebar describes (what differs, Render), draw the grid, offer downloads named after the series,
epochs and time, and closer looks (synchronised zoom, two-epoch overlay) over the grid's own cells."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import streamlit as st
from PIL import Image, ImageChops

from lora_spectrum.errors import BusyError, LoraSpectrumError
from lora_spectrum.records.grid_files import cell_filename, output_files
from lora_spectrum.render.plan import make_plan
from lora_spectrum.render.render_cache import RenderCache
from lora_spectrum.render.runs import run_plan
from lora_spectrum.ui.controls import Controls, caption_for, differences, plan_series, show_in_sidebar, sidebar_values
from lora_spectrum.ui.grid import draw_grid
from lora_spectrum.ui.history import history
from lora_spectrum.ui.language import _, active, column_name, error_text, translator
from lora_spectrum.ui.ship import report_html
from lora_spectrum.ui.state import OPEN_RENDER, RESULT
from lora_spectrum.ui.text import md_escape


def run_render(engine, catalog, settings, controls: Controls) -> None:
    """Validate, render with progress, store the result in the session (kept when cancelled).

    Cancel works the Streamlit way: a click reruns the script, and this run stops at its next Streamlit call,
    which the per-step progress update makes at most one denoising step away. Finished cells stay in the session.
    """
    try:
        with active():  # a bad value is named in the session's language
            plan = make_plan(engine.defaults, controls.columns, controls.seeds, controls.strengths, controls.prompts,
                             controls.sampling)
    except LoraSpectrumError as exc:
        st.error(md_escape(error_text(exc)))
        return
    cache = RenderCache(settings.path(settings.cache_dir), settings.cache_max_mb)
    bar = st.progress(0.0, text=_("Waiting for the engine..."))
    state = {"plan": plan, "cells": [], "status": "running"}
    st.session_state[RESULT] = state
    counts = {"done": 0, "total": 1}
    # The words of the progress lines, taken once here (the callbacks only fill them in).
    words = {"cached": _("cached"), "failed": _("failed"), "seconds": _("{seconds} s"),
             "cell": _("{done}/{total}: {label}, seed {seed} ({what})"), "step": _("{label}: step {step}/{steps}")}

    def progress(done, total, cell):
        state["cells"].append(cell)
        counts.update(done=done, total=total)
        what = words["cached"] if cell.cached else (
            words["failed"] if cell.error else words["seconds"].format(seconds=f"{cell.seconds:.2f}"))
        bar.progress(done / total, text=words["cell"].format(done=done, total=total, label=cell.label,
                                                              seed=cell.seed, what=what))

    def step(i, n, label):
        bar.progress(counts["done"] / counts["total"], text=words["step"].format(label=label, step=i, steps=n))

    try:
        with active():  # the core's progress labels in the session's language
            cells = run_plan(engine, plan, catalog, cache, progress, on_step=step, mix=controls.batch_epochs)
    except BusyError as exc:
        bar.empty()
        st.warning(md_escape(error_text(exc)))
        state["status"] = "busy"
        return
    bar.empty()
    state["cells"] = cells
    state["status"] = "cancelled" if any(c.cancelled for c in cells) else "done"
    run = history(settings).save(plan, cells, engine.base_id, engine.family.name)  # kept for History
    state["out_dir"], state["run_id"] = str(run.folder), run.id
    state["downloads"] = output_files(run.folder)


def download_stem(state: dict) -> str:
    """The start of every file name a grid is downloaded under: series, epochs and when it was rendered (UTC),
    e.g. ``jimeng_e3-e24_2026-12-07_1910``."""
    plan = state["plan"]
    entries = [e for e in plan.columns if e is not None]
    series = plan_series(plan) or next((e.name.rsplit(".", 1)[0] for e in entries), "base")
    parts = [re.sub(r'[\\/:*?"<>|\s]+', "_", series).strip("_.") or "grid"]
    for letter, numbers in (("e", [e.epoch for e in entries if e.epoch is not None]),
                            ("s", [e.step for e in entries if e.epoch is None and e.step is not None])):
        if numbers:
            low, high = min(numbers), max(numbers)
            parts.append(f"{letter}{low}" if low == high else f"{letter}{low}-{letter}{high}")
    try:  # a run's id starts with when it was saved: YYYYmmdd-HHMMSS (UTC)
        when = datetime.strptime(str(state.get("run_id", ""))[:15], "%Y%m%d-%H%M%S")
    except ValueError:
        when = datetime.now(UTC)
    parts.append(f"{when:%Y-%m-%d_%H%M}")
    return "_".join(parts)


def downloads(state: dict, settings, catalog) -> None:
    cells, files = state["cells"], state["downloads"]
    stem = download_stem(state)
    cols = st.columns(5)
    cols[0].download_button(_("Grid PNG"), files["grid"], f"{stem}_grid.png", "image/png", key="dl_grid")
    cols[1].download_button(_("Manifest"), files["manifest"], f"{stem}_manifest.json", "application/json",
                            key="dl_manifest")
    cols[2].download_button(_("All cells (zip)"), files["zip"], f"{stem}_cells.zip", "application/zip",
                            key="dl_zip")
    # The report is written on click, outside this script run: it takes the session's language now.
    tr = translator()
    cols[3].download_button(_("Report (HTML)"), lambda: report_html(settings, catalog, state, tr),
                            f"{stem}_report.html", "text/html", key="dl_report",
                            help=_("one self-contained file: the grid, every cell full size with its parameters, "
                                   "settings, times, the series' measures and blind ranking; opens anywhere, also "
                                   "on a phone"))
    rendered = [c for c in cells if c.png is not None]
    if rendered:
        with cols[4].popover(_("One cell")):
            names = [_cell_name(state["plan"], c) for c in rendered]
            pick = st.selectbox(_("Cell"), range(len(rendered)), key="dl_cell_pick", format_func=names.__getitem__)
            c = rendered[pick]
            st.download_button(_("Download PNG (with parameters)"), c.png, cell_filename(c), "image/png",
                               key="dl_cell")


def _cell_name(plan, c) -> str:
    if c.file is None:
        return _("{label}, seed {seed}").format(label=column_name(plan.columns[c.column]), seed=c.seed)
    return _("{label}, seed {seed}, strength {strength}").format(
        label=column_name(plan.columns[c.column]), seed=c.seed, strength=f"{c.strength:g}")


Row = tuple[str, int, float | None]  # (prompt, seed, strength; None in a grid of the base column only)


def grid_rows(plan, done: list) -> list[Row]:
    """The rows of the grid that have images, taken from its cells (never from the sidebar), in the grid's order:
    prompt, strength, seed."""
    lora = [c for c in done if c.file is not None]
    found = {(c.prompt, c.seed, c.strength) for c in lora} or {(c.prompt, c.seed, None) for c in done}

    def where(values: list, value) -> tuple:
        return (0, values.index(value)) if value in values else (1, value if value is not None else 0)

    return sorted(found, key=lambda r: (where(plan.prompts, r[0]), where(plan.strengths, r[2]),
                                        where(plan.seeds, r[1])))


def row_name(plan, row: Row) -> str:
    prompt, seed, strength = row
    parts = [f"“{prompt if len(prompt) <= 40 else prompt[:39] + '…'}”"] if len(plan.prompts) > 1 else []
    if strength is not None:
        parts.append(_("strength {strength}").format(strength=f"{strength:g}"))
    parts.append(_("seed {seed}").format(seed=seed))
    return " · ".join(parts)


def row_cells(done: list, row: Row) -> list:
    """The cells of ``row`` in column order: each epoch's at the row's strength, the base's at its seed."""
    prompt, seed, strength = row
    return sorted((c for c in done if c.prompt == prompt and c.seed == seed and
                   (c.file is None or strength is None or c.strength == strength)), key=lambda c: c.column)


def closer_looks(state: dict) -> None:
    """Zoom and overlay over the grid's own cells: the rows offered are those it has images for, and every crop
    is captioned with the column, strength and seed it was cut from."""
    plan, cells = state["plan"], state["cells"]
    done = [c for c in cells if c.image is not None]
    if not done:
        return
    rows = grid_rows(plan, done)
    names = {r: row_name(plan, r) for r in rows}  # taken now: a format_func may run outside the run
    grid_id = state.get("run_id") or "live"  # a new grid starts its pickers afresh
    zoom_tab, overlay_tab = st.tabs([_("Synchronised zoom"), _("Overlay two epochs")])
    with zoom_tab:
        row = st.selectbox(_("Row"), rows, key=f"zoom_row_{grid_id}", format_func=names.__getitem__)
        c1, c2, c3 = st.columns(3)
        fx = c1.slider(_("Centre x (%)"), 0, 100, 50, key="zoom_x")
        fy = c2.slider(_("Centre y (%)"), 0, 100, 50, key="zoom_y")
        factor = c3.select_slider(_("Zoom"), [2, 3, 4, 6, 8], value=4, key="zoom_f")
        shown = row_cells(done, row)
        if shown:
            st.image([zoom(c.image, fx / 100, fy / 100, factor) for c in shown],
                     caption=[caption_for(column_name(plan.columns[c.column]), None if c.file is None else c.strength,
                                          c.seed) for c in shown], width=220)
    with overlay_tab:
        labels = sorted({(c.column, c.label) for c in done})
        if len(labels) < 2:
            st.caption(_("Render at least two columns to overlay them."))
            return
        columns = [column for column, _label in labels]
        a, b = st.columns(2)
        called = {column: column_name(plan.columns[column]) for column in columns}
        first = a.selectbox(_("Epoch A"), columns, index=0, key=f"ov_a_{grid_id}", format_func=called.__getitem__)
        second = b.selectbox(_("Epoch B"), columns, index=len(columns) - 1, key=f"ov_b_{grid_id}",
                             format_func=called.__getitem__)
        row = st.selectbox(_("Row"), rows, key=f"ov_row_{grid_id}", format_func=names.__getitem__)
        mix = st.slider(_("A ← blend → B"), 0.0, 1.0, 0.5, 0.05, key="ov_mix")
        diff = st.toggle(_("Show the difference instead"), key="ov_diff")
        pick = {c.column: c for c in row_cells(done, row)}
        if first in pick and second in pick:
            ia, ib = pick[first].image, pick[second].image
            shown = amplified_difference(ia, ib) if diff else Image.blend(ia, ib, mix)
            st.image(shown, caption=md_escape(_("{first} vs {second}, {row}").format(
                first=called[first], second=called[second], row=names[row])), width=420)
        else:
            st.caption(_("One of the two has no image in this row."))


def zoom(image: Image.Image, cx: float, cy: float, factor: int) -> Image.Image:
    """The same crop of every image: a window 1/factor of the size around (cx, cy), enlarged."""
    w, h = image.size
    cw, ch = max(1, w // factor), max(1, h // factor)
    left = min(max(0, int(cx * w - cw / 2)), w - cw)
    top = min(max(0, int(cy * h - ch / 2)), h - ch)
    return image.crop((left, top, left + cw, top + ch)).resize((cw * factor, ch * factor), Image.NEAREST)


def amplified_difference(a: Image.Image, b: Image.Image, gain: float = 4.0) -> Image.Image:
    return ImageChops.difference(a.convert("RGB"), b.convert("RGB")).point(lambda v: min(255, int(v * gain)))


def _render_requested() -> None:
    st.session_state[OPEN_RENDER] = True


def stale_marker(state: dict, controls: Controls) -> None:
    """Above a grid that is not what the sidebar describes: what differs, in words, with Render (what the sidebar
    says) and a way to set the sidebar back to the grid."""
    plan = state["plan"]
    changed = differences(plan, controls)
    if not changed:
        return
    lines = [_("**This grid is not what the sidebar says.** Render it, or set the sidebar back to the grid:")]
    lines += [md_escape(_("{what}: the grid has {grid}, the sidebar {sidebar}").format(what=what, grid=grid,
                                                                                      sidebar=sidebar))
              for what, grid, sidebar in changed]
    with st.container(border=True, key="stale_marker"):
        st.warning("  \n".join(lines))
        left, right = st.columns([1, 2])
        left.button(_("Render"), type="primary", key="render_stale", on_click=_render_requested,
                    disabled=not controls.columns, help=_("render what the sidebar says"))
        right.button(_("Set the sidebar to this grid"), key="stale_to_sidebar", on_click=show_in_sidebar,
                     args=(sidebar_values(plan),), help=_("the sidebar shows this grid's prompt, seeds, strengths, "
                                                           "epochs, base column and sampling again"))


def compare_view(settings, choice, catalog, controls: Controls | None) -> None:
    engine = choice.engine
    left, right = st.columns([1, 1])
    go = left.button(_("Render"), type="primary", disabled=controls is None or not controls.columns, key="render")
    if right.button(_("Cancel"), key="cancel",
                    help=_("stop the render (within one denoising step); finished cells stay")):
        state = st.session_state.get(RESULT)
        if state and state.get("status") == "running":
            state["status"] = "cancelled"
    # An Open path (History, Insight, a probe, Rank) or the stale marker's Render asked for this render.
    requested = st.session_state.pop(OPEN_RENDER, False)
    if (go or requested) and controls is not None and controls.columns:
        run_render(engine, catalog, settings, controls)
    state = st.session_state.get(RESULT)
    if not state or not state.get("cells"):
        if controls is not None and not controls.columns:
            st.info(_("Choose at least one epoch (or the base column) in the sidebar."))
        else:
            st.caption(_("Pick epochs in the sidebar and press Render."))
        return
    if controls is not None:
        stale_marker(state, controls)
    draw_grid(state)
    if state.get("downloads"):
        downloads(state, settings, catalog)
    with st.expander(_("Closer looks"), expanded=False):
        closer_looks(state)
