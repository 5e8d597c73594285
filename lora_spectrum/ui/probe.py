"""Insight's probe section: choose a probe set and run it (progress, cancel), then the probe grid (epochs x probe
prompts), style against fidelity with the suggestion marked, the leak per epoch, and Open in Compare with the probe
prompt. Runs come from ``probe_runs``, numbers from ``measures``; this file only draws them."""

from __future__ import annotations

import tempfile
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from lora_spectrum.errors import BusyError, LoraSpectrumError
from lora_spectrum.language import N_
from lora_spectrum.probe_runs import run_probe
from lora_spectrum.probes import find_probe_set, probe_sets
from lora_spectrum.render_cache import RenderCache
from lora_spectrum.ui.language import _, active, error_text
from lora_spectrum.ui.text import md_escape

PROBE = "probe_run"  # this session's last probe run: {"folder", "set", "series", "status"}
KIND_LABELS = {"style": N_("style"), "new_context": N_("new context"), "leak": N_("leak (no trigger)")}


def probe_folder(series: str | None) -> str | None:
    """The folder of this session's finished probe run of ``series``, for the measures; None when there is none."""
    state = st.session_state.get(PROBE) or {}
    if state.get("series") == series and state.get("status") == "done":
        return state["folder"]
    return None


def _choices(settings, choice) -> list[str]:
    names = sorted(probe_sets(settings))
    default = find_probe_set(None, settings, demo=choice.is_demo).name if names else None
    return sorted(names, key=lambda n: n != default)


def _run(settings, choice, catalog, series: str, name: str, batch: int) -> None:
    """Render the probe with a progress bar; finished images go to the render cache as they come, so a cancelled
    run (a click elsewhere stops this script at its next progress update) loses nothing."""
    entries = [e for e in catalog.entries if e.series == series]
    probe_set = find_probe_set(name, settings, demo=choice.is_demo,
                               trigger_words=[w for e in entries for w in e.trigger_words])
    root = st.session_state.get(PROBE, {}).get("root") or tempfile.mkdtemp(prefix="lora_spectrum_probe_")
    folder = Path(root) / f"{series}-{probe_set.name}"
    st.session_state[PROBE] = {"root": root, "folder": str(folder), "set": probe_set.name, "series": series,
                               "status": "running"}
    bar = st.progress(0.0, text=_("Waiting for the engine..."))

    def progress(done, total, cell):
        what = _("cached") if cell.cached else (_("failed") if cell.error else
                                                 _("{seconds} s").format(seconds=f"{cell.seconds:.2f}"))
        bar.progress(done / total, text=_("probe {done}/{total}: {cell}, seed {seed} ({status})").format(
            done=done, total=total, cell=cell.label, seed=cell.seed, status=what))

    cache = RenderCache(settings.path(settings.cache_dir), settings.cache_max_mb)
    try:
        with active():  # the cells' labels and the run's notes in the session's language
            run = run_probe(choice.engine, catalog, probe_set, folder, series=series, cache=cache,
                            on_progress=progress, mix=batch)
    except BusyError as exc:
        st.warning(md_escape(error_text(exc)))
        st.session_state[PROBE]["status"] = "busy"
        return
    finally:
        bar.empty()
    st.session_state[PROBE].update(status="done", failed=run.failed)


def probe_controls(settings, choice, catalog, series: str, batch: int) -> None:
    """The probe set picker and the Run probe / Cancel buttons."""
    names = _choices(settings, choice)
    if not names:
        st.caption(_("No probe sets: add one under configs/probes/ or `probes:` in the config."))
        return
    cols = st.columns([3, 1, 1])
    name = cols[0].selectbox(_("Probe set"), names, key="probe_set",
                             help=_("prompts with the trigger (style, new context) and without it (leak), each "
                                    "with its seeds; configs/probes/*.yaml, `probes:` in the config"))
    go = cols[1].button(_("Run probe"), type="primary", key="probe_run_button",
                        help=_("render every epoch and the base over the probe set (served from the cache when "
                               "already rendered)"))
    if cols[2].button(_("Cancel"), key="probe_cancel",
                      help=_("stop the probe; finished images are kept in the cache")):
        state = st.session_state.get(PROBE)
        if state and state.get("status") == "running":
            state["status"] = "cancelled"
    state = st.session_state.get(PROBE) or {}
    if go:
        try:
            _run(settings, choice, catalog, series, name, batch)
        except LoraSpectrumError as exc:
            st.error(md_escape(error_text(exc)))
    elif state.get("status") in ("running", "cancelled") and state.get("series") == series:
        st.info(_("The probe was cancelled; the images it finished are cached, so Run probe again finishes it "
                  "quickly."))


def _epoch_label(epoch: int | None, file: str) -> str:
    """An epoch as its column is called: ``epoch 6``, the file's name when its epoch is not known."""
    return _("epoch {epoch}").format(epoch=epoch) if epoch is not None else file


