"""The Inspector through AppTest: metadata shown as plain text."""

from __future__ import annotations

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
