"""The Rank view: two renders of one prompt and seed from two columns of the sidebar's selection (epochs, the
base), sides drawn at random and no labels until the vote; votes by button or key (left, right, down = tie,
s = skip); after each vote the pair's labels show briefly (a toast) and the pair can be opened in Compare; the next
pair where the ranking is least certain, renders filled in the background, and Reveal: the ranking next to
Insight's measures, how certain it is, and Ship this epoch (the verdict's pick while the votes cannot separate the
top epochs). The maths is ``decision/``; this file only draws."""

from __future__ import annotations

import io
import math
import random

import altair as alt
import pandas as pd
import streamlit as st
from PIL import Image

from lora_spectrum.decision.rank_pool import BASE_KEY, RankPool
from lora_spectrum.decision.ranking import fit, next_pair
from lora_spectrum.decision.votes import VoteBook, current_files, series_ratings
from lora_spectrum.errors import LoraSpectrumError
from lora_spectrum.language import N_
from lora_spectrum.measures.verdict import VOTE_Z
from lora_spectrum.render.render_cache import RenderCache
from lora_spectrum.ui.controls import show_in_sidebar
from lora_spectrum.ui.grid_layout import shown_whole
from lora_spectrum.ui.insight import insight_result, verdict_panel
from lora_spectrum.ui.language import _, active, column_name, error_text
from lora_spectrum.ui.ship import ship_panel
from lora_spectrum.ui.state import RANK
from lora_spectrum.ui.text import md_escape, no_none, titled

PAIR_ROOM = 440  # px across for one side of a pair (half the page's main area)

# The ranking table's headers: English in the rows (and for the tests), translated where the table is shown.
HEADERS = (N_("rank"), N_("column"), N_("score"), N_("won"), N_("lost"), N_("tied"), N_("style"), N_("fidelity"),
           N_("leak"), N_("weight norm"))


def _pool_key(controls) -> tuple:
    return (controls.series, tuple(None if e is None else e.name for e in controls.columns), controls.prompt,
            tuple(controls.seeds), controls.sampling)


def _start(choice, catalog, settings, controls) -> None:
    old = st.session_state.get(RANK)
    if old:
        old["pool"].stop()
    cache = RenderCache(settings.path(settings.cache_dir), settings.cache_max_mb)
    pool = RankPool(choice.engine, catalog, controls.columns, controls.prompt, controls.seeds, controls.sampling,
                    cache, mix=controls.batch_epochs)
    pool.start()
    st.session_state[RANK] = {"key": _pool_key(controls), "pool": pool, "pair": None, "recent": [], "cast": 0,
                              "rng": random.Random()}


def _vote(state: dict, book: VoteBook, result: float | None, shown: int | None = None) -> None:
    """A button's callback: record the vote (``None``: skipped) and clear the pair so the next one is drawn.
    ``shown`` is the number of the pair the button was drawn for: a press meant for an earlier pair is dropped
    (after a fragment-only rerun Streamlit still holds the previous pair's callbacks)."""
    pair = state["pair"]
    if pair is None or (shown is not None and shown != state.get("shown")):
        return
    if result is not None:
        left, right = pair["left"], pair["right"]
        book.add(left.key, left.file or BASE_KEY, right.key, right.file or BASE_KEY, result, pair["prompt"],
                 pair["seed"])
        state["cast"] += 1
        # The pair's labels, said once after the vote (a toast) as the README promises: the person learns what
        # they preferred; the next pair is drawn blind again, its sides at random.
        state["last"] = _last_pair(state["pool"], pair)
    state["recent"] = [*state["recent"][-3:], tuple(sorted((pair["left"].key, pair["right"].key)))]
    state["pair"], state["voted"] = None, result is not None


def _entry(pool, render):
    return next((e for e in pool.plan.columns if (None if e is None else e.name) == render.file), None)


def _last_pair(pool, pair: dict) -> dict:
    """What the toast says about the pair just voted on, and the sidebar values that show it in Compare."""
    left, right = _entry(pool, pair["left"]), _entry(pool, pair["right"])
    s = pool.plan.sampling
    values = {"epochs": [e.name for e in (left, right) if e is not None],
              "include_base": left is None or right is None, "prompt": pair["prompt"], "more_prompts": "",
              "seeds": str(pair["seed"]), "strengths": "1", "negative": s.negative_prompt, "steps": int(s.steps),
              "guidance": float(s.guidance), "width": int(s.width), "height": int(s.height), "sampler": s.sampler}
    series = next((e.series for e in (left, right) if e is not None and e.series), None)
    if series:
        values["series"] = series
    return {"left": column_name(left), "right": column_name(right), "seed": pair["seed"], "values": values,
            "told": False}


