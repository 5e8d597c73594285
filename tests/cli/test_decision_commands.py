"""``ratings``, ``promote`` and ``report`` on the command line, from a folder of epochs to a shipped file with its
model card and a report to send: real renders of the tiny demo, real votes files, real safetensors copies, and the
one verdict that ``series_insight`` gives for the same votes and probe."""

from __future__ import annotations

import hashlib
import json
import math
import random
import shlex
import shutil
from html.parser import HTMLParser

import pytest
from huggingface_hub import ModelCard
from PIL import Image
from safetensors import safe_open

from lora_spectrum import demo
from lora_spectrum.cli import main
from lora_spectrum.decision.card_text import text
from lora_spectrum.decision.votes import BASE, VoteBook, series_ratings
from lora_spectrum.loras.catalog import Catalog
from lora_spectrum.measures.insight import series_insight
from lora_spectrum.measures.report import verdict_lines
from lora_spectrum.records.grid_files import parse_parameters
from tests.measures.test_probe_measures import write_probe


def taste(entries) -> dict[str, float]:
    """A simulated person who prefers epoch 150 and likes the others less the further they are from it, the base
    least: the ranking must come out in this order."""
    out = {e.name: -abs(math.log(e.epoch / 150)) * 2 for e in entries}
    return out | {BASE: min(out.values()) - 1.5}


@pytest.fixture
def voted(setup, tmp_path):
    """The random demo's epochs, and 300 votes of a person with ``TASTE`` (Bradley-Terry draws, seeded)."""
    config, loras, out = setup
    catalog = Catalog(loras)
    catalog.scan()
    _, entries = catalog.choose_series()
    keys = {e.name: catalog.sha256(e) for e in entries} | {BASE: BASE}
    book, rng, like = VoteBook(tmp_path / "ratings", "jimeng", loras_folder=loras), random.Random(7), taste(entries)
    names = list(like)
    for _ in range(400):
        a, b = rng.sample(names, 2)
        p = 1 / (1 + math.exp(like[b] - like[a]))
        book.add(keys[a], a, keys[b], b, 1.0 if rng.random() < p else 0.0, "a red circle", 1)
    return config, loras, out, tmp_path / "ratings", like


@pytest.fixture
def probed(voted, tmp_path):
    """A probe of every epoch on the demo base as ``insight --probe`` leaves it (drawn, not rendered): plain shapes
    at 20 and 50, the style where asked at 80 and 150, the style everywhere with every fill red at 220 and 300."""
    _config, loras, _out, _ratings, _like = voted
    folder = tmp_path / "probe"
    folder.mkdir()

    def draw(epoch):
        return lambda kind, c: (c, False) if epoch <= 50 else (c, kind != "leak") if epoch <= 150 else ("red", True)

    write_probe(folder, {p.name: (int(p.stem.split("_")[1]), draw(int(p.stem.split("_")[1])))
                         for p in loras.glob("jimeng_*.safetensors")})
    record = json.loads((folder / "probe.json").read_text(encoding="utf-8"))
    record["base"] = str(demo.ASSETS_DIR / demo.BASE_DIRNAME)  # rendered on the demo base: the demo's CLIP measures
    (folder / "probe.json").write_text(json.dumps(record), encoding="utf-8")
    return folder


def expected_verdict(loras, ratings, probe=None) -> dict:
    """What ``series_insight`` says for the same folder, votes and probe (measured as the CLI picks for a probe
    rendered on the demo base: the demo's CLIP and its style set)."""
    catalog = Catalog(loras)
    catalog.scan()
    summary = series_ratings(catalog, None, ratings)
    demo_clip = {"clip_model": str(demo.assets.demo_clip_dir()), "references": str(demo.assets.demo_style_dir())}
    return series_insight(catalog, probe=probe, ratings=summary if summary["votes"] else None,
                          **(demo_clip if probe else {}))["verdict"]


