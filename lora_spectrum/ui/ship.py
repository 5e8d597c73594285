"""Ship this epoch: pick the epoch (the series' verdict's pick; none before there is one, never simply the
most-trained), a release name and a note, and promote it (``decision/promotion.promote``) into the configured ``shipped_dir`` with its model card; the card is
shown and offered for download; shipping is the operator's (``ui/operator.py``). Also the evidence that goes with
a grid: Compare's HTML report with the series' ranking and measures. Once shipped, Push to hub uploads exactly that
release (``decision/hub_push``) to a Hugging Face Hub model repository with this machine's token, the operator's
too. This file only draws and calls the core."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import streamlit as st

from lora_spectrum.bases.downloads import hub_endpoint
from lora_spectrum.decision.card_front_matter import split_front_matter
from lora_spectrum.decision.html_report import build_report
from lora_spectrum.decision.hub_push import commit_message, published_files, push_release
from lora_spectrum.decision.promotion import promote
from lora_spectrum.decision.votes import series_ratings
from lora_spectrum.errors import LoraSpectrumError
from lora_spectrum.language import Translator, using
from lora_spectrum.measures import series_insight
from lora_spectrum.ui.history import history
from lora_spectrum.ui.language import _, active, column_name, error_text
from lora_spectrum.ui.operator import operator_button, refused
from lora_spectrum.ui.state import RESULT
from lora_spectrum.ui.text import md_escape

IMAGE_LINK = re.compile(r"(?<!\\)!\[([^\]]*)\]\([^)]*\)")  # ![alt](file) in the card (file text is escaped)
SHIPPED = "ship_done"  # the last promotion of this session: paths and card text
SHIP_PICK = "ship_pick"  # (series, the verdict's pick) the Epoch box was last set to
PUSHED = "ship_pushed"  # the last push of this session: the card of the release pushed, the repo's address
MB = 1024 * 1024


def session_insight(catalog, series: str) -> dict | None:
    """Insight's measures of this session, if they are of ``series`` as the folder is now (else None)."""
    cached = st.session_state.get("insight_cache")
    if cached and cached[0][0] == catalog.generation and cached[0][1] == series:
        return cached[1]
    return None


def series_of(plan) -> str | None:
    return next((e.series for e in plan.columns if e is not None and e.series), None) if plan else None


def report_html(settings, catalog, state: dict, language: Translator | None = None) -> str:
    """Compare's Report (HTML): the render's folder with the series' blind ranking and measures when known (the
    session's Insight, else the weight curves and the grid's own image measures).

    ``language``: the words of the report (the session's ``translator()``, taken when the button is drawn: a
    download button's callable runs outside the page's script, where the session's language cannot be read);
    English without it."""
    with using(language) if language is not None else contextlib.nullcontext():
        series = series_of(state.get("plan"))
        ranking = insight = None
        if series and series in catalog.series():
            with contextlib.suppress(LoraSpectrumError):  # the report is still written without them
                ranking = series_ratings(catalog, series, settings.path(settings.ratings_dir))
                ranking = ranking if ranking.get("votes") else None
            with contextlib.suppress(LoraSpectrumError):
                insight = session_insight(catalog, series) or series_insight(
                    catalog, series=series, grid=state["out_dir"], use_clip=False, lenient=True)
        return build_report(state["out_dir"], ranking=ranking, insight=insight)


def _last_grid(settings, series: str, catalog) -> str | None:
    """The grid for the card: this session's last Compare render if it shows ``series``, else the newest kept run
    that does (History), else none."""
    last = st.session_state.get(RESULT) or {}
    if series_of(last.get("plan")) == series and Path(last.get("out_dir", "")).is_dir():
        return last["out_dir"]
    names = {e.name for e in catalog.series().get(series, [])}
    run = next((r for r in history(settings).list() if names & set(r.files)), None)
    return str(run.folder) if run else None


def _verdict_pick(verdict: dict | None, numbers: list[int], entries) -> int | None:
    """The Epoch box's number of the verdict's pick (its file), None without a pick."""
    file = (verdict or {}).get("file")
    return next((n for n, e in zip(numbers, entries, strict=True) if file and e.name == file), None)