def _open_last(state: dict) -> None:
    """Open the last pair in Compare's callback: the sidebar set to its two columns, prompt and seed; rendered
    there (from the render cache)."""
    show_in_sidebar(state["last"]["values"], render=True)
    st.session_state["view"] = "Compare"


def _choose(state: dict, book: VoteBook, current: dict[str, str]) -> dict | None:
    """The next pair: least certain among those rendered on both sides; sides and seed at random."""
    pool, rng = state["pool"], state["rng"]
    candidates = pool.pairs()
    if not candidates:
        return None
    counted, _set_aside = book.split(current)
    items = sorted({k for pair in candidates for k in pair})
    ranking = fit(items, [(v["a"], v["b"], v["result"]) for v in counted if v["a"] in items and v["b"] in items])
    pick = next_pair(ranking, candidates=candidates, rng=rng, recent=state["recent"])
    if pick is None:
        return None
    a, b = pick  # next_pair already draws which goes left
    seed = rng.choice(pool.seeds_for(a, b))
    ready = pool.ready()
    return {"left": ready[(a, seed)], "right": ready[(b, seed)], "seed": seed, "prompt": pool.plan.prompts[0]}


def _vote_panel(state: dict, book: VoteBook, current: dict[str, str]) -> None:
    pool = state["pool"]
    if pool.finished and state.get("polling"):  # the last render arrived: one full rerun stops the polling
        state["polling"] = False
        st.rerun()
    if state.pop("voted", False) and st.session_state.get("rank_reveal"):
        st.rerun()  # the ranking below the panel is drawn by the whole page: redraw it with this vote
    if not pool.finished:
        st.progress(pool.done / max(1, pool.total),
                    text=_("Rendering in the background: {done}/{total}").format(done=pool.done, total=pool.total))
    if pool.error:
        st.warning(md_escape(_("Rendering stopped: {reason}").format(reason=pool.error)))
    for line in pool.failed[:3]:
        st.caption(md_escape(line))
    if state["pair"] is None:
        state["pair"] = _choose(state, book, current)
        state["shown"] = state.get("shown", 0) + (state["pair"] is not None)
    pair = state["pair"]
    if pair is None:
        st.info(_("Waiting for two renders of the same seed...") if not pool.finished else
                _("Nothing to compare: fewer than two columns rendered."))
        return
    last = state.get("last")
    if last and not last["told"]:  # once, for the vote just cast
        last["told"] = True
        st.toast(md_escape(_("That pair: left was {left}, right was {right} (seed {seed}).").format(
            left=last["left"], right=last["right"], seed=last["seed"])), icon=":material/visibility:")
    st.caption(md_escape(_("Which is better? Prompt: {prompt} · seed {seed}").format(prompt=pair["prompt"],
                                                                                      seed=pair["seed"])))
    st.space("small")  # room for the images' toolbar, which shows above an image on hover
    left, right = st.columns(2)
    for column, side, word in ((left, "left", _("Left")), (right, "right", _("Right"))):
        # A small render enlarged by a whole multiple, pixel for pixel: never blurred, on both sides alike.
        shown, width = shown_whole(Image.open(io.BytesIO(pair[side].png)), PAIR_ROOM, PAIR_ROOM)
        column.image(shown, caption=word, width=width, output_format="PNG")
    b = st.columns(4)
    # Each pair has buttons of its own, and their callbacks carry the pair's number: a press the page sent while
    # it still showed the previous pair cannot vote on a pair nobody saw.
    n = state["shown"]
    for col, (label, key, shortcut, result) in zip(b, ((_("Left is better"), "left", "left", 1.0),
                                                       (_("Tie"), "tie", "down", 0.5), (_("Skip"), "skip", "s", None),
                                                       (_("Right is better"), "right", "right", 0.0)), strict=True):
        col.button(label, key=f"vote_{key}_{n}", shortcut=shortcut, on_click=_vote,
                   args=(state, book, result, n), width="stretch")
    foot = st.columns([3, 1])
    foot[0].caption(_("{n} vote(s) this session · Keys: ← left, → right, ↓ tie, S skip.").format(n=state["cast"]))
    if last:
        foot[1].button(_("Open the last pair in Compare"), key="rank_open_last", on_click=_open_last, args=(state,),
                       width="stretch", help=_("the sidebar is set to the pair you just voted on (its two columns, "
                                               "prompt and seed) and Compare renders it; your votes are kept, and "
                                               "blind ranking starts again from the sidebar when you come back"))


