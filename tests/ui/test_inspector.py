"""The Inspector through AppTest: the file's fields as a list (algorithm, hash, key counts; no table that scrolls
inside itself, no raw None), metadata shown as plain text."""

from __future__ import annotations

import re

from tests.ui.apptest import start


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
    # The fields: one list, each "**field:** value", escaped; the algorithm and the whole sha256 among them.
    [fields] = [m.value for m in at.main.markdown if m.value.startswith("- **")]
    lines = dict(line[4:].replace("\\", "").split(":** ", 1) for line in fields.split("\n"))
    assert lines["algorithm"] == "lora" and lines["key format"] and lines["epoch"] == "21"
    assert re.fullmatch(r"[0-9a-f]{64}", lines["sha256"]) and lines["denoiser keys"].isdigit()
    assert lines["step"] == "not in the file" and "None" not in fields
    assert len(at.main.dataframe) == 1, "only the metadata is a table"
