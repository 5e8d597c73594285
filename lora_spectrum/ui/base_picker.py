"""The sidebar's Base section: the base running now, by its full name, then the bases the app knows
(``base_list``), each with its family, size and presence (the chosen one's full name below the box, never cut);
**Load** switches the shared engine (``workbench.switch_base``) with a progress bar; other sessions are told the
base changed. Load and Download are the operator's (``ui/operator.py``). Widgets in, plain values out; the rules
live in the core."""

from __future__ import annotations

import streamlit as st

from lora_spectrum.bases.downloads import BackgroundFetch, remote_base
from lora_spectrum.bases.listing import BaseOption, list_bases, size_text
from lora_spectrum.errors import LoraSpectrumError
from lora_spectrum.ui.language import _, active, error_text
from lora_spectrum.ui.operator import operator_button, refused
from lora_spectrum.ui.state import BASE_SEEN, BASE_SWITCHED, FETCH_SIZES, FETCHES
from lora_spectrum.ui.text import md_escape
from lora_spectrum.workbench import switch_base


def base_section(settings, choice) -> None:
    """Draw the Base section; a switch reruns the page on the new engine."""
    # 1. Another session switched the shared base since this one last looked: say so once.
    seen = st.session_state.setdefault(BASE_SEEN, choice.generation)
    if seen != choice.generation:
        st.session_state[BASE_SEEN] = choice.generation
        st.info(md_escape(_("The base was switched to {base} (in another tab or session).").format(
            base=choice.engine.base_id)))
    done = st.session_state.pop(BASE_SWITCHED, None)
    if done:
        (st.sidebar.success if done[0] else st.sidebar.error)(md_escape(done[1]))
    sb = st.sidebar
    with sb.expander(_("Base"), expanded=False):
        if getattr(choice.engine, "executor", None) is not None:
            st.caption(_("The base of a Ray pool is set in the config (restart to change it)."))
            return
        # 2. The choices, the current one first.
        options = list_bases(settings)
        current = choice.source or choice.engine.base_id
        by_source = {o.source: o for o in options}
        if current not in by_source:
            options.insert(0, _current(current, choice))
            by_source[current] = options[0]
        names = [o.source for o in options]
        st.markdown(md_escape(_("Running now: {base}").format(base=by_source[current].label)),
                    help=md_escape(current))
        with active():  # the bases' labels (size, "not downloaded") in the session's language
            labels = {s: ("● " if s == current else "") + by_source[s].label for s in names}
            chosen = st.session_state.get("base_pick", current)
            picked = st.selectbox(_("Base model"), names, index=names.index(current), key="base_pick",
                                  format_func=labels.__getitem__,
                                  help=md_escape(_("● marks the base running now. Chosen: {base}").format(
                                      base=labels.get(chosen, labels[current]))))
        option = by_source[picked]
        # The chosen base's full name, wrapped rather than cut (the box cuts long names).
        name = _("{base} (running now)") if picked == current else _("{base} (not loaded)")
        st.markdown("**" + md_escape(name.format(base=option.label)) + "**")
        st.caption(md_escape(_describe(option)))
        if option.kind == "repo" and (not option.present or picked in st.session_state.get(FETCHES, {})):
            download_panel(settings, option.source)
        # 3. Load: the previous base is freed first; a failure brings it back and says why.
        ready = option.present and not option.problem and picked != current
        viewer, why = operator_button(settings, _("free the current base and load this one for every tab (renders "
                                                  "must be finished)"))
        if st.button(_("Load"), key="base_load", disabled=not ready or viewer, width="stretch", help=why):
            if refused(settings):
                return
            bar = st.progress(0.0, text=_("switching to {base} ...").format(base=picked))
            try:
                with active():  # its progress lines in the session's language
                    switch_base(choice, settings, picked, lambda f, text: bar.progress(f, text=text))
                st.session_state[BASE_SWITCHED] = (True, _("Base: {base} ({family})").format(
                    base=choice.engine.base_id, family=choice.engine.family.name))
            except LoraSpectrumError as exc:
                st.session_state[BASE_SWITCHED] = (False, error_text(exc))
            st.session_state[BASE_SEEN] = choice.generation
            st.rerun()


