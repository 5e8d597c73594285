"""Ship through AppTest: the card shown as the hub shows it (its front matter as a YAML block, its body as
Markdown) with the raw file to download."""

from __future__ import annotations

import yaml

from lora_spectrum.decision.card_front_matter import split_front_matter
from tests.ui.apptest import start


def test_the_shipped_card_is_shown_rendered_with_its_front_matter_and_offered_raw(app_config, tmp_path):
    at = start()
    at.segmented_control(key="view").set_value("Insight").run()
    assert not at.exception, at.exception
    at.text_input(key="ship_note").set_value("clean *lines*").run()
    at.selectbox(key="ship_epoch").select_index(0).run()  # no verdict without a probe: the person chooses
    at.button(key="ship_go").click().run()
    assert not at.exception, at.exception
    raw = (tmp_path / "shipped" / "jimeng.md").read_text(encoding="utf-8")
    # The raw file as the download.
    assert [d.proto.label for d in at.get("download_button")].count("Model card") == 1
    # The front matter as a YAML block, the body rendered as Markdown (never the front matter inside it).
    front = [c.value for c in at.code if c.language == "yaml"]
    assert len(front) == 1 and yaml.safe_load(front[0]) == yaml.safe_load(raw.split("---\n")[1])
    body = [m.value for m in at.markdown if "## Why this epoch" in m.value]
    assert len(body) == 1 and body[0].startswith("# jimeng") and "tags:" not in body[0]
    assert "Note: clean \\*lines\\*" in body[0], "text from the person stays plain text"
    assert "![" not in body[0], "images beside the card are not served here: their alt text instead"
    assert body[0].strip() == split_front_matter(raw)[1].strip().replace("![The grid of epochs compared](jimeng.grid.png)",
                                                         "The grid of epochs compared")