def _name(catalog, series: str, file: str | None, epoch: int | None) -> str:
    entry = next((e for e in catalog.series().get(series, []) if e.name == file), None)
    return column_name(entry) if entry is not None else _("epoch {epoch}").format(epoch=epoch)


def _votes_and_measures(catalog, series: str, verdict: dict, summary: dict) -> None:
    """Whether the votes agree with the measures (how certain the ranking is: ``_certainty``, above Ship)."""
    votes, lines = verdict.get("votes") or {}, []
    if votes.get("top") is not None:
        top = _name(catalog, series, votes.get("top_file"), votes["top"])
        if votes.get("agree"):
            lines.append(_("The votes agree with the measures: their top epoch, {name}, is the measures' pick or one "
                           "they cannot tell apart from it.").format(name=top))
        else:
            lines.append(_("The votes and the measures disagree: the votes put {name} first, the measures pick "
                           "{pick}.").format(name=top, pick=_name(catalog, series, None, verdict["picks"].get(
                               verdict["preference"]))))
    elif summary.get("votes") and verdict.get("state") not in ("measures", "votes"):
        lines.append(_("The votes cannot be weighed against the measures until Insight has probed the epochs."))
    for line in lines:
        st.caption(md_escape(line))


def _number(catalog, series: str, file: str | None) -> int | None:
    """The Ship box's number of ``file`` (its epoch, else its step)."""
    entry = next((e for e in catalog.series().get(series, []) if file and e.name == file), None)
    return None if entry is None else (entry.epoch if entry.epoch is not None else entry.step)


def _ship_pick(number: int) -> None:
    st.session_state["ship_epoch"] = number


def _certainty(catalog, series: str, verdict: dict | None, summary: dict) -> None:
    """How certain the ranking is, just above Ship: how far its top two epochs are apart (in standard errors,
    and as the chance the first is truly better), and, while the votes cannot separate them, the verdict's pick
    to ship instead of the ranking's top."""
    st.markdown("**" + _("How certain the ranking is") + "**")
    sep = summary.get("separation") or {}
    z = sep.get("z")
    items = {it["key"]: it["label"] for it in summary["items"]}
    first, second = items.get(sep.get("a")), items.get(sep.get("b"))
    if z is None or first is None or second is None:
        st.caption(_("Too few epochs judged to say how far apart the ranking's top two are."))
        return
    chance = 0.5 * (1 + math.erf(z / math.sqrt(2)))  # the chance that the first is truly ahead (normal scores)
    st.caption(md_escape(_("{first} is ahead of {second} by {z} standard errors: about {chance} likely to be truly "
                           "better. The votes decide the verdict once the top two are {need} apart.").format(
        first=first, second=second, z=f"{z:.1f}", chance=f"{100 * chance:.0f}%", need=f"{VOTE_Z:g}")))
    if (verdict or {}).get("votes", {}).get("decided"):
        st.success(md_escape(_("The votes separate {first} from {second}: Ship starts at {first}.").format(
            first=first, second=second)))
        return
    pick = _number(catalog, series, (verdict or {}).get("file"))
    if pick is None:
        st.info(md_escape(_("The votes cannot yet separate {first} from {second}, and no verdict picks an epoch "
                            "yet: vote more, or probe the epochs in Insight.").format(first=first, second=second)))
        return
    name = _name(catalog, series, verdict["file"], verdict.get("epoch"))
    st.info(md_escape(_("The votes cannot yet separate {first} from {second}: Ship offers the verdict's pick, "
                        "{pick}, which the measures chose.").format(first=first, second=second, pick=name)))
    st.button(_("Ship the verdict's pick ({pick})").format(pick=name), key="rank_ship_pick", on_click=_ship_pick,
              args=(pick,))


