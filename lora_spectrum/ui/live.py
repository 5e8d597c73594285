"""Insight's Live switch: while it is on, a fragment looks at the series' folder every few seconds through a
``Watcher`` kept for the session, judges each epoch file once it is complete (``ProbeJudge`` in a background
thread, one at a time, with progress and Cancel), and makes each judgement the session's probe of the series, so
the probe grid, the charts and the verdict with its stop advice are drawn by the code that draws every probe. A
status line says how many files were judged and which were skipped, and why. Nothing here renders or measures."""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path

import streamlit as st

from lora_spectrum import language
from lora_spectrum.errors import LoraSpectrumError
from lora_spectrum.loras.catalog import Catalog
from lora_spectrum.render.render_cache import RenderCache
from lora_spectrum.ui.language import _, active, error_text, translator
from lora_spectrum.ui.probe import adopt_probe, chosen_probe_set, probe_folder, probe_root, series_files
from lora_spectrum.ui.text import md_escape
from lora_spectrum.watch.live_judge import ProbeJudge
from lora_spectrum.watch.watcher import SETTLE_POLLS, Watcher

LIVE = "live_watch"  # this session's Live watch by series: the watcher, the judge, the look in progress, counts
EVERY = 3.0  # seconds between two looks at the folder while Live is on
LIVE_SETTLE_POLLS = SETTLE_POLLS  # looks in a row a file must stay the same on before it is judged
LIVE_FOLDER = "-live-"  # in the names of the folders Live's judgements are written to (under the probe root)


def live_key(series: str) -> str:
    """The session state key of ``series``' Live switch."""
    return f"live_{series}"


class _Look:
    """One ``watcher.poll(judge)`` in a daemon thread, so the page redraws while a new file is judged: the poll's
    events, the judge's progress (images done, of how many), or the error that stopped it."""

    def __init__(self, watcher: Watcher, judge: ProbeJudge, tr: language.Translator):
        self.events: list[dict] = []
        self.error: LoraSpectrumError | None = None
        self.done = self.total = 0
        judge.on_progress = self._progress
        self._thread = threading.Thread(target=self._run, args=(watcher, judge, tr), daemon=True, name="live look")
        self._thread.start()

    @property
    def finished(self) -> bool:
        return not self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return self.finished

    def _progress(self, done: int, total: int, cell) -> None:
        self.done, self.total = done, total

    def _run(self, watcher: Watcher, judge: ProbeJudge, tr: language.Translator) -> None:
        try:
            with language.using(tr):  # the verdict's reason and the notes in the session's language
                self.events = watcher.poll(judge)
        except LoraSpectrumError as exc:  # a busy engine, a file gone: said on the page, tried again next look
            self.error = exc


def _states() -> dict:
    return st.session_state.setdefault(LIVE, {})


def _stop(series: str) -> None:
    """Live off (the switch, or Cancel): the judgement in progress stops at its next image (finished images stay
    in the render cache) and the watcher is dropped: switched on again, a new one judges every complete file, the
    rendered ones from the cache. The stopping look is kept so that no second one starts beside it."""
    state = _states().get(series)
    if state and "watcher" in state:
        state["judge"].cancel.set()
        _states()[series] = {"stopping": state["look"]}


def _cancel(series: str) -> None:
    _stop(series)
    st.session_state[live_key(series)] = False


def live_switch(series: str) -> bool:
    """The Live switch of ``series`` (kept for the session, also while another view is open); off stops it."""
    on = st.toggle(_("Live"), key=live_key(series), persist_state="session",
                   help=_("watch the loras folder while the trainer writes into it: each new epoch file is judged "
                          "as soon as it is complete, and the verdict says when training can stop"))
    if not on:
        _stop(series)
    return on


def _new_state(settings, choice, catalog, series: str, set_name: str | None, preference: str, key: tuple) -> dict:
    """A watcher of the series' folder and a judge built as the probe is (the picker's probe set, the render
    cache, the CLIP model and style references of the start-up)."""
    probe_set = chosen_probe_set(settings, choice, catalog, series, set_name)
    # The watcher and its judge get a catalog of their own rather than the app's: that one is shared by every
    # session and read by their scripts while this one is scanned from a background thread between looks, and
    # its ``generation`` keys every session's Insight measures. Its own catalog also keeps the files a judgement
    # renders the ones this watcher saw settle. The cost is reading each header once more.
    own = Catalog(catalog.folder)
    judge = ProbeJudge(choice.engine, own, probe_set, _next_folder(series, probe_set.name),
                       series=series, cache=RenderCache(settings.path(settings.cache_dir), settings.cache_max_mb),
                       clip_model=choice.clip_model(settings), references=choice.references, preference=preference,
                       cancel=threading.Event())
    return {"key": key, "watcher": Watcher(own, series, settle_polls=LIVE_SETTLE_POLLS), "judge": judge,
            "look": None, "judged": [], "skipped": {}, "error": None}


