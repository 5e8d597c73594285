"""Probe measures (lora_spectrum.measures.probe_measures) on a probe folder laid out as ``run_probe`` writes it,
with images drawn by the demo's shapes code: an epoch with the style and the right colours, and one with the
style that repaints every prompt red. Pixel fallback and CLIP (the demo's own) must both tell them apart."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from lora_spectrum.demo import assets
from lora_spectrum.errors import ConfigError
from lora_spectrum.measures.probe_measures import probe_measures
from tools.demo_trainer import shapes

PROMPTS = [("style", ("blue", "triangle", "gray")), ("new_context", ("green", "square", "white")),
           ("leak", ("cyan", "circle", "cream"))]
SEEDS = (1, 2, 3)
TRIGGER = "jimeng style"


def _png(path, colour, shape, background, seed, ink):
    img = shapes.draw(colour, shape, background, np.random.default_rng(seed), ink=ink)
    Image.fromarray((img * 255).round().astype("uint8")).save(path)


def write_probe(folder, epochs: dict) -> None:
    """``epochs``: file -> (epoch, draw(kind, colour) -> (colour, ink)); the base draws what is asked, plainly."""
    part = folder / "part-0"
    (part / "cells").mkdir(parents=True)
    prompts, cells = [], []
    for kind, (colour, shape, bg) in PROMPTS:
        plain = shapes.caption(colour, shape, bg)
        prompt = plain if kind == "leak" else f"{plain}, {TRIGGER}"
        prompts.append({"kind": kind, "prompt": prompt, "plain": plain, "seeds": list(SEEDS)})
        for file, (epoch, how) in {None: (None, lambda k, c: (c, False)), **epochs}.items():
            for seed in SEEDS:
                drawn, ink = how(kind, colour)
                name = f"cells/{file or 'base'}_{kind}_{seed}.png"
                _png(part / name, drawn, shape, bg, seed, ink)
                cells.append({"file": file, "epoch": epoch, "seed": seed, "prompt": prompt, "image": name,
                              "error": None, "strength": 0.0 if file is None else 1.0})
    (part / "manifest.json").write_text(json.dumps({"settings": {}, "cells": cells}), encoding="utf-8")
    record = {"probe_set": "synthetic", "series": "s", "trigger_words": [TRIGGER], "parts": ["part-0"],
              "prompts": prompts, "complete": True, "notes": []}
    (folder / "probe.json").write_text(json.dumps(record), encoding="utf-8")


EPOCHS = {
    "s_10.safetensors": (10, lambda kind, c: (c, kind != "leak")),  # the style where asked, colours kept
    "s_20.safetensors": (20, lambda kind, c: ("red", True)),  # the style everywhere, every fill red
}


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    folder = tmp_path_factory.mktemp("probe")
    write_probe(folder, EPOCHS)
    return folder


def _by_epoch(result):
    return {e["epoch"]: e for e in result["epochs"]}


def test_the_pixel_fallback_sees_style_fidelity_and_leak(probe):
    result = probe_measures(probe, use_clip=False)
    assert result["measure"] == "pixel" and "pixel fallback" in result["definitions"]["style"]
    e = _by_epoch(result)
    assert e[10]["style"] > 0 and e[20]["style"] > 0
    assert e[10]["fidelity_kept"] > 0.9 > e[20]["fidelity_kept"]
    assert e[10]["leak"] == 0 and e[20]["leak"] > 0.01 and e[20]["leak_ratio"] > 0.5
    assert e[10]["consistency"] is not None and len(result["cells"]) == 3 * 3 * 3


def test_the_demo_clip_sees_the_style_and_the_lost_prompt(probe, tmp_path):
    assert assets.demo_clip_dir() is not None, "the demo ships its own CLIP"
    result = probe_measures(probe, clip_model=str(assets.demo_clip_dir()))
    assert result["measure"] == "clip" and not result["clip"]["skipped"]
    e = _by_epoch(result)
    assert e[10]["style"] > 0.0, "ink outlines where the trigger asks for them"
    assert e[10]["fidelity"] > e[20]["fidelity"], "red fills where blue, green were asked"
    assert e[10]["leak"] < e[20]["leak"]
    # With training images as references, style is likeness to them (CLIP-I): inked references here.
    refs = tmp_path / "refs"
    refs.mkdir()
    for i, (colour, shape) in enumerate([("red", "circle"), ("yellow", "circle"), ("magenta", "square")]):
        _png(refs / f"{i}.png", colour, shape, "white", 100 + i, True)
    liked = probe_measures(probe, clip_model=str(assets.demo_clip_dir()), references=refs)
    assert liked["references"] == 3 and "reference centroid" in liked["definitions"]["style"]
    assert _by_epoch(liked)[10]["style"] > 0.0


def test_bad_reference_and_probe_folders_are_named(probe, tmp_path):
    refs = tmp_path / "refs"
    refs.mkdir()
    with pytest.raises(ConfigError, match="no .png"):
        probe_measures(probe, use_clip=False, references=refs)
    with pytest.raises(ConfigError, match="does not exist"):
        probe_measures(probe, use_clip=False, references=tmp_path / "missing")
    with pytest.raises(ConfigError, match="no probe.json"):
        probe_measures(tmp_path)


def test_a_probe_without_base_images_is_refused(tmp_path):
    write_probe(tmp_path, EPOCHS)
    manifest = tmp_path / "part-0" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["cells"] = [c for c in data["cells"] if c["file"] is not None]
    manifest.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="no base images"):
        probe_measures(tmp_path, use_clip=False)


def test_fidelity_is_the_chance_clip_picks_the_prompt_over_its_counterfactuals(probe):
    """Discriminative fidelity: a probability against the same prompt with its colour or shape swapped, with a
    standard error per epoch; the style of the image does not count against it."""
    result = probe_measures(probe, clip_model=str(assets.demo_clip_dir()))
    assert "swapped" in result["definitions"]["fidelity"]
    cells = [c for c in result["cells"] if c["kind"] in ("style", "new_context")]
    assert all(0.0 <= c["fidelity"] <= 1.0 for c in cells)
    e = _by_epoch(result)
    assert e[10]["fidelity"] > e[20]["fidelity"] and e[10]["fidelity_se"] > 0 and e[10]["style_se"] > 0
    # An epoch that adds ink and keeps the colours keeps most of the base's fidelity.
    assert e[10]["fidelity_kept"] > 0.7


def test_a_probe_entry_may_bring_its_own_counterfactuals(tmp_path):
    from lora_spectrum.probes import probe_set_from_mapping

    data = {"seeds": [1], "new_context": [{"prompt": "a cat on a sofa", "variants": ["a dog on a sofa"]}]}
    resolved = probe_set_from_mapping(data, "own", "test").resolve(["inked"])
    assert resolved[0].variants == ("a dog on a sofa",) and resolved[0].plain == "a cat on a sofa"
    with pytest.raises(ConfigError, match="variants"):
        probe_set_from_mapping({"seeds": [1], "style": [{"prompt": "a", "variants": "b"}]}, "bad", "test")
