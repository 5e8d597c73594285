"""What the measures read, as their callers give it: a scanned loras folder, and a synthetic rendered grid (PNG cells
and the manifest ``runs.write_outputs`` writes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from lora_spectrum.loras.catalog import Catalog


def scanned(folder: Path) -> Catalog:
    """The catalog of ``folder``, scanned, as the CLI and the app hand it to ``series_insight``."""
    catalog = Catalog(folder)
    catalog.scan()
    return catalog


def write_grid(folder: Path, steps=(0.1, 0.25, 0.45, 0.7), seeds=(1, 2, 3)) -> Path:
    """A grid whose epoch k images blend each seed's base image towards white by ``steps[k]``; one cell failed."""
    (folder / "cells").mkdir(parents=True)
    rng = np.random.default_rng(0)
    cells = []
    for seed in seeds:
        base = rng.integers(0, 200, size=(48, 48, 3)).astype(np.float64)
        Image.fromarray(base.astype(np.uint8)).save(folder / "cells" / f"base_s{seed}.png")
        cells.append({"epoch": None, "file": None, "sha256": None, "seed": seed, "strength": 0.0, "prompt": "a cat",
                      "image": f"cells/base_s{seed}.png", "seconds": 0.1, "cached": False, "error": None})
        for k, t in enumerate(steps):
            epoch = 10 * (k + 1)
            image = np.round(base * (1 - t) + 255.0 * t).astype(np.uint8)
            Image.fromarray(image).save(folder / "cells" / f"e{epoch}_s{seed}.png")
            cells.append({"epoch": epoch, "file": f"s_{epoch}.safetensors", "sha256": "0" * 64, "seed": seed,
                          "strength": 1.0, "prompt": "a cat", "image": f"cells/e{epoch}_s{seed}.png",
                          "seconds": 0.1, "cached": False, "error": None})
    cells.append({"epoch": 50, "file": "s_50.safetensors", "sha256": None, "seed": 1, "strength": 1.0,
                  "prompt": "a cat", "image": None, "seconds": 0.0, "cached": False, "error": "out of memory"})
    settings = {"prompt": "a cat", "negative_prompt": "", "steps": 4, "guidance": 5.0, "width": 48, "height": 48,
                "sampler": "Euler", "base": "demo"}
    (folder / "manifest.json").write_text(json.dumps({"settings": settings, "cells": cells}), encoding="utf-8")
    return folder
