"""Insight's probe section through AppTest, on the shipped trained demo: opening Insight probes the series by itself
(``auto_probe``) once, the probe grid and the style-against-fidelity chart show the verdict's points, front and pick,
the preference control changes the verdict, Ship starts at the pick, and Open in Compare sets the sidebar to the probe
grid's row (the epoch and the base at the probe prompt, its seeds and sampling) and shows it, from the render cache.
Without ``auto_probe`` nothing is picked until Run probe."""

from __future__ import annotations

import json

import pytest
from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df
from streamlit.testing.v1 import AppTest

from lora_spectrum.settings import Settings
from lora_spectrum.ui.insight import CACHE
from lora_spectrum.ui.probe import PROBE, _starts_by_itself
from lora_spectrum.ui.resources import CONFIG_ENV
from lora_spectrum.ui.state import RESULT
from lora_spectrum.ui.text import md_escape
from tests.ui.apptest import APP

# One prompt of each kind and one seed: 27 small renders.
PROBES = """probe_set: quick
probes:
  quick:
    description: one prompt of each kind, one seed
    seeds: [11]
    style: [a red circle on a white background]
    new_context: [a green triangle on a white background]
    leak: [a green circle on a cream background]
"""


@pytest.fixture(scope="module")
def renders(tmp_path_factory):
    """One render cache for this module: the second probe of the same set is served from it (same cells)."""
    return tmp_path_factory.mktemp("renders")


def _app(tmp_path, monkeypatch, renders, extra: str = "") -> AppTest:
    config = tmp_path / "config.yaml"
    config.write_text(f"base: demo\ndemo: trained\ndevice: cpu\ncache_dir: {renders}\n"
                      f"loras: {tmp_path / 'none'}\nruns_dir: {tmp_path / 'runs'}\nratings_dir: {tmp_path / 'ratings'}\n"
                      f"shipped_dir: {tmp_path / 'shipped'}\n" + PROBES + extra, encoding="utf-8")
    monkeypatch.setenv(CONFIG_ENV, str(config))
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    assert not at.exception, at.exception
    return at


def _chart(at, title):
    """The chart drawn under ``title`` (a Markdown heading above it, in full; the chart's description)."""
    for c in at.main.get("vega_lite_chart"):
        spec = json.loads(c.proto.spec)
        if spec.get("description") == title:
            assert f"**{md_escape(title)}**" in [m.value for m in at.main.markdown], title
            return spec, c
    return None, None


def _verdict(at) -> dict:
    return at.session_state[CACHE][1]["verdict"]


