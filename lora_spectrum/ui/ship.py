"""Ship this epoch: pick the epoch (the ranking's best, else Insight's suggestion), a release name and a note, and
promote it (``decision/promotion.promote``) into the configured ``shipped_dir`` with its model card; the card is
shown and offered for download. This file only draws and calls the core."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from lora_spectrum.decision.promotion import promote
from lora_spectrum.decision.votes import series_ratings
from lora_spectrum.errors import LoraSpectrumError
from lora_spectrum.ui.state import RESULT
from lora_spectrum.ui.text import md_escape

SHIPPED = "ship_done"  # the last promotion of this session: paths and card text


def ship_panel(settings, choice, catalog, series: str, default_epoch: int | None, ranking: dict | None = None,
               insight: dict | None = None) -> None:
    entries = [e for e in catalog.series().get(series, []) if e.epoch is not None or e.step is not None]
    if not entries:
        return
    st.subheader("Ship this epoch")
    numbers = [e.epoch if e.epoch is not None else e.step for e in entries]
    suggested = default_epoch if default_epoch in numbers else (insight or {}).get("suggested_epoch")
    index = numbers.index(suggested) if suggested in numbers else len(numbers) - 1
    cols = st.columns([1, 1, 2])
    epoch = cols[0].selectbox("Epoch", numbers, index=index, key="ship_epoch",
                              format_func=lambda n: next(e.label for e in entries if n in (e.epoch, e.step)))
    name = cols[1].text_input("Release name", value=series, key="ship_name")
    note = cols[2].text_input("Why this epoch", key="ship_note",
                              placeholder="e.g. style is in, the prompt's colours still hold")
    target = settings.path(settings.shipped_dir)
    if st.button("Ship this epoch", type="primary", key="ship_go",
                 help=f"writes {name}.safetensors (same tensors, provenance in its metadata) and {name}.md to "
                      f"{target}; never overwrites, never touches the loras folder"):
        last = st.session_state.get(RESULT) or {}
        same = last.get("plan") and any(e is not None and e.series == series for e in last["plan"].columns)
        grid = last.get("out_dir") if same else None  # the last grid goes into the card if it shows this series
        try:
            if ranking is None:  # Insight's panel: the blind votes cast so far, if any, go into the card too
                ranking = series_ratings(catalog, series, settings.path(settings.ratings_dir))
            done = promote(catalog, epoch, target, series=series, name=name.strip() or None, note=note,
                           ranking=ranking if ranking and ranking.get("votes") else None, insight=insight,
                           grid=grid, base_id=choice.engine.base_id)
        except LoraSpectrumError as exc:
            st.error(md_escape(str(exc)))
        else:
            st.session_state[SHIPPED] = {"path": str(done.path), "card": str(done.card),
                                         "text": Path(done.card).read_text(encoding="utf-8")}
    shipped = st.session_state.get(SHIPPED)
    if shipped:
        st.success(md_escape(f"Shipped {shipped['path']} with its model card {shipped['card']}"))
        st.download_button("Model card", shipped["text"], Path(shipped["card"]).name, "text/markdown",
                           key="ship_card_dl")
        with st.expander("The model card", expanded=False):
            st.code(shipped["text"], language="markdown")
