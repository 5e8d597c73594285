"""The side-by-side view: render the plan with a progress bar and a cancel button, draw the grid with captions,
errors in place and swap times, offer downloads and closer looks (synchronised zoom, two-epoch overlay)."""

from __future__ import annotations

import streamlit as st
from PIL import Image, ImageChops

from lora_spectrum.errors import BusyError, LoraSpectrumError
from lora_spectrum.grid_files import cell_filename, output_files
from lora_spectrum.plan import make_plan
from lora_spectrum.render_cache import RenderCache
from lora_spectrum.runs import run_plan
from lora_spectrum.ui.controls import Controls, caption_for
from lora_spectrum.ui.grid import draw_grid
from lora_spectrum.ui.history import history
from lora_spectrum.ui.language import _, active, column_name, error_text, translator
from lora_spectrum.ui.ship import report_html
from lora_spectrum.ui.state import RESULT
from lora_spectrum.ui.text import md_escape


def run_render(engine, catalog, settings, controls: Controls) -> None:
    """Validate, render with progress, store the result in the session (kept when cancelled).

    Cancel works the Streamlit way: a click reruns the script, and this run stops at its next Streamlit call,
    which the per-step progress update makes at most one denoising step away. Finished cells stay in the session.
    """
    try:
        with active():  # a bad value is named in the session's language
            plan = make_plan(engine.defaults, controls.columns, controls.seeds, controls.strengths, [controls.prompt],
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


def downloads(state: dict, settings, catalog) -> None:
    cells, files = state["cells"], state["downloads"]
    cols = st.columns(5)
    cols[0].download_button(_("Grid PNG"), files["grid"], "grid.png", "image/png", key="dl_grid")
    cols[1].download_button(_("Manifest"), files["manifest"], "manifest.json", "application/json",
                            key="dl_manifest")
    cols[2].download_button(_("All cells (zip)"), files["zip"], "cells.zip", "application/zip", key="dl_zip")
    # The report is written on click, outside this script run: it takes the session's language now.
    tr = translator()
    cols[3].download_button(_("Report (HTML)"), lambda: report_html(settings, catalog, state, tr),
                            "report.html", "text/html", key="dl_report",
                            help=_("one self-contained file: the grid, every cell full size with its parameters, "
                                   "settings, times, the series' measures and blind ranking; opens anywhere, also "
                                   "on a phone"))
    rendered = [c for c in cells if c.png is not None]
    if rendered:
        with cols[4].popover(_("One cell")):
            names = [_("{label}, seed {seed}, strength {strength}").format(
                label=column_name(state["plan"].columns[c.column]), seed=c.seed, strength=f"{c.strength:g}")
                for c in rendered]
            pick = st.selectbox(_("Cell"), range(len(rendered)), key="dl_cell_pick", format_func=names.__getitem__)
            c = rendered[pick]
            st.download_button(_("Download PNG (with parameters)"), c.png, cell_filename(c), "image/png",
                               key="dl_cell")


def closer_looks(state: dict) -> None:
    plan, cells = state["plan"], state["cells"]
    done = [c for c in cells if c.image is not None]
    if not done:
        return
    rows = plan.rows
    zoom_tab, overlay_tab = st.tabs([_("Synchronised zoom"), _("Overlay two epochs")])
    with zoom_tab:
        row_names = [_("seed {seed}, strength {strength}").format(seed=r[1], strength=f"{r[2]:g}") for r in rows]
        ri = st.selectbox(_("Row"), range(len(rows)), key="zoom_row", format_func=row_names.__getitem__)
        prompt, seed, strength = rows[ri]
        c1, c2, c3 = st.columns(3)
        fx = c1.slider(_("Centre x (%)"), 0, 100, 50, key="zoom_x")
        fy = c2.slider(_("Centre y (%)"), 0, 100, 50, key="zoom_y")
        factor = c3.select_slider(_("Zoom"), [2, 3, 4, 6, 8], value=4, key="zoom_f")
        row_cells = [c for c in done if c.prompt == prompt and c.seed == seed and (c.file is None or
                                                                                  c.strength == strength)]
        crops = [zoom(c.image, fx / 100, fy / 100, factor) for c in row_cells]
        if crops:
            st.image(crops, caption=[caption_for(column_name(plan.columns[c.column]), None, seed) for c in row_cells],
                     width=220)
    with overlay_tab:
        labels = sorted({(c.column, c.label) for c in done})
        if len(labels) < 2:
            st.caption(_("Render at least two columns to overlay them."))
            return
        names = [lab for _column, lab in labels]
        a, b = st.columns(2)
        called = {lab: column_name(plan.columns[column]) for column, lab in labels}
        first = a.selectbox(_("Epoch A"), names, index=0, key="ov_a", format_func=called.__getitem__)
        second = b.selectbox(_("Epoch B"), names, index=len(names) - 1, key="ov_b", format_func=called.__getitem__)
        seed = st.selectbox(_("Seed"), plan.seeds, key="ov_seed")
        mix = st.slider(_("A ← blend → B"), 0.0, 1.0, 0.5, 0.05, key="ov_mix")
        diff = st.toggle(_("Show the difference instead"), key="ov_diff")
        pick = {c.label: c for c in done if c.seed == seed and c.strength in (plan.strengths[0], 0.0)}
        if first in pick and second in pick:
            ia, ib = pick[first].image, pick[second].image
            shown = amplified_difference(ia, ib) if diff else Image.blend(ia, ib, mix)
            st.image(shown, caption=md_escape(_("{first} vs {second}, seed {seed}").format(
                first=called[first], second=called[second], seed=seed)), width=420)


def zoom(image: Image.Image, cx: float, cy: float, factor: int) -> Image.Image:
    """The same crop of every image: a window 1/factor of the size around (cx, cy), enlarged."""
    w, h = image.size
    cw, ch = max(1, w // factor), max(1, h // factor)
    left = min(max(0, int(cx * w - cw / 2)), w - cw)
    top = min(max(0, int(cy * h - ch / 2)), h - ch)
    return image.crop((left, top, left + cw, top + ch)).resize((cw * factor, ch * factor), Image.NEAREST)


def amplified_difference(a: Image.Image, b: Image.Image, gain: float = 4.0) -> Image.Image:
    return ImageChops.difference(a.convert("RGB"), b.convert("RGB")).point(lambda v: min(255, int(v * gain)))


def compare_view(settings, choice, catalog, controls: Controls | None) -> None:
    engine = choice.engine
    left, right = st.columns([1, 1])
    go = left.button(_("Render"), type="primary", disabled=controls is None or not controls.columns, key="render")
    if right.button(_("Cancel"), key="cancel",
                    help=_("stop the render (within one denoising step); finished cells stay")):
        state = st.session_state.get(RESULT)
        if state and state.get("status") == "running":
            state["status"] = "cancelled"
    if go and controls is not None:
        run_render(engine, catalog, settings, controls)
    state = st.session_state.get(RESULT)
    if not state or not state.get("cells"):
        if controls is not None and not controls.columns:
            st.info(_("Choose at least one epoch (or the base column) in the sidebar."))
        else:
            st.caption(_("Pick epochs in the sidebar and press Render."))
        return
    draw_grid(state)
    if state.get("downloads"):
        downloads(state, settings, catalog)
    with st.expander(_("Closer looks"), expanded=False):
        closer_looks(state)
