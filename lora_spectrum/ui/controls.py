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
        st.sidebar.error(f"{what}: write numbers separated by commas, e.g. 1, 2, 3")
        return None
    if not values:
        st.sidebar.error(f"{what}: give at least one")
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
    top[0].subheader("Epochs")
    if top[1].button("Rescan", key="rescan", help="look at the loras folder again (also done on every rerun)"):
        st.toast("Rescanned the loras folder")
    try:
        entries = catalog.scan()  # cheap when nothing changed: entries are kept by (size, mtime)
    except CatalogError as exc:
        sb.error(md_escape(str(exc)))
        return None, []
    groups: dict[str, list[LoraEntry]] = {}
    unusable = []
    for e in entries:
        problem = e.problem(family)
        if problem:
            unusable.append({"file": e.name, "state": problem[0], "reason": problem[1]})
        else:
            groups.setdefault(e.series, []).append(e)
    if unusable:
        with sb.expander(f"{len(unusable)} file(s) not usable", expanded=False):
            st.dataframe(pd.DataFrame(unusable), hide_index=True, width="stretch")
    if catalog.hidden:
        sb.caption(f"{len(catalog.hidden)} file(s) hidden as .bak")
    if not groups:
        sb.info(md_escape(f"No usable LoRA files in {catalog.folder}. Drop .safetensors epoch files there."))
        return None, []
    names = list(groups)
    series = sb.selectbox("Series", names, key="series") if len(names) > 1 else names[0]
    ready = groups[series]
    by_name = {e.name: e for e in ready}
    # Keep the user's choice across rescans; files that went away (renamed to .bak, removed) drop out of it.
    # A new series (or the first run) starts with its first six epochs; an emptied choice in the same series stays.
    kept = [n for n in st.session_state.get("epochs", []) if n in by_name]
    same_series = st.session_state.get("epochs_series") == series
    st.session_state["epochs"] = kept if (kept or same_series) else list(by_name)[:6]
    st.session_state["epochs_series"] = series
    chosen = sb.multiselect("Epochs to compare", list(by_name), key="epochs", format_func=lambda n: by_name[n].label)
    return series, [by_name[n] for n in by_name if n in chosen]


def render_controls(catalog: Catalog, defaults, default_prompt: str, batch_epochs: int = 1,
                    family: str | None = None) -> Controls | None:
    """The whole sidebar. ``defaults`` is ``Engine.defaults`` (the family's, or the demo's)."""
    series, epochs = epoch_picker(catalog, family)
    sb = st.sidebar
    include_base = sb.toggle("Base column (no LoRA)", value=True, key="include_base")
    sb.subheader("Prompt")
    if "prompt" not in st.session_state:
        st.session_state["prompt"] = default_prompt
    words = sorted({w for e in epochs for w in e.trigger_words})[:8]
    if words:
        sb.caption("Trigger words: click to add to the prompt")
        cols = sb.columns(min(len(words), 3))
        for i, w in enumerate(words):
            cols[i % len(cols)].button(md_escape(w), key=f"tw_{i}", on_click=_insert_word, args=(w,), help="add to the prompt")
    prompt = sb.text_area("Prompt", key="prompt", height=80)
    d = defaults.sampling
    negative = sb.text_input("Negative prompt", value=d.negative_prompt, key="negative")
    seeds = parse_list(sb.text_input("Seeds", value="1, 2", key="seeds"), int, "Seeds")
    strengths = parse_list(sb.text_input("Strengths", value="1.0", key="strengths",
                                         help="several values make an epoch x strength sweep"), float, "Strengths")
    with sb.expander("Sampling", expanded=False):
        steps = st.number_input("Steps", 1, 200, int(d.steps), key="steps")
        guidance = st.number_input("Guidance (CFG)", 0.0, 30.0, float(d.guidance), 0.5, key="guidance")
        f = defaults.size_factor
        width = st.number_input("Width", f, 4096, int(d.width), f, key="width")
        height = st.number_input("Height", f, 4096, int(d.height), f, key="height")
        sampler = st.selectbox("Sampler", defaults.samplers, index=defaults.samplers.index(d.sampler), key="sampler")
        batch = st.number_input("Epochs per batch", 1, 16, int(batch_epochs), key="batch_epochs",
                                help="several epochs (and strengths) denoised in one batch, each image through its "
                                     "own epoch: faster on a GPU, memory grows with epochs x seeds; images match "
                                     "epoch-by-epoch renders up to rounding")
    if seeds is None or strengths is None:
        return None
    columns = ([None] if include_base else []) + epochs
    sampling = Sampling(negative, int(steps), float(guidance), int(width), int(height), sampler)
    return Controls(series, columns, prompt, seeds, strengths, sampling, int(batch))


def caption_for(label: str, strength: float | None, seed: int) -> str:
    parts = [label]
    if strength is not None:
        parts.append(f"strength {strength:g}")
    parts.append(f"seed {seed}")
    return md_escape(" · ".join(parts))
