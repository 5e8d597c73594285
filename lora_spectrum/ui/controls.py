"""The sidebar: epoch picker (series, epochs, base column, states), prompts and render settings.

Returns plain values (``Controls``); errors in what the user typed are shown here and yield ``None``. Other views
set the sidebar to what they show (``show_in_sidebar``): the values wait in the session and are applied at the top
of ``render_controls``, before any of its widgets is drawn (Streamlit refuses a drawn widget's key). ``differences``
says in words how a grid on screen differs from what the sidebar describes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import streamlit as st

from lora_spectrum.errors import CatalogError
from lora_spectrum.loras.catalog import Catalog, LoraEntry
from lora_spectrum.render.sampling import Sampling
from lora_spectrum.ui.grid_layout import cell_label
from lora_spectrum.ui.language import _, active, column_name, error_text
from lora_spectrum.ui.state import OPEN_RENDER, PENDING
from lora_spectrum.ui.text import md_escape, no_none

SHOWN = 80  # characters of a prompt quoted in a difference


@dataclass
class Controls:
    series: str | None
    columns: list  # LoraEntry or None (the base column), in display order
    prompt: str
    seeds: list[int]
    strengths: list[float]
    sampling: Sampling
    batch_epochs: int = 1  # epochs (and strengths) per routed denoiser call
    prompts: list[str] = field(default_factory=list)  # every prompt, one grid row each; ``prompt`` is the first

    def __post_init__(self):
        if not self.prompts:
            self.prompts = [self.prompt]


def parse_list(text: str, kind, what: str):
    try:
        values = [kind(x.strip()) for x in text.replace(";", ",").split(",") if x.strip()]
    except ValueError:
        st.sidebar.error(_("{what}: write numbers separated by commas, e.g. 1, 2, 3").format(what=what))
        return None
    if not values:
        st.sidebar.error(_("{what}: give at least one").format(what=what))
        return None
    return values


def _insert_word(word: str) -> None:
    current = st.session_state.get("prompt", "")
    if word not in current:
        st.session_state["prompt"] = f"{word}, {current}" if current.strip() else word


def epoch_picker(catalog: Catalog, family: str | None = None) -> tuple[str | None, list[LoraEntry]]:
    """Series and epochs; files that cannot be used are listed with their reason and are not selectable: those
    the catalog could not read, and those made for another model family than the base's (``family``)."""
    sb = st.sidebar
    top = sb.columns([2, 1])
    top[0].subheader(_("Epochs"))
    if top[1].button(_("Rescan"), key="rescan", help=_("look at the loras folder again (also done on every rerun)")):
        st.toast(_("Rescanned the loras folder"))
    try:
        entries = catalog.scan()  # cheap when nothing changed: entries are kept by (size, mtime)
    except CatalogError as exc:
        sb.error(md_escape(error_text(exc)))
        return None, []
    groups: dict[str, list[LoraEntry]] = {}
    unusable = []
    for e in entries:
        with active():  # the reason of an incompatible file is written in the session's language
            problem = e.problem(family)
        if problem:
            unusable.append({_("file"): e.name, _("state"): _(problem[0]), _("reason"): problem[1]})
        else:
            groups.setdefault(e.series, []).append(e)
    if unusable:
        with sb.expander(_("{n} file(s) not usable").format(n=len(unusable)), expanded=False):
            st.dataframe(no_none(pd.DataFrame(unusable)), hide_index=True, width="stretch")
    if catalog.hidden:
        sb.caption(_("{n} file(s) hidden as .bak").format(n=len(catalog.hidden)))
    if not groups:
        sb.info(md_escape(_("No usable LoRA files in {folder}. Drop .safetensors epoch files there.")
                          .format(folder=catalog.folder)))
        return None, []
    names = list(groups)
    series = sb.selectbox(_("Series"), names, key="series") if len(names) > 1 else names[0]
    ready = groups[series]
    by_name = {e.name: e for e in ready}
    # Keep the user's choice across rescans; files that went away (renamed to .bak, removed) drop out of it.
    # A new series (or the first run) starts with its first six epochs; an emptied choice in the same series stays.
    kept = [n for n in st.session_state.get("epochs", []) if n in by_name]
    same_series = st.session_state.get("epochs_series") == series
    st.session_state["epochs"] = kept if (kept or same_series) else list(by_name)[:6]
    st.session_state["epochs_series"] = series
    shown = {n: column_name(e) for n, e in by_name.items()}  # computed now: a format_func may run outside the run
    chosen = sb.multiselect(_("Epochs to compare"), list(by_name), key="epochs", format_func=shown.__getitem__)
    return series, [by_name[n] for n in by_name if n in chosen]


