"""The workbench in both languages through AppTest: a Chinese browser gets Chinese, the sidebar's picker switches
for the session without losing what was typed, and every view renders in English and in Chinese with no English
sentence left over (file names, prompts and numbers stay as they are)."""

from __future__ import annotations

import re

import pytest
from streamlit.testing.v1 import AppTest

from lora_spectrum import language
from tests.ui.apptest import APP, ship_from_insight

ZH = language.translator("zh_CN")
VIEWS = ("Compare", "Rank", "Insight", "History", "Inspector")
CJK = re.compile(r"[\u4e00-\u9fff]")
SENTENCE = re.compile(r"\b[a-z]{3,}\b[ ,;:]+\b[a-z]{2,}\b[ ,;:]+\b[a-z]{2,}\b")  # three English words in a row


def zh(message: str) -> str:
    text = ZH.gettext(message)
    assert text != message, f"{message!r} has no Chinese"
    return text


def started(locale: str | None = None, choice: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=240)
    if locale:
        at.context["locale"] = locale
    at.run()
    assert not at.exception, at.exception
    if choice:
        at.sidebar.selectbox(key="language").set_value(choice).run()
        assert not at.exception, at.exception
    at.sidebar.text_input(key="seeds").set_value("1")
    at.number_input(key="steps").set_value(2)
    return at


def shown_texts(at: AppTest) -> list[str]:
    """What a person reads on the page: labels, help, captions, headings, messages, markdown, tabs, expanders."""
    texts = []
    for kind in ("button", "text_input", "text_area", "number_input", "selectbox", "multiselect", "toggle", "radio",
                 "checkbox", "slider", "select_slider", "download_button"):
        for w in at.get(kind):
            texts += [getattr(w, "label", "") or "", getattr(w, "help", "") or ""]
    for kind in ("caption", "markdown", "subheader", "header", "title", "info", "warning", "error", "success"):
        texts += [str(getattr(e, "value", "") or "") for e in at.get(kind)]
    texts += [str(getattr(t, "label", "")) for t in at.get("tab")] + [str(getattr(x, "label", "")) for x in
                                                                      at.get("expander")]
    return [t.replace("\\", "") for t in texts if t]


def english_left(at: AppTest, data: tuple[str, ...]) -> list[str]:
    """Texts without any Chinese that read as an English phrase once the data in them is taken out."""
    left = []
    for text in shown_texts(at):
        plain = text
        for d in data:
            plain = plain.replace(d, " ")
        plain = re.sub(r"\S+\.(safetensors|yaml|json|png)\b|\S*/\S*", " ", plain)  # file names and paths
        if not CJK.search(text) and SENTENCE.search(plain.lower()):
            left.append(text)
    return left


def test_a_chinese_browser_gets_the_workbench_in_chinese(app_config):
    at = started(locale="zh-CN")
    assert at.sidebar.selectbox(key="language").value == "auto"
    assert at.button(key="render").label == zh("Render")
    assert at.sidebar.text_input(key="seeds").label == zh("Seeds")
    assert at.sidebar.multiselect(key="epochs").label == zh("Epochs to compare")
    assert any(zh("Demo mode: a tiny base with random weights and synthetic demo epochs (not a real model).") in
               w.value.replace("\\", "") for w in at.warning)
    assert zh("Epochs") in [s.value for s in at.sidebar.subheader]


def test_an_english_browser_and_no_locale_get_english(app_config):
    for locale in ("en-US", None):
        at = started(locale=locale)
        assert at.button(key="render").label == "Render"
        assert at.sidebar.text_input(key="seeds").label == "Seeds"


def test_the_picker_switches_for_the_session_and_keeps_what_was_typed(app_config):
    at = started(locale="en-US")
    at.sidebar.text_area(key="prompt").set_value("ink, a red circle")
    at.sidebar.text_input(key="seeds").set_value("7, 8")
    at.run()
    at.sidebar.selectbox(key="language").set_value("zh_CN").run()
    assert not at.exception, at.exception
    assert at.button(key="render").label == zh("Render")
    assert at.sidebar.text_area(key="prompt").value == "ink, a red circle"  # prompts are never translated
    assert at.sidebar.text_input(key="seeds").value == "7, 8"
    at.run()  # the choice lasts for the session
    assert at.button(key="render").label == zh("Render")
    at.sidebar.selectbox(key="language").set_value("en").run()
    assert at.button(key="render").label == "Render"


@pytest.mark.parametrize("code", ["en", "zh_CN"])
def test_every_view_renders_in_both_languages(app_config, code):
    at = started(choice=code)
    at.sidebar.multiselect(key="epochs").set_value(["jimeng_20.safetensors", "jimeng_300.safetensors"])
    at.button(key="render").click().run()
    assert not at.exception, at.exception
    captions = [c.replace("\u00a0", " ") for im in at.main.image for c in im.captions]  # labels keep together
    seed = "seed 1" if code == "en" else zh("seed {seed}").format(seed=1)
    assert any(seed in c for c in captions), captions
    data = (at.sidebar.text_area(key="prompt").value, "LoRA Spectrum")
    for view in VIEWS:
        at.segmented_control(key="view").set_value(view).run()
        assert not at.exception, (view, at.exception)
        assert at.segmented_control(key="view").value == view  # the value stays English; what is shown is not
        if code == "zh_CN":
            assert not english_left(at, data), (view, english_left(at, data))
    if code == "zh_CN":
        assert zh("Rank") in at.segmented_control(key="view").options


def test_shipping_from_a_chinese_session_writes_a_chinese_model_card(app_config, tmp_path):
    ship_from_insight(started(choice="zh_CN"), note="墨线干净，颜色还在")
    card = (tmp_path / "shipped" / "jimeng.md").read_text(encoding="utf-8")
    assert f"\n## {zh('Why this epoch')}\n" in card and "\n## Why this epoch\n" not in card
    assert "墨线干净，颜色还在" in card and "jimeng" in card  # the note and the names as they were typed
    assert card.startswith("---\ntags:") or "\ntags:\n" in card.split("---")[1]  # the front matter stays the hub's


def test_a_typing_mistake_is_explained_in_chinese_and_the_app_keeps_running(app_config):
    at = started(choice="zh_CN")
    at.sidebar.text_input(key="strengths").set_value("1.0, strong").run()
    assert not at.exception, at.exception
    expected = zh("{what}: write numbers separated by commas, e.g. 1, 2, 3").format(what=zh("Strengths"))
    assert expected in [e.value for e in at.sidebar.error]
    at.sidebar.text_input(key="strengths").set_value("1.0").run()
    assert not at.sidebar.error and at.button(key="render").label == zh("Render")
