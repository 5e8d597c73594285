"""Insight's probe section: choose a probe set and run it (progress, cancel; by itself with ``auto_probe`` for a
series not probed yet), then the probe grid (epochs x probe prompts), style against fidelity with the verdict's
front and pick marked, the leak per epoch, and Open in Compare: the sidebar set to the probe grid's row (the base and
the epoch at the probe prompt, its seeds and sampling) and rendered there (from the render cache). Runs come from
``probe_runs``, numbers from ``measures``; this file only draws them."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st
from PIL import Image

from lora_spectrum.errors import BusyError, LoraSpectrumError
from lora_spectrum.language import N_
from lora_spectrum.loras.catalog import READY
from lora_spectrum.probes import find_probe_set, probe_sets
from lora_spectrum.records.grid_files import read_manifest
from lora_spectrum.render.probe_runs import run_probe
from lora_spectrum.render.render_cache import RenderCache
from lora_spectrum.ui.controls import show_in_sidebar
from lora_spectrum.ui.grid_layout import column_room, shown_whole
from lora_spectrum.ui.language import _, active, error_text
from lora_spectrum.ui.text import md_escape, no_none, titled

PROBE = "probe_runs"  # this session's probe runs by series: {"folder", "set", "files", "status", ...}
PROBE_ROOT = "probe_root"  # the temporary folder this session's probe runs are written under
KIND_LABELS = {"style": N_("style"), "new_context": N_("new context"), "leak": N_("leak (no trigger)")}


def _record(series: str | None) -> dict:
    """This session's last probe run of ``series`` (empty when there is none)."""
    return (st.session_state.get(PROBE) or {}).get(series) or {}


def probe_folder(series: str | None) -> str | None:
    """The folder of this session's finished probe run of ``series``, for the measures; None when there is none."""
    record = _record(series)
    return record["folder"] if record.get("status") == "done" else None


def series_files(catalog, series: str, only=None) -> tuple:
    """The series' ready files as they are now (name, size, mtime), or those of them named in ``only``: a probe of
    other bytes is not theirs."""
    return tuple((e.name, e.size, e.mtime_ns) for e in catalog.entries
                 if e.series == series and e.state == READY and (only is None or e.name in only))


def probe_root() -> Path:
    """The temporary folder this session's probe runs (the button's, the auto probe's, Live's) are written under."""
    root = st.session_state.get(PROBE_ROOT) or tempfile.mkdtemp(prefix="lora_spectrum_probe_")
    st.session_state[PROBE_ROOT] = root
    return Path(root)


def chosen_probe_set(settings, choice, catalog, series: str, name: str | None):
    """The probe set ``name`` (the picker's choice) with the series' trigger words, as every probe run takes it."""
    entries = [e for e in catalog.entries if e.series == series]
    return find_probe_set(name, settings, demo=choice.is_demo,
                          trigger_words=[w for e in entries for w in e.trigger_words])


def adopt_probe(series: str, folder: str | Path, set_name: str, files: tuple) -> None:
    """Make ``folder``, a finished probe run of ``files`` (``series_files``) made elsewhere (Live's judgement),
    this session's probe of ``series``: Insight measures, decides and draws it as it does its own runs."""
    st.session_state.setdefault(PROBE, {})[series] = {"folder": str(folder), "set": set_name, "files": files,
                                                      "status": "done", "failed": 0}


def _choices(settings, choice) -> list[str]:
    names = sorted(probe_sets(settings))
    default = find_probe_set(None, settings, demo=choice.is_demo).name if names else None
    return sorted(names, key=lambda n: n != default)


def _run(settings, choice, catalog, series: str, name: str, batch: int) -> None:
    """Render the probe with a progress bar; finished images go to the render cache as they come, so a cancelled
    run (a click elsewhere stops this script at its next progress update) loses nothing."""
    probe_set = chosen_probe_set(settings, choice, catalog, series, name)
    folder = probe_root() / f"{series}-{probe_set.name}"
    record = {"folder": str(folder), "set": probe_set.name, "files": series_files(catalog, series),
              "status": "running"}
    st.session_state.setdefault(PROBE, {})[series] = record
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
        record["status"] = "busy"
        return
    except LoraSpectrumError as exc:
        record.update(status="failed", error=error_text(exc))
        raise
    finally:
        bar.empty()
    record.update(status="done", failed=run.failed)