def render_controls(catalog: Catalog, defaults, default_prompt: str, batch_epochs: int = 1,
                    family: str | None = None) -> Controls | None:
    """The whole sidebar. ``defaults`` is ``Engine.defaults`` (the family's, or the demo's)."""
    d = defaults.sampling
    # 1. The starting values (kept in the session, so that another view can set them), then what a view asked to
    #    show (``show_in_sidebar``), before any widget is drawn.
    for key, value in (("include_base", True), ("prompt", default_prompt), ("more_prompts", ""),
                       ("negative", d.negative_prompt), ("seeds", "1, 2"), ("strengths", "1.0"),
                       ("steps", int(d.steps)), ("guidance", float(d.guidance)), ("width", int(d.width)),
                       ("height", int(d.height)), ("sampler", d.sampler), ("batch_epochs", int(batch_epochs))):
        st.session_state.setdefault(key, value)
    if st.session_state["sampler"] not in defaults.samplers:  # another base's sampler
        st.session_state["sampler"] = d.sampler
    _apply_pending(defaults)
    # 2. The widgets.
    series, epochs = epoch_picker(catalog, family)
    sb = st.sidebar
    include_base = sb.toggle(_("Base column (no LoRA)"), key="include_base")
    sb.subheader(_("Prompt"))
    words = sorted({w for e in epochs for w in e.trigger_words})[:8]
    if words:
        sb.caption(_("Trigger words: click to add to the prompt"))
        cols = sb.columns(min(len(words), 3))
        for i, w in enumerate(words):
            cols[i % len(cols)].button(md_escape(w), key=f"tw_{i}", on_click=_insert_word, args=(w,), help=_("add to the prompt"))
    prompt = sb.text_area(_("Prompt"), key="prompt", height=80)
    more = sb.text_area(_("More prompts"), key="more_prompts", height=68,
                        help=_("one prompt per line: each is a row of the grid, below the prompt above"))
    negative = sb.text_input(_("Negative prompt"), key="negative")
    seeds = parse_list(sb.text_input(_("Seeds"), key="seeds"), int, _("Seeds"))
    strengths = parse_list(sb.text_input(_("Strengths"), key="strengths",
                                         help=_("several values make an epoch x strength sweep")), float,
                           _("Strengths"))
    with sb.expander(_("Sampling"), expanded=False):
        steps = st.number_input(_("Steps"), 1, 200, key="steps")
        guidance = st.number_input(_("Guidance (CFG)"), 0.0, 30.0, step=0.5, key="guidance")
        f = defaults.size_factor
        width = st.number_input(_("Width"), f, 4096, step=f, key="width")
        height = st.number_input(_("Height"), f, 4096, step=f, key="height")
        sampler = st.selectbox(_("Sampler"), defaults.samplers, key="sampler")
        batch = st.number_input(_("Epochs per batch"), 1, 16, key="batch_epochs",
                                help=_("several epochs (and strengths) denoised in one batch, each image through "
                                       "its own epoch: faster on a GPU, memory grows with epochs x seeds; images "
                                       "match epoch-by-epoch renders up to rounding"))
    if seeds is None or strengths is None:
        return None
    columns = ([None] if include_base else []) + epochs
    sampling = Sampling(negative, int(steps), float(guidance), int(width), int(height), sampler)
    prompts = list(dict.fromkeys(p for p in [prompt, *more.splitlines()] if p.strip()))  # a prompt once: one row
    return Controls(series, columns, prompt, seeds, strengths, sampling, int(batch), prompts or [prompt])


# ---------------------------------------------------------------------------------------------- set by other views
def plan_series(plan) -> str | None:
    """The series of a plan's first epoch column that is still a catalog file (None: only the base, or gone)."""
    return next((e.series for e in plan.columns if e is not None and e.series), None)


def sidebar_values(plan, series: str | None = None) -> dict:
    """The sidebar's widget values that describe ``plan``: what ``show_in_sidebar`` takes."""
    s = plan.sampling
    values = {"epochs": [e.name for e in plan.columns if e is not None and e.series],
              "include_base": None in plan.columns, "prompt": plan.prompts[0],
              "more_prompts": "\n".join(plan.prompts[1:]), "seeds": ", ".join(str(x) for x in plan.seeds),
              "strengths": ", ".join(f"{x:g}" for x in plan.strengths), "negative": s.negative_prompt,
              "steps": int(s.steps), "guidance": float(s.guidance), "width": int(s.width), "height": int(s.height),
              "sampler": s.sampler}
    series = series or plan_series(plan)
    if series:
        values["series"] = series
    return values


