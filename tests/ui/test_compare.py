"""Compare through AppTest: a grid with the base column, captions that never wrap inside a label, and downloads
named after the series, epochs and time; routed batches; busy; several prompts as rows; the stale marker (what
differs, Render, the sidebar set back); Closer looks from the grid's own cells."""

from __future__ import annotations

import contextlib
import re

from streamlit.runtime.memory_media_file_storage import _calculate_file_id

from lora_spectrum.ui.resources import get_workbench
from lora_spectrum.ui.state import RESULT
from tests.ui.apptest import start

NBSP = "\u00a0"


def captions(at) -> list[str]:
    """The grid's image captions with their non-breaking spaces read as spaces."""
    return [c.replace(NBSP, " ").replace("\\", "") for im in at.main.image for c in im.captions]


def marker(at) -> str:
    """The stale marker's text ("" when the grid is what the sidebar says)."""
    return " ".join(w.value for w in at.main.warning if "not what the sidebar says" in w.value).replace("\\", "")


def test_render_a_grid_with_base_column_captions_and_downloads(app_config):
    at = start()
    assert any("Demo mode" in w.value for w in at.warning)
    assert any(c.value.replace("\\", "").startswith("Base: ") and "· fuse auto ·" in c.value for c in at.caption)
    at.sidebar.multiselect(key="epochs").set_value(["jimeng_20.safetensors", "jimeng_300.safetensors"])
    at.button(key="render").click().run()
    assert not at.exception, at.exception
    raw = [c for im in at.main.image for c in im.captions]
    # A label never wraps inside itself: "epoch 20", "strength 1" and "seed 1" hold non-breaking spaces.
    for expected in ("base · seed\u00a01", "epoch\u00a020 · strength\u00a01 · seed\u00a01",
                     "epoch\u00a0300 · strength\u00a01 · seed\u00a01"):
        assert expected in raw, raw
    buttons = {b.label: b.proto for b in at.get("download_button")}
    assert {"Grid PNG", "Manifest", "All cells (zip)", "Report (HTML)"} <= set(buttons)
    # Downloads are named after the series, its epochs and when the grid was rendered (the run's time, UTC).
    # Streamlit names a download's file by an id hashed from its bytes, type and file name.
    state = at.session_state[RESULT]
    when = re.sub(r"^(\d{4})(\d\d)(\d\d)-(\d\d)(\d\d).*", r"\1-\2-\3_\4\5", state["run_id"])
    stem = f"jimeng_e20-e300_{when}"
    for label, key, name, kind in (("Grid PNG", "grid", "grid.png", "image/png"),
                                   ("Manifest", "manifest", "manifest.json", "application/json"),
                                   ("All cells (zip)", "zip", "cells.zip", "application/zip")):
        data = state["downloads"][key]
        data = data.encode() if isinstance(data, str) else data
        assert _calculate_file_id(data, kind, f"{stem}_{name}") in buttons[label].url, (label, name)
    assert not marker(at), "a grid just rendered is what the sidebar says"
    assert any("swap" in c.value for c in at.main.caption)
    # fuse: auto says what it decided from the renders it measured (the rule itself: tests/render/test_fuse_policy.py);
    # the caption above the grid is drawn before the render, so the next run shows it.
    at.run()
    assert any("· fuse auto (" in c.value.replace("\\", "") for c in at.caption), [c.value for c in at.caption]


def test_epochs_per_batch_renders_the_same_grid_in_routed_batches(app_config, tmp_path):
    config, _ = app_config
    config.write_text(config.read_text(encoding="utf-8") + "batch_epochs: 3\n", encoding="utf-8")
    at = start()
    assert at.number_input(key="batch_epochs").value == 3, "the config sets the starting value"
    at.sidebar.multiselect(key="epochs").set_value(["jimeng_20.safetensors", "jimeng_150.safetensors",
                                                      "jimeng_300.safetensors"])
    at.button(key="render").click().run()
    assert not at.exception, at.exception
    for expected in ("base · seed 1", "epoch 20 · strength 1 · seed 1", "epoch 300 · strength 1 · seed 1"):
        assert expected in captions(at), captions(at)
    _, choice, _ = get_workbench(str(config))
    kinds = [r.kind for r in choice.engine.hotswap.history]
    assert kinds.count("routed") == 1, kinds  # base + 3 epochs in calls of 3 and 1
    assert choice.engine.hotswap.get_active_adapter()[0].endswith("jimeng_300.safetensors")


def test_busy_workbench_says_so_instead_of_queueing(app_config):
    config, _ = app_config
    _, choice, _ = get_workbench(str(config))
    engine = choice.engine
    with contextlib.ExitStack() as held:  # two runs of other sessions hold the engine (max_queued_renders: 2)
        for _ in range(2):
            held.enter_context(engine.admit())
        at = start()
        at.button(key="render").click().run()
        assert any("busy" in w.value for w in at.warning), [w.value for w in at.warning]
        assert not at.main.image
    at.button(key="render").click().run()
    assert at.main.image, "renders again once the others finished"


def test_with_executor_ray_the_app_renders_on_its_workers_and_says_so(app_config, tmp_path):
    import json

    config, _ = app_config
    config.write_text(config.read_text(encoding="utf-8") + "executor: ray\nworkers: 2\nfuse: off\n", encoding="utf-8")
    try:
        at = start()
        assert any(c.value.replace("\\", "").startswith("ray: 2 worker(s): worker-0 (") for c in at.caption)
        at.sidebar.multiselect(key="epochs").set_value(["jimeng_20.safetensors", "jimeng_150.safetensors"])
        at.button(key="render").click().run()
        assert not at.exception, at.exception
        for expected in ("base · seed 1", "epoch 20 · strength 1 · seed 1", "epoch 150 · strength 1 · seed 1"):
            assert expected in captions(at), captions(at)
        manifest = json.loads(next((tmp_path / "runs").glob("*/manifest.json")).read_text())
        assert {c["worker"] for c in manifest["cells"]} == {"worker-0", "worker-1"}
    finally:
        get_workbench(str(config))[1].engine.executor.close()


