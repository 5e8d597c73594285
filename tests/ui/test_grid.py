"""The grid's axes through AppTest: epochs as columns or rows, seeds, strengths or prompts the other way (display
only: nothing renders again), prompts as row labels, captions that never break inside a label part, and small
renders drawn at a whole multiple of their size."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from lora_spectrum.render.plan import make_plan
from lora_spectrum.render.runs import run_plan
from lora_spectrum.ui.resources import get_workbench
from tests.ui.apptest import start

NBSP = "\u00a0"


def plain(text: str) -> str:
    """A caption as read: Markdown escapes dropped, non-breaking spaces as spaces."""
    return text.replace("\\", "").replace(NBSP, " ")


def captions(at, n: int) -> list[str]:
    """The captions of the grid's ``n`` images (drawn first; Closer looks follows)."""
    return [plain(c) for im in at.main.image for c in im.captions][:n]


def test_axes_reorder_the_same_images_and_render_nothing_again(app_config, tmp_path):
    at = start()
    at.sidebar.text_input(key="seeds").set_value("1, 2")
    at.sidebar.text_input(key="strengths").set_value("0.5, 1")
    at.sidebar.multiselect(key="epochs").set_value(["jimeng_20.safetensors", "jimeng_300.safetensors"])
    at.button(key="render").click().run()
    assert not at.exception, at.exception
    runs = sorted((tmp_path / "runs").glob("*/manifest.json"))
    assert len(runs) == 1
    # Epochs as columns, seeds down: one block per strength, each row one seed, left to right base and epochs.
    cols = ["base · seed {s}", "epoch 20 · strength {st} · seed {s}", "epoch 300 · strength {st} · seed {s}"]
    want = [c.format(s=s, st=st) for st in ("0.5", "1") for s in (1, 2) for c in cols]
    assert captions(at, 12) == want
    raw = [c for im in at.main.image for c in im.captions][:12]
    assert all(" " not in part for c in raw for part in c.split(" · ")), raw  # breaks only at the dots
    markdown = [plain(m.value) for m in at.main.markdown]
    assert "**seed 1**" in markdown and "**epoch 300**" in markdown
    # Epochs as rows: each row one epoch, seeds across.
    at.segmented_control(key="grid_epochs").set_value("rows").run()
    want_rows = [c.format(s=s, st=st) for st in ("0.5", "1") for c in cols for s in (1, 2)]
    assert captions(at, 12) == want_rows
    # Strengths the other way: one block per seed, strengths across, epochs down.
    at.segmented_control(key="grid_other").set_value("strengths").run()
    want_strengths = [c.format(s=s, st=st) for s in (1, 2) for c in cols for st in ("0.5", "1")]
    assert captions(at, 12) == want_strengths
    assert [plain(m.value) for m in at.main.markdown if m.value.startswith("**strength")] == \
        ["**strength 0.5**", "**strength 1**"] * 2
    # Display only: no new run, and the viewer holds every image of the grid.
    assert sorted((tmp_path / "runs").glob("*/manifest.json")) == runs
    assert not at.exception
    viewer = next(h.proto.body for h in at.main.get("html") if "lsv-root" in h.proto.body)
    assert viewer.count("class=\"lsv-slide\"") == 12  # 3 columns x 2 seeds x 2 strengths


def test_small_renders_are_enlarged_by_a_whole_factor_with_nearest_neighbour(app_config):
    at = start()
    at.sidebar.multiselect(key="epochs").set_value(["jimeng_20.safetensors"])
    at.button(key="render").click().run()
    assert not at.exception, at.exception
    note = [c.value for c in at.main.caption if "renders shown ×" in c.value]
    assert len(note) == 1, [c.value for c in at.main.caption]
    factor = int(note[0].split("×")[-1].split(":")[0])
    assert factor > 1 and note[0].startswith("64×64 px")
    grid = at.main.image[:2]  # base and epoch 20 (Closer looks follows)
    # Sent as PNG (a JPEG would smear the pixel blocks). The blocks themselves: tests/ui/test_lightbox.py; the
    # width they are drawn at on the page: tests/ui/test_viewer_browser.py.
    assert all(im.proto.imgs[0].url.endswith(".png") for im in grid), [im.proto.imgs[0].url for im in grid]


def test_several_prompts_are_rows_with_the_prompt_as_their_label(app_config):
    config, _ = app_config
    _, choice, catalog = get_workbench(str(config))
    entries = [e for e in catalog.scan() if e.name == "jimeng_20.safetensors"]
    engine = choice.engine
    prompts = ["a red circle", "a blue *square* <b>bold</b>"]
    plan = make_plan(engine.defaults, [None, *entries], [1], [1.0], prompts,
                     engine.defaults.sampling.override(steps=1))
    state = {"plan": plan, "cells": run_plan(engine, plan, catalog), "status": "done"}

    def script(state):
        from lora_spectrum.ui.grid import draw_grid

        draw_grid(state)

    at = AppTest.from_function(script, args=(state,), default_timeout=60)
    at.session_state["grid_other"] = "prompts"
    at.run()
    assert not at.exception, at.exception
    labels = [plain(c.value) for c in at.main.caption]
    assert prompts == [x for x in labels if x in prompts], labels  # each prompt labels its row, as plain text
    assert captions(at, 4) == ["base · seed 1", "epoch 20 · strength 1 · seed 1"] * 2
    viewer = next(h.proto.body for h in at.main.get("html") if "lsv-root" in h.proto.body)
    assert "a blue *square* &lt;b&gt;bold&lt;/b&gt;" in viewer and "<b>bold" not in viewer


def test_a_heavy_grid_carries_the_viewer_only_when_asked(app_config, monkeypatch):
    """The viewer holds every PNG once more and goes to the browser on each rerun: past VIEWER_MB of PNGs the page
    says how much and sends it only once the person turns it on (here every grid counts as heavy)."""
    import lora_spectrum.ui.grid as grid

    def viewer_on_page(at) -> bool:
        return any("lsv-overlay" in h.proto.body for h in at.main.get("html"))

    at = start()
    at.sidebar.multiselect(key="epochs").set_value(["jimeng_20.safetensors"])
    at.button(key="render").click().run()
    assert not at.exception and viewer_on_page(at), "a light grid carries its viewer by itself"
    monkeypatch.setattr(grid, "VIEWER_MB", 0)
    at.run()
    assert not viewer_on_page(at) and "MB more to the browser" in at.toggle(key="grid_viewer").label
    at.toggle(key="grid_viewer").set_value(True).run()
    assert not at.exception and viewer_on_page(at)
