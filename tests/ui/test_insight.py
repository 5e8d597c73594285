"""Insight through AppTest: curves, the suggestion, opening an epoch, the loss charts."""

from __future__ import annotations

from tests.ui.apptest import start


def test_insight_view_shows_curves_a_suggestion_and_opens_an_epoch(app_config):
    at = start()
    at.button(key="render").click().run()  # a grid with the base column adds image measures
    at.segmented_control(key="view").set_value("Insight").run()
    assert not at.exception, at.exception
    assert any("Suggestion" in s.value for s in at.success)
    assert any("measure used: pixel" in c.value for c in at.main.caption)
    at.selectbox(key="insight_pick").set_value("jimeng_150.safetensors")
    at.button(key="insight_open").click().run()
    assert at.segmented_control(key="view").value == "Compare"
    assert at.sidebar.multiselect(key="epochs").value == ["jimeng_150.safetensors"]


def test_insight_plots_loss_by_step_and_per_epoch(app_config, tmp_path):
    """Per-epoch tags count epochs, not steps: they get a chart of their own, with the epoch files marked."""
    import json

    from torch.utils.tensorboard import SummaryWriter

    config, _ = app_config
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
