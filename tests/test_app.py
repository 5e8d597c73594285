"""The Streamlit app through Streamlit's own AppTest, on the offline demo: render a grid, rescans, .bak hiding,
unreadable files, busy handling, trigger words, plain-text metadata."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from lora_spectrum.ui.resources import CONFIG_ENV, get_workbench
from tests.tiny import garbage

APP = str(Path(__file__).resolve().parent.parent / "app.py")


@pytest.fixture
def app_config(tmp_path, demo_dir, monkeypatch):
    """A config of its own (so the shared engine is its own too) with the demo epochs copied into its loras."""
    loras = tmp_path / "loras"
    shutil.copytree(demo_dir / "loras", loras)
    config = tmp_path / "config.yaml"
    config.write_text(f"base: demo\ndemo: random\nloras: {loras}\ncache_dir: {tmp_path / 'cache'}\ndemo_dir: {demo_dir}\n"
                      f"device: cpu\n", encoding="utf-8")
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


def test_render_a_grid_with_base_column_captions_and_downloads(app_config):
    at = start()
    assert any("Demo mode" in w.value for w in at.warning)
    at.sidebar.multiselect(key="epochs").set_value(["jimeng_20.safetensors", "jimeng_300.safetensors"])
    at.button(key="render").click().run()
    assert not at.exception, at.exception
    captions = [c for im in at.main.image for c in im.captions]
    for expected in ("base · seed 1", "epoch 20 · strength 1 · seed 1", "epoch 300 · strength 1 · seed 1"):
        assert expected in captions, captions
    labels = {b.label for b in at.get("download_button")}
    assert {"Grid PNG", "Manifest", "All cells (zip)"} <= labels
    assert any("swap" in c.value for c in at.main.caption)


def test_epochs_per_batch_renders_the_same_grid_in_routed_batches(app_config, tmp_path):
    config, _ = app_config
    config.write_text(config.read_text(encoding="utf-8") + "batch_epochs: 3\n", encoding="utf-8")
    at = start()
    assert at.number_input(key="batch_epochs").value == 3, "the config sets the starting value"
    at.sidebar.multiselect(key="epochs").set_value(["jimeng_20.safetensors", "jimeng_150.safetensors",
                                                      "jimeng_300.safetensors"])
    at.button(key="render").click().run()
    assert not at.exception, at.exception
    captions = [c for im in at.main.image for c in im.captions]
    for expected in ("base · seed 1", "epoch 20 · strength 1 · seed 1", "epoch 300 · strength 1 · seed 1"):
        assert expected in captions, captions
    _, choice, _ = get_workbench(str(config))
    kinds = [r.kind for r in choice.engine.hotswap.history]
    assert kinds.count("routed") == 1, kinds  # base + 3 epochs in calls of 3 and 1
    assert choice.engine.hotswap.get_active_adapter()[0].endswith("jimeng_300.safetensors")


def test_a_new_file_appears_and_a_bak_file_disappears_without_restart(app_config):
    _, loras = app_config
    at = start()
    assert "epoch 400" not in epoch_options(at)
    shutil.copy(loras / "jimeng_300.safetensors", loras / "jimeng_400.safetensors")
    at.sidebar.button[0].click().run()  # Rescan
    assert "epoch 400" in epoch_options(at)
    os.rename(loras / "jimeng_50.safetensors", loras / "jimeng_50.safetensors.bak")
    at.run()
    assert "epoch 50" not in epoch_options(at)
    assert any(".bak" in c.value for c in at.sidebar.caption)


def test_unreadable_and_incomplete_files_are_listed_with_reasons_and_not_selectable(app_config):
    _, loras = app_config
    (loras / "jimeng_999.safetensors").write_bytes(garbage(1000))
    (loras / "jimeng_998.safetensors").write_bytes(b"")
    at = start()
    assert "epoch 999" not in epoch_options(at) and "epoch 998" not in epoch_options(at)
    table = at.sidebar.dataframe[0].value
    rows = {r["file"]: r for r in table.to_dict("records")}
    assert rows["jimeng_999.safetensors"]["state"] == "unreadable"
    assert "not a safetensors file" in rows["jimeng_999.safetensors"]["reason"]
    assert rows["jimeng_998.safetensors"]["state"] == "incomplete"


def test_a_file_for_another_model_family_is_listed_and_not_selectable(app_config):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    _, loras = app_config
    src = loras / "jimeng_300.safetensors"
    with safe_open(str(src), "pt") as f:
        meta = dict(f.metadata() or {})
    meta["ss_base_model_version"] = "sd_v1"  # an SD1.5 LoRA in an SDXL folder
    save_file(load_file(str(src)), str(loras / "jimeng_999.safetensors"), metadata=meta)
    at = start()
    assert "epoch 999" not in epoch_options(at) and "epoch 300" in epoch_options(at)
    rows = {r["file"]: r for r in at.sidebar.dataframe[0].value.to_dict("records")}
    assert rows["jimeng_999.safetensors"]["state"] == "incompatible"
    assert "made for sd1/2" in rows["jimeng_999.safetensors"]["reason"] and "the base is sdxl" in \
        rows["jimeng_999.safetensors"]["reason"]


def test_busy_workbench_says_so_instead_of_queueing(app_config):
    config, _ = app_config
    _, choice, _ = get_workbench(str(config))
    engine = choice.engine
    held = [engine._admission.acquire(blocking=False) for _ in range(2)]
    assert all(held)
    try:
        at = start()
        at.button(key="render").click().run()
        assert any("busy" in w.value for w in at.warning), [w.value for w in at.warning]
        assert not at.main.image
    finally:
        for _ in held:
            engine._admission.release()
    at.button(key="render").click().run()
    assert at.main.image, "renders again once the others finished"


def test_trigger_words_insert_into_the_prompt(app_config):
    at = start()
    buttons = [b for b in at.sidebar.button if b.label == "jimeng style"]
    assert buttons
    at.sidebar.text_area(key="prompt").set_value("a blue square")
    buttons[0].click().run()
    assert at.sidebar.text_area(key="prompt").value == "jimeng style, a blue square"


def test_inspector_shows_metadata_as_plain_text(app_config):
    _, loras = app_config
    from safetensors.torch import load_file, save_file

    sd = load_file(str(loras / "jimeng_20.safetensors"))
    nasty = "**bold** <script>alert(1)</script> [link](http://x)"
    save_file(sd, str(loras / "jimeng_21.safetensors"), metadata={"ss_epoch": "21", "modelspec.title": nasty,
                                                                   "modelspec.trigger_phrase": nasty})
    at = start()
    at.segmented_control(key="view").set_value("Inspector").run()
    at.selectbox(key="inspect_file").set_value("jimeng_21.safetensors").run()
    assert not at.exception
    values = [v for df in at.main.dataframe for v in df.value.astype(str).to_numpy().ravel()]
    assert nasty in values
    assert not any("<script>" in m.value for m in at.main.markdown)


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


def test_md_escape_leaves_no_markdown_or_html_active():
    from lora_spectrum.ui.text import md_escape

    nasty = "![x](https://e.x/p.png) **b** <img src=x> `c` [l](http://x) # h"
    escaped = md_escape(nasty)
    for active in ("![", "](", "**", "`c`", "[l]"):
        assert active not in escaped
    assert "\\<img" in escaped  # Streamlit never renders raw HTML in markdown; the bracket is escaped too
    assert escaped.replace("\\", "") == nasty


def test_a_bad_config_is_one_plain_message(tmp_path, monkeypatch):
    config = tmp_path / "bad.yaml"
    config.write_text("device: gpu\n", encoding="utf-8")
    monkeypatch.setenv(CONFIG_ENV, str(config))
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception
    assert any("device must be auto, cpu, cuda" in e.value for e in at.error)
