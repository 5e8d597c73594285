"""The HTML report of a real grid folder (the shipped demo rendered through the CLI), parsed back with html.parser."""

from __future__ import annotations

import base64
import io
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from lora_spectrum import cli, demo, language
from lora_spectrum.decision.html_report import THUMB_MAX, build_report, write_report
from lora_spectrum.decision.svg_chart import line_chart
from lora_spectrum.errors import ConfigError
from lora_spectrum.loras.catalog import Catalog
from lora_spectrum.measures.insight import series_insight
from lora_spectrum.measures.numbers import percent
from tests.measures.test_probe_measures import write_probe

PROMPT = "<script>alert(1)</script> a red circle & \"friends\", jimeng style"
DATA_PNG = "data:image/png;base64,"
VOID = {"img", "meta", "br", "hr", "link", "input", "source", "wbr", "area", "base", "col", "embed"}


# ---------------------------------------------------------------------------------------------- parsing back
class Node:
    def __init__(self, tag: str, attrs: dict, parent: Node | None):
        self.tag, self.attrs, self.parent, self.children, self.texts = tag, attrs, parent, [], []

    def classes(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())

    def text(self) -> str:
        return "".join(self.texts) + "".join(c.text() for c in self.children)

    def all(self, pred=lambda n: True) -> list[Node]:
        out = []
        for c in self.children:
            out += [c] if pred(c) else []
            out += c.all(pred)
        return out


class TreeParser(HTMLParser):
    """A small element tree; every start tag and attribute is also kept flat for the self-contained checks."""

    def __init__(self):
        super().__init__()  # convert_charrefs: text and attribute values come back unescaped
        self.root = self.node = Node("#root", {}, None)
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs), self.node)
        self.node.children.append(node)
        self.tags.append((tag, node.attrs))
        if tag not in VOID:
            self.node = node

    def handle_startendtag(self, tag, attrs):
        self.node.children.append(Node(tag, dict(attrs), self.node))
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        n = self.node
        while n is not None and n.tag != tag:
            n = n.parent
        if n is not None and n.parent is not None:
            self.node = n.parent

    def handle_data(self, data):
        self.node.texts.append(data)


def parse(text: str) -> TreeParser:
    p = TreeParser()
    p.feed(text)
    p.close()
    return p


def by_id(tree: TreeParser) -> dict[str, Node]:
    return {n.attrs["id"]: n for n in tree.root.all(lambda n: "id" in n.attrs)}


def cells_of(tree: TreeParser) -> list[Node]:
    return tree.root.all(lambda n: "cell" in n.classes())


def decode(src: str) -> Image.Image:
    assert src.startswith(DATA_PNG)
    im = Image.open(io.BytesIO(base64.b64decode(src[len(DATA_PNG):], validate=True)))
    assert im.format == "PNG"
    return im