def test_insight_probes_by_itself_and_every_surface_shows_the_one_verdict(tmp_path, monkeypatch, renders):
    at = _app(tmp_path, monkeypatch, renders)
    at.segmented_control(key="view").set_value("Insight").run()
    assert not at.exception, at.exception
    # 1. The probe ran by itself (no button pressed), with the configured set.
    assert at.selectbox(key="probe_set").value == "quick"
    record = at.session_state[PROBE]["jimeng"]
    assert record["status"] == "done" and record["set"] == "quick"
    # 2. The verdict: judged on the probe, a middle epoch, its reason green.
    verdict = _verdict(at)
    assert verdict["state"] == "measures" and verdict["epoch"] is not None
    assert [s.value for s in at.success] == [md_escape(verdict["reason"])]
    assert verdict["reason"].startswith(f"epoch {verdict['epoch']} has the best balance")
    facts = next(c.value for c in at.main.caption if "front" in c.value)
    assert "confidence" in facts and all(f"epoch {e}" in facts for e in verdict["front"]), facts
    # 3. The chart and the grid read the verdict's points: the pick ringed, starred; each measure with its error.
    spec, element = _chart(at, "Style against prompt fidelity")
    assert spec is not None
    assert any(layer["mark"].get("size") == 400 for layer in spec["layer"]), "the pick is ringed"
    rows = [r for ds in element.proto.datasets for r in convert_arrow_bytes_to_pandas_df(ds.data.data).to_dict(
        "records") if "style_se" in r]
    drawn = {(r["epoch"], r["style"], r["fidelity"]) for r in rows if r["label"] != "base"}
    assert drawn == {(p["epoch"], p["style"], p["fidelity"]) for p in verdict["points"]}
    assert {r["epoch"] for r in rows if r["front"]} == set(verdict["front"])
    starred = [m.value for m in at.main.markdown if "★" in m.value]
    assert [s.strip("*★ ") for s in starred] == [f"epoch {verdict['epoch']}"], starred
    table = at.main.dataframe[0].value
    assert {"style ±", "fidelity ±", "on the front"} <= set(table.columns)
    epochs = [o for o in at.selectbox(key="probe_pick_file").options]
    assert len(epochs) >= 8
    assert len(at.main.image) == 3 * (len(epochs) + 1), "the base and every epoch for each of the three prompts"
    assert _chart(at, "Leak into prompts without the trigger")[0] is not None
    # 4. Ship starts at the verdict's pick (before a probe it starts at nothing: the test below).
    assert at.selectbox(key="ship_epoch").value == verdict["epoch"]
    # 5. A rerun does not probe again (the record would be replaced).
    record["seen"] = True
    at.run()
    assert at.session_state[PROBE]["jimeng"].get("seen")
    # 6. The preference: kept per series, the verdict decided again, its reason names it.
    at.segmented_control(key="preference_jimeng").set_value("fidelity").run()
    assert not at.exception, at.exception
    assert at.session_state["preference_jimeng"] == "fidelity"
    verdict = _verdict(at)
    assert verdict["preference"] == "fidelity" and "(fidelity first)" in verdict["reason"]
    assert [s.value for s in at.success] == [md_escape(verdict["reason"])]
    assert at.selectbox(key="ship_epoch").value == verdict["epoch"]
    at.segmented_control(key="view").set_value("Compare").run()
    at.segmented_control(key="view").set_value("Insight").run()
    assert at.segmented_control(key="preference_jimeng").value == "fidelity", "kept while another view is open"
    # 7. Open in Compare with the epoch and the probe prompt.
    at.selectbox(key="probe_pick_file").set_value("jimeng_6.safetensors")
    at.selectbox(key="probe_pick_prompt").set_value("a green triangle on a white background, jimeng style")
    at.button(key="probe_open").click().run()
    assert not at.exception, at.exception
    assert at.segmented_control(key="view").value == "Compare"
    assert at.sidebar.multiselect(key="epochs").value == ["jimeng_6.safetensors"]
    assert at.sidebar.text_area(key="prompt").value == "a green triangle on a white background, jimeng style"
    assert at.sidebar.text_input(key="seeds").value == "11" and at.sidebar.toggle(key="include_base").value
    # Compare shows that row of the probe grid, the same renders (from the cache), and nothing is marked stale.
    cells = at.session_state[RESULT]["cells"]
    assert {(c.file, c.seed) for c in cells} == {(None, 11), ("jimeng_6.safetensors", 11)}
    assert all(c.cached for c in cells), "served from the render cache the probe filled"
    assert not any("not what the sidebar says" in w.value for w in at.main.warning)


def test_without_auto_probe_nothing_is_picked_until_run_probe(tmp_path, monkeypatch, renders):
    at = _app(tmp_path, monkeypatch, renders, "auto_probe: false\n")
    at.segmented_control(key="view").set_value("Insight").run()
    assert not at.exception, at.exception
    # Before a probe: what the weight curves show, in an info box; nothing green; Ship chooses nothing.
    verdict = _verdict(at)
    assert verdict["state"] == "needs probe" and verdict["epoch"] is None and "probe" in verdict["missing"]
    assert not at.success and PROBE not in at.session_state
    assert md_escape(verdict["reason"]) in [i.value for i in at.info] and verdict["reason"].startswith("No pick yet")
    assert at.selectbox(key="ship_epoch").value is None and at.button(key="ship_go").disabled
    assert any("Run a probe" in c.value for c in at.main.caption)
    # Run probe (served from the cache the first test filled): the verdict picks, and Ship follows.
    at.button(key="probe_run_button").click().run()
    assert not at.exception, at.exception
    verdict = _verdict(at)
    assert verdict["state"] == "measures" and [s.value for s in at.success] == [md_escape(verdict["reason"])]
    assert at.selectbox(key="ship_epoch").value == verdict["epoch"] and not at.button(key="ship_go").disabled


@pytest.mark.parametrize("record, files, auto, starts", [
    ({}, ("a",), True, True),  # never probed
    ({"files": ("a",), "status": "done"}, ("a",), True, False),
    ({"files": ("a",), "status": "running"}, ("a",), True, False),  # started (a click elsewhere stopped it)
    ({"files": ("a",), "status": "cancelled"}, ("a",), True, False),
    ({"files": ("a",), "status": "failed"}, ("a",), True, False),
    ({"files": ("a",), "status": "busy"}, ("a",), True, True),  # the engine was busy: tried again
    ({"files": ("a",), "status": "done"}, ("a", "b"), True, True),  # a new epoch file arrived
    ({}, ("a",), False, False),  # auto_probe: false
])
def test_the_probe_starts_by_itself_once_per_series_files(record, files, auto, starts):
    assert _starts_by_itself(Settings(auto_probe=auto), record, files) is starts
