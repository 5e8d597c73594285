"""Insight through AppTest: curves, the verdict before a probe (what the weight curves show, no pick, nothing green,
Ship choosing nothing), opening an epoch in Compare (the sidebar set, the grid rendered), chart titles drawn above
their charts in full, image measures one line per strength, the loss charts. The probe and the judged verdict:
test_probe.py."""

from __future__ import annotations

import json

from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df

from lora_spectrum.measures.columns import MEASURES
from lora_spectrum.ui.insight import CACHE
from lora_spectrum.ui.state import RESULT
from lora_spectrum.ui.text import md_escape
from tests.ui.apptest import start


def _no_auto_probe(config) -> None:
    """These tests are about Insight before a probe (and the random demo's probe takes minutes on a CPU)."""
    config.write_text(config.read_text(encoding="utf-8") + "auto_probe: false\n", encoding="utf-8")


def charts(at) -> dict[str, dict]:
    """The charts' specs by their title (the first chart of each), each title drawn in full above its chart (and
    kept as its description); ``rows`` holds the chart's data."""
    specs = {}
    for c in at.main.get("vega_lite_chart"):
        spec = json.loads(c.proto.spec)
        spec["rows"] = [r for ds in c.proto.datasets for r in convert_arrow_bytes_to_pandas_df(ds.data.data)
                        .to_dict("records")]
        specs.setdefault(spec.get("description"), spec)
    headings = {m.value.strip("*").replace("\\", "") for m in at.main.markdown}
    for title, spec in specs.items():
        assert title and title in headings, (title, headings)
        assert "title" not in spec or not spec["title"], "no title inside the chart, where it is cut"
    return specs


def test_insight_before_a_probe_shows_no_pick_and_opens_an_epoch(app_config):
    config, _ = app_config
    _no_auto_probe(config)
    at = start()
    at.sidebar.text_input(key="strengths").set_value("0.5, 1")
    at.button(key="render").click().run()  # a grid with the base column adds image measures
    at.segmented_control(key="view").set_value("Insight").run()
    assert not at.exception, at.exception
    # The verdict before a probe: its reason (what the weight curves show, that a probe must judge) in an info
    # box; no green pick anywhere, and Ship has no epoch chosen (never the most-trained one by default).
    verdict = at.session_state[CACHE][1]["verdict"]
    assert verdict["state"] == "needs probe" and verdict["epoch"] is None and verdict["file"] is None
    assert verdict["reason"].startswith("No pick yet") and "probe" in verdict["missing"]
    assert md_escape(verdict["reason"]) in [i.value for i in at.info]
    assert not at.success, [s.value for s in at.success]
    assert any("Not weighed yet: a probe" in c.value.replace("\\", "") for c in at.main.caption)
    assert at.selectbox(key="ship_epoch").value is None and at.button(key="ship_go").disabled
    assert "no verdict yet" in at.selectbox(key="ship_epoch").placeholder
    assert any("measure used: pixel" in c.value.replace("\\", "") for c in at.main.caption)
    # Titles above the charts, in full; the image measures of a grid of two strengths: one line per strength.
    specs = charts(at)
    weight_charts = {m.chart for m in MEASURES if m.group == "weights"}  # one chart each, from the one table
    assert weight_charts | {"distance from base", "spread across seeds"} <= set(specs), set(specs)
    change = specs["Change between epochs"]  # several measures in one chart: one line each, named
    assert change["encoding"]["color"]["field"] == "measure"
    assert {r["measure"] for r in change["rows"]} == {m.label for m in MEASURES if m.chart == "Change between epochs"}
    spec = specs["distance from base"]
    assert spec["encoding"]["color"]["field"] == "strength", "one line per strength, not a zig-zag through both"
    assert {r["strength"] for r in spec["rows"]} == {"0.5", "1"}
    assert len(spec["rows"]) == 2 * len({r["epoch"] for r in spec["rows"]}), "each epoch once per strength"
    # The preference is balanced until changed.
    assert at.segmented_control(key="preference_jimeng").value == "balanced"
    at.selectbox(key="insight_pick").set_value("jimeng_150.safetensors")
    at.button(key="insight_open").click().run()
    assert not at.exception, at.exception
    assert at.segmented_control(key="view").value == "Compare"
    assert at.sidebar.multiselect(key="epochs").value == ["jimeng_150.safetensors"]
    # Compare shows that epoch, rendered with the sidebar's prompt and seeds: the grid is what the sidebar says.
    plan = at.session_state[RESULT]["plan"]
    assert [None if e is None else e.name for e in plan.columns] == [None, "jimeng_150.safetensors"]
    assert not any("not what the sidebar says" in w.value for w in at.main.warning)


def test_insight_plots_loss_by_step_and_per_epoch(app_config, tmp_path):
    """Per-epoch tags count epochs, not steps: they get a chart of their own, with the epoch files marked."""
    from torch.utils.tensorboard import SummaryWriter

    config, _ = app_config
    _no_auto_probe(config)
    with SummaryWriter(str(tmp_path / "logs")) as w:
        for step in range(1, 61):
            w.add_scalar("loss/current", 1.0 / step, step)
        for epoch in (20, 50, 80):
            w.add_scalar("loss/epoch", 2.0 / epoch, epoch)
    config.write_text(config.read_text(encoding="utf-8") + f"logs: {tmp_path / 'logs'}\n", encoding="utf-8")
    at = start()
    at.segmented_control(key="view").set_value("Insight").run()
    assert not at.exception, at.exception
    titles = charts(at)
    by_step, per_epoch = titles["Training loss by step"], titles["Training loss per epoch"]
    assert any(c.value.replace("\\", "") == f"Training log: {tmp_path / 'logs'}" for c in at.main.caption)
    assert by_step["layer"][0]["encoding"]["x"]["field"] == "step"
    assert per_epoch["layer"][0]["encoding"]["x"]["field"] == "epoch"
    assert per_epoch["layer"][1]["mark"]["type"] == "rule", "the epoch files are marked"
