"""AppTest helpers shared by the view tests: a config of its own on the demo, a started app."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from lora_spectrum.ui.resources import CONFIG_ENV

APP = str(Path(__file__).resolve().parents[2] / "app.py")


@pytest.fixture
def app_config(tmp_path, demo_dir, monkeypatch):
    """A config of its own (so the shared engine is its own too) with the demo epochs copied into its loras."""
    loras = tmp_path / "loras"
    shutil.copytree(demo_dir / "loras", loras)
    config = tmp_path / "config.yaml"
    config.write_text(f"base: demo\ndemo: random\nloras: {loras}\ncache_dir: {tmp_path / 'cache'}\ndemo_dir: {demo_dir}\n"
                      f"device: cpu\nruns_dir: {tmp_path / 'runs'}\nratings_dir: {tmp_path / 'ratings'}\n"
                      f"shipped_dir: {tmp_path / 'shipped'}\n"
                      # The app probes every series it opens (auto_probe: true, hundreds of renders on a CPU); the view
                      # tests probe only where they test it (tests/ui/test_probe.py).
                      "auto_probe: false\n", encoding="utf-8")
    monkeypatch.setenv(CONFIG_ENV, str(config))
    return config, loras


def start(steps=2) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=240)
    at.run()
    assert not at.exception, at.exception
    at.sidebar.text_input(key="seeds").set_value("1")
    at.number_input(key="steps").set_value(steps)
    return at


def epoch_options(at):
    return list(at.sidebar.multiselect(key="epochs").options)


def ship_from_insight(at: AppTest, note: str = "") -> AppTest:
    """Ship this epoch from Insight's panel: the note typed, the first epoch chosen by hand (no verdict without a
    probe), shipped; the app raised nothing."""
    at.segmented_control(key="view").set_value("Insight").run()
    assert not at.exception, at.exception
    if note:
        at.text_input(key="ship_note").set_value(note).run()
    at.selectbox(key="ship_epoch").select_index(0).run()
    at.button(key="ship_go").click().run()
    assert not at.exception, at.exception
    return at
