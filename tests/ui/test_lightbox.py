"""The viewer's HTML (``lightbox.viewer_html``) on a grid rendered for real by a tiny engine: every slide holds its
own cell's PNG and that cell's label, prompt and parameters; the buttons (and so the keys) lead to the right
neighbours; text from prompts and files is escaped. And the grid's whole-number nearest-neighbour enlargement."""

from __future__ import annotations

import base64
import io
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lora_spectrum.loras.catalog import Catalog
from lora_spectrum.records.grid_files import parse_parameters
from lora_spectrum.render.plan import cell_at, index_cells, make_plan
from lora_spectrum.render.runs import run_plan
from lora_spectrum.ui.grid_layout import NBSP, Layout, Spot, cell_label, enlarge, shown_whole, whole_factor
from lora_spectrum.ui.lightbox import viewer_html
from tests.tiny import new_engine, request

PROMPTS = ["a red circle", 'a <b>"blue"</b> & square </pre><script>alert(1)</script>']


@pytest.fixture(scope="module")
def grid(demo_loras):
    """Base and two epochs, two prompts, two seeds, two strengths: 20 cells, rendered (one step)."""
    engine = new_engine("sdxl")
    catalog = Catalog(Path(demo_loras["sdxl"][0]).parent)
    entries = sorted(catalog.scan(), key=lambda e: e.epoch)
    plan = make_plan(engine.defaults, [None, entries[0], entries[-1]], [1, 2], [0.5, 1.0], PROMPTS,
                     request("sdxl").sampling.override(steps=1, guidance=0.0))  # 64 px
    return plan, run_plan(engine, plan, catalog)


class Slides(HTMLParser):
    """The slides of a viewer: per ``data-pos``, its label, image, prompt, parameters text and buttons."""

    def __init__(self, markup: str):
        super().__init__()
        self.slides: dict[int, dict] = {}
        self.root: dict = {}
        self.scripts = 0
        self._slide, self._into = None, None
        self.feed(markup)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = a.get("class") or ""
        if tag == "script":
            self.scripts += 1
        if "lsv-root" in cls:
            self.root = a
        if tag == "figure":
            self._slide = self.slides[int(a["data-pos"])] = {"label_attr": a["data-label"], "buttons": {}, "text": {}}
        elif self._slide is not None and tag == "img":
            self._slide["img"] = a
        elif self._slide is not None and tag == "button":
            key = a.get("data-key", "close")
            self._slide["buttons"][key] = {"go": a.get("data-go"), "disabled": "disabled" in a, "text": ""}
            self._into = ("button", key)
        elif self._slide is not None and cls in ("lsv-label", "lsv-prompt", "lsv-params", "lsv-missing"):
            self._into = ("text", cls)

    def handle_endtag(self, tag):
        if tag in ("button", "div", "pre", "p"):
            self._into = None
        if tag == "figure":
            self._slide = None

    def handle_data(self, data):
        if self._into is None or self._slide is None:
            return
        kind, key = self._into
        if kind == "button":
            self._slide["buttons"][key]["text"] += data
        else:
            self._slide["text"][key] = self._slide["text"].get(key, "") + data


def png_of(slide) -> bytes:
    return base64.b64decode(slide["img"]["src"].removeprefix("data:image/png;base64,"))


