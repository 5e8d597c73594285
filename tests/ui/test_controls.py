"""The sidebar through AppTest: rescans, .bak hiding, unusable files with reasons, trigger words, values set by
another view (``show_in_sidebar``). Several prompts as rows and the stale marker: test_compare.py."""

from __future__ import annotations

import os
import shutil

from lora_spectrum.ui.state import PENDING
from tests.tiny import garbage
from tests.ui.apptest import epoch_options, start


def test_a_new_file_appears_and_a_bak_file_disappears_without_restart(app_config):
    _, loras = app_config
    at = start()
    assert "epoch 400" not in epoch_options(at)
    shutil.copy(loras / "jimeng_300.safetensors", loras / "jimeng_400.safetensors")
    at.button(key="rescan").click().run()
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


def test_trigger_words_insert_into_the_prompt(app_config):
    at = start()
    buttons = [b for b in at.sidebar.button if b.label == "jimeng style"]
    assert buttons
    at.sidebar.text_area(key="prompt").set_value("a blue square")
    buttons[0].click().run()
    assert at.sidebar.text_area(key="prompt").value == "jimeng style, a blue square"


def test_values_another_view_sets_land_in_the_sidebar_before_it_is_drawn(app_config):
    """``show_in_sidebar``: applied at the top of the next run (no widget drawn yet, so no Streamlit error); a value
    the widgets cannot hold (a sampler this base lacks, steps out of bounds) is left as it was."""
    at = start()
    steps, sampler = at.number_input(key="steps").value, at.selectbox(key="sampler").value
    at.session_state[PENDING] = {"prompt": "a blue triangle", "more_prompts": "a red circle", "seeds": "7, 8",
                                 "strengths": "0.5", "include_base": False, "epochs": ["jimeng_150.safetensors"],
                                 "steps": 999, "sampler": "no such sampler", "guidance": 2.5}
    at.run()
    assert not at.exception, at.exception
    assert at.sidebar.text_area(key="prompt").value == "a blue triangle"
    assert at.sidebar.text_area(key="more_prompts").value == "a red circle"
    assert at.sidebar.text_input(key="seeds").value == "7, 8" and at.sidebar.text_input(key="strengths").value == "0.5"
    assert not at.sidebar.toggle(key="include_base").value
    assert at.sidebar.multiselect(key="epochs").value == ["jimeng_150.safetensors"]
    assert at.number_input(key="guidance").value == 2.5
    assert at.number_input(key="steps").value == steps and at.selectbox(key="sampler").value == sampler
    assert PENDING not in at.session_state, "applied once"
