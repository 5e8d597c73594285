"""History through AppTest: every Compare render is kept; Open puts it back into Compare without rendering (same
images) and sets the sidebar to it (no stale marker), Delete removes it; the oldest go first at runs_max."""

from __future__ import annotations

from lora_spectrum.ui.resources import get_workbench
from tests.ui.apptest import start


def test_a_render_is_kept_reopened_without_rendering_and_deleted(app_config, tmp_path):
    config, _ = app_config
    at = start()
    at.sidebar.multiselect(key="epochs").set_value(["jimeng_20.safetensors", "jimeng_300.safetensors"])
    at.button(key="render").click().run()
    assert not at.exception, at.exception
    assert "Report (HTML)" in {b.label for b in at.get("download_button")}  # its contents: tests/decision/
    prompt = at.sidebar.text_area(key="prompt").value
    # The sidebar moves on before the run is reopened.
    at.sidebar.text_area(key="prompt").set_value("a blue triangle")
    at.sidebar.text_input(key="seeds").set_value("4, 5")
    at.sidebar.text_input(key="strengths").set_value("0.5")
    at.sidebar.toggle(key="include_base").set_value(False)
    at.sidebar.multiselect(key="epochs").set_value(["jimeng_150.safetensors"])
    at.number_input(key="steps").set_value(5).run()
    # History lists it.
    at.segmented_control(key="view").set_value("History").run()
    assert not at.exception, at.exception
    runs = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]  # beside the runs: History's lock file
    assert len(runs) == 1 and (runs[0] / "manifest.json").is_file() and len(list((runs[0] / "cells").iterdir())) == 3
    text = (" ".join(m.value for m in at.main.markdown) + " ".join(c.value for c in at.main.caption)).replace("\\", "")
    assert "UTC** · 3 cell(s)" in text and "jimeng_20.safetensors" in text
    # Open: back in Compare, the same cells, nothing swapped or rendered.
    _, choice, _ = get_workbench(str(config))
    swaps = len(choice.engine.hotswap.history)
    at.button(key=f"hist_open_{runs[0].name}").click().run()
    assert not at.exception, at.exception
    assert at.segmented_control(key="view").value == "Compare"
    assert any("Reopened from History" in i.value for i in at.info)
    captions = [c.replace("\u00a0", " ") for im in at.main.image for c in im.captions]
    assert {"base · seed 1", "epoch 20 · strength 1 · seed 1", "epoch 300 · strength 1 · seed 1"} <= set(captions)
    assert len(choice.engine.hotswap.history) == swaps, "reopening renders nothing"
    # The sidebar says what the reopened grid shows, so nothing is marked stale.
    assert at.sidebar.text_area(key="prompt").value == prompt
    assert at.sidebar.text_input(key="seeds").value == "1" and at.sidebar.text_input(key="strengths").value == "1"
    assert at.sidebar.toggle(key="include_base").value and at.number_input(key="steps").value == 2
    assert at.sidebar.multiselect(key="epochs").value == ["jimeng_20.safetensors", "jimeng_300.safetensors"]
    assert not any("not what the sidebar says" in w.value for w in at.main.warning)
    # Delete.
    at.segmented_control(key="view").set_value("History").run()
    at.button(key=f"hist_del_{runs[0].name}").click().run()
    assert not at.exception, at.exception
    assert not runs[0].exists()
    assert any("No comparisons yet" in c.value for c in at.main.caption)


def test_the_oldest_run_goes_first_at_the_bound(app_config, tmp_path):
    config, _ = app_config
    config.write_text(config.read_text(encoding="utf-8") + "runs_max: 2\n", encoding="utf-8")
    at = start()
    for seeds in ("1", "2", "3"):
        at.sidebar.text_input(key="seeds").set_value(seeds)
        at.button(key="render").click().run()
        assert not at.exception, at.exception
    at.segmented_control(key="view").set_value("History").run()
    kept = sorted(p.name for p in (tmp_path / "runs").iterdir() if p.is_dir())
    assert len(kept) == 2
    assert {at.button(key=f"hist_open_{k}").label for k in kept} == {"Open"}
    text = " ".join(c.value for c in at.main.caption).replace("\\", "")
    assert "seeds 3" in text and "seeds 2" in text and "seeds 1 ·" not in text


def test_a_grid_of_several_prompts_is_listed_with_every_prompt_and_reopens_with_them(app_config, tmp_path):
    at = start()
    at.sidebar.multiselect(key="epochs").set_value(["jimeng_20.safetensors"])
    at.sidebar.text_area(key="prompt").set_value("a red circle")
    at.sidebar.text_area(key="more_prompts").set_value("a blue square\n\na blue square\n")  # repeats dropped
    at.button(key="render").click().run()
    assert not at.exception, at.exception
    at.sidebar.text_area(key="more_prompts").set_value("")
    at.segmented_control(key="view").set_value("History").run()
    text = " ".join(c.value for c in at.main.caption).replace("\\", "")
    assert "Prompts: a red circle | a blue square · seeds 1" in text, text
    run = next(p for p in (tmp_path / "runs").iterdir() if p.is_dir())
    at.button(key=f"hist_open_{run.name}").click().run()
    assert not at.exception, at.exception
    assert at.sidebar.text_area(key="prompt").value == "a red circle"
    assert at.sidebar.text_area(key="more_prompts").value.strip() == "a blue square"
