"""The sidebar's Base section: the bases the app knows (``base_list``), each with its family, size and presence;
**Load** switches the shared engine (``workbench.switch_base``) with a progress bar; other sessions are told the
base changed. Widgets in, plain values out; the rules live in the core."""

from __future__ import annotations

import streamlit as st

from lora_spectrum.base_list import list_bases, size_text
from lora_spectrum.errors import LoraSpectrumError
from lora_spectrum.ui.state import BASE_SEEN, BASE_SWITCHED
from lora_spectrum.ui.text import md_escape
from lora_spectrum.workbench import switch_base


def base_section(settings, choice) -> None:
    """Draw the Base section; a switch reruns the page on the new engine."""
    # 1. Another session switched the shared base since this one last looked: say so once.
    seen = st.session_state.setdefault(BASE_SEEN, choice.generation)
    if seen != choice.generation:
        st.session_state[BASE_SEEN] = choice.generation
        st.info(md_escape(f"The base was switched to {choice.engine.base_id} (in another tab or session)."))
    done = st.session_state.pop(BASE_SWITCHED, None)
    if done:
        (st.sidebar.success if done[0] else st.sidebar.error)(md_escape(done[1]))
    sb = st.sidebar
    with sb.expander("Base", expanded=False):
        if getattr(choice.engine, "executor", None) is not None:
            st.caption("The base of a Ray pool is set in the config (restart to change it).")
            return
        # 2. The choices, the current one first.
        options = list_bases(settings)
        current = choice.source or choice.engine.base_id
        by_source = {o.source: o for o in options}
        if current not in by_source:
            options.insert(0, _current(current, choice))
            by_source[current] = options[0]
        names = [o.source for o in options]
        picked = st.selectbox("Base model", names, index=names.index(current), key="base_pick",
                              format_func=lambda s: ("● " if s == current else "") + by_source[s].label)
        option = by_source[picked]
        st.caption(md_escape(_describe(option)))
        # 3. Load: the previous base is freed first; a failure brings it back and says why.
        ready = option.present and not option.problem and picked != current
        if st.button("Load", key="base_load", disabled=not ready, width="stretch",
                     help="free the current base and load this one for every tab (renders must be finished)"):
            bar = st.progress(0.0, text=f"switching to {picked} ...")
            try:
                switch_base(choice, settings, picked, lambda f, text: bar.progress(f, text=text))
                st.session_state[BASE_SWITCHED] = (True, f"Base: {choice.engine.base_id} "
                                                         f"({choice.engine.family.name})")
            except LoraSpectrumError as exc:
                st.session_state[BASE_SWITCHED] = (False, str(exc))
            st.session_state[BASE_SEEN] = choice.generation
            st.rerun()


def _current(source: str, choice):
    from lora_spectrum.base_list import BaseOption

    return BaseOption(source, "demo" if choice.is_demo else "repo", "configured", choice.engine.family.name, None,
                      not choice.is_demo, "" if not choice.is_demo else f"not loaded: {choice.reason}")


def _describe(o) -> str:
    if o.kind == "demo":
        return "The tiny offline demo base and its epochs."
    where = {"configured": "the config's base", "bases": "from bases: in the config", "models_dir": "in models_dir",
             "cache": "in the Hugging Face cache"}.get(o.origin, o.origin)
    if o.problem:
        return f"{where}: {o.problem}"
    if not o.present:
        return f"{where}: not on this machine (fetch it with python -m lora_spectrum fetch-base {o.source})"
    return f"{where}: {o.family}, {size_text(o.nbytes)} on disk"
