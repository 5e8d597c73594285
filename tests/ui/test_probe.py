"""Insight's probe section through AppTest, on the shipped trained demo: Run probe renders the probe grid, the
style-against-fidelity chart marks the suggestion, and Open in Compare carries the epoch and the probe prompt."""

from __future__ import annotations

import json

from streamlit.testing.v1 import AppTest

from lora_spectrum.ui.resources import CONFIG_ENV
from tests.ui.apptest import APP

PROBES = """probe_set: quick
probes:
  quick:
    description: one prompt of each kind, one seed
    seeds: [11]
    style: [a red circle on a white background]
    new_context: [a blue triangle on a gray background]
    leak: [a green circle on a cream background]
"""


def _chart(at, title):
    for c in at.main.get("vega_lite_chart"):
        spec = json.loads(c.proto.spec)
        t = spec.get("title")
        if (t.get("text") if isinstance(t, dict) else t) == title:
            return spec, c
    return None, None


def test_run_probe_draws_the_probe_grid_the_trade_off_and_opens_in_compare(tmp_path, monkeypatch):
    config = tmp_path / "config.yaml"
    config.write_text(f"base: demo\ndemo: trained\ndevice: cpu\ncache_dir: {tmp_path / 'cache'}\n"
                      f"loras: {tmp_path / 'none'}\nruns_dir: {tmp_path / 'runs'}\nratings_dir: {tmp_path / 'ratings'}\n"
                      f"shipped_dir: {tmp_path / 'shipped'}\n" + PROBES, encoding="utf-8")
    monkeypatch.setenv(CONFIG_ENV, str(config))
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    at.segmented_control(key="view").set_value("Insight").run()
    assert not at.exception, at.exception
    assert at.selectbox(key="probe_set").value == "quick"
    assert any("Run a probe" in c.value for c in at.main.caption)
    at.button(key="probe_run_button").click().run()
    assert not at.exception, at.exception
    reason = next(s.value for s in at.success if "Suggestion" in s.value)
    assert "of the most style" in reason and "prompt fidelity" in reason
    measure = next(c.value for c in at.main.caption if c.value.startswith("Probe set quick"))
    assert "clip" in measure or "fallback" in measure
    epochs = [o for o in at.selectbox(key="probe_pick_file").options]
    assert len(epochs) >= 8
    # The probe grid: the base and every epoch for each of the three prompts.
    assert len(at.main.image) == 3 * (len(epochs) + 1)
    spec, _ = _chart(at, "Style against prompt fidelity")
    assert spec is not None
    assert any(layer["mark"].get("size") == 400 for layer in spec["layer"]), "the suggestion is ringed"
    starred = [m.value for m in at.main.markdown if "★" in m.value]
    assert len(starred) == 1 and starred[0].strip("*★ ") in reason, (starred, reason)
    assert _chart(at, "Leak into prompts without the trigger")[0] is not None
    assert epochs[1] == "epoch 6"
    at.selectbox(key="probe_pick_file").set_value("jimeng_6.safetensors")
    at.selectbox(key="probe_pick_prompt").set_value("a blue triangle on a gray background, jimeng style")
    at.button(key="probe_open").click().run()
    assert not at.exception, at.exception
    assert at.segmented_control(key="view").value == "Compare"
    assert at.sidebar.multiselect(key="epochs").value == ["jimeng_6.safetensors"]
    assert at.sidebar.text_area(key="prompt").value == "a blue triangle on a gray background, jimeng style"