def _starts_by_itself(settings, record: dict, files: tuple) -> bool:
    """With ``auto_probe``: a series with no probe of its files as they are now (or whose last try found the
    engine busy). Never again while one of these files was started, cancelled, failed or done."""
    return settings.auto_probe and (record.get("files") != files or record.get("status") == "busy")


def probe_controls(settings, choice, catalog, series: str, batch: int, auto: bool = True) -> None:
    """The probe set picker and the Run probe / Cancel buttons; with ``auto_probe`` (and ``auto``: not while Live
    judges each new file) the probe of a series not probed yet starts by itself, through the same run as the
    button (progress, Cancel, the render cache)."""
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
        if _record(series).get("status") == "running":
            _record(series)["status"] = "cancelled"
    record = _record(series)
    auto = auto and not go and _starts_by_itself(settings, record, series_files(catalog, series))
    if go or auto:
        note = st.empty()
        if auto:
            note.caption(_("Probing {series} by itself (auto_probe in the config): the verdict needs each epoch's "
                           "style weighed against its prompt fidelity; Cancel stops it.").format(series=series))
        try:
            _run(settings, choice, catalog, series, name, batch)
        except LoraSpectrumError as exc:
            st.error(md_escape(error_text(exc)))
        finally:
            note.empty()
    elif record.get("status") in ("running", "cancelled"):
        st.info(_("The probe was cancelled; the images it finished are cached, so Run probe again finishes it "
                  "quickly."))
    elif record.get("status") == "failed":
        st.error(md_escape(record.get("error", "")))


def _epoch_label(epoch: int | None, file: str) -> str:
    """An epoch as its column is called: ``epoch 6``, the file's name when its epoch is not known."""
    return _("epoch {epoch}").format(epoch=epoch) if epoch is not None else file


def _trade_off_chart(points: list[dict], pick: str | None):
    """The verdict's points: style gained (x) against fidelity kept (y), each with one standard error either way,
    one point per epoch joined in training order, the epochs on the front filled, the pick ringed; the base sits
    at (0, 1)."""
    rows = [{"epoch": p["epoch"], "style": p["style"], "style_se": p.get("style_se") or 0.0,
             "fidelity": p["fidelity"], "fidelity_se": p.get("fidelity_se") or 0.0, "score": p.get("score"),
             "front": bool(p.get("front")), "pick": p["file"] == pick, "label": _epoch_label(p["epoch"], p["file"])}
            for p in points if p.get("style") is not None and p.get("fidelity") is not None]
    df = pd.DataFrame([{"epoch": 0, "style": 0.0, "style_se": 0.0, "fidelity": 1.0, "fidelity_se": 0.0,
                        "score": 0.0, "front": False, "pick": False, "label": _("base")}, *rows])
    df["style_lo"], df["style_hi"] = df["style"] - df["style_se"], df["style"] + df["style_se"]
    df["fidelity_lo"], df["fidelity_hi"] = df["fidelity"] - df["fidelity_se"], df["fidelity"] + df["fidelity_se"]
    x_title, y_title = _("style gained (share of the run's most)"), _("prompt fidelity kept (share of the base's)")
    x = alt.X("style:Q", title=x_title, scale=alt.Scale(domain=[0, 1.05]))
    y = alt.Y("fidelity:Q", title=y_title, scale=alt.Scale(zero=False))
    tooltip = [alt.Tooltip("label:N", title=_("label")), alt.Tooltip("style:Q", format=".1%", title=_("style")),
               alt.Tooltip("style_se:Q", format=".1%", title="±"),
               alt.Tooltip("fidelity:Q", format=".1%", title=_("fidelity kept")),
               alt.Tooltip("fidelity_se:Q", format=".1%", title="±"), alt.Tooltip("score:Q", title=_("score"))]
    path = alt.Chart(df).mark_line(color="#7a7a7a").encode(order="epoch:Q", x=x, y=y)
    bars_x = alt.Chart(df).mark_rule(color="#b0b0b0").encode(x=alt.X("style_lo:Q", title=x_title), x2="style_hi:Q",
                                                             y=y)
    bars_y = alt.Chart(df).mark_rule(color="#b0b0b0").encode(x=x, y=alt.Y("fidelity_lo:Q", title=y_title),
                                                             y2="fidelity_hi:Q")
    names = {True: _("on the front"), False: _("dominated")}
    dots = alt.Chart(df.assign(where=df["front"].map(names))).mark_point(filled=True, size=70).encode(
        x=x, y=y, tooltip=tooltip, color=alt.Color("where:N", title=None, scale=alt.Scale(
            domain=[names[True], names[False]], range=["#1f77b4", "#9a9a9a"])))
    text = alt.Chart(df).mark_text(dx=8, dy=-8, align="left").encode(text="label:N", x=x, y=y)
    ring = alt.Chart(df[df["pick"]]).mark_point(size=400, shape="circle", color="#d62728",
                                                 strokeWidth=3).encode(x=x, y=y)
    return alt.layer(path, bars_x, bars_y, dots, text, ring).properties(height=320)


