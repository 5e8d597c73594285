"""The Insight view: the series' verdict (its pick and reason, the style/fidelity front, the epochs the measures
cannot tell apart, how sure, what evidence is missing) at the person's style/fidelity preference, the probe (run by
itself with ``auto_probe``), weight-space curves, image measures of the last grid and the training loss with a
marker per epoch file. Numbers and the verdict come from ``measures``; this file only draws them."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from lora_spectrum import measures
from lora_spectrum.decision.votes import series_ratings
from lora_spectrum.errors import LoraSpectrumError
from lora_spectrum.language import N_
from lora_spectrum.measures.columns import MEASURES
from lora_spectrum.measures.verdict import DEFAULT_PREFERENCE, PREFERENCES, decide
from lora_spectrum.ui.controls import show_in_sidebar
from lora_spectrum.ui.language import _, active, error_text, translator
from lora_spectrum.ui.live import live_panel, live_switch
from lora_spectrum.ui.probe import probe_controls, probe_folder, probe_results
from lora_spectrum.ui.ship import ship_panel
from lora_spectrum.ui.state import RESULT
from lora_spectrum.ui.text import md_escape, no_none, titled

JUDGED = ("measures", "votes")  # the verdict's states with a pick
CACHE = "insight_cache"  # (measured inputs, series_insight's result, (preference, votes) its verdict was made with)
PREFERENCE_NAMES = {"fidelity": N_("fidelity first"), "balanced": N_("balanced"), "style": N_("style first")}
# The verdict's ``missing`` evidence as shown (the verdict names it in English).
MISSING_NAMES = {"probe": N_("a probe"), "votes": N_("blind votes (Rank)"), "references": N_("style references"),
                 "validation loss": N_("a validation loss in the training log")}


@st.cache_resource
def _weight_cache() -> measures.WeightCache:
    """Weight measures keyed by file hash, shared by every session (the cache is thread-safe)."""
    return measures.WeightCache()


def _open_in_compare(series: str) -> None:
    """Open in Compare's callback: the sidebar's epochs become this one (prompt, seeds and the rest stay), and
    Compare renders what the sidebar then says."""
    show_in_sidebar({"series": series, "epochs": [st.session_state["insight_pick"]]}, render=True)
    st.session_state["view"] = "Compare"


def _line(df: pd.DataFrame, y: str, title: str, fmt: str = ".3g", by: str | None = None):
    """``y`` (a column named with ``N_``, shown translated) against epoch; ``by``: one line per value of that
    column (the strength), never one line zig-zagging through them. ``title`` is drawn above it (``titled``)."""
    tooltip = [alt.Tooltip("epoch:Q", title=_("epoch")), alt.Tooltip(f"{y}:Q", format=fmt, title=_(y))]
    encoding = {"x": alt.X("epoch:Q", title=_("epoch")), "y": alt.Y(f"{y}:Q", title=_(y))}
    if by is not None:
        encoding["color"] = alt.Color(f"{by}:N", title=_(by))
        tooltip.append(alt.Tooltip(f"{by}:N", title=_(by)))
    return (alt.Chart(df).mark_line(point=True).encode(**encoding, tooltip=tooltip)
            .properties(height=220, description=title))


def _loss_chart(loss: dict, axis: str, tags: list[str], title: str):
    """Lines of ``tags`` against ``axis`` (step or epoch, named with ``N_``) with a dashed rule at each epoch file;
    None if empty. ``title`` is drawn above it (``titled``)."""
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
    return alt.layer(*layers).properties(description=title, height=260)


def preference_key(series: str) -> str:
    """The session state key of ``series``' style/fidelity preference (the Insight control's own key)."""
    return f"preference_{series}"


def preference(series: str) -> str:
    """This session's style/fidelity preference for ``series``: balanced until the person changes it."""
    return st.session_state.get(preference_key(series)) or DEFAULT_PREFERENCE


def _preference_control(series: str) -> str:
    """Fidelity first, balanced or style first, kept per series for the whole session (Rank reads it too)."""
    names = {p: _(PREFERENCE_NAMES[p]) for p in PREFERENCES}  # taken now: a format_func may run outside the run
    st.segmented_control(_("Weigh style against prompt fidelity"), list(PREFERENCES), default=DEFAULT_PREFERENCE,
                         required=True, key=preference_key(series), persist_state="session",
                         format_func=names.__getitem__,
                         help=_("which epoch the verdict picks on the front: the one that keeps the prompt best, "
                                "the best balance, or the one with the most style"))
    return preference(series)


