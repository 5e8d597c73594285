"""Image measures over a rendered grid's manifest: pixel distance and DSSIM always, CLIP distance and prompt scores
when a CLIP model is on this machine. Reads the PNGs the grid wrote; renders nothing.

See docs/measures.md for the shape of what ``image_measures`` returns.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lora_spectrum.errors import ClipUnavailable, ConfigError
from lora_spectrum.language import _
from lora_spectrum.measures.clip import clip_embeddings, load_clip
from lora_spectrum.measures.numbers import Progress, rounded
from lora_spectrum.records.grid_files import read_manifest

PIXEL_SIZE = 64


def _gray(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        g = im.convert("L").resize((PIXEL_SIZE, PIXEL_SIZE), Image.Resampling.BOX)
    return np.asarray(g, dtype=np.float64) / 255.0


def pixel_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two grayscale arrays in 0..1."""
    return float(np.abs(a - b).mean())


def dssim(a: np.ndarray, b: np.ndarray, window: int = 7) -> float:
    """``(1 - SSIM) / 2`` with uniform ``window`` x ``window`` windows (data range 1): 0 same, 1 opposite."""
    from numpy.lib.stride_tricks import sliding_window_view

    c1, c2 = 0.01**2, 0.03**2
    wa, wb = sliding_window_view(a, (window, window)), sliding_window_view(b, (window, window))
    mu_a, mu_b = wa.mean(axis=(-2, -1)), wb.mean(axis=(-2, -1))
    var_a, var_b = wa.var(axis=(-2, -1)), wb.var(axis=(-2, -1))
    cov = (wa * wb).mean(axis=(-2, -1)) - mu_a * mu_b
    ssim = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float((1.0 - ssim.mean()) / 2.0)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _std(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.std(values)) if len(values) >= 2 else None


