"""The process-wide objects every browser session shares: settings, the resident engine (or the demo) and the
catalog. Created once per server process by ``st.cache_resource``; the engine guards itself with its own lock."""

from __future__ import annotations

import os

import streamlit as st

from lora_spectrum.execution.startup import open_workbench
from lora_spectrum.loras.catalog import Catalog
from lora_spectrum.settings import Settings, load_settings
from lora_spectrum.workbench import EngineChoice

CONFIG_ENV = "LORA_SPECTRUM_CONFIG"  # another settings file, e.g. for tests or a second base


def config_path() -> str | None:
    return os.environ.get(CONFIG_ENV) or None


@st.cache_resource(show_spinner="Loading the base model (once per server process)...")
def get_workbench(path: str | None) -> tuple[Settings, EngineChoice, Catalog]:
    """Settings, the engine (configured base, else the demo with the reason) and the catalog of its loras."""
    settings = load_settings(path)
    choice = open_workbench(settings, allow_demo=True)
    return settings, choice, choice.catalog()