def _votes_seen(ratings: dict | None) -> tuple | None:
    """What of the blind ranking the verdict reads: the vote count, the order, the top two's separation."""
    if not ratings or not ratings.get("votes"):
        return None
    order = tuple((it.get("key"), it.get("file"), it.get("rank")) for it in ratings.get("items", []))
    return ratings["votes"], order, tuple(sorted((ratings.get("separation") or {}).items()))


def series_ratings_or_none(settings, catalog, series: str) -> dict | None:
    """The series' blind ranking when it has votes (None without, or when the votes file cannot be read)."""
    try:
        with active():  # the columns' labels in the session's language
            ratings = series_ratings(catalog, series, settings.path(settings.ratings_dir))
    except LoraSpectrumError:
        return None
    return ratings if ratings.get("votes") else None


def insight_result(settings, choice, catalog, series: str, ratings: dict | None = None) -> dict | None:
    """``series_insight`` of ``series`` for this session, its verdict at the session's preference with
    ``ratings`` (the blind votes). Measured once per (folder contents, series, log folder, last grid, probe run,
    language: the notes and the reason are written in it) and kept; a new vote or preference only decides the
    verdict again from the same measures (what ``series_insight`` does last). None (the error shown) when the
    series cannot be measured."""
    grid = (st.session_state.get(RESULT) or {}).get("out_dir")
    probe, logs, chosen = probe_folder(series), choice.logs_folder(settings), preference(series)
    key = (catalog.generation, series, str(logs), grid, probe, translator().code)
    made_with = (chosen, _votes_seen(ratings))
    cached = st.session_state.get(CACHE)
    if cached and cached[0] == key and cached[2] == made_with:
        return cached[1]
    try:
        with active():
            if cached and cached[0] == key:
                result = cached[1]
                verdict = decide(result["series"], result["epochs"], probe=result["probe"], loss=result["loss"],
                                 ratings=ratings, preference=chosen)
                result = {**result, "verdict": verdict.to_json()}
            else:
                with st.spinner(_("Measuring the epochs...")):
                    result = measures.series_insight(
                        catalog, series=series, logs=logs, grid=grid, cache=_weight_cache(), lenient=True,
                        clip_model=choice.clip_model(settings), allow_download=not settings.local_files_only,
                        probe=probe, references=choice.references, ratings=ratings, preference=chosen)
    except LoraSpectrumError as exc:
        st.error(md_escape(error_text(exc)))
        return None
    st.session_state[CACHE] = (key, result, made_with)
    return result


def _epoch_names(epochs) -> str:
    return ", ".join(_("epoch {epoch}").format(epoch=e) for e in epochs)


def verdict_panel(verdict: dict) -> None:
    """The verdict as every view shows it: the stop advice, the pick and its reason (green only when judged;
    before a probe the reason says what the weight curves show and that a probe must judge), the front, the
    epochs the measures cannot tell apart from the pick, how sure, and what evidence is missing."""
    if verdict.get("stop"):
        st.warning(md_escape(verdict["stop_reason"]))
    reason = md_escape(verdict.get("reason", ""))
    if verdict.get("state") in JUDGED and verdict.get("file"):
        st.success(reason)
    elif verdict.get("state") == "no style":
        st.warning(reason)
    else:  # empty, needs probe: no pick, and nothing green
        st.info(reason)
    facts = []
    if verdict.get("front"):
        facts.append(_("on the style/fidelity front: {epochs}").format(epochs=_epoch_names(verdict["front"])))
    others = [e for e in verdict.get("tied") or [] if e != verdict.get("epoch")]
    if others:
        facts.append(_("cannot be told apart from the pick: {epochs}").format(epochs=_epoch_names(others)))
    if verdict.get("confidence") is not None:
        facts.append(_("confidence {share} (the same pick in that share of the resamples)").format(
            share=f"{100 * verdict['confidence']:.0f}%"))
    if facts:
        st.caption(md_escape(" · ".join(facts)))
    if verdict.get("missing"):
        missing = [_(MISSING_NAMES[m]) if m in MISSING_NAMES else m for m in verdict["missing"]]
        st.caption(md_escape(_("Not weighed yet: {evidence}.").format(evidence=", ".join(missing))))