def _current(source: str, choice) -> BaseOption:
    return BaseOption(source, "demo" if choice.is_demo else "repo", "configured", choice.engine.family.name, None,
                      not choice.is_demo,
                      "" if not choice.is_demo else _("not loaded: {reason}").format(reason=choice.reason))


def _describe(o) -> str:
    if o.kind == "demo":
        return _("The tiny offline demo base and its epochs.")
    where = {"configured": _("the config's base"), "bases": _("from bases: in the config"),
             "models_dir": _("in models_dir"), "cache": _("in the Hugging Face cache")}.get(o.origin, o.origin)
    if o.problem:
        return _("{where}: {problem}").format(where=where, problem=o.problem)
    if not o.present:
        return _("{where}: not on this machine (fetch it with python -m lora_spectrum fetch-base {repo})").format(
            where=where, repo=o.source)
    return _("{where}: {family}, {size} on disk").format(where=where, family=o.family, size=size_text(o.nbytes))


def download_panel(settings, repo_id: str) -> None:
    """Download for a repo not on this machine: its size first (the hub's file list), then a fetch in the
    background with bytes, rate and Cancel. ``local_files_only: true`` keeps the app offline, and says so."""
    if settings.local_files_only:
        st.button(_("Download"), key="base_download", disabled=True, width="stretch",
                  help=_("local_files_only: true in the config: the app never touches the network. Set it to "
                         "false, or run python -m lora_spectrum fetch-base {repo}").format(repo=repo_id))
        return
    fetches = st.session_state.setdefault(FETCHES, {})
    if repo_id in fetches:
        fetch_progress(repo_id)
        return
    sizes = st.session_state.setdefault(FETCH_SIZES, {})
    viewer, why = operator_button(settings, _("ask the hub what it weighs"))
    if repo_id not in sizes:
        if not st.button(_("Download ..."), key="base_download", width="stretch", disabled=viewer, help=why):
            return
        if refused(settings):
            return
        try:
            with active():  # a hub that cannot be reached is told in the session's language
                sizes[repo_id] = remote_base(repo_id, endpoint=settings.hub_endpoint or None)
        except LoraSpectrumError as exc:
            st.error(md_escape(error_text(exc)))
            return
    remote = sizes[repo_id]
    st.caption(md_escape(_("{n} files, {size} to download (commit {commit}); files already in the cache are not "
                           "fetched again").format(n=len(remote.files), size=size_text(remote.nbytes),
                                                    commit=remote.commit[:10])))
    if st.button(_("Download {size}").format(size=size_text(remote.nbytes)), key="base_download_go",
                 width="stretch", disabled=viewer, help=None if not viewer else why):
        if refused(settings):
            return
        with active():  # the fetch's thread writes its failure in the session's language
            fetches[repo_id] = BackgroundFetch(repo_id, settings.hf_cache or None, settings.hub_endpoint or None)
        fetch_progress(repo_id)


@st.fragment(run_every=0.5)
def fetch_progress(repo_id: str) -> None:
    """The running fetch's bar (bytes and rate) and Cancel; when it ends, the page redraws with the list (or the
    failure's one sentence, shown as the size check shows it: ``error_text``)."""
    fetch = st.session_state[FETCHES][repo_id]
    if fetch.finished:
        del st.session_state[FETCHES][repo_id]
        st.session_state[BASE_SWITCHED] = ((True, _("{repo} downloaded: Load it").format(repo=repo_id))
                                           if fetch.failure is None else (False, error_text(fetch.failure)))
        st.rerun(scope="app")
    total = fetch.total or st.session_state[FETCH_SIZES][repo_id].nbytes
    st.progress(min(fetch.done / max(total, 1), 1.0),
                text=_("{done} / {total} MB, {rate} MB/s").format(done=f"{fetch.done / 1e6:.1f}",
                                                                   total=f"{total / 1e6:.1f}",
                                                                   rate=f"{fetch.rate / 1e6:.1f}"))
    if st.button(_("Cancel"), key="base_download_cancel", width="stretch"):
        fetch.cancel()