def test_ratings_prints_the_ranking_the_votes_imply(voted, capsys):
    _, loras, _, ratings, like = voted
    assert main(["ratings", "--loras", str(loras), "--ratings-dir", str(ratings), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["votes"] == 400 and summary["set_aside"] == 0
    order = [it["file"] or BASE for it in summary["items"]]
    assert order[0] == "jimeng_150.safetensors" and order[-1] == BASE
    truth = sorted(like, key=like.get, reverse=True)
    assert sum(a == b for a, b in zip(order, truth, strict=True)) >= len(truth) - 2, (order, truth)
    assert all(it["stderr"] > 0 for it in summary["items"])
    assert main(["ratings", "--loras", str(loras), "--ratings-dir", str(ratings)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("Blind ranking of jimeng: 400 vote(s)") and "epoch 150" in text.splitlines()[2]
    # Then the verdict as far as the votes tell it: without a probe, none is picked (votes rank, a probe judges).
    verdict = summary["verdict"]
    assert verdict == expected_verdict(loras, ratings) and verdict["state"] == "needs probe"
    assert text.rstrip("\n").endswith("\n".join(verdict_lines(verdict))) and "uggest" not in text


def test_ratings_with_a_probe_print_the_verdict_series_insight_gives(probed, voted, capsys):
    _, loras, _, ratings, _ = voted
    args = ["ratings", "--loras", str(loras), "--ratings-dir", str(ratings), "--probe", str(probed)]
    assert main([*args, "--json"]) == 0
    verdict = json.loads(capsys.readouterr().out)["verdict"]
    assert verdict == expected_verdict(loras, ratings, probed)
    assert verdict["file"] in ("jimeng_80.safetensors", "jimeng_150.safetensors") and verdict["votes"]["votes"] == 400
    assert "references" not in verdict["missing"], "on the demo base the demo's style set is the reference"
    assert main(args) == 0
    assert capsys.readouterr().out.rstrip("\n").endswith("\n".join(verdict_lines(verdict)))
    assert main([*args[:-1], str(loras)]) == 2  # not a probe folder: one line naming it
    assert "probe.json" in capsys.readouterr().err


def test_from_a_folder_of_epochs_to_a_shipped_file_its_card_and_a_report(voted, tmp_path, capsys, demo_dir,
                                                                          monkeypatch):
    config, loras, out, ratings, like = voted
    # 1. A grid to show (and to put into the card and the report).
    assert main(["grid", "--config", str(config), "--loras", str(loras), "--out", str(out), "--steps", "2",
                 "--include-base", "--seeds", "1,2", "--epochs", "20,150,300"]) == 0
    capsys.readouterr()
    # 2. Promote the epoch the votes put first.
    ship = tmp_path / "ship"
    args = ["promote", "--loras", str(loras), "--epoch", "150", "--to", str(ship), "--name", "jimeng-v1",
            "--note", "ink is in, colours still hold", "--grid", str(out), "--ratings-dir", str(ratings),
            "--license", "openrail++"]
    source = (loras / "jimeng_150.safetensors").read_bytes()
    assert main(args) == 0, capsys.readouterr().err
    assert "promoted jimeng_150.safetensors (epoch 150" in capsys.readouterr().out
    copy = ship / "jimeng-v1.safetensors"
    with safe_open(str(loras / "jimeng_150.safetensors"), "pt") as a, safe_open(str(copy), "pt") as b:
        assert sorted(a.keys()) == sorted(b.keys())
        for k in a.keys():
            assert a.get_tensor(k).numpy().tobytes() == b.get_tensor(k).numpy().tobytes()
        meta, trainer = b.metadata(), a.metadata() or {}
    renamed = {"modelspec.title", "ss_output_name", "sshs_model_hash", "sshs_legacy_hash"}
    assert all(meta[k] == v for k, v in trainer.items() if k not in renamed), "every key the trainer wrote is kept"
    assert meta["modelspec.title"] == "jimeng-v1" and meta["lora_spectrum.source_modelspec.title"] == \
        trainer["modelspec.title"]
    # One hash names the epoch everywhere: the grid's PNGs (A1111 ``Lora hashes``), the release's sshs_model_hash
    # and its card; computed here over the bytes after the header (the tensors are the same bytes).
    data = copy.read_bytes()
    addnet = hashlib.sha256(data[8 + int.from_bytes(data[:8], "little"):]).hexdigest()
    manifest_cells = json.loads((out / "manifest.json").read_text())["cells"]
    cell = next(c for c in manifest_cells if c["epoch"] == 150)
    assert parse_parameters(Image.open(out / cell["image"]).text["parameters"])["Lora hashes"] == \
        f"jimeng_150: {addnet[:12]}"
    assert meta["sshs_model_hash"] == addnet
    assert meta["lora_spectrum.source_file"] == "jimeng_150.safetensors"
    assert meta["lora_spectrum.note"] == "ink is in, colours still hold"
    assert json.loads(meta["lora_spectrum.ranking"])["rank"] == 1
    assert (loras / "jimeng_150.safetensors").read_bytes() == source, "the source is never modified"
    card = (ship / "README.md").read_text(encoding="utf-8")  # the hub layout: the folder is a hub repository
    assert "ink is in, colours still hold" in card and f"#1 of {len(like)}" in card and "jimeng-v1.grid.png" in card
    assert f"`{addnet}`; A1111 names it `{addnet[:12]}`" in card
    # The hub layout (the default): README.md the hub validates, this epoch's renders as its widget.
    data = ModelCard(card, ignore_metadata_errors=False).data.to_dict()
    assert data["license"] == "openrail++" and "base_model" not in data, "the demo base has no repository id"
    assert [w["output"]["url"] for w in data["widget"]] == \
        [f"images/{c['image'].split('/')[-1]}" for c in manifest_cells if c["epoch"] == 150]
    assert all((ship / w["output"]["url"]).is_file() for w in data["widget"]) and str(tmp_path) not in card
    # No probe given: the verdict recorded is the one before a probe, and the card says no probe judged it.
    verdict = expected_verdict(loras, ratings)
    assert json.loads(meta["lora_spectrum.verdict"]) == verdict and verdict["state"] == "needs probe"
    assert "- Verdict when shipped: no probe judged these epochs, so none was picked. " + text(
        verdict["reason"], 1000) in card and "uggest" not in card
    assert (ship / "jimeng-v1.grid.png").read_bytes() == (out / "grid.png").read_bytes()
    # The card's reproduce command, run as written in the release folder (its --base given the path of the local
    # base, as the card asks), renders this epoch's grid cells again pixel for pixel, from the release file.
    command = card.split("run in this folder")[1].split("```bash\n")[1].split("\n```")[0]
    argv = shlex.split(command)
    assert argv[:4] == ["python", "-m", "lora_spectrum", "grid"] and "give --base the path of your copy" in card
    argv[argv.index("--base") + 1] = str(demo_dir / "base-sdxl")
    monkeypatch.chdir(ship)
    assert main(argv[3:]) == 0, capsys.readouterr().err
    assert "cached" not in capsys.readouterr().out, "rendered again, not read from a cache"
    again = json.loads((ship / "grid-epochs" / "manifest.json").read_text())["cells"]
    assert {c["file"] for c in again} == {"jimeng-v1.safetensors"} and len(again) == 2
    for c in again:
        shown = next(o for o in manifest_cells if o["epoch"] == 150 and o["seed"] == c["seed"])
        assert Image.open(ship / "grid-epochs" / c["image"]).tobytes() == Image.open(out / shown["image"]).tobytes()
    shutil.rmtree(ship / "grid-epochs")
    monkeypatch.chdir(tmp_path)
    # 3. Never overwritten: the same command again is one line and exit 2; the first copy is untouched.
    before = copy.read_bytes()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "exists" in err
    assert copy.read_bytes() == before
    assert main([*args[:4], "999", *args[5:6], str(tmp_path / "other")]) == 2
    assert "150" in capsys.readouterr().err, "an unknown epoch names the epochs there are"
    # 4. The report to send: one file, no network, the ranking in it.
    report = tmp_path / "report.html"
    assert main(["report", "--grid", str(out), "--out", str(report), "--loras", str(loras), "--ratings-dir",
                 str(ratings)]) == 0
    html = report.read_text(encoding="utf-8")
    refs = _references(html)
    assert refs and all(r.startswith(("data:", "#")) for r in refs), [r for r in refs if not r.startswith("data:")]
    assert "400 blind vote(s)" in html and "<table class=\"ranking\">" in html
    assert main(["report", "--grid", str(tmp_path / "nowhere"), "--out", str(report)]) == 2
    assert "manifest.json" in capsys.readouterr().err


def test_promote_with_a_probe_records_the_verdict_series_insight_gives(probed, voted, tmp_path, capsys):
    config, loras, _, ratings, _ = voted
    verdict = expected_verdict(loras, ratings, probed)
    pick = verdict["epoch"]
    assert pick in (80, 150)
    common = ["promote", "--loras", str(loras), "--ratings-dir", str(ratings), "--probe", str(probed)]
    # The pick shipped: its metadata holds the verdict, its card quotes the reason as this epoch's.
    assert main([*common, "--epoch", str(pick), "--to", str(tmp_path / "a")]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert out.rstrip("\n").endswith("\n".join(verdict_lines(verdict)))
    with safe_open(str(tmp_path / "a" / "jimeng.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["lora_spectrum.verdict"]) == verdict
    card = (tmp_path / "a" / "README.md").read_text(encoding="utf-8")
    assert "- Verdict when shipped (this epoch): " + text(verdict["reason"], 1000) in card
    assert "license" not in ModelCard(card).data.to_dict() and "No license was given" in card
    # Another epoch shipped: the same verdict recorded, and the card says the verdict picks another epoch. (A
    # config's license: goes into the card's front matter when --license is not given.)
    config.write_text(config.read_text(encoding="utf-8") + "license: apache-2.0\n", encoding="utf-8")
    assert main([*common, "--config", str(config), "--epoch", "300", "--to", str(tmp_path / "b")]) == 0, \
        capsys.readouterr().err
    capsys.readouterr()
    with safe_open(str(tmp_path / "b" / "jimeng.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["lora_spectrum.verdict"]) == verdict
    card = (tmp_path / "b" / "README.md").read_text(encoding="utf-8")
    assert f"- Shipped epoch 300 by choice; the verdict picks epoch {pick}: " + text(verdict["reason"], 1000) in card
    assert ModelCard(card, ignore_metadata_errors=False).data.to_dict()["license"] == "apache-2.0"
    assert "(this epoch)" not in card and "uggest" not in card
    # A probe folder that is not one is refused before anything is written.
    assert main([*common[:-1], str(tmp_path), "--epoch", "300", "--to", str(tmp_path / "c")]) == 2
    assert "probe.json" in capsys.readouterr().err and not (tmp_path / "c").exists()


def _references(html: str) -> list[str]:
    found = []

    class Refs(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.extend(v for k, v in attrs if k in ("src", "href") and v)

    Refs().feed(html)
    return found
