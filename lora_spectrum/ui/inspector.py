"""The inspector: what one file says about itself (metadata, rank, alpha, key format, key counts, hash).

Every value comes from the file, so every value is shown as plain text (a table), never as Markdown."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from lora_spectrum.catalog import Catalog
from lora_spectrum.errors import CatalogError
from lora_spectrum.ui.language import _, error_text, pgettext
from lora_spectrum.ui.text import md_escape


def inspector_view(catalog: Catalog) -> None:
    entries = catalog.entries
    if not entries:
        st.info(md_escape(_("No LoRA files in {folder}.").format(folder=catalog.folder)))
        return
    names = [e.name for e in entries]
    name = st.selectbox(_("File"), names, key="inspect_file")
    e = entries[names.index(name)]
    # The state is one of catalog's N_-marked words, shown translated; every other value is the file's own.
    rows = [(_("file"), e.name), (_("state"), _(e.state)), (_("reason"), e.reason), (_("series"), e.series),
            (_("epoch"), "" if e.epoch is None else str(e.epoch)),
            (_("step"), "" if e.step is None else str(e.step)),
            (_("steps (ss_steps)"), e.metadata.get("ss_steps", "")),
            (pgettext("LoRA", "rank"), ", ".join(map(str, e.ranks))), (_("alpha"), "" if e.alpha is None else f"{e.alpha:g}"),
            (_("base model version"), e.metadata.get("ss_base_model_version", "")),
            (_("learning rate"), e.metadata.get("ss_learning_rate", "")),
            (_("trigger words"), ", ".join(e.trigger_words)), (_("key format"), e.format),
            (_("denoiser keys"), str(e.denoiser_keys)), (_("text-encoder keys"), str(e.text_encoder_keys)),
            (_("other keys"), str(e.other_keys)), (_("size"), _("{size} MB").format(size=f"{e.size / 2**20:.2f}"))]
    if e.state == "ready":
        try:
            rows.append(("sha256", catalog.sha256(e)))
        except CatalogError as exc:
            rows.append(("sha256", error_text(exc)))
    st.dataframe(pd.DataFrame(rows, columns=[_("field"), _("value")]), hide_index=True, width="stretch")
    if e.metadata:
        st.caption(_("Training metadata"))
        st.dataframe(pd.DataFrame(sorted(e.metadata.items()), columns=[_("key"), _("value")]), hide_index=True,
                     width="stretch")
