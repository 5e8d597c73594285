"""LoRA Spectrum's Streamlit entry: sets the page, gets the shared engine, routes to the views. Nothing else."""

import streamlit as st

from lora_spectrum.errors import LoraSpectrumError
from lora_spectrum.language import N_
from lora_spectrum.render.fuse_policy import PREFIX
from lora_spectrum.ui.base_picker import base_section
from lora_spectrum.ui.compare import compare_view
from lora_spectrum.ui.controls import render_controls
from lora_spectrum.ui.history import history_view, tell_if_deleted
from lora_spectrum.ui.insight import insight_view
from lora_spectrum.ui.inspector import inspector_view
from lora_spectrum.ui.language import _, error_text, language_picker
from lora_spectrum.ui.operator import operator_box
from lora_spectrum.ui.rank import rank_view
from lora_spectrum.ui.resources import config_path, get_workbench
from lora_spectrum.ui.text import md_escape

VIEWS = (N_("Compare"), N_("Rank"), N_("Insight"), N_("History"), N_("Inspector"))  # values stay English

st.set_page_config(page_title="LoRA Spectrum", layout="wide")
try:
    settings, choice, _catalog = get_workbench(config_path())
except LoraSpectrumError as exc:  # a bad config file, an unusable demo: one plain message, no traceback
    st.error(md_escape(error_text(exc)))
    st.stop()
language_picker(settings.language)
operator_box(settings)  # who may switch the base, download, ship and delete (docs/SECURITY.md); views ask it again
base_section(settings, choice)  # may switch the shared base (and rerun); operator only
engine, catalog = choice.engine, choice.catalog()

st.title("LoRA Spectrum")
if choice.is_demo:
    note = _(engine.note)
    st.warning(md_escape(_("{note} Reason: {reason}").format(note=note, reason=choice.reason) if choice.reason
                         else note))
fuse = engine.fuse_mode + (f" ({engine.fuse_decision.removeprefix(PREFIX)})" if engine.fuse_decision else "")
st.caption(md_escape(_("Base: {base} ({family}, {device}, {dtype}) · fuse {fuse} · compile {compile} · LoRAs: {folder}")
                     .format(base=engine.base_id, family=engine.family.name, device=engine.device.type,
                             dtype=str(engine.dtype)[6:], fuse=fuse, compile=_("on") if engine.compiled else _("off"),
                             folder=catalog.folder)),
           help=md_escape(engine.compile_note))
pool = getattr(engine, "executor", None)  # executor: ray, the renders go to its workers
if pool is not None:
    st.caption(md_escape(pool.summary))
    for problem in pool.problems:
        st.warning(md_escape(problem))

tell_if_deleted(settings)  # the run this session opened was deleted from History (another session)
controls = render_controls(catalog, engine.defaults, choice.prompt, settings.batch_epochs, engine.family.name)
st.session_state.setdefault("view", "Compare")
names = {v: _(v) for v in VIEWS}  # taken now: AppTest (and Streamlit) may call a format_func outside the run
view = st.segmented_control(_("View"), VIEWS, key="view", format_func=names.__getitem__,
                            label_visibility="collapsed") or "Compare"
if view == "Compare":
    compare_view(settings, choice, catalog, controls)
elif view == "Rank":
    rank_view(settings, choice, catalog, controls)
elif view == "Insight":
    insight_view(settings, choice, catalog, controls)
elif view == "History":
    history_view(settings, catalog)
else:
    inspector_view(catalog)
