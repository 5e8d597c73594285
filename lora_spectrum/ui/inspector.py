"""The inspector: what one file says about itself (metadata, rank, alpha, key format, key counts, hash).

Every value comes from the file, so every value is shown as plain text (a table), never as Markdown."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from lora_spectrum.catalog import Catalog
from lora_spectrum.errors import CatalogError
from lora_spectrum.ui.text import md_escape


def inspector_view(catalog: Catalog) -> None:
    entries = catalog.entries
    if not entries:
        st.info(md_escape(f"No LoRA files in {catalog.folder}."))
        return
    names = [e.name for e in entries]
    name = st.selectbox("File", names, key="inspect_file")
    e = entries[names.index(name)]
    rows = [("file", e.name), ("state", e.state), ("reason", e.reason), ("series", e.series),
            ("epoch", "" if e.epoch is None else str(e.epoch)), ("step", "" if e.step is None else str(e.step)),
            ("steps (ss_steps)", e.metadata.get("ss_steps", "")),
            ("rank", ", ".join(map(str, e.ranks))), ("alpha", "" if e.alpha is None else f"{e.alpha:g}"),
            ("base model version", e.metadata.get("ss_base_model_version", "")),
            ("learning rate", e.metadata.get("ss_learning_rate", "")),
            ("trigger words", ", ".join(e.trigger_words)), ("key format", e.format),
            ("denoiser keys", str(e.denoiser_keys)), ("text-encoder keys", str(e.text_encoder_keys)),
            ("other keys", str(e.other_keys)), ("size", f"{e.size / 2**20:.2f} MB")]
    if e.state == "ready":
        try:
            rows.append(("sha256", catalog.sha256(e)))
        except CatalogError as exc:
            rows.append(("sha256", str(exc)))
    st.dataframe(pd.DataFrame(rows, columns=["field", "value"]), hide_index=True, width="stretch")
    if e.metadata:
        st.caption("Training metadata")
        st.dataframe(pd.DataFrame(sorted(e.metadata.items()), columns=["key", "value"]), hide_index=True,
                     width="stretch")
