"""LoRA Spectrum's Streamlit entry: sets the page, gets the shared engine, routes to the views. Nothing else."""

import streamlit as st

from lora_spectrum.errors import LoraSpectrumError
from lora_spectrum.ui.base_picker import base_section
from lora_spectrum.ui.compare import compare_view
from lora_spectrum.ui.controls import render_controls
from lora_spectrum.ui.history import history_view
from lora_spectrum.ui.insight import insight_view
from lora_spectrum.ui.inspector import inspector_view
from lora_spectrum.ui.rank import rank_view
from lora_spectrum.ui.resources import config_path, get_workbench
from lora_spectrum.ui.text import md_escape

st.set_page_config(page_title="LoRA Spectrum", layout="wide")
try:
    settings, choice, _ = get_workbench(config_path())
except LoraSpectrumError as exc:  # a bad config file, an unusable demo: one plain message, no traceback
    st.error(md_escape(str(exc)))
    st.stop()
base_section(settings, choice)  # may switch the shared base (and rerun)
engine, catalog = choice.engine, choice.catalog()

st.title("LoRA Spectrum")
if choice.is_demo:
    st.warning(md_escape(engine.note))
fuse = engine.fuse_mode + (f" ({engine.fuse_decision.removeprefix('fuse auto: ')})" if engine.fuse_decision else "")
st.caption(md_escape(f"Base: {engine.base_id} ({engine.family.name}, {engine.device.type}, {str(engine.dtype)[6:]}) · "
                     f"fuse {fuse} · compile {'on' if engine.compiled else 'off'} · LoRAs: {catalog.folder}"),
           help=md_escape(engine.compile_note))
pool = getattr(engine, "executor", None)  # executor: ray, the renders go to its workers
if pool is not None:
    st.caption(md_escape(pool.summary))
    for problem in pool.problems:
        st.warning(md_escape(problem))

controls = render_controls(catalog, engine.defaults, choice.prompt, settings.batch_epochs, engine.family.name)
st.session_state.setdefault("view", "Compare")
view = st.segmented_control("View", ["Compare", "Rank", "Insight", "History", "Inspector"], key="view",
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