def show_in_sidebar(values: dict, render: bool = False) -> None:
    """Set the sidebar to ``values`` (``sidebar_values``' keys, any of them) on the next run, before its widgets
    are drawn; ``render``: Compare renders what the sidebar then says, once. Safe in a callback."""
    st.session_state.setdefault(PENDING, {}).update(values)
    if render:
        st.session_state[OPEN_RENDER] = True


def _apply_pending(defaults) -> None:
    """The values ``show_in_sidebar`` left, written into the widgets' keys; one the widgets cannot hold (a
    sampler this base lacks, a size out of bounds) is left as it is."""
    values = st.session_state.pop(PENDING, None)
    if not values:
        return
    if values.get("sampler") not in defaults.samplers:
        values.pop("sampler", None)
    for key, low, high in (("steps", 1, 200), ("guidance", 0.0, 30.0), ("width", defaults.size_factor, 4096),
                           ("height", defaults.size_factor, 4096)):
        if key in values and not low <= values[key] <= high:
            values.pop(key)
    if "series" in values:
        st.session_state["epochs_series"] = values["series"]  # the epoch picker keeps these epochs for it
    for key, value in values.items():
        st.session_state[key] = value


def _shown(text: str) -> str:
    return text if len(text) <= SHOWN else text[:SHOWN - 1] + "…"


def _sampling_words(s: Sampling, other: Sampling) -> str:
    """The fields of ``s`` that differ from ``other``, in words."""
    words = []
    if s.steps != other.steps:
        words.append(_("{n} steps").format(n=s.steps))
    if s.guidance != other.guidance:
        words.append(_("CFG {cfg}").format(cfg=f"{s.guidance:g}"))
    if (s.width, s.height) != (other.width, other.height):
        words.append(f"{s.width}×{s.height}")
    if s.sampler != other.sampler:
        words.append(s.sampler)
    if s.negative_prompt != other.negative_prompt:
        words.append(_("negative prompt “{text}”").format(text=_shown(s.negative_prompt)) if s.negative_prompt
                     else _("no negative prompt"))
    return ", ".join(words)


def differences(plan, controls: Controls) -> list[tuple[str, str, str]]:
    """How the grid of ``plan`` differs from what the sidebar (``controls``) describes: (what, the grid's, the
    sidebar's) in words, in the order prompt, seeds, strengths, epochs, base column, sampling; empty when the grid
    is exactly what the sidebar says."""
    out = []
    if plan.prompts != controls.prompts:
        out.append((_("prompt"), " / ".join(f"“{_shown(p)}”" for p in plan.prompts),
                    " / ".join(f"“{_shown(p)}”" for p in controls.prompts)))
    if list(plan.seeds) != list(controls.seeds):
        out.append((_("seeds"), ", ".join(map(str, plan.seeds)), ", ".join(map(str, controls.seeds))))
    lora = any(e is not None for e in [*plan.columns, *controls.columns])  # the base column has no strength
    if lora and [float(x) for x in plan.strengths] != [float(x) for x in controls.strengths]:
        out.append((_("strengths"), ", ".join(f"{x:g}" for x in plan.strengths),
                    ", ".join(f"{x:g}" for x in controls.strengths)))
    grid = {e.name: e for e in plan.columns if e is not None}
    side = {e.name: e for e in controls.columns if e is not None}
    if set(grid) != set(side):
        def names(entries) -> str:
            return ", ".join(column_name(e) if e.series else _("{label} (its file has changed or is gone)").format(
                label=column_name(e)) for e in entries) or _("none")
        out.append((_("epochs"), names(grid.values()), names(side.values())))
    if (None in plan.columns) != (None in controls.columns):
        out.append((_("base column"), _("shown") if None in plan.columns else _("not shown"),
                    _("shown") if None in controls.columns else _("not shown")))
    if plan.sampling != controls.sampling:
        out.append((_("sampling"), _sampling_words(plan.sampling, controls.sampling),
                    _sampling_words(controls.sampling, plan.sampling)))
    return out


def caption_for(label: str, strength: float | None, seed: int) -> str:
    """A cell's caption, as the grid writes its labels (``grid_layout.cell_label``: a narrow column wraps between
    ``epoch 20``, ``strength 0.6`` and ``seed 1``, never inside one), in the session's language, escaped."""
    with active():
        return md_escape(cell_label(label, strength, seed))
