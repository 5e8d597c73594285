"""Insight through AppTest: curves, the verdict before a probe (what the weight curves show, no pick, nothing green,
Ship choosing nothing), opening an epoch, the loss charts. The probe and the judged verdict: test_probe.py."""

from __future__ import annotations

from lora_spectrum.ui.insight import CACHE
from lora_spectrum.ui.text import md_escape
from tests.ui.apptest import start


def _no_auto_probe(config) -> None:
    """These tests are about Insight before a probe (and the random demo's probe takes minutes on a CPU)."""
    config.write_text(config.read_text(encoding="utf-8") + "auto_probe: false\n", encoding="utf-8")


def test_insight_before_a_probe_shows_no_pick_and_opens_an_epoch(app_config):
    config, _ = app_config
    _no_auto_probe(config)
    at = start()
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
    assert any("measure used: pixel" in c.value for c in at.main.caption)
    # The preference is balanced until changed.
    assert at.segmented_control(key="preference_jimeng").value == "balanced"
    at.selectbox(key="insight_pick").set_value("jimeng_150.safetensors")
    at.button(key="insight_open").click().run()
    assert at.segmented_control(key="view").value == "Compare"
    assert at.sidebar.multiselect(key="epochs").value == ["jimeng_150.safetensors"]


def test_insight_plots_loss_by_step_and_per_epoch(app_config, tmp_path):
    """Per-epoch tags count epochs, not steps: they get a chart of their own, with the epoch files marked."""
    import json

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
    specs = [json.loads(c.proto.spec) for c in at.main.get("vega_lite_chart")]
    titles = {s.get("title", {}).get("text") if isinstance(s.get("title"), dict) else s.get("title"): s
              for s in specs}
    by_step = next(s for t, s in titles.items() if t and t.startswith("Training loss by step"))
    per_epoch = titles["Training loss per epoch"]
    assert by_step["layer"][0]["encoding"]["x"]["field"] == "step"
    assert per_epoch["layer"][0]["encoding"]["x"]["field"] == "epoch"
    assert per_epoch["layer"][1]["mark"]["type"] == "rule", "the epoch files are marked"
