"""The sidebar: epoch picker (series, epochs, base column, states), prompt and render settings.

Returns plain values (``Controls``); errors in what the user typed are shown here and yield ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import streamlit as st

from lora_spectrum.catalog import Catalog, LoraEntry
from lora_spectrum.errors import CatalogError
from lora_spectrum.sampling import Sampling
from lora_spectrum.ui.language import _, active, column_name, error_text
from lora_spectrum.ui.text import md_escape


@dataclass
class Controls:
    series: str | None
    columns: list  # LoraEntry or None (the base column), in display order
    prompt: str
    seeds: list[int]
    strengths: list[float]
    sampling: Sampling
    batch_epochs: int = 1  # epochs (and strengths) per routed denoiser call


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
            st.dataframe(pd.DataFrame(unusable), hide_index=True, width="stretch")
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
    series, epochs = epoch_picker(catalog, family)
    sb = st.sidebar
    include_base = sb.toggle(_("Base column (no LoRA)"), value=True, key="include_base")
    sb.subheader(_("Prompt"))
    if "prompt" not in st.session_state:
        st.session_state["prompt"] = default_prompt
    words = sorted({w for e in epochs for w in e.trigger_words})[:8]
    if words:
        sb.caption(_("Trigger words: click to add to the prompt"))
        cols = sb.columns(min(len(words), 3))
        for i, w in enumerate(words):
            cols[i % len(cols)].button(md_escape(w), key=f"tw_{i}", on_click=_insert_word, args=(w,), help=_("add to the prompt"))
    prompt = sb.text_area(_("Prompt"), key="prompt", height=80)
    d = defaults.sampling
    negative = sb.text_input(_("Negative prompt"), value=d.negative_prompt, key="negative")
    seeds = parse_list(sb.text_input(_("Seeds"), value="1, 2", key="seeds"), int, _("Seeds"))
    strengths = parse_list(sb.text_input(_("Strengths"), value="1.0", key="strengths",
                                         help=_("several values make an epoch x strength sweep")), float,
                           _("Strengths"))
    with sb.expander(_("Sampling"), expanded=False):
        steps = st.number_input(_("Steps"), 1, 200, int(d.steps), key="steps")
        guidance = st.number_input(_("Guidance (CFG)"), 0.0, 30.0, float(d.guidance), 0.5, key="guidance")
        f = defaults.size_factor
        width = st.number_input(_("Width"), f, 4096, int(d.width), f, key="width")
        height = st.number_input(_("Height"), f, 4096, int(d.height), f, key="height")
        sampler = st.selectbox(_("Sampler"), defaults.samplers, index=defaults.samplers.index(d.sampler), key="sampler")
        batch = st.number_input(_("Epochs per batch"), 1, 16, int(batch_epochs), key="batch_epochs",
                                help=_("several epochs (and strengths) denoised in one batch, each image through "
                                       "its own epoch: faster on a GPU, memory grows with epochs x seeds; images "
                                       "match epoch-by-epoch renders up to rounding"))
    if seeds is None or strengths is None:
        return None
    columns = ([None] if include_base else []) + epochs
    sampling = Sampling(negative, int(steps), float(guidance), int(width), int(height), sampler)
    return Controls(series, columns, prompt, seeds, strengths, sampling, int(batch))


def caption_for(label: str, strength: float | None, seed: int) -> str:
    parts = [label]
    if strength is not None:
        parts.append(_("strength {strength}").format(strength=f"{strength:g}"))
    parts.append(_("seed {seed}").format(seed=seed))
    return md_escape(" · ".join(parts))