def insight_view(settings, choice, catalog, controls) -> None:
    series = controls.series if controls is not None else None
    if series is None:
        st.info(_("No usable series in the loras folder."))
        return
    st.subheader(_("Judge the epochs of {series}").format(series=series))
    # 1. The probe: run by itself for a series not probed yet (auto_probe), else by its button; or, while Live is
    #    on, each epoch file judged as it lands (the judgement becomes the probe drawn below).
    live = live_switch(series)
    probe_controls(settings, choice, catalog, series, controls.batch_epochs, auto=not live)
    if live:
        live_panel(settings, choice, catalog, series, preference(series))
    # 2. The verdict at the person's preference, with the blind votes cast so far.
    _preference_control(series)
    result = insight_result(settings, choice, catalog, series, series_ratings_or_none(settings, catalog, series))
    if result is None:
        return
    verdict, epochs, logs = result["verdict"], result["epochs"], choice.logs_folder(settings)
    for note in result.get("notes", []):
        st.caption(md_escape(note))
    verdict_panel(verdict)
    if result.get("probe"):
        probe_results(result["probe"], verdict)
    else:
        st.caption(_("Run a probe to weigh each epoch's style against how well it still follows the prompt; "
                     "weight curves and the training loss cannot pick an epoch."))
    st.subheader(_("How {series} grew").format(series=series))
    # Columns named with N_ (MEASURES' labels): the table and the tooltips show them translated, the code reads
    # them as they are.
    weights = [m for m in MEASURES if m.group == "weights"]
    df = pd.DataFrame([{N_("epoch"): e["epoch"], N_("file"): e["file"], **{m.label: m.of(e) for m in weights}}
                       for e in epochs if e["epoch"] is not None])
    # 3. Weight-space curves: one chart per MEASURES chart, one line per measure in it.
    if not df.empty:
        charts = list(dict.fromkeys(m.chart for m in weights))
        cols = st.columns(len(charts))
        for col, chart in zip(cols, charts, strict=True):
            shown = [m for m in weights if m.chart == chart]
            long = df.melt(id_vars=["epoch"], value_vars=[m.label for m in shown], var_name="measure")
            long["measure"] = long["measure"].map(_)
            fmt = ".1%" if all(m.spec == "%" for m in shown) else ".3g"
            titled(col, _(chart), _line(long.rename(columns={"value": chart}), chart, _(chart), fmt,
                                        by="measure" if len(shown) > 1 else None))
    # 4. Image measures of the last rendered grid: one line per strength.
    image = result.get("image")
    if image and image.get("rows"):
        rows = pd.DataFrame([{"epoch": r["epoch"], N_("strength"): f"{r.get('strength', 1.0):g}",
                              N_("from base"): r["distance_from_base"], N_("seed spread"): r["seed_spread"],
                              N_("change"): r["change_from_previous"]}
                             for r in image["rows"] if r["epoch"] is not None])
        st.caption(md_escape(_("Image measures of the last grid, measure used: {measure} ({description})").format(
            measure=image["measure"], description=image.get("measure_description") or "—")))
        if image.get("clip", {}).get("skipped"):
            st.caption(md_escape(_("CLIP skipped: {reason}").format(
                reason=image["clip"].get("reason") or _("no reason given"))))
        if not rows.empty:
            by = "strength" if rows["strength"].nunique() > 1 else None
            cols = st.columns(3)
            for col, y, title in ((cols[0], "from base", _("distance from base")),
                                  (cols[1], "seed spread", _("spread across seeds")),
                                  (cols[2], "change", _("change from previous epoch"))):
                titled(col, title, _line(rows, y, title, by=by))
    else:
        st.caption(_("Render a grid with the base column in the Compare view to add image measures."))
    # 5. The training loss against step and against epoch (per-epoch tags count epochs, not steps), with a
    #    marker for each epoch file on both.
    loss = result.get("loss")
    if loss and loss.get("series"):
        per_epoch = set(loss.get("per_epoch", []))
        cols = st.columns(2)
        for col, axis, tags, title in ((cols[0], N_("step"), [t for t in loss["series"] if t not in per_epoch],
                                        _("Training loss by step")),
                                       (cols[1], N_("epoch"), [t for t in loss["series"] if t in per_epoch],
                                        _("Training loss per epoch"))):
            chart = _loss_chart(loss, axis, tags, title)
            if chart is not None:
                titled(col, title, chart)
        st.caption(md_escape(_("Training log: {folder}").format(folder=logs)))
    elif logs is None:
        st.caption(_("No training log: set `logs:` in the config or put TensorBoard event files in <loras>/logs."))
    # 6. The table, and a way back to the side-by-side view for any epoch.
    if not df.empty:
        st.dataframe(no_none(df.rename(columns=_)), hide_index=True, width="stretch")
        names = {f: _("epoch {epoch}").format(epoch=n) for f, n in zip(df["file"], df["epoch"], strict=True)}
        st.selectbox(_("Open an epoch in the side-by-side view"), df["file"].tolist(), key="insight_pick",
                     format_func=names.__getitem__)
        st.button(_("Open in Compare"), key="insight_open", on_click=_open_in_compare, args=(series,),
                  help=_("render this epoch in the side-by-side view with the sidebar's prompt and seeds"))
    # 7. Ship the verdict's pick (or another) with its evidence.
    ship_panel(settings, choice, catalog, series, verdict, insight=result)