def image_measures(grid: str | Path, *, clip_model: str | tuple | None = None, use_clip: bool = True,
                   allow_download: bool = False, progress: Progress | None = None) -> dict:
    """Image measures over a rendered grid; the shape is in docs/measures.md."""
    # 1. Read the manifest and keep the cells whose image exists inside the grid folder.
    folder, manifest = read_manifest(grid)
    root = folder.resolve()
    notes: list[str] = []
    cells = []
    for c in manifest["cells"]:
        if not isinstance(c, dict) or c.get("error") or not c.get("image"):
            continue
        path = (folder / str(c["image"])).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            notes.append(_("image {image} is missing or outside the grid folder; left out").format(
                image=repr(c["image"])))
            continue
        cells.append({**c, "path": path, "prompt": str(c.get("prompt") or ""), "seed": c.get("seed")})
    failed = sum(1 for c in manifest["cells"] if isinstance(c, dict) and c.get("error"))
    if failed:
        notes.append(_("{n} cell(s) failed to render and are left out").format(n=failed))
    if not cells:
        raise ConfigError(f"{folder}: the manifest lists no rendered images")

    # 2. Pixel arrays for every image.
    total = len(cells)
    for i, c in enumerate(cells):
        if progress:
            progress(i, total, Path(c["path"]).name)
        c["gray"] = _gray(c["path"])

    # 3. CLIP embeddings when a model is on this machine.
    clip: dict = {"skipped": True, "reason": "turned off (use_clip=False)"}
    if use_clip:
        try:
            loaded = clip_model if isinstance(clip_model, tuple) else load_clip(clip_model, allow_download)
            model, processor, model_id = loaded
            img, txt = clip_embeddings(model, processor, [c["path"] for c in cells], [c["prompt"] for c in cells])
            for i, c in enumerate(cells):
                c["emb"] = img[i]
                c["clip_score"] = 100.0 * max(float(img[i] @ txt[i]), 0.0) if c["prompt"] else None
            clip = {"skipped": False, "model": model_id}
        except ClipUnavailable as exc:
            clip = {"skipped": True, "reason": str(exc)}
    measure = "pixel" if clip["skipped"] else "clip"

    def dist(a: dict, b: dict) -> float:
        if measure == "clip":
            return 1.0 - float(a["emb"] @ b["emb"])
        return pixel_distance(a["gray"], b["gray"])

    # 4. Columns: the base (epoch null, no file) and one per (file, strength), in epoch order.
    base = {(c["prompt"], c["seed"]): c for c in cells if c.get("file") is None}
    if not base:
        notes.append(_("no base column in this grid, so no distance from base (render with --include-base)"))
    columns: dict[tuple[str, float], list[dict]] = {}
    for c in cells:
        if c.get("file") is not None:
            columns.setdefault((c["file"], float(c.get("strength") or 0.0)), []).append(c)
    order = sorted(columns, key=lambda k: (columns[k][0].get("epoch") is None, columns[k][0].get("epoch") or 0))

    # 5. Per column: distance from base per seed, its spread, change from the previous epoch at the same strength.
    rows = []
    previous: dict[float, dict] = {}
    for key in order:
        file, strength = key
        group = columns[key]
        before = previous.get(strength)
        before_by_seed = {(c["prompt"], c["seed"]): c for c in before["cells"]} if before else {}
        per_image = []
        for c in group:
            b = base.get((c["prompt"], c["seed"]))
            p = before_by_seed.get((c["prompt"], c["seed"]))
            per_image.append({
                "seed": c["seed"], "prompt": c["prompt"], "image": c["image"],
                "distance_from_base": rounded(dist(c, b)) if b else None,
                "change_from_previous": rounded(dist(c, p)) if p else None,
                "clip_score": rounded(c.get("clip_score")),
                "_pixel_base": pixel_distance(c["gray"], b["gray"]) if b else None,
                "_dssim_base": dssim(c["gray"], b["gray"]) if b else None,
                "_pixel_prev": pixel_distance(c["gray"], p["gray"]) if p else None,
            })
        row = {
            "epoch": group[0].get("epoch"), "file": file, "strength": strength, "images": len(group),
            "label": f"epoch {group[0]['epoch']}" if group[0].get("epoch") is not None else file,
            "distance_from_base": rounded(_mean(x["distance_from_base"] for x in per_image)),
            "seed_spread": rounded(_std(x["distance_from_base"] for x in per_image)),
            "change_from_previous": rounded(_mean(x["change_from_previous"] for x in per_image)),
            "clip_score": rounded(_mean(x["clip_score"] for x in per_image)),
            "pixel": {
                "distance_from_base": rounded(_mean(x["_pixel_base"] for x in per_image)),
                "dssim_from_base": rounded(_mean(x["_dssim_base"] for x in per_image)),
                "seed_spread": rounded(_std(x["_pixel_base"] for x in per_image)),
                "change_from_previous": rounded(_mean(x["_pixel_prev"] for x in per_image)),
            },
            "per_image": [{k: v for k, v in x.items() if not k.startswith("_")} for x in per_image],
        }
        rows.append(row)
        previous[strength] = {"cells": group}
    if progress:
        progress(total, total, "images done")

    description = (_("1 - cosine similarity of CLIP image embeddings") if measure == "clip" else
                   _("mean absolute difference of {size}x{size} grayscale images (0..1)").format(size=PIXEL_SIZE))
    alignment = ({"skipped": False, "model": clip["model"], "score": "100 * max(cos(image, prompt), 0)"}
                 if not clip["skipped"] else {"skipped": True, "reason": clip["reason"]})
    base_scores = [c.get("clip_score") for c in base.values()]
    return {
        "grid": str(folder), "measure": measure, "measure_description": description, "has_base": bool(base),
        "cells_used": len(cells), "notes": notes, "clip": clip, "text_alignment": alignment,
        "base": {"images": len(base), "clip_score": rounded(_mean(base_scores))}, "rows": rows,
    }


def image_row_for(image: dict | None, file: str) -> dict | None:
    """The image row of ``file`` at the strength nearest 1.0, in the short form attached to an epoch."""
    if not image:
        return None
    rows = [r for r in image["rows"] if r["file"] == file]
    if not rows:
        return None
    r = min(rows, key=lambda r: (abs(r["strength"] - 1.0), -r["strength"]))
    return {"measure": image["measure"], "strength": r["strength"], "distance_from_base": r["distance_from_base"],
            "seed_spread": r["seed_spread"], "change_from_previous": r["change_from_previous"],
            "clip_score": r["clip_score"]}