def _leak_chart(probe: dict):
    df = pd.DataFrame([{"epoch": e["epoch"], "leak": e["leak"], "leak ratio": e.get("leak_ratio")}
                       for e in probe["epochs"] if e["epoch"] is not None and e.get("leak") is not None])
    if df.empty:
        return None
    tooltip = [alt.Tooltip("epoch:Q", title=_("epoch")), alt.Tooltip("leak:Q", title=_("leak")),
               alt.Tooltip("leak ratio:Q", title=_("leak ratio"))]
    return (alt.Chart(df).mark_line(point=True)
            .encode(x=alt.X("epoch:Q", title=_("epoch")),
                    y=alt.Y("leak:Q", title=_("leak ({measure})").format(measure=probe["measure"])),
                    tooltip=tooltip).properties(height=320))


def probe_row_values(probe: dict, file: str, prompt: str) -> dict:
    """The sidebar values of one row of the probe grid: the base and ``file`` at ``prompt``, over the seeds it was
    probed with, at strength 1, with the sampling of the part it was rendered in (read from that part's manifest)."""
    cells = [c for c in probe["cells"] if c["prompt"] == prompt]
    values = {"epochs": [file], "include_base": True, "prompt": prompt, "more_prompts": "",
              "seeds": ", ".join(str(s) for s in sorted({c["seed"] for c in cells})), "strengths": "1"}
    if probe.get("series"):
        values["series"] = probe["series"]
    if cells:
        part = Path(cells[0]["image"]).parts[0]
        with contextlib.suppress(LoraSpectrumError, KeyError, TypeError, ValueError):  # else the sidebar's own
            s = read_manifest(Path(probe["folder"]) / part)[1]["settings"]
            values.update(negative=str(s["negative_prompt"]), steps=int(s["steps"]), guidance=float(s["guidance"]),
                          width=int(s["width"]), height=int(s["height"]), sampler=str(s["sampler"]))
    return values


def _open_probe_in_compare(probe: dict) -> None:
    """Open in Compare's callback: the sidebar says what the probe grid shows for this epoch and prompt, and
    Compare renders it (served from the render cache the probe filled)."""
    show_in_sidebar(probe_row_values(probe, st.session_state["probe_pick_file"],
                                     st.session_state["probe_pick_prompt"]), render=True)
    st.session_state["view"] = "Compare"


# The probe table's headers: English in the code, translated where the table is shown.
TABLE = (N_("epoch"), N_("style"), N_("style ±"), N_("fidelity"), N_("fidelity ±"), N_("fidelity kept"),
         N_("leak"), N_("consistency"), N_("on the front"), N_("resamples picking it"))