def test_several_prompts_are_rows_and_a_changed_sidebar_marks_the_grid_stale(app_config):
    at = start()
    at.sidebar.multiselect(key="epochs").set_value(["jimeng_20.safetensors", "jimeng_300.safetensors"])
    at.sidebar.text_area(key="prompt").set_value("a red circle")
    at.sidebar.text_area(key="more_prompts").set_value("a blue triangle\n\na red circle\n")  # blank, repeated: once
    at.sidebar.text_input(key="strengths").set_value("0.6, 1")
    at.button(key="render").click().run()
    assert not at.exception, at.exception
    plan = at.session_state[RESULT]["plan"]
    assert plan.prompts == ["a red circle", "a blue triangle"] and plan.strengths == [0.6, 1.0]
    cells = at.session_state[RESULT]["cells"]
    assert len(cells) == 2 * (2 * 2 + 1), "two prompts x (two epochs x two strengths, and the base)"
    assert {c.prompt for c in cells} == {"a red circle", "a blue triangle"} and all(c.png for c in cells)
    assert not marker(at)
    # 1. The sidebar changes: the grid stays, marked stale, with what differs in words.
    at.sidebar.text_input(key="seeds").set_value("2")
    at.sidebar.toggle(key="include_base").set_value(False)
    at.sidebar.text_area(key="more_prompts").set_value("")
    at.number_input(key="steps").set_value(3).run()
    said = marker(at)
    for line in ("seeds: the grid has 1, the sidebar 2", "base column: the grid has shown, the sidebar not shown",
                 "prompt: the grid has “a red circle” / “a blue triangle”, the sidebar “a red circle”",
                 "sampling: the grid has 2 steps, the sidebar 3 steps"):
        assert line in said, said
    assert "strengths" not in said and "epochs" not in said, said
    assert at.session_state[RESULT]["cells"] is cells, "the grid on screen is still the one rendered"
    # 2. Set the sidebar to this grid: every widget says the grid's values again, and the marker goes.
    at.button(key="stale_to_sidebar").click().run()
    assert not at.exception, at.exception
    assert at.sidebar.text_input(key="seeds").value == "1" and at.sidebar.toggle(key="include_base").value
    assert at.sidebar.text_area(key="more_prompts").value == "a blue triangle"
    assert at.number_input(key="steps").value == 2 and not marker(at)
    # 3. The marker's Render renders what the sidebar says.
    at.sidebar.multiselect(key="epochs").set_value(["jimeng_300.safetensors"])
    at.sidebar.text_input(key="strengths").set_value("1").run()
    assert "epochs: the grid has epoch 20, epoch 300, the sidebar epoch 300" in marker(at), marker(at)
    assert "strengths: the grid has 0.6, 1, the sidebar 1" in marker(at)
    at.button(key="render_stale").click().run()
    assert not at.exception, at.exception
    assert not marker(at)
    assert {(c.label, c.strength, c.seed) for c in at.session_state[RESULT]["cells"]} == {
        ("base", 0.0, 1), ("epoch 300", 1.0, 1)}
    assert {"base · seed 1", "epoch 300 · strength 1 · seed 1"} <= set(captions(at))


def test_closer_looks_take_their_rows_and_labels_from_the_grid_cells(app_config):
    at = start()
    at.sidebar.multiselect(key="epochs").set_value(["jimeng_20.safetensors", "jimeng_300.safetensors"])
    at.sidebar.text_input(key="strengths").set_value("0.6, 1")
    at.button(key="render").click().run()
    run_id = at.session_state[RESULT]["run_id"]
    assert at.selectbox(key=f"zoom_row_{run_id}").options == ["strength 0.6 · seed 1", "strength 1 · seed 1"]
    # The sidebar moves on (strength 1, another seed): the rows are still the grid's, each crop says what it is.
    at.sidebar.text_input(key="strengths").set_value("1")
    at.sidebar.text_input(key="seeds").set_value("5").run()
    assert at.selectbox(key=f"zoom_row_{run_id}").options == ["strength 0.6 · seed 1", "strength 1 · seed 1"]
    at.selectbox(key=f"zoom_row_{run_id}").select_index(0).run()
    zoom_tab, overlay_tab = at.main.expander[0].tabs
    crops = [c.replace(NBSP, " ").replace("\\", "") for im in zoom_tab.image for c in im.captions]
    assert crops == ["base · seed 1", "epoch 20 · strength 0.6 · seed 1", "epoch 300 · strength 0.6 · seed 1"]
    cells = {(c.column, c.strength): c for c in at.session_state[RESULT]["cells"]}
    assert cells[(1, 0.6)].image.tobytes() != cells[(1, 1.0)].image.tobytes(), "the strengths differ in pixels"
    # The overlay reads the same rows: base against epoch 300 at strength 0.6.
    at.selectbox(key=f"ov_row_{run_id}").select_index(0).run()
    overlay = [c.replace("\\", "") for im in at.main.expander[0].tabs[1].image for c in im.captions]
    assert overlay == ["base vs epoch 300, strength 0.6 · seed 1"], overlay
