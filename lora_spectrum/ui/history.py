"""The History view: every comparison rendered in the app (``run_history.RunHistory`` under ``runs_dir``), newest
first, with when it was made and with which files; Open puts one back into Compare without rendering and sets the
sidebar to it (prompts, seeds, strengths, epochs, base column, sampling), Delete
removes it (the operator's: ``ui/operator.py``); a session whose open run another deleted is told. This file only
draws."""

from __future__ import annotations

import streamlit as st

from lora_spectrum.errors import LoraSpectrumError
from lora_spectrum.records.grid_files import output_files
from lora_spectrum.records.run_history import RunHistory
from lora_spectrum.render.plan import BASE_LABEL
from lora_spectrum.ui.controls import show_in_sidebar, sidebar_values
from lora_spectrum.ui.language import _, error_text, translator
from lora_spectrum.ui.operator import access, operator_button, refusal
from lora_spectrum.ui.state import RESULT
from lora_spectrum.ui.text import md_escape

REFUSED = "history_refused"  # the sentence for a Delete pressed by a viewer, shown once


def history(settings) -> RunHistory:
    return RunHistory(settings.path(settings.runs_dir), settings.runs_max, settings.runs_max_mb)


def _open(settings, catalog, run_id: str) -> None:
    """Open's callback: the kept run becomes this session's Compare result, the sidebar says what it shows (a
    column whose file has changed or is gone cannot be chosen there: the stale marker names it), and Compare is
    shown."""
    runs = history(settings)
    gone = _("This comparison is no longer in History: it was deleted in another tab or session.")
    if not (runs.folder / run_id).is_dir():  # this list was drawn before another session deleted it
        st.session_state["history_error"] = gone
        return
    folder = runs.folder / run_id
    try:
        plan, cells, manifest = runs.reopen(run_id, catalog)
        downloads = output_files(folder)
    except LoraSpectrumError as exc:
        st.session_state["history_error"] = error_text(exc)
        return
    except OSError:  # deleted between the two reads
        st.session_state["history_error"] = gone
        return
    made = (manifest.get("run") or {}).get("made_at") or run_id
    state = {"plan": plan, "cells": cells, "status": "done", "out_dir": str(folder), "run_id": run_id,
             "reopened": _when(made), "downloads": downloads}
    st.session_state[RESULT] = state
    show_in_sidebar(sidebar_values(plan))
    st.session_state["view"] = "Compare"


def _delete(settings, run_id: str) -> None:
    """Delete's callback. The role is checked again here: a callback runs with the previous run's widgets, so a
    button drawn enabled before this session stopped being the operator still calls it."""
    role = access(settings)
    if not role.operator:
        st.session_state[REFUSED] = refusal(role)
        return
    history(settings).delete(run_id)
    state = st.session_state.get(RESULT) or {}
    if state.get("run_id") == run_id:
        st.session_state.pop(RESULT, None)


def tell_if_deleted(settings) -> None:
    """Say once that the run this session has open (reopened, or its last render) was deleted from History in
    another session or tab; its cells stay on the page, held in the session."""
    state = st.session_state.get(RESULT) or {}
    run_id = state.get("run_id")
    if run_id and not state.get("deleted") and not (history(settings).folder / run_id).is_dir():
        state["deleted"] = True
        st.info(_("The comparison open here was deleted from History (in another tab or session); its images stay "
                  "here until the next render."))


def _when(iso: str) -> str:
    """When a run was made (``iso``: ISO 8601, UTC), written the way the session's language writes dates."""
    try:
        return _("{date} UTC").format(date=translator().date(iso))
    except ValueError:
        return iso


def history_view(settings, catalog) -> None:
    runs = history(settings).list()
    st.subheader(_("History"))
    if error := st.session_state.pop("history_error", None):
        st.error(md_escape(error))
    if why := st.session_state.pop(REFUSED, None):
        st.warning(why)
    if not runs:
        st.caption(_("No comparisons yet: every render in Compare is kept here (at most {runs} in {mb} MB, the "
                     "oldest go first).").format(runs=settings.runs_max, mb=translator().number(settings.runs_max_mb, 0)))
        return
    st.caption(_("{n} of at most {runs} (in {mb} MB) kept in {folder}; the oldest go first.").format(
        n=len(runs), runs=settings.runs_max, mb=translator().number(settings.runs_max_mb, 0),
        folder=history(settings).folder))
    viewer, why = operator_button(settings, None)
    for run in runs:
        files = ", ".join(_("base") if f == BASE_LABEL else f for f in run.files)  # "base" is a value in the manifest
        with st.container(border=True):
            top = st.columns([3, 1, 1])
            counts = (_("{cells} cell(s), {failed} failed") if run.failed else _("{cells} cell(s)")).format(
                cells=run.cells, failed=run.failed)
            top[0].markdown(f"**{md_escape(_when(run.made_at))}** · " + md_escape(counts))
            top[1].button(_("Open"), key=f"hist_open_{run.id}", on_click=_open, args=(settings, catalog, run.id))
            top[2].button(_("Delete"), key=f"hist_del_{run.id}", on_click=_delete, args=(settings, run.id),
                          disabled=viewer, help=why)
            line = (_("Prompt: {prompt} · seeds {seeds} · strengths {strengths} · files: {files}")
                    if len(run.prompts) < 2 else
                    _("Prompts: {prompt} · seeds {seeds} · strengths {strengths} · files: {files}"))
            st.caption(md_escape(line.format(prompt=" | ".join(run.prompts or (run.prompt,)),
                                             seeds=", ".join(map(str, run.seeds)),
                                             strengths=", ".join(f"{s:g}" for s in run.strengths), files=files)))
