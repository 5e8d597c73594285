"""The demo's own tiny CLIP: the trainer writes a folder the CLIP measures load, and the shipped one reads colour,
shape and the ink style off held-out drawings, blurred and noisy as renders are."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageFilter

from lora_spectrum.demo import assets
from lora_spectrum.measures.clip import clip_embeddings, image_embeddings, load_clip, text_embeddings
from tools.demo_trainer import shapes
from tools.demo_trainer.clip_training import QUICK_STEPS


@pytest.mark.slow  # the quick trainer run (shared: one per session)
def test_quick_training_writes_a_folder_the_clip_measures_load(quick_demo, tmp_path):
    """On the quick trainer run's CLIP (``train_clip(..., quick=True)`` on its base, as the trainer calls it)."""
    demo_folder, threads_before, threads_after = quick_demo
    assert threads_after == threads_before, "train_clip must leave the thread count as it found it"
    report = json.loads((demo_folder / "training_report.json").read_text(encoding="utf-8"))["clip"]
    assert report["steps"] == QUICK_STEPS == 20 and np.isfinite(report["final_loss"])
    assert set(report["held_out"]) >= {"colour", "shape", "style"}
    folder = assets.demo_clip_dir(demo_folder)
    assert folder == demo_folder / assets.CLIP_DIRNAME
    image = tmp_path / "one.png"
    Image.fromarray((shapes.draw("red", "circle", "white", np.random.default_rng(0)) * 255).astype(np.uint8)).save(image)
    model, processor, model_id = load_clip(str(folder))
    assert model_id == str(folder)
    img, txt = clip_embeddings(model, processor, [image, image], [shapes.caption("red", "circle", "white"),
                                                                   shapes.caption("red", "circle", "white", True)])
    assert img.shape == txt.shape == (2, model.config.projection_dim)
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, atol=1e-6)


def test_demo_clip_dir_is_none_without_a_model(tmp_path):
    assert assets.demo_clip_dir(tmp_path) is None
    (tmp_path / assets.CLIP_DIRNAME).mkdir()
    (tmp_path / assets.CLIP_DIRNAME / "config.json").write_text("{}", encoding="utf-8")
    assert assets.demo_clip_dir(tmp_path) is None, "a config without weights is not a model"


@pytest.fixture(scope="module")
def shipped():
    folder = assets.demo_clip_dir()
    assert folder is not None, (f"the demo CLIP is missing from {assets.ASSETS_DIR / assets.CLIP_DIRNAME}; "
                                "rebuild it with python -m tools.demo_trainer.clip_training")
    return load_clip(str(folder))


def _held_out(folder) -> list[tuple[str, str, str, bool, object]]:
    """36 fresh drawings (every colour and shape, plain and inked, backgrounds cycling), blurred and noisy, as PNGs."""
    rng = np.random.default_rng(20_24)
    backgrounds = list(shapes.BACKGROUNDS)
    out = []
    for i, colour in enumerate(shapes.COLOURS):
        for j, shape in enumerate(shapes.SHAPES):
            for ink in (False, True):
                background = backgrounds[(i + j + ink) % 3]
                pixels = shapes.draw(colour, shape, background, rng, ink=ink)
                image = Image.fromarray((pixels * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.0))
                noisy = np.asarray(image, np.float32) / 255 + rng.normal(0, 0.04, pixels.shape)
                path = folder / f"{colour}_{shape}_{background}_{int(ink)}.png"
                Image.fromarray((np.clip(noisy, 0, 1) * 255).round().astype(np.uint8)).save(path)
                out.append((colour, shape, background, ink, path))
    return out


def test_shipped_clip_reads_colour_shape_and_style_off_held_out_drawings(shipped, tmp_path):
    model, processor, _ = shipped
    items = _held_out(tmp_path)
    img = image_embeddings(model, processor, [p for *_, p in items])
    captions = [shapes.caption(c, s, b, styled) for c in shapes.COLOURS for s in shapes.SHAPES
                for b in shapes.BACKGROUNDS for styled in (False, True)]
    txt = text_embeddings(model, processor, captions)
    colour = shape = style = 0
    fidelity = {False: [], True: []}
    for row, (c, s, b, ink, _) in zip(img, items, strict=True):
        colour += max(shapes.COLOURS, key=lambda x: row @ txt[shapes.caption(x, s, b)]) == c
        shape += max(shapes.SHAPES, key=lambda x: row @ txt[shapes.caption(c, x, b)]) == s
        gain = row @ txt[shapes.caption(c, s, b, True)] - row @ txt[shapes.caption(c, s, b)]
        style += (gain > 0) == ink
        fidelity[ink].append(row @ txt[shapes.caption(c, s, b)])
    n = len(items)
    # Measured on the shipped model: 1.0, 1.0 and 1.0; fidelity 0.77 plain, 0.73 inked.
    assert colour / n >= 0.85, f"colour accuracy {colour / n:.2f}"
    assert shape / n >= 0.85, f"shape accuracy {shape / n:.2f}"
    assert style / n >= 0.85, f"style sign right on {style / n:.2f}"
    plain, inked = np.mean(fidelity[False]), np.mean(fidelity[True])
    assert plain > 0.5 and inked > plain - 0.1, f"prompt fidelity: plain {plain:.2f}, inked {inked:.2f}"
