"""The History view: every comparison rendered in the app (``run_history.RunHistory`` under ``runs_dir``), newest
first, with when it was made and with which files; Open puts one back into Compare without rendering, Delete
removes it. This file only draws."""

from __future__ import annotations

from datetime import datetime

import streamlit as st

from lora_spectrum.errors import LoraSpectrumError
from lora_spectrum.grid_files import output_files
from lora_spectrum.run_history import RunHistory
from lora_spectrum.ui.state import RESULT
from lora_spectrum.ui.text import md_escape


def history(settings) -> RunHistory:
    return RunHistory(settings.path(settings.runs_dir), settings.runs_max, settings.runs_max_mb)


def _open(settings, catalog, run_id: str) -> None:
    """Open's callback: the kept run becomes this session's Compare result, and Compare is shown."""
    runs = history(settings)
    try:
        plan, cells, manifest = runs.reopen(run_id, catalog)
    except LoraSpectrumError as exc:
        st.session_state["history_error"] = str(exc)
        return
    folder = runs.folder / run_id
    made = (manifest.get("run") or {}).get("made_at") or run_id
    state = {"plan": plan, "cells": cells, "status": "done", "out_dir": str(folder), "run_id": run_id,
             "reopened": _when(made)}
    state["downloads"] = output_files(folder)
    st.session_state[RESULT] = state
    st.session_state["view"] = "Compare"


def _delete(settings, run_id: str) -> None:
    history(settings).delete(run_id)
    state = st.session_state.get(RESULT) or {}
    if state.get("run_id") == run_id:
        st.session_state.pop(RESULT, None)


def _when(iso: str) -> str:
    try:
        return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return iso


def history_view(settings, catalog) -> None:
    runs = history(settings).list()
    st.subheader("History")
    if error := st.session_state.pop("history_error", None):
        st.error(md_escape(error))
    if not runs:
        st.caption(f"No comparisons yet: every render in Compare is kept here (at most {settings.runs_max} in "
                   f"{settings.runs_max_mb} MB, the oldest go first).")
        return
    st.caption(f"{len(runs)} of at most {settings.runs_max} (in {settings.runs_max_mb} MB) kept in "
               f"{history(settings).folder}; the oldest go first.")
    for run in runs:
        files = ", ".join(run.files)
        with st.container(border=True):
            top = st.columns([3, 1, 1])
            top[0].markdown(f"**{md_escape(_when(run.made_at))}** · " + md_escape(
                f"{run.cells} cell(s)" + (f", {run.failed} failed" if run.failed else "")))
            top[1].button("Open", key=f"hist_open_{run.id}", on_click=_open, args=(settings, catalog, run.id))
            top[2].button("Delete", key=f"hist_del_{run.id}", on_click=_delete, args=(settings, run.id))
            st.caption(md_escape(f"Prompt: {run.prompt} · seeds {', '.join(map(str, run.seeds))} · strengths "
                                 f"{', '.join(f'{s:g}' for s in run.strengths)} · files: {files}"))
