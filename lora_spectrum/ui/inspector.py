"""The inspector: what one file says about itself (algorithm, key format, rank, alpha, key counts, metadata, hash).

Every value comes from the file, so every value is shown as plain text (escaped), never as Markdown: the fields as
a list that reads at full width (nothing scrolls inside itself), the training metadata as a table."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from lora_spectrum.errors import CatalogError
from lora_spectrum.loras.catalog import Catalog
from lora_spectrum.ui.language import _, error_text, pgettext
from lora_spectrum.ui.text import md_escape, no_none

ROW_PX = 35  # a dataframe row's height: the metadata table is drawn tall enough to show every row


def _fields(catalog: Catalog, e) -> list[tuple[str, str]]:
    """(field, value) of ``e`` as shown; what the file does not say is said in words, never a blank or None."""
    unknown = _("not in the file")
    algorithm = e.algorithm + (f" ({e.unsupported})" if e.unsupported else "")
    rows = [(_("file"), e.name), (_("state"), _(e.state)), (_("reason"), e.reason or "—"),
            (_("series"), e.series or "—"),
            (_("epoch"), unknown if e.epoch is None else str(e.epoch)),
            (_("step"), unknown if e.step is None else str(e.step)),
            (_("steps (ss_steps)"), e.metadata.get("ss_steps") or unknown),
            (_("algorithm"), algorithm), (_("key format"), e.format),
            (pgettext("LoRA", "rank"), ", ".join(map(str, e.ranks)) or unknown),
            (_("alpha"), unknown if e.alpha is None else f"{e.alpha:g}"),
            (_("base model version"), e.metadata.get("ss_base_model_version") or unknown),
            (_("learning rate"), e.metadata.get("ss_learning_rate") or unknown),
            (_("trigger words"), ", ".join(e.trigger_words) or _("none found")),
            (_("denoiser keys"), str(e.denoiser_keys)), (_("text-encoder keys"), str(e.text_encoder_keys)),
            (_("other keys"), str(e.other_keys)), (_("size"), _("{size} MB").format(size=f"{e.size / 2**20:.2f}"))]
    if e.state == "ready":
        try:
            rows.append(("sha256", catalog.sha256(e)))
        except CatalogError as exc:
            rows.append(("sha256", error_text(exc)))
    return rows


def inspector_view(catalog: Catalog) -> None:
    entries = catalog.entries
    if not entries:
        st.info(md_escape(_("No LoRA files in {folder}.").format(folder=catalog.folder)))
        return
    names = [e.name for e in entries]
    name = st.selectbox(_("File"), names, key="inspect_file")
    e = entries[names.index(name)]
    # The state is one of catalog's N_-marked words, shown translated; every other value is the file's own.
    with st.container(key="inspector_fields"):
        st.markdown("\n".join(f"- **{md_escape(field)}:** {md_escape(value)}" for field, value in _fields(catalog, e)))
    if e.metadata:
        st.caption(_("Training metadata"))
        table = pd.DataFrame(sorted(e.metadata.items()), columns=[_("key"), _("value")])
        st.dataframe(no_none(table), hide_index=True, width="stretch", height=ROW_PX * (len(table) + 1) + 3)