def test_every_slide_shows_its_own_cell_with_its_label_and_parameters(grid):
    plan, cells = grid
    layout = Layout(plan, "seeds")
    slides = Slides(viewer_html(layout, cells)).slides
    index = index_cells(cells)
    assert len(slides) == len(plan.columns) * len(plan.rows) == 24  # the base once per strength
    for pos, slide in slides.items():
        spot = Spot(pos % len(plan.columns), pos // len(plan.columns))
        line = layout.lines[spot.line]
        cell = cell_at(index, spot.column, plan.columns[spot.column], line.prompt, line.seed, line.strength)
        assert png_of(slide) == cell.png  # the cell's own PNG, as it is
        # The label, the alt text and the prompt say what the PNG itself says it is.
        params = parse_parameters(Image.open(io.BytesIO(png_of(slide))).info["parameters"])
        name = "base" if cell.file is None else f"epoch{NBSP}{params['Lora epoch']}"
        strength = None if cell.file is None else float(params["Lora strength"])
        assert slide["text"]["lsv-label"] == slide["label_attr"] == slide["img"]["alt"] == \
            cell_label(name.replace(NBSP, " "), strength, int(params["Seed"]))
        assert slide["text"]["lsv-prompt"] == cell.prompt == line.prompt
        assert slide["text"]["lsv-params"] == Image.open(io.BytesIO(cell.png)).info["parameters"]
        assert (int(params["Seed"]), params.get("Lora epoch")) == (line.seed, None if cell.epoch is None
                                                                   else str(cell.epoch))


@pytest.mark.parametrize("other", ["seeds", "strengths", "prompts"])
def test_buttons_lead_up_down_to_the_adjacent_epoch_and_left_right_along_the_other_axis(grid, other):
    plan, cells = grid
    layout = Layout(plan, other)
    slides = Slides(viewer_html(layout, cells)).slides
    n = len(plan.columns)
    # Left/Right walk the other axis innermost, then on through the blocks (plan.rows' order otherwise).
    walk = {"seeds": [(p, s, st) for p in plan.prompts for st in plan.strengths for s in plan.seeds],
            "strengths": [(p, s, st) for p in plan.prompts for s in plan.seeds for st in plan.strengths],
            "prompts": [(p, s, st) for st in plan.strengths for s in plan.seeds for p in plan.prompts]}[other]
    assert [(ln.prompt, ln.seed, ln.strength) for ln in layout.lines] == walk

    def where(pos):  # (column, (prompt, seed, strength)) of a slide
        return pos % n, walk[pos // n]

    for pos, slide in slides.items():
        column, line = where(pos)
        b = slide["buttons"]
        for key, step in (("ArrowUp", -1), ("ArrowDown", 1)):
            if 0 <= column + step < n:
                assert not b[key]["disabled"] and where(int(b[key]["go"])) == (column + step, line)
                there = slides[int(b[key]["go"])]
                assert b[key]["text"].endswith(there["label_attr"].split(" · ")[0])  # names the epoch
            else:
                assert b[key]["disabled"] and b[key]["go"] is None
        i = walk.index(line)
        for key, step in (("ArrowLeft", -1), ("ArrowRight", 1)):
            if 0 <= i + step < len(walk):
                assert not b[key]["disabled"] and where(int(b[key]["go"])) == (column, walk[i + step])
            else:
                assert b[key]["disabled"]
        assert "Close" in b["close"]["text"]
    # The image a button leads to is the neighbour's own: same prompt, seed and strength, the next epoch.
    down = slides[int(slides[n + 1]["buttons"]["ArrowDown"]["go"])]  # line 1, first epoch: down to the last
    a, b = (parse_parameters(Image.open(io.BytesIO(png_of(s))).info["parameters"]) for s in (slides[n + 1], down))
    assert (a["Seed"], a["Lora strength"], a["prompt"].split(" <lora")[0]) == \
        (b["Seed"], b["Lora strength"], b["prompt"].split(" <lora")[0])
    assert int(a["Lora epoch"]) < int(b["Lora epoch"])


def test_text_from_prompts_and_files_is_escaped_and_the_grid_order_is_kept(grid):
    plan, cells = grid
    layout = Layout(plan, "prompts")
    broken = next(c for c in cells if c.file is not None)
    cells = [replace(c, png=None, image=None, error="cannot read <img src=x onerror=alert(1)>") if c is broken
             else c for c in cells]
    order = [Spot(2, 3), Spot(0, 0), Spot(1, 1)]
    markup = viewer_html(layout, cells, order)
    parsed = Slides(markup)
    assert parsed.scripts == 1  # the viewer's own, nothing from the prompt
    assert "<b>" not in markup and "onerror=alert" not in markup.replace("onerror=alert(1)&gt;", "")
    assert "&lt;/pre&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in markup
    shown = [s for s in parsed.slides.values() if "lsv-missing" in s["text"]]
    assert [s["text"]["lsv-missing"] for s in shown] == ["cannot read <img src=x onerror=alert(1)>"] * len(shown)
    assert shown and all("img" not in s for s in shown)
    assert any(s["text"]["lsv-prompt"] == PROMPTS[1] for s in parsed.slides.values())  # shown as the text it is
    n = len(plan.columns)
    assert parsed.root["data-order"] == ",".join(str(s.line * n + s.column) for s in order)
    assert parsed.root["data-first"] == str(3 * n + 2)


def test_enlarge_repeats_each_pixel_into_a_whole_block():
    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8))
    big = np.asarray(enlarge(small, 4))
    assert big.shape == (20, 28, 3)
    assert np.array_equal(big, np.repeat(np.repeat(np.asarray(small), 4, axis=0), 4, axis=1))
    assert enlarge(small, 1) is small


@pytest.mark.parametrize(("size", "room", "factor"), [
    ((64, 64), 130, 2), ((64, 64), 127, 1), ((64, 64), 2000, 3),  # at most 192 px (MAX_CELL)
    ((64, 128), 500, 1), ((512, 512), 2000, 1), ((1024, 768), 300, 1), ((32, 32), 100.9, 3)])
def test_whole_factor_is_the_largest_whole_multiple_that_fits(size, room, factor):
    got = whole_factor(*size, room)
    assert got == factor and isinstance(got, int)


def test_labels_break_only_between_their_parts():
    label = cell_label("epoch 20", 0.6, 1)
    assert label == f"epoch{NBSP}20 · strength{NBSP}0.6 · seed{NBSP}1"
    assert cell_label("base", None, 2) == f"base · seed{NBSP}2"
    assert cell_label("my lora v2 final", 1.0, 3) == f"my lora v2 final · strength{NBSP}1 · seed{NBSP}3"


def test_a_view_shows_a_small_render_whole_and_a_large_one_fitted_never_enlarged_by_a_fraction():
    small = Image.fromarray(np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3))
    shown, width = shown_whole(small, 440, 440)
    assert width == shown.width == 64 * 6 and shown.tobytes() == enlarge(small, 6).tobytes()  # 6 x 64 = 384 <= 440
    large = Image.new("RGB", (1024, 1024))
    shown, width = shown_whole(large, 440, 440)
    assert shown is large and width == "stretch"  # scaled down by the browser, never up
