"""The demo that learns: the shipped base draws what the prompt names, the shipped epochs grow the ink style, the
files carry kohya's metadata and log tags, and the training script runs end to end (``--quick``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from lora_spectrum import demo_training as dt
from lora_spectrum.engine import Engine, RenderRequest
from lora_spectrum.families import get_family

SEEDS = (1, 2)


def _request(prompt: str) -> RenderRequest:
    r = dt.RECOMMENDED
    return RenderRequest(prompt, seeds=SEEDS, steps=r["steps"], guidance=r["guidance"], width=r["width"],
                         height=r["height"], sampler=r["sampler"])


def _epochs() -> list:
    files = (dt.ASSETS_DIR / dt.LORAS_DIRNAME).glob(f"{dt.SERIES}_*.safetensors")
    return sorted(files, key=lambda p: int(p.stem.rsplit("_", 1)[1]))


@pytest.fixture(scope="module")
def engine():
    from diffusers import StableDiffusionXLPipeline

    assert dt.assets_available(), f"the demo assets are missing from {dt.ASSETS_DIR}"
    # Offline, exactly as the app's demo fallback loads it.
    pipe = StableDiffusionXLPipeline.from_pretrained(str(dt.ASSETS_DIR / dt.BASE_DIRNAME), torch_dtype=torch.float32,
                                                     local_files_only=True)
    return Engine(pipe, get_family("sdxl"), "demo")


# ---------------------------------------------------------------------------------------------------- measures
def test_measures_on_drawn_images():
    rng = np.random.default_rng(0)
    for colour in ("red", "green", "blue", "yellow"):
        plain = dt.draw(colour, "square", "cream", rng)
        assert dt.closest_colour(plain) == colour
        assert dt.ink_fraction(plain) == 0.0
        inked = dt.draw(colour, "square", "cream", rng, ink=True)
        assert dt.closest_colour(inked) == colour  # the ink is dark, so it does not count toward the hue
        assert dt.ink_fraction(inked) > 0.05


# ---------------------------------------------------------------------------------------------------- shipped base
@pytest.mark.parametrize("colour,shape,background", [("red", "circle", "white"), ("green", "square", "gray"),
                                                     ("blue", "triangle", "cream")])
def test_shipped_base_draws_the_requested_colour(engine, colour, shape, background):
    images = engine.render(_request(dt.caption(colour, shape, background))).images
    for seed, image in zip(SEEDS, images, strict=True):
        hue, share = dt.dominant_hue(image)
        assert share > 0.03, f"seed {seed}: almost no saturated pixels: the base drew no shape"
        assert dt.closest_colour(image) == colour, f"seed {seed}: hue {hue:.0f} is not {colour}"
        assert dt.hue_distance(hue, dt.HUES[colour]) < 35


# ---------------------------------------------------------------------------------------------------- shipped epochs
def test_style_grows_from_first_to_last_epoch(engine):
    epochs = _epochs()
    assert len(epochs) >= 4

    def ink(path) -> float:
        values = [dt.ink_fraction(im) for p in dt.RECOMMENDED["prompts"]
                  for im in engine.render(_request(p), None if path is None else str(path), 1.0).images]
        return float(np.mean(values))

    base, first, last = ink(None), ink(epochs[0]), ink(epochs[-1])
    assert base < 0.02, "the base should draw no ink outlines"
    # Measured on the shipped files: base 0.002, first epoch 0.006, last epoch 0.033.
    assert last > first + 0.015, f"ink fraction: first epoch {first:.3f}, last epoch {last:.3f}"
    assert last > 3 * first


def test_shipped_epochs_are_kohya_files_with_metadata():
    epochs = _epochs()
    steps = []
    for path in epochs:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
            keys = list(f.keys())
        for key in ("ss_epoch", "ss_steps", "ss_network_dim", "ss_network_alpha", "ss_output_name",
                    "modelspec.trigger_phrase", "ss_tag_frequency", "ss_base_model_version"):
            assert key in meta, f"{path.name} lacks {key}"
        assert meta["ss_output_name"] == dt.SERIES
        assert path.stem == f"{dt.SERIES}_{meta['ss_epoch']}"
        assert dt.TRIGGER in json.loads(meta["ss_tag_frequency"])[f"10_{dt.SERIES}"]
        assert all(k.startswith("lora_unet_") for k in keys)
        assert {k.rsplit(".", 2)[-2] if k.endswith(".weight") else k.rsplit(".", 1)[-1] for k in keys} == {
            "lora_down", "lora_up", "alpha"}
        steps.append(int(meta["ss_steps"]))
    assert steps == sorted(steps) and steps[0] > 0


def test_shipped_log_has_kohya_tags():
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = sorted((dt.ASSETS_DIR / dt.LOGS_DIRNAME).rglob("events.out.tfevents.*"))
    acc = EventAccumulator(str(runs[0].parent), size_guidance={"scalars": 0}).Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss/current", "loss/average", "loss/epoch"} <= tags
    per_epoch = [e.step for e in acc.Scalars("loss/epoch")]
    last_epoch = max(int(p.stem.rsplit("_", 1)[1]) for p in _epochs())
    assert per_epoch == list(range(1, last_epoch + 1))
    assert len(acc.Scalars("loss/current")) > len(per_epoch)


# ---------------------------------------------------------------------------------------------------- the script
def test_quick_training_run_writes_everything(tmp_path):
    assert dt.main(["--out", str(tmp_path), "--quick"]) == 0
    assert dt.assets_available(tmp_path)
    assert sorted(p.name for p in (tmp_path / dt.LORAS_DIRNAME).iterdir()) == ["jimeng_1.safetensors",
                                                                                "jimeng_2.safetensors"]
    assert (tmp_path / dt.BASE_DIRNAME / "tokenizer" / "tokenizer_config.json").is_file()