def key(epoch, file, seed, strength) -> tuple:
    return ("" if epoch is None else str(epoch), file or "", int(seed), float(strength))


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> Path:
    """The shipped demo, base and two epochs, two seeds, two strengths, with a prompt that holds a script tag."""
    root = tmp_path_factory.mktemp("report")
    out = root / "grid"
    rc = cli.main(["grid", "--base", "demo", "--out", str(out), "--include-base", "--seeds", "1,2", "--epochs",
                   "3,12", "--strengths", "0.5,1", "--steps", "2", "--device", "cpu", "--prompt", PROMPT,
                   "--cache-dir", str(root / "cache")])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def manifest(grid) -> dict:
    return json.loads((grid / "manifest.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def report(grid) -> str:
    return build_report(grid)


@pytest.fixture
def copy(grid, tmp_path):
    """A copy of the grid folder and a function that rewrites its manifest."""
    folder = tmp_path / "grid"
    shutil.copytree(grid, folder)

    def rewrite(change) -> dict:
        m = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        change(m)
        (folder / "manifest.json").write_text(json.dumps(m), encoding="utf-8")
        return m

    return folder, rewrite


RANKING = {"series": "jimeng", "votes": 7, "set_aside": 1, "items": [
    {"key": "k12", "file": "jimeng_12.safetensors", "label": "epoch 12", "epoch": 12, "score": 0.61, "stderr": 0.4,
     "rank": 1, "wins": 5, "losses": 1, "ties": 1},
    {"key": "k3", "file": "jimeng_3.safetensors", "label": "epoch 3", "epoch": 3, "score": -0.61, "stderr": 0.4,
     "rank": 2, "wins": 1, "losses": 5, "ties": 1}]}


# ---------------------------------------------------------------------------------------------- tests
def test_self_contained(report):
    tree = parse(report)
    assert "<script" not in report.lower()
    for tag, attrs in tree.tags:
        assert tag not in ("script", "link", "iframe", "object", "embed", "base"), tag
        for name in ("src", "srcset", "action", "poster", "data", "xlink:href"):
            if name in attrs:
                assert name == "src" and tag == "img" and attrs["src"].startswith(DATA_PNG), (tag, name)
        if "href" in attrs:
            assert attrs["href"].startswith("#"), attrs["href"]  # in-page links only: no http(s)://, //, files
    css = "".join(n.text() for n in tree.root.all(lambda n: n.tag == "style"))
    assert "url(" not in css and "@import" not in css and "@font-face" not in css
    assert tree.root.all(lambda n: n.tag == "img")


def test_every_manifest_cell_parses_back(grid, manifest, report):
    tree = parse(report)
    ids = by_id(tree)
    found = cells_of(tree)
    assert sorted(key(n.attrs["data-epoch"] or None, n.attrs["data-file"], n.attrs["data-seed"],
                      n.attrs["data-strength"]) for n in found) == \
        sorted(key(c["epoch"], c["file"], c["seed"], c["strength"]) for c in manifest["cells"])
    size = (manifest["settings"]["width"], manifest["settings"]["height"])
    by_image = {n.attrs["data-image"]: n for n in found}
    for c in manifest["cells"]:
        node = by_image[c["image"]]
        assert node.attrs["data-file"] == (c["file"] or "") and float(node.attrs["data-strength"]) == c["strength"]
        (link,) = node.all(lambda n: n.tag == "a")
        box = ids[link.attrs["href"][1:]]
        assert "lightbox" in box.classes()
        (img,) = box.all(lambda n: n.tag == "img")
        full = decode(img.attrs["src"])
        cell = Image.open(grid / c["image"])
        assert full.size == cell.size == size
        assert np.array_equal(np.asarray(full.convert("RGBA")), np.asarray(cell.convert("RGBA")))
        assert cell.text["parameters"] in node.text()  # in the cell's <details>
        assert cell.text["parameters"] in box.text()


def test_every_in_page_link_has_its_target(report):
    tree = parse(report)
    ids = by_id(tree)
    links = [a for _, a in tree.tags if a.get("href", "").startswith("#")]
    assert links and all(a["href"][1:] in ids for a in links if a["href"] != "#")
    boxes = [n for n in ids.values() if "lightbox" in n.classes()]
    assert len(boxes) == len(cells_of(tree))
    assert all(b.all(lambda n: n.tag == "a" and "close" in n.classes()) for b in boxes)


def test_base_repeats_in_later_strength_rows_link_the_same_lightbox(report):
    tree = parse(report)
    repeats = tree.root.all(lambda n: "repeat" in n.classes())
    assert len(repeats) == 2  # two seeds, the second strength row
    assert all(r.all(lambda n: n.tag == "a")[0].attrs["href"] in
               {a.attrs["href"] for c in cells_of(tree) if not c.attrs["data-file"] for a in c.all(lambda n: n.tag == "a")}
               for r in repeats)


def test_readable_on_a_phone(report):
    tree = parse(report)
    assert ("meta", {"name": "viewport", "content": "width=device-width, initial-scale=1"}) in tree.tags
    (table,) = tree.root.all(lambda n: n.tag == "table" and "grid" in n.classes())
    assert "scroll" in table.parent.classes()
    css = "".join(n.text() for n in tree.root.all(lambda n: n.tag == "style"))
    assert "@media (max-width" in css and "img{max-width:100%" in css and ".scroll{overflow-x:auto" in css


def test_prompt_and_settings_are_plain_text(report, manifest):
    tree = parse(report)
    text = tree.root.text()
    assert "<script" not in report and "&lt;script&gt;alert(1)&lt;/script&gt;" in report
    assert PROMPT in text
    s = manifest["settings"]
    for shown in (f"{s['width']}×{s['height']}", s["sampler"], "1, 2", "0.5, 1", "base-sdxl"):
        assert shown in text
    assert s["base"] not in text  # the base by its name, never its path on this machine


def test_times_per_column(report, manifest):
    tree = parse(report)
    (table,) = tree.root.all(lambda n: n.tag == "table" and "times" in n.classes())
    rows = [r for r in table.all(lambda n: n.tag == "tr")][1:]
    assert [r.all(lambda n: n.tag == "td")[0].text() for r in rows] == ["base", "epoch 3", "epoch 12"]
    counts = {r.all(lambda n: n.tag == "td")[0].text(): int(r.all(lambda n: n.tag == "td")[1].text()) for r in rows}
    assert counts == {"base": 2, "epoch 3": 4, "epoch 12": 4}


def test_insight_measures_charts_and_the_verdict_before_a_probe(report, manifest):
    tree = parse(report)
    insight = manifest["insight"]
    svgs = tree.root.all(lambda n: n.tag == "svg")
    assert len(svgs) >= 3 and all(s.all(lambda n: n.tag in ("polyline", "circle")) for s in svgs)
    (table,) = tree.root.all(lambda n: n.tag == "table" and "measures" in n.classes())
    assert len(table.all(lambda n: n.tag == "tr")) == 1 + len(insight["epochs"])
    assert "weight norm" in table.text()
    # No probe judged the grid's epochs: the verdict's needs-probe reason, no pick marked, nothing suggested.
    verdict = insight["verdict"]
    assert verdict["state"] == "needs probe" and verdict["file"] is None
    (said,) = tree.root.all(lambda n: "verdict" in n.classes())
    assert said.text() == verdict["reason"] and "probe" in said.text()
    assert not tree.root.all(lambda n: "pick" in n.classes()) and "stroke-dasharray" not in report
    assert "uggest" not in report and not tree.root.all(lambda n: "verdict-points" in n.classes())


def test_an_insight_from_before_the_verdict_suggests_nothing(copy):
    folder, rewrite = copy

    def old(m):  # a manifest written when weight curves still suggested an epoch
        m["insight"].pop("verdict")
        m["insight"].update(suggested_epoch=12, suggested_file="jimeng_12.safetensors",
                            reason="Suggestion: epoch 12, the weights settled.")

    rewrite(old)
    text = build_report(folder)
    assert "uggest" not in text and "settled" not in text and "<svg" in text
    assert not parse(text).root.all(lambda n: "pick" in n.classes() or "verdict" in n.classes())


@pytest.fixture(scope="module")
def judged(tmp_path_factory) -> dict:
    """The shipped demo's insight with a probe of all its epochs (drawn, not rendered: plain shapes, then the
    style where asked, then the style everywhere with every fill red), measured by the demo's own CLIP."""
    probe = tmp_path_factory.mktemp("probe")

    def draw(epoch):
        return lambda kind, c: (c, False) if epoch <= 6 else (c, kind != "leak") if epoch <= 15 else ("red", True)

    write_probe(probe, {f"jimeng_{e}.safetensors": (e, draw(e)) for e in (3, 6, 9, 12, 15, 18, 21, 24)})
    catalog = Catalog(demo.ASSETS_DIR / demo.LORAS_DIRNAME)
    catalog.scan()
    return series_insight(catalog, probe=probe, clip_model=str(demo.assets.demo_clip_dir()),
                          references=demo.assets.demo_style_dir())


def test_the_verdict_of_a_probe_marks_its_pick_with_style_and_fidelity_and_their_errors(grid, judged):
    verdict = judged["verdict"]
    assert verdict["state"] == "measures" and verdict["file"]
    text = build_report(grid, insight=judged)
    tree = parse(text)
    (said,) = tree.root.all(lambda n: n.tag == "p" and "verdict" in n.classes())
    assert said.text() == verdict["reason"]
    note = said.parent.children[said.parent.children.index(said) + 1].text()
    assert "preference: balanced" in note and "front (style against prompt fidelity): " + ", ".join(
        f"epoch {x}" for x in verdict["front"]) in note
    assert len(verdict["tied"]) > 1 and "the measures cannot tell apart: " + ", ".join(
        f"epoch {x}" for x in verdict["tied"]) in note
    # One row per probed epoch: style gained and fidelity kept with their standard errors; the pick's row marked.
    (table,) = tree.root.all(lambda n: n.tag == "table" and "verdict-points" in n.classes())
    rows = table.all(lambda n: n.tag == "tr")[1:]
    assert len(rows) == len(verdict["points"])
    for row, point in zip(rows, verdict["points"], strict=True):
        cells = [c.text() for c in row.all(lambda n: n.tag == "td")]
        assert cells[:3] == [f"epoch {point['epoch']}", f"{percent(point['style'])} ± {percent(point['style_se'])}",
                             f"{percent(point['fidelity'])} ± {percent(point['fidelity_se'])}"]
        assert ("pick" in row.classes()) == (point["file"] == verdict["file"])
    # The measures table marks the same epoch, and every chart over epochs marks it with a dashed line.
    (measures,) = tree.root.all(lambda n: n.tag == "table" and "measures" in n.classes())
    (picked,) = measures.all(lambda n: "pick" in n.classes())
    assert picked.all(lambda n: n.tag == "td")[0].text() == f"epoch {verdict['epoch']}"
    markers = tree.root.all(lambda n: n.tag == "line" and n.attrs.get("stroke-dasharray"))
    assert markers and all(m.text() == "the verdict's pick" for m in markers)
    assert "uggest" not in text


def test_without_insight_no_charts(copy):
    folder, rewrite = copy
    rewrite(lambda m: m.pop("insight"))
    text = build_report(folder)
    assert "<svg" not in text and "No insight in this manifest" in text
    assert len(cells_of(parse(text))) == 10


def test_insight_given_stands_in_for_the_manifests(copy, manifest):
    # The app's renders have no insight in their manifest: it passes the session's measures instead.
    folder, rewrite = copy
    rewrite(lambda m: m.pop("insight"))
    text = build_report(folder, insight=manifest["insight"])
    assert "<svg" in text and "No insight in this manifest" not in text
    assert manifest["insight"]["verdict"]["reason"].split(":")[0] in text


def test_ranking_given_or_from_the_manifest(grid, copy, report):
    assert "ranking" not in report
    for text in (build_report(grid, ranking=RANKING), None):
        if text is None:
            folder, rewrite = copy
            rewrite(lambda m: m.update(ranking=RANKING))
            text = build_report(folder)
        (table,) = parse(text).root.all(lambda n: n.tag == "table" and "ranking" in n.classes())
        rows = table.all(lambda n: n.tag == "tr")[1:]
        assert [r.all(lambda n: n.tag == "td")[1].text() for r in rows] == ["epoch 12", "epoch 3"]
        assert "7 blind vote(s), 1 set aside" in text
    with pytest.raises(ConfigError, match="ratings dict"):
        build_report(grid, ranking={"items": "nope"})


def test_missing_png_shows_missing_and_the_rest_is_written(copy, manifest, tmp_path):
    folder, _ = copy
    gone = manifest["cells"][3]["image"]
    (folder / gone).unlink()
    out = write_report(folder, tmp_path / "sub" / "report.html")
    tree = parse(out.read_text(encoding="utf-8"))
    cells = cells_of(tree)
    assert len(cells) == len(manifest["cells"])
    (missing,) = [c for c in cells if c.attrs["data-image"] == gone]
    assert "missing" in missing.text() and not missing.all(lambda n: n.tag == "img")
    assert all(c.all(lambda n: n.tag == "img") for c in cells if c is not missing)


def test_folder_without_manifest(tmp_path):
    with pytest.raises(ConfigError) as info:
        build_report(tmp_path)
    assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)


def test_big_cell_gets_a_thumbnail_and_keeps_its_full_size(copy, manifest):
    folder, _ = copy
    c = manifest["cells"][4]
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (400, 600, 3), dtype=np.uint8))
    info = PngInfo()
    info.add_text("parameters", "big <b>cell</b>\nSteps: 2, Seed: 1")
    big.save(folder / c["image"], pnginfo=info)
    tree = parse(build_report(folder))
    (node,) = [n for n in cells_of(tree) if n.attrs["data-image"] == c["image"]]
    thumb = decode(node.all(lambda n: n.tag == "img")[0].attrs["src"])
    assert max(thumb.size) == THUMB_MAX
    box = by_id(tree)[node.all(lambda n: n.tag == "a")[0].attrs["href"][1:]]
    full = decode(box.all(lambda n: n.tag == "img")[0].attrs["src"])
    assert full.size == (600, 400) and np.array_equal(np.asarray(full.convert("RGB")), np.asarray(big))
    assert "big <b>cell</b>" in node.text()