def _trade_off_chart(probe: dict, weighed: list[dict], suggested: str | None):
    """Style gained (x) against fidelity kept (y), one point per epoch joined in training order, the suggestion
    ringed; the base sits at (0, 1)."""
    kept = {e["file"]: e.get("fidelity_kept") for e in probe["epochs"]}
    rows = [{"epoch": w["epoch"], "file": w["file"], "style gained": w["style_gained"],
             "fidelity kept": kept.get(w["file"]), "score": w["score"], "suggested": w["file"] == suggested,
             "label": _epoch_label(w["epoch"], w["file"])} for w in weighed]
    df = pd.DataFrame([{"epoch": 0, "file": "base", "style gained": 0.0, "fidelity kept": 1.0, "score": 0.0,
                        "suggested": False, "label": _("base")}, *rows])
    enc = {"x": alt.X("style gained:Q", title=_("style gained (share of the run's most)"), scale=alt.Scale(
        domain=[0, 1.05])), "y": alt.Y("fidelity kept:Q", title=_("prompt fidelity (share of the base's)"),
                                 scale=alt.Scale(zero=False))}
    tooltip = [alt.Tooltip("label:N", title=_("label")), alt.Tooltip("score:Q", title=_("score"))]
    path = alt.Chart(df).mark_line(point=True, color="#7a7a7a").encode(order="epoch:Q", **enc, tooltip=tooltip)
    text = alt.Chart(df).mark_text(dx=8, dy=-8, align="left").encode(text="label:N", **enc)
    ring = alt.Chart(df[df["suggested"]]).mark_point(size=400, shape="circle", color="#d62728",
                                                     strokeWidth=3).encode(**enc)
    return alt.layer(path, text, ring).properties(title=_("Style against prompt fidelity"), height=320)


def _leak_chart(probe: dict):
    df = pd.DataFrame([{"epoch": e["epoch"], "leak": e["leak"], "leak ratio": e.get("leak_ratio")}
                       for e in probe["epochs"] if e["epoch"] is not None and e.get("leak") is not None])
    if df.empty:
        return None
    tooltip = [alt.Tooltip("epoch:Q", title=_("epoch")), alt.Tooltip("leak:Q", title=_("leak")),
               alt.Tooltip("leak ratio:Q", title=_("leak ratio"))]
    return (alt.Chart(df, title=_("Leak into prompts without the trigger")).mark_line(point=True)
            .encode(x=alt.X("epoch:Q", title=_("epoch")),
                    y=alt.Y("leak:Q", title=_("leak ({measure})").format(measure=probe["measure"])),
                    tooltip=tooltip).properties(height=320))


def _open_probe_in_compare() -> None:
    st.session_state["epochs"] = [st.session_state["probe_pick_file"]]
    st.session_state["prompt"] = st.session_state["probe_pick_prompt"]
    st.session_state["view"] = "Compare"


def probe_results(probe: dict, suggestion: dict) -> None:
    """The chart, the leak, the probe grid and Open in Compare for a measured probe run."""
    weighed = suggestion.get("numbers", {}).get("rule_inputs") or []
    if not probe["clip"].get("skipped"):
        line = _("Probe set {set}, measure: {measure} ({model})").format(
            set=probe["probe_set"], measure=probe["measure"], model=probe["clip"]["model"])
    else:
        line = _("Probe set {set}, measure: {measure} (fallback: {reason})").format(
            set=probe["probe_set"], measure=probe["measure"], reason=probe["clip"].get("reason", ""))
    st.caption(md_escape(line))
    cols = st.columns(2)
    if weighed:
        cols[0].altair_chart(_trade_off_chart(probe, weighed, suggestion.get("file")), width="stretch")
    leak = _leak_chart(probe)
    if leak is not None:
        cols[1].altair_chart(leak, width="stretch")
    table = pd.DataFrame([{_("epoch"): e["epoch"], _("style"): e["style"], _("fidelity"): e["fidelity"],
                           _("fidelity kept"): e["fidelity_kept"], _("leak"): e["leak"],
                           _("consistency"): e["consistency"]} for e in probe["epochs"]])
    st.dataframe(table, hide_index=True, width="stretch")
    _probe_grid(probe, suggestion.get("file"))


def _probe_grid(probe: dict, suggested: str | None) -> None:
    """Epochs (columns, the base first) x probe prompts (rows), one seed at a time."""
    folder = Path(probe["folder"])
    seeds = sorted({c["seed"] for c in probe["cells"]})
    seed = st.selectbox(_("Seed shown in the probe grid"), seeds, key="probe_seed")
    files = [None] + [e["file"] for e in probe["epochs"]]
    labels = {None: _("base"), **{e["file"]: _epoch_label(e["epoch"], e["file"]) for e in probe["epochs"]}}
    by_key = {(c["file"], c["prompt"], c["seed"]): c for c in probe["cells"]}
    header = st.columns(len(files) + 1)
    header[0].markdown("**" + _("probe prompt") + "**")
    for i, f in enumerate(files):
        header[i + 1].markdown(f"**{md_escape(labels[f])}**" + (" ★" if f == suggested and f else ""))
    for p in probe["prompts"]:
        row = st.columns(len(files) + 1)
        kind = KIND_LABELS.get(p["kind"])
        kind = _(kind) if kind else p["kind"]
        row[0].caption(md_escape(_("{kind}: {prompt}").format(kind=kind, prompt=p["prompt"])))
        for i, f in enumerate(files):
            c = by_key.get((f, p["prompt"], seed))
            if c is not None:
                row[i + 1].image(str(folder / c["image"]), width="stretch")
    pick = st.columns([2, 3, 1])
    pick[0].selectbox(_("Epoch"), [f for f in files if f], key="probe_pick_file", format_func=lambda f: labels[f])
    pick[1].selectbox(_("Probe prompt"), [p["prompt"] for p in probe["prompts"]], key="probe_pick_prompt")
    pick[2].button(_("Open in Compare"), key="probe_open", on_click=_open_probe_in_compare,
                   help=_("the side-by-side view with this epoch and this probe prompt"))
