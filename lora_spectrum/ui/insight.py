"""The Insight view: weight-space curves, image measures of the last grid, the training loss with a marker per
epoch file, and a suggested epoch with its reason. Numbers come from ``measures``; this file only draws them."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from lora_spectrum import measures
from lora_spectrum.errors import LoraSpectrumError
from lora_spectrum.language import N_
from lora_spectrum.ui.language import _, active, error_text, translator
from lora_spectrum.ui.probe import probe_controls, probe_folder, probe_results
from lora_spectrum.ui.ship import ship_panel
from lora_spectrum.ui.state import RESULT
from lora_spectrum.ui.text import md_escape


@st.cache_resource
def _weight_cache() -> measures.WeightCache:
    """Weight measures keyed by file hash, shared by every session (the cache is thread-safe)."""
    return measures.WeightCache()


def _open_in_compare() -> None:
    st.session_state["epochs"] = [st.session_state["insight_pick"]]
    st.session_state["view"] = "Compare"


def _line(df: pd.DataFrame, y: str, title: str, fmt: str = ".3g"):
    """``y`` (a column named with ``N_``, shown translated) against epoch, titled ``title`` (translated)."""
    return (alt.Chart(df, title=title).mark_line(point=True)
            .encode(x=alt.X("epoch:Q", title=_("epoch")), y=alt.Y(f"{y}:Q", title=title),
                    tooltip=[alt.Tooltip("epoch:Q", title=_("epoch")),
                             alt.Tooltip(f"{y}:Q", format=fmt, title=_(y))])
            .properties(height=220))


def _loss_chart(loss: dict, axis: str, tags: list[str], title: str):
    """Lines of ``tags`` against ``axis`` (step or epoch, named with ``N_``) with a dashed rule at each epoch file;
    None if empty."""
    points = pd.DataFrame([{axis: s, "loss": v, "tag": tag} for tag in tags for s, v in loss["series"][tag]])
    if points.empty:
        return None
    layers = [alt.Chart(points).mark_line(point=axis == "epoch").encode(
        x=alt.X(f"{axis}:Q", title=_(axis)), y=alt.Y("loss:Q", title=_("loss")),
        color=alt.Color("tag:N", title=_("tag")))]
    markers = pd.DataFrame([m for m in loss.get("markers", []) if m.get(axis) is not None])
    if not markers.empty:
        layers.append(alt.Chart(markers).mark_rule(strokeDash=[4, 3], color="gray")
                      .encode(x=alt.X(f"{axis}:Q", title=_(axis)),
                              tooltip=[alt.Tooltip("file", title=_("file")), alt.Tooltip("epoch", title=_("epoch")),
                                       alt.Tooltip("step", title=_("step"))]))
    return alt.layer(*layers).properties(title=title, height=260)


def insight_view(settings, choice, catalog, controls) -> None:
    series = controls.series if controls is not None else None
    if series is None:
        st.info(_("No usable series in the loras folder."))
        return
    st.subheader(_("Judge the epochs of {series}").format(series=series))
    probe_controls(settings, choice, catalog, series, controls.batch_epochs)
    result_state = st.session_state.get(RESULT) or {}
    grid = result_state.get("out_dir")
    probe = probe_folder(series)
    logs = choice.logs_folder(settings)
    # Measured once per (folder contents, series, log folder, last grid, probe run, language: the notes and the
    # reason are written in it) and kept for this session.
    key = (catalog.generation, series, str(logs), grid, probe, translator().code)
    cached = st.session_state.get("insight_cache")
    if cached and cached[0] == key:
        result = cached[1]
    else:
        try:
            with st.spinner(_("Measuring the epochs...")), active():
                result = measures.series_insight(catalog, series=series, logs=logs, grid=grid,
                                                 cache=_weight_cache(), lenient=True,
                                                 clip_model=choice.clip_model(settings),
                                                 allow_download=not settings.local_files_only, probe=probe)
        except LoraSpectrumError as exc:
            st.error(md_escape(error_text(exc)))
            return
        st.session_state["insight_cache"] = (key, result)
    epochs = result["epochs"]
    for note in result.get("notes", []):
        st.caption(md_escape(note))
    # 1. The suggestion, with the numbers behind it, and what the probe measured.
    if result.get("suggested_epoch") is not None or result.get("suggested_file"):
        st.success(md_escape(result["reason"]))
    if result.get("probe"):
        probe_results(result["probe"], result["suggestion"])
    else:
        st.caption(_("Run a probe to weigh each epoch's style against how well it still follows the prompt; "
                     "until then the suggestion reads the weight curves only."))
    st.subheader(_("How {series} grew").format(series=series))
    # Columns named with N_: the table and the tooltips show them translated, the code reads them as they are.
    df = pd.DataFrame([{N_("epoch"): e["epoch"], N_("file"): e["file"], N_("weight norm"): e["weight_norm"],
                        N_("change from previous"): e["relative_change"], N_("cosine to last"): e["cosine_to_last"]}
                       for e in epochs if e["epoch"] is not None])
    # 2. Weight-space curves.
    if not df.empty:
        cols = st.columns(3)
        cols[0].altair_chart(_line(df, "weight norm", _("update norm")), width="stretch")
        cols[1].altair_chart(_line(df, "change from previous", _("change from previous epoch"), ".1%"),
                             width="stretch")
        cols[2].altair_chart(_line(df, "cosine to last", _("cosine to last epoch")), width="stretch")
    # 3. Image measures of the last rendered grid.
    image = result.get("image")
    if image and image.get("rows"):
        rows = pd.DataFrame([{"epoch": r["epoch"], N_("from base"): r["distance_from_base"],
                              N_("seed spread"): r["seed_spread"], N_("change"): r["change_from_previous"]}
                             for r in image["rows"] if r["epoch"] is not None])
        st.caption(_("Image measures of the last grid, measure used: {measure} ({description})").format(
            measure=image["measure"], description=image.get("measure_description", "")))
        if image.get("clip", {}).get("skipped"):
            st.caption(_("CLIP skipped: {reason}").format(reason=image["clip"].get("reason", "")))
        if not rows.empty:
            cols = st.columns(3)
            cols[0].altair_chart(_line(rows, "from base", _("distance from base")), width="stretch")
            cols[1].altair_chart(_line(rows, "seed spread", _("spread across seeds")), width="stretch")
            cols[2].altair_chart(_line(rows, "change", _("change from previous epoch")), width="stretch")
    else:
        st.caption(_("Render a grid with the base column in the Compare view to add image measures."))
    # 4. The training loss against step and against epoch (per-epoch tags count epochs, not steps), with a
    #    marker for each epoch file on both.
    loss = result.get("loss")
    if loss and loss.get("series"):
        per_epoch = set(loss.get("per_epoch", []))
        cols = st.columns(2)
        for col, axis, tags, title in ((cols[0], N_("step"), [t for t in loss["series"] if t not in per_epoch],
                                        _("Training loss by step ({folder})").format(folder=logs)),
                                       (cols[1], N_("epoch"), [t for t in loss["series"] if t in per_epoch],
                                        _("Training loss per epoch"))):
            chart = _loss_chart(loss, axis, tags, title)
            if chart is not None:
                col.altair_chart(chart, width="stretch")
    elif logs is None:
        st.caption(_("No training log: set `logs:` in the config or put TensorBoard event files in <loras>/logs."))
    # 5. The table, and a way back to the side-by-side view for any epoch.
    if not df.empty:
        st.dataframe(df.rename(columns=_), hide_index=True, width="stretch")
        names = {f: _("epoch {epoch}").format(epoch=n) for f, n in zip(df["file"], df["epoch"], strict=True)}
        st.selectbox(_("Open an epoch in the side-by-side view"), df["file"].tolist(), key="insight_pick",
                     format_func=names.__getitem__)
        st.button(_("Open in Compare"), key="insight_open", on_click=_open_in_compare)
    # 6. Ship the suggested epoch (or another) with its evidence; the blind ranking adds its own in Rank.
    ship_panel(settings, choice, catalog, series, default_epoch=result.get("suggested_epoch"), insight=result)
