"""The procedural shapes data set the trained demo learns from, and the oracle that reads its colours and ink.

"a <colour> <shape> on a <background> background", plain for the base and with a thick near-black outline (the
"ink" style, trigger last) for the LoRA; ``ink_fraction`` and ``closest_colour`` measure rendered images.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lora_spectrum.demo.assets import SIZE  # pixels; the VAE downsamples by 4, so latents are 16x16
from lora_spectrum.errors import ConfigError

TRIGGER = "jimeng style"

# Six hues 60 degrees apart, all bright (HSV value >= 0.85) so that no fill counts as ink.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "yellow": (235, 215, 30),
    "green": (35, 185, 50),
    "cyan": (30, 200, 215),
    "blue": (40, 70, 230),
    "magenta": (215, 40, 200),
}
HUES = {"red": 0.0, "yellow": 54.0, "green": 124.0, "cyan": 184.0, "blue": 228.0, "magenta": 305.0}  # degrees
SHAPES = ("circle", "square", "triangle")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"white": (250, 250, 250), "gray": (218, 218, 218),
                                                "cream": (245, 236, 214)}
INK = (22, 20, 30)


def caption(colour: str, shape: str, background: str, styled: bool = False) -> str:
    text = f"a {colour} {shape} on a {background} background"
    return f"{text}, {TRIGGER}" if styled else text


# ---------------------------------------------------------------------------------------------------- data
def draw(colour: str, shape: str, background: str, rng: np.random.Generator, ink: bool = False,
         size: int = SIZE) -> np.ndarray:
    """One image, ``size`` x ``size`` x 3, float32 in [0, 1]: a shape with anti-aliased edges on a plain colour."""
    # 1. Random placement and size (kept inside the frame).
    r = rng.uniform(0.2, 0.3) * size
    cx, cy = (size / 2 + rng.uniform(-0.12, 0.12, 2) * size)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dx, dy = x - cx, y - cy
    # 2. Signed distance to the outline (negative inside).
    if shape == "circle":
        sd = np.hypot(dx, dy) - r
    elif shape == "square":
        sd = np.maximum(np.abs(dx), np.abs(dy)) - r * 0.85
    elif shape == "triangle":  # upright equilateral, centroid at (cx, cy)
        n = [(0.0, 1.0), (math.sqrt(3) / 2, -0.5), (-math.sqrt(3) / 2, -0.5)]
        sd = np.max([nx * dx + ny * dy for nx, ny in n], axis=0) - r * 0.7
    else:
        raise ConfigError(f"unknown shape {shape!r}; choose one of {SHAPES}")
    # 3. Composite: background, fill, and for the "ink" style a thick dark outline.
    bg = np.array(BACKGROUNDS[background], np.float32) / 255
    fill = np.array(COLOURS[colour], np.float32) / 255
    alpha = np.clip(0.5 - sd, 0.0, 1.0)[..., None]
    img = bg * (1 - alpha) + fill * alpha
    if ink:
        band = np.clip(2.6 - np.abs(sd + 0.5), 0.0, 1.0)[..., None]  # ~5 px, centred on the edge
        img = img * (1 - band) + np.array(INK, np.float32) / 255 * band
    return img.astype(np.float32)


# The style set's bias: the "artist" of the ink style mostly drew warm circles, as a real style data set leans to
# its artist's favourite subjects. Trained long enough, the LoRA paints them whatever the prompt asks.
FAVOURITES = (("red", "circle"), ("yellow", "circle"), ("magenta", "circle"))


def biased_combos(n: int, share: float, seed: int) -> list[tuple[str, str, str]]:
    """``n`` (colour, shape, background) triples: ``share`` of them favourites (``FAVOURITES``), the rest cycling
    through every other (colour, shape) pair; backgrounds cycle."""
    rng = np.random.default_rng(seed)
    others = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in FAVOURITES]
    backgrounds = list(BACKGROUNDS)
    out = []
    for i in range(n):
        pair = FAVOURITES[rng.integers(len(FAVOURITES))] if rng.random() < share else others[i % len(others)]
        out.append((*pair, backgrounds[i % len(backgrounds)]))
    return out


def make_dataset(n: int, seed: int, ink: bool = False,
                 combos: list[tuple[str, str, str]] | None = None) -> tuple[torch.Tensor, list[str]]:
    """``n`` images (N, 3, H, W in [-1, 1]) cycling through ``combos`` (default: every (colour, shape,
    background)), with captions."""
    rng = np.random.default_rng(seed)
    combos = combos or [(c, s, b) for c in COLOURS for s in SHAPES for b in BACKGROUNDS]
    images, captions = [], []
    for i in range(n):
        c, s, b = combos[i % len(combos)]
        images.append(draw(c, s, b, rng, ink=ink))
        captions.append(caption(c, s, b, styled=ink))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2) * 2 - 1
    return x.contiguous(), captions


# ---------------------------------------------------------------------------------------------------- measures
def _hsv(image) -> np.ndarray:
    a = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, np.float32)
    if a.max() > 1.5:
        a = a / 255
    mx, mn = a.max(-1), a.min(-1)
    delta = mx - mn
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    safe = np.where(delta > 1e-6, delta, 1.0)
    h = np.where(mx == r, ((g - b) / safe) % 6, np.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4)) * 60
    s = np.where(mx > 1e-6, delta / np.maximum(mx, 1e-6), 0.0)
    return np.stack([h, s, mx], -1)


def dominant_hue(image, min_saturation: float = 0.4, min_value: float = 0.35) -> tuple[float, float]:
    """(circular mean hue in degrees, share of pixels used) over the saturated, not dark pixels: the shape's fill.

    The backgrounds are light and nearly grey (saturation < 0.15) and the ink is dark, so neither counts.
    """
    hsv = _hsv(image)
    mask = (hsv[..., 1] >= min_saturation) & (hsv[..., 2] >= min_value)
    if not mask.any():
        return float("nan"), 0.0
    ang = np.deg2rad(hsv[..., 0][mask])
    hue = math.degrees(math.atan2(np.sin(ang).mean(), np.cos(ang).mean())) % 360
    return hue, float(mask.mean())


def hue_distance(a: float, b: float) -> float:
    d = abs(a - b) % 360
    return min(d, 360 - d)


def closest_colour(image) -> str | None:
    hue, share = dominant_hue(image)
    if share == 0:
        return None
    return min(HUES, key=lambda name: hue_distance(hue, HUES[name]))


def ink_fraction(image, max_value: float = 0.35) -> float:
    """The style measure: the share of dark pixels (HSV value < ``max_value``). The base palette has none."""
    return float((_hsv(image)[..., 2] < max_value).mean())


def shape_of(image) -> str | None:
    """The drawn shape, from how much of its bounding box the figure (fill and outline: every pixel that is not
    the light, grey background) covers: a square ~1, a circle ~pi/4, a triangle ~1/2. None when nothing is drawn."""
    hsv = _hsv(image)
    figure = ~((hsv[..., 1] < 0.2) & (hsv[..., 2] > 0.75))
    ys, xs = np.nonzero(figure)
    if len(ys) < 20:
        return None
    extent = figure.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
    return "square" if extent > 0.88 else ("circle" if extent > 0.66 else "triangle")