def _next_folder(series: str, set_name: str) -> Path:
    """A new folder for the next judgement (the page may still read the last one while the next renders)."""
    return Path(tempfile.mkdtemp(prefix=f"{series}-{set_name}{LIVE_FOLDER}", dir=probe_root()))


def _state(settings, choice, catalog, series: str, preference: str) -> dict | None:
    """This session's watch of ``series``, made anew when the folder, the base or the probe set changed; None
    while a cancelled judgement is still stopping."""
    set_name = st.session_state.get("probe_set")
    key = (str(catalog.folder), set_name, choice.generation)
    state = _states().get(series)
    if state and "stopping" in state:
        if state["stopping"] is not None and not state["stopping"].finished:
            st.caption(_("Live: waiting for the cancelled judgement to stop..."))
            return None
        state = None
    if state and state["key"] != key:
        _stop(series)
        return _state(settings, choice, catalog, series, preference)
    if state is None:
        with active():
            state = _states()[series] = _new_state(settings, choice, catalog, series, set_name, preference, key)
    return state


def _take(state: dict, look: _Look) -> bool:
    """Fold a finished look's events into the status; True when it judged (a new verdict)."""
    state["error"] = error_text(look.error) if look.error is not None else None
    judged = False
    for ev in look.events:
        if ev["event"] == "skipped":
            state["skipped"][ev["file"]] = ev["reason"]
        elif ev["event"] == "judged":
            state["judged"] = [*(f for f in state["judged"] if f != ev["file"]), ev["file"]]
            state["skipped"].pop(ev["file"], None)
        elif ev["event"] == "verdict":
            judged = True
    return judged


def _adopt(state: dict, series: str) -> None:
    """The judgement becomes the session's probe of ``series`` (the Live judgement it replaces is removed); the
    next one is written to a folder of its own."""
    judge = state["judge"]
    files = {e["file"] for e in judge.last.get("epochs", [])}
    previous = probe_folder(series)
    adopt_probe(series, judge.out_dir, judge.probe_set.name, series_files(judge.catalog, series, files))
    judge.out_dir = _next_folder(series, judge.probe_set.name)
    if previous is not None and LIVE_FOLDER in Path(previous).name:
        shutil.rmtree(previous, ignore_errors=True)


def _status(state: dict, folder) -> None:
    line = _("Live: looking at {folder} every {seconds} s; {n} file(s) judged").format(
        folder=folder, seconds=f"{EVERY:g}", n=len(state["judged"]))
    if state["judged"]:
        line += " " + _("(the last: {file})").format(file=state["judged"][-1])
    st.caption(md_escape(line))
    for file, reason in state["skipped"].items():
        st.caption(md_escape(_("Skipped {file}: {reason}").format(file=file, reason=reason)))
    if state["error"]:
        st.error(md_escape(state["error"]))


@st.fragment(run_every=EVERY)
def live_panel(settings, choice, catalog, series: str, preference: str) -> None:
    """Every few seconds while Live is on: the progress of the judgement in progress (and Cancel), else what the
    last look found, then the next look. A new judgement redraws the page, which shows it as its probe."""
    try:
        state = _state(settings, choice, catalog, series, preference)
    except LoraSpectrumError as exc:  # no probe set to judge with, say
        st.error(md_escape(error_text(exc)))
        return
    if state is None:
        return
    look = state["look"]
    if look is not None and not look.finished:
        cols = st.columns([4, 1])
        cols[0].progress(look.done / look.total if look.total else 0.0,
                         text=_("Live: judging the new epoch file(s), image {done}/{total}").format(
                             done=look.done, total=look.total or "?"))
        cols[1].button(_("Cancel"), key=f"live_cancel_{series}", on_click=_cancel, args=(series,),
                       help=_("stop Live and the judgement in progress; finished images are kept in the cache"))
    else:
        if look is not None and _take(state, look):
            _adopt(state, series)
            state["look"] = None
            st.rerun(scope="app")
        state["look"] = _Look(state["watcher"], state["judge"], translator())  # the next look at the folder
    _status(state, catalog.folder)
