"""The app as a whole through AppTest: one plain message for a bad config."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from lora_spectrum.ui.resources import CONFIG_ENV
from tests.ui.apptest import APP


def test_a_bad_config_is_one_plain_message(tmp_path, monkeypatch):
    config = tmp_path / "bad.yaml"
    config.write_text("device: gpu\n", encoding="utf-8")
    monkeypatch.setenv(CONFIG_ENV, str(config))
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception
    assert any("device must be auto, cpu, cuda" in e.value for e in at.error)
