"""The demo's own oracle: how a rendered epoch of the shapes demo does on held-out prompts (fill colour and shape
as asked, ink for the style), and which saved epoch is best. It knows the demo's data set, so it is used only to
train and check the demo, never by the suggestion (which must work on any LoRA).
"""

from __future__ import annotations

import numpy as np
import torch

from tools.demo_trainer.shapes import TRIGGER, caption, closest_colour, ink_fraction, shape_of

# Held out: none of these (colour, shape) pairs is in the biased style set's favourites.
HELD_OUT = (("blue", "triangle", "gray"), ("green", "triangle", "white"), ("cyan", "square", "cream"),
            ("blue", "square", "white"), ("green", "circle", "cream"), ("magenta", "square", "gray"))
SEEDS = (101, 102, 103, 104, 105, 106, 107, 108)
RENDER = {"num_inference_steps": 20, "guidance_scale": 4.0, "width": 64, "height": 64}


def measure(pipe, prompts=HELD_OUT, seeds=SEEDS, steps: int = RENDER["num_inference_steps"]) -> dict:
    """Render ``prompts`` (with the trigger) for every seed through ``pipe`` as it is now, in ``steps`` steps, and
    score the images: the share with the asked fill colour, with the asked shape, both, and the mean ink fraction."""
    texts = [caption(c, s, b, styled=True) for c, s, b in prompts]
    colour = shape = both = 0
    ink = []
    for seed in seeds:
        gens = [torch.Generator().manual_seed(seed) for _ in texts]
        images = pipe(prompt=texts, generator=gens, **{**RENDER, "num_inference_steps": steps}).images
        for (c, s, _), im in zip(prompts, images, strict=True):
            ok_c, ok_s = closest_colour(im) == c, shape_of(im) == s
            colour, shape, both = colour + ok_c, shape + ok_s, both + (ok_c and ok_s)
            ink.append(ink_fraction(im))
    n = len(texts) * len(seeds)
    return {"colour": round(colour / n, 3), "shape": round(shape / n, 3), "correct": round(both / n, 3),
            "ink": round(float(np.mean(ink)), 4), "images": n, "trigger": TRIGGER}


def score(rows: list[dict], base: dict) -> list[float]:
    """Per epoch: the harmonic mean of the style gained (ink over the run's most, above the base) and the
    correctness kept (the share of prompts drawn right, over the base's)."""
    top = max(r["ink"] - base["ink"] for r in rows) or 1.0
    out = []
    for r in rows:
        style = max(r["ink"] - base["ink"], 0.0) / top
        kept = min(r["correct"] / base["correct"], 1.0) if base["correct"] else 0.0
        out.append(round(2 * style * kept / (style + kept), 3) if style + kept else 0.0)
    return out


def best_epoch(rows: list[dict], base: dict) -> int:
    """The epoch with the highest ``score`` (the earlier one on a tie)."""
    scores = score(rows, base)
    return rows[scores.index(max(scores))]["epoch"]