def _reveal(settings, choice, catalog, series: str) -> None:
    try:
        with active():  # the columns' labels and the notice in the session's language
            summary = series_ratings(catalog, series, settings.path(settings.ratings_dir))
    except LoraSpectrumError as exc:
        st.error(md_escape(error_text(exc)))
        return
    st.subheader(_("The ranking"))
    if summary.get("notice"):
        st.warning(md_escape(summary["notice"]))
    if summary.get("set_aside"):
        st.caption(_("{n} vote(s); {set_aside} set aside (their file was replaced)").format(
            n=summary["votes"], set_aside=summary["set_aside"]))
    else:
        st.caption(_("{n} vote(s)").format(n=summary["votes"]))
    # The series' one verdict, as Insight shows it, with these votes.
    insight = insight_result(settings, choice, catalog, series, summary if summary.get("votes") else None) or {}
    verdict = insight.get("verdict")
    if verdict:
        verdict_panel(verdict)
        _votes_and_measures(catalog, series, verdict, summary)
    measured = {e["file"]: e for e in insight.get("epochs", [])}
    rows = []
    for it in summary["items"]:
        m = measured.get(it["file"]) or {}
        rows.append({"rank": it["rank"], "column": it["label"],
                     "score": it["score"] if it["rank"] else None, "±": it["stderr"] if it["rank"] else None,
                     "won": it["wins"], "lost": it["losses"], "tied": it["ties"], "style": m.get("style"),
                     "fidelity": m.get("fidelity"), "leak": m.get("leak"), "weight norm": m.get("weight_norm")})
    df = pd.DataFrame(rows)
    measures = ["style", "fidelity", "leak", "weight norm"]
    if not insight.get("probe"):
        st.caption(_("Open Insight to probe the epochs: the verdict and the style and fidelity columns need it."))
    df = df.drop(columns=[m for m in measures if df[m].isna().all()])  # no probe: no style, fidelity, leak
    st.dataframe(no_none(df.rename(columns=_)), hide_index=True, width="stretch")
    judged = [r for r in rows if r["rank"]]
    if judged:
        chart = pd.DataFrame([{"column": r["column"], "score": round(r["score"], 3), "±": round(r["±"], 3),
                               "lo": r["score"] - r["±"], "hi": r["score"] + r["±"]} for r in judged])
        x = alt.X("column:N", sort=[r["column"] for r in judged], title=None)
        tooltip = [alt.Tooltip("column:N", title=_("column")), alt.Tooltip("score:Q", title=_("score")), "±"]
        titled(st, _("Bradley-Terry score ± one standard error"), alt.layer(
            alt.Chart(chart).mark_rule().encode(x=x, y=alt.Y("lo:Q", title=_("score")), y2="hi:Q"),
            alt.Chart(chart).mark_point(filled=True, size=80).encode(x=x, y=alt.Y("score:Q", title=_("score")),
                                                                      tooltip=tooltip),
        ).properties(height=240))
    else:
        st.caption(_("No votes yet: the columns without a rank have not been judged."))
    # Ship starts at the verdict's pick: the measures' until the votes separate the epochs, then the votes' top.
    if summary.get("votes"):
        _certainty(catalog, series, verdict, summary)
    ship_panel(settings, choice, catalog, series, verdict, ranking=summary, insight=insight or None)


def rank_view(settings, choice, catalog, controls) -> None:
    if controls is None or controls.series is None:
        st.info(_("No usable series in the loras folder."))
        return
    if len(controls.columns) < 2:
        st.info(_("Choose at least two columns in the sidebar (epochs, or an epoch and the base) to rank them "
                  "blind."))
        return
    st.subheader(_("Rank {series} blind").format(series=controls.series))
    try:
        with active():  # its notice in the session's language
            book = VoteBook(settings.path(settings.ratings_dir), controls.series, loras_folder=catalog.folder)
    except LoraSpectrumError as exc:
        st.error(md_escape(error_text(exc)))
        return
    if book.notice:
        st.warning(md_escape(book.notice))
    state = st.session_state.get(RANK)
    if state is not None and state["key"] != _pool_key(controls):
        state["pool"].stop()  # the sidebar changed: its renders are not these, and the engine is shared
    if state is None or state["key"] != _pool_key(controls):
        st.caption(_("{columns} columns x {seeds} seed(s) of the sidebar's prompt; sides are drawn at random and "
                     "labels stay hidden until Reveal.").format(columns=len(controls.columns),
                                                                 seeds=len(controls.seeds)))
        if st.button(_("Start blind ranking"), type="primary", key="rank_start"):
            try:
                with active():  # a bad value is named in the session's language
                    _start(choice, catalog, settings, controls)
            except LoraSpectrumError as exc:
                st.error(md_escape(error_text(exc)))
                return
            st.rerun()
        return
    # sha256 -> name of the selected epochs as they are now: votes about other bytes are set aside.
    current = current_files(catalog, [e for e in controls.columns if e is not None])
    # While renders are still arriving the panel redraws itself each second; after that only on a vote.
    state["polling"] = not state["pool"].finished
    panel = st.fragment(run_every=1.0 if state["polling"] else None)(_vote_panel)
    panel(state, book, current)
    if st.toggle(_("Reveal"), key="rank_reveal", help=_("show the ranking with the labels")):
        _reveal(settings, choice, catalog, controls.series)