def probe_results(probe: dict, verdict: dict) -> None:
    """The chart, the leak, the table and the probe grid of a measured probe run, with ``verdict``'s (the series'
    one verdict) front and pick marked, and Open in Compare."""
    if not probe["clip"].get("skipped"):
        line = _("Probe set {set}, measure: {measure} ({model})").format(
            set=probe["probe_set"], measure=probe["measure"], model=probe["clip"]["model"])
    else:
        line = _("Probe set {set}, measure: {measure} (fallback: {reason})").format(
            set=probe["probe_set"], measure=probe["measure"], reason=probe["clip"].get("reason", ""))
    st.caption(md_escape(line))
    points = verdict.get("points") or []
    cols = st.columns(2)
    if points:
        titled(cols[0], _("Style against prompt fidelity"), _trade_off_chart(points, verdict.get("file")))
    leak = _leak_chart(probe)
    if leak is not None:
        titled(cols[1], _("Leak into prompts without the trigger"), leak)
    by_file = {p["file"]: p for p in points}
    rows = []
    for e in probe["epochs"]:
        p = by_file.get(e["file"], {})
        rows.append(dict(zip(TABLE, (e["epoch"], e["style"], e.get("style_se"), e["fidelity"], e.get("fidelity_se"),
                                     e["fidelity_kept"], e["leak"], e["consistency"], p.get("front"),
                                     p.get("share")), strict=True)))
    st.dataframe(no_none(pd.DataFrame(rows, columns=list(TABLE)).rename(columns=_)), hide_index=True,
                 width="stretch")
    st.caption(_("± is one standard error over the probe's prompts and seeds; style and fidelity kept in the chart "
                 "are shares of the run's most style and of the base's fidelity, their errors from resampling the "
                 "prompts and seeds."))
    _probe_grid(probe, verdict.get("file"))


def _probe_grid(probe: dict, pick: str | None) -> None:
    """Epochs (columns, the base first) x probe prompts (rows), one seed at a time; the verdict's pick starred."""
    folder = Path(probe["folder"])
    seeds = sorted({c["seed"] for c in probe["cells"]})
    seed = st.selectbox(_("Seed shown in the probe grid"), seeds, key="probe_seed")
    files = [None] + [e["file"] for e in probe["epochs"]]
    labels = {None: _("base"), **{e["file"]: _epoch_label(e["epoch"], e["file"]) for e in probe["epochs"]}}
    by_key = {(c["file"], c["prompt"], c["seed"]): c for c in probe["cells"]}
    weights = [1.4] + [1.0] * len(files)  # the prompt's words, then one column per epoch
    header = st.columns(weights)
    header[0].markdown("**" + _("probe prompt") + "**")
    for i, f in enumerate(files):
        header[i + 1].markdown(f"**{md_escape(labels[f])}**" + (" ★" if f == pick and f else ""))
    for p in probe["prompts"]:
        row = st.columns(weights)
        kind = KIND_LABELS.get(p["kind"])
        kind = _(kind) if kind else p["kind"]
        row[0].caption(md_escape(_("{kind}: {prompt}").format(kind=kind, prompt=p["prompt"])))
        for i, f in enumerate(files):
            c = by_key.get((f, p["prompt"], seed))
            if c is not None:
                shown, width = shown_whole(Image.open(folder / c["image"]), column_room(weights, i + 1))
                row[i + 1].image(shown, width=width, output_format="PNG")
    pick = st.columns([2, 3, 1])
    pick[0].selectbox(_("Epoch"), [f for f in files if f], key="probe_pick_file", format_func=lambda f: labels[f])
    pick[1].selectbox(_("Probe prompt"), [p["prompt"] for p in probe["prompts"]], key="probe_pick_prompt")
    pick[2].button(_("Open in Compare"), key="probe_open", on_click=_open_probe_in_compare, args=(probe,),
                   help=_("the side-by-side view of the base and this epoch at this probe prompt, over its seeds, "
                          "rendered as the probe rendered them"))
