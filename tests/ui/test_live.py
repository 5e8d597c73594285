"""Insight's Live switch through AppTest, on the shipped trained demo: with Live on, the epoch files in the folder
are judged once they have settled, a file copied in later is judged in the background and its column joins the
probe grid, the chart and the verdict; Cancel stops the judgement in progress and switches Live off."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from lora_spectrum.demo import ASSETS_DIR, LORAS_DIRNAME
from lora_spectrum.ui.insight import CACHE
from lora_spectrum.ui.live import LIVE
from lora_spectrum.ui.probe import PROBE
from lora_spectrum.ui.resources import CONFIG_ENV
from lora_spectrum.ui.text import md_escape
from tests.ui.apptest import APP
from tests.ui.test_probe import PROBES

EPOCHS = ASSETS_DIR / LORAS_DIRNAME


def _app(tmp_path, monkeypatch, files: list[str]) -> AppTest:
    """The trained demo base on a folder holding ``files`` of the demo's run, probed only by Live."""
    loras = tmp_path / "loras"
    loras.mkdir()
    for name in files:
        shutil.copy(EPOCHS / name, loras / name)
    config = tmp_path / "config.yaml"
    config.write_text(f"base: demo\ndemo: trained\ndevice: cpu\ncache_dir: {tmp_path / 'renders'}\nloras: {loras}\n"
                      f"runs_dir: {tmp_path / 'runs'}\nratings_dir: {tmp_path / 'ratings'}\n"
                      f"shipped_dir: {tmp_path / 'shipped'}\nauto_probe: false\n" + PROBES, encoding="utf-8")
    monkeypatch.setenv(CONFIG_ENV, str(config))
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    assert not at.exception, at.exception
    at.segmented_control(key="view").set_value("Insight").run()
    assert not at.exception, at.exception
    return at


def _look(at):
    return at.session_state[LIVE]["jimeng"]["look"]


def _run_until(at, done, looks: int = 6) -> None:
    """What the fragment does every few seconds: wait for the look in progress, then run again, until ``done``."""
    for _look_number in range(looks):
        look = _look(at)
        assert look is None or look.wait(240), "the look at the folder finishes"
        at.run()
        assert not at.exception, at.exception
        if done(at):
            return
    pytest.fail(f"not done after {looks} looks: {at.session_state[LIVE]['jimeng']}")


def _columns(at) -> list[str]:
    return list(at.selectbox(key="probe_pick_file").options) if PROBE in at.session_state else []


def test_live_judges_each_complete_file_and_a_new_one_joins_the_grid(tmp_path, monkeypatch):
    at = _app(tmp_path, monkeypatch, ["jimeng_3.safetensors", "jimeng_6.safetensors"])
    assert at.session_state[CACHE][1]["verdict"]["state"] == "needs probe"
    # 1. Live on: the two files are judged once they have looked the same twice, and become the probe shown.
    at.toggle(key="live_jimeng").set_value(True).run()
    assert not at.exception, at.exception
    _run_until(at, lambda at: len(_columns(at)) == 2)
    assert _columns(at) == ["epoch 3", "epoch 6"]
    assert len(at.main.image) == 3 * 3, "the base and two epochs for each of the three prompts"
    verdict = at.session_state[CACHE][1]["verdict"]
    assert verdict["state"] == "measures" and {p["epoch"] for p in verdict["points"]} == {3, 6}
    assert any(md_escape("2 file(s) judged") in c.value for c in at.main.caption)
    first = at.session_state[PROBE]["jimeng"]["folder"]
    # 2. A third epoch lands (a partial copy first): judged in the background, its column joins the grid.
    (tmp_path / "loras" / "jimeng_9.safetensors.part").write_bytes(b"half")
    shutil.copy(EPOCHS / "jimeng_9.safetensors", tmp_path / "loras" / "jimeng_9.safetensors")
    _run_until(at, lambda at: len(_columns(at)) == 3)
    assert _columns(at)[-1] == "epoch 9"
    assert len(at.main.image) == 3 * 4
    verdict = at.session_state[CACHE][1]["verdict"]
    assert {p["epoch"] for p in verdict["points"]} == {3, 6, 9}
    assert any(m.value.strip("*★ ") == "epoch 9" for m in at.main.markdown), "the new column's header"
    captions = [c.value for c in at.main.caption]
    assert any(md_escape("3 file(s) judged (the last: jimeng_9.safetensors)") in c for c in captions), captions
    skipped = md_escape("Skipped jimeng_9.safetensors.part: a temporary name: the file is still being written")
    assert skipped in captions, captions
    assert at.session_state[PROBE]["jimeng"]["folder"] != first and not Path(first).exists()
    # 3. Nothing new: the next looks judge nothing and the probe stays.
    shown = at.session_state[PROBE]["jimeng"]["folder"]
    _run_until(at, lambda at: True)
    assert at.session_state[PROBE]["jimeng"]["folder"] == shown


def test_cancel_stops_the_judgement_in_progress_and_switches_live_off(tmp_path, monkeypatch):
    at = _app(tmp_path, monkeypatch, ["jimeng_3.safetensors"])
    at.toggle(key="live_jimeng").set_value(True).run()
    engine = at.session_state[LIVE]["jimeng"]["judge"].engine
    # The engine held elsewhere: the judgement waits at its first image, so Cancel is there to press.
    with engine.lock:
        assert _look(at).wait(60)
        at.run()  # the file has settled: this look judges it
        at.run()
        assert not at.exception, at.exception
        judge = at.session_state[LIVE]["jimeng"]["judge"]
        at.button(key="live_cancel_jimeng").click().run()
        assert not at.exception, at.exception
        assert judge.cancel.is_set() and at.toggle(key="live_jimeng").value is False
    stopping = at.session_state[LIVE]["jimeng"]["stopping"]
    assert stopping.wait(120), "the cancelled judgement stops"
    at.run()
    assert not at.exception, at.exception
    assert PROBE not in at.session_state, "a cancelled judgement is never shown as the probe"