def ship_panel(settings, choice, catalog, series: str, verdict: dict | None, ranking: dict | None = None,
               insight: dict | None = None) -> None:
    """Ship this epoch, starting at ``verdict``'s pick (the series' one verdict, as Insight and Rank show it).
    Without a pick no epoch is chosen: the person picks one (never the most-trained epoch by default)."""
    entries = [e for e in catalog.series().get(series, []) if e.epoch is not None or e.step is not None]
    if not entries:
        return
    st.subheader(_("Ship this epoch"))
    numbers = [e.epoch if e.epoch is not None else e.step for e in entries]
    pick = _verdict_pick(verdict, numbers, entries)
    # The box starts at the pick and follows it when the verdict changes; a person's own choice stays until then.
    if st.session_state.get(SHIP_PICK) != (series, pick) or st.session_state.get("ship_epoch") not in numbers:
        st.session_state["ship_epoch"] = pick
        st.session_state[SHIP_PICK] = (series, pick)
    cols = st.columns([1, 1, 2])
    names = {n: column_name(e) for n, e in zip(numbers, entries, strict=True)}
    epoch = cols[0].selectbox(_("Epoch"), numbers, index=None, key="ship_epoch", format_func=names.__getitem__,
                              placeholder=_("choose an epoch: no verdict yet") if pick is None else
                              _("choose an epoch"))
    name = cols[1].text_input(_("Release name"), value=series, key="ship_name")
    note = cols[2].text_input(_("Why this epoch"), key="ship_note",
                              placeholder=_("e.g. style is in, the prompt's colours still hold"))
    if pick is None:
        st.caption(_("No verdict picks an epoch yet (run a probe in Insight): choose the epoch to ship yourself."))
    elif epoch is not None and epoch != pick:
        st.caption(_("Not the verdict's pick ({name}).").format(name=names[pick]))
    target = settings.path(settings.shipped_dir)
    viewer, why = operator_button(settings, _("writes {name}.safetensors (same tensors, provenance in its metadata) "
                                              "and {name}.md to {folder}; never overwrites, never touches the loras "
                                              "folder").format(name=name, folder=target))
    go = st.button(_("Ship this epoch"), type="primary", key="ship_go", disabled=epoch is None or viewer, help=why)
    if go and not refused(settings):
        grid = _last_grid(settings, series, catalog)
        try:
            with active():  # the model card in the session's language
                if ranking is None:  # Insight's panel: the blind votes cast so far, if any, go into the card too
                    ranking = series_ratings(catalog, series, settings.path(settings.ratings_dir))
                # The card quotes the verdict shown here: it travels inside the insight it came with.
                evidence = {**(insight or {}), "verdict": verdict} if verdict else insight
                done = promote(catalog, epoch, target, series=series, name=name.strip() or None, note=note,
                               ranking=ranking if ranking and ranking.get("votes") else None, insight=evidence,
                               grid=grid, base_id=choice.engine.base_id, license=settings.license or None)
        except LoraSpectrumError as exc:
            st.error(md_escape(error_text(exc)))
        else:
            st.session_state[SHIPPED] = {"path": str(done.path), "card": str(done.card),
                                         "text": Path(done.card).read_text(encoding="utf-8"),
                                         "files": {k: str(v) for k, v in published_files(done).items()},
                                         "message": commit_message(done)}
    shipped = st.session_state.get(SHIPPED)
    if shipped:
        st.success(md_escape(_("Shipped {path} with its model card {card}").format(path=shipped["path"],
                                                                                    card=shipped["card"])))
        st.download_button(_("Model card"), shipped["text"], Path(shipped["card"]).name, "text/markdown",
                           key="ship_card_dl")
        with st.expander(_("The model card"), expanded=False):
            front, body = split_front_matter(shipped["text"])
            if front:  # what the hub reads, as written
                st.code(front, language="yaml")
            # The card as the hub shows it: values from files are escaped in it; its images are files beside the
            # card, not served here, so each shows as its alt text.
            st.markdown(IMAGE_LINK.sub(r"\1", body))
        push_panel(settings, shipped)


def push_panel(settings, shipped: dict) -> None:
    """Push to hub: the shipped release's files (``hub_push.published_files``: the card as README.md) into a hub
    model repository, created when missing, else updated in one commit; progress in files and MB; the repo's
    address once done, or the one sentence why not (the release on disk stays as it is)."""
    files = {rel: Path(path) for rel, path in (shipped.get("files") or {}).items()}
    if not files:
        return
    cols = st.columns([3, 1])
    repo = cols[0].text_input(_("Hub repository"), key="ship_repo", placeholder=_("namespace/name, e.g. you/my-lora"))
    private = cols[1].checkbox(_("Private"), key="ship_private",
                               help=_("a new repository is created private; an existing public one is refused"))
    endpoint = settings.hub_endpoint or None
    viewer, why = operator_button(settings, _("uploads {files} to {endpoint} with this machine's Hugging Face token "
                                              "(HF_TOKEN or `hf auth login`)").format(
        files=", ".join(files), endpoint=hub_endpoint(endpoint)))
    go = st.button(_("Push to hub"), key="ship_push", disabled=viewer or not repo.strip(), help=why)
    if go and not refused(settings):
        bar = st.progress(0.0, text=_("Pushing to the hub"))

        def progress(done: int, total: int, done_bytes: int, nbytes: int) -> None:
            bar.progress(done_bytes / nbytes if nbytes else 1.0, text=_("{files} / {total} files, {done} / {all} MB")
                         .format(files=done, total=total, done=f"{done_bytes / MB:.1f}", all=f"{nbytes / MB:.1f}"))

        try:
            with active():  # its sentences in the session's language
                pushed = push_release(files, repo.strip(), private=private, endpoint=endpoint,
                                      message=shipped["message"], progress=progress)
        except LoraSpectrumError as exc:
            st.error(md_escape(error_text(exc)))
        else:
            st.session_state[PUSHED] = {"card": shipped["card"], "url": pushed.url}
        finally:
            bar.empty()
    pushed = st.session_state.get(PUSHED)
    if pushed and pushed["card"] == shipped["card"]:
        st.success(md_escape(_("Pushed to {url}").format(url=pushed["url"])))
        st.link_button(_("Open on the hub"), pushed["url"])