def test_hostile_manifest_values_stay_text(copy, tmp_path):
    folder, rewrite = copy
    outside = tmp_path / "outside.png"
    Image.new("RGB", (8, 8), "red").save(outside)
    name = 'x"><img src=http://evil/a.png>.safetensors'
    rewrite(lambda m: m["cells"][2].update(file=name, label="<b>bold</b>", image="../../outside.png"))
    text = build_report(folder)
    tree = parse(text)
    (node,) = [n for n in cells_of(tree) if n.attrs["data-file"] == name]
    assert "outside the grid folder" in node.text() and not node.all(lambda n: n.tag == "img")
    assert "<b>bold</b>" in tree.root.text() and "<b>bold</b>" not in text and "&lt;b&gt;bold" in text
    assert not [a for t, a in tree.tags if t == "img" and not a["src"].startswith(DATA_PNG)]


def test_line_chart():
    assert line_chart([("a", [(1, None), (2, float("nan"))])], title="t") == ""
    svg = line_chart([("a<b", [(1, 0.5), (2, None), (3, 0.7)]), ("c", [(1, 1.0), (3, 2.0)])], title="T & t",
                     marker=2)
    tree = parse(svg)
    assert len(tree.root.all(lambda n: n.tag == "polyline")) == 2
    assert len(tree.root.all(lambda n: n.tag == "circle")) == 4
    assert "a<b" in tree.root.text() and "T & t" in tree.root.text() and "a<b" not in svg


def test_the_report_in_chinese_translates_its_words_and_keeps_the_data(grid, manifest, report):
    zh = language.translator("zh_CN")
    with language.using(zh):
        chinese = build_report(grid)
    assert '<html lang="zh-CN">' in chinese and '<html lang="en">' in report
    for heading in ("Grid", "Settings", "Render and swap times", "Insight"):
        assert f"<h2>{zh.gettext(heading)}</h2>" in chinese and f"<h2>{heading}</h2>" not in chinese
    tree, english = parse(chinese), parse(report)
    assert [n.attrs for n in cells_of(tree)] == [n.attrs for n in cells_of(english)]  # files, seeds, strengths
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in chinese  # the prompt, escaped, not translated
    texts = [n.text() for n in cells_of(tree)]
    for c in manifest["cells"]:  # the A1111 parameters of every PNG, as they are
        assert any(Image.open(grid / c["image"]).text["parameters"] in t for t in texts)
