"""Measures of a probe run, per epoch: how much style, how faithful to the prompt, how much leak into prompts
without the trigger, how consistent across seeds. CLIP when a model is on this machine (the demo ships its own),
pixel measures otherwise (named as such). Reads the folder ``probe_runs.run_probe`` wrote; renders nothing.

See docs/measures.md for the definitions and the shape of what ``probe_measures`` returns.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lora_spectrum.errors import ClipUnavailable, ConfigError
from lora_spectrum.language import _
from lora_spectrum.measures.clip import image_embeddings, load_clip, text_embeddings
from lora_spectrum.measures.counterfactuals import counterfactuals, set_words
from lora_spectrum.measures.image_measures import _gray, pixel_distance
from lora_spectrum.measures.numbers import Progress, rounded
from lora_spectrum.records.grid_files import read_manifest
from lora_spectrum.render.probe_runs import read_probe

TRIGGERED = ("style", "new_context")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
TELLING = 0.75  # a counterfactual counts when the base's images prefer their own prompt over it this often


def _cells(folder: Path, record: dict) -> tuple[list[dict], list[str]]:
    """Every rendered cell of the run's parts, with its prompt's kind and trigger-free text attached."""
    by_prompt = {p["prompt"]: p for p in record["prompts"] if isinstance(p, dict) and "prompt" in p}
    cells, notes = [], []
    for part in record["parts"]:
        grid, manifest = read_manifest(folder / str(part))
        root = grid.resolve()
        for c in manifest["cells"]:
            if not isinstance(c, dict) or c.get("error") or not c.get("image") or c.get("prompt") not in by_prompt:
                continue
            path = (grid / str(c["image"])).resolve()
            if not path.is_relative_to(root) or not path.is_file():
                notes.append(_("image {image} is missing; left out").format(image=repr(c["image"])))
                continue
            p = by_prompt[c["prompt"]]
            cells.append({"file": c.get("file"), "epoch": c.get("epoch"), "seed": c.get("seed"), "path": path,
                          "image": str(path.relative_to(folder.resolve())), "prompt": c["prompt"],
                          "plain": p.get("plain") or c["prompt"], "kind": p.get("kind")})
    return cells, notes


def _hue_histogram(path: Path, bins: int = 12) -> np.ndarray:
    """Share of pixels per hue bin among the coloured ones (saturation and value above 0.25), plus one bin for the
    rest: what colours the picture is painted in, blind to outlines and texture."""
    from PIL import Image

    with Image.open(path) as im:
        hsv = np.asarray(im.convert("RGB").resize((64, 64)).convert("HSV"), dtype=np.float64) / 255.0
    coloured = (hsv[..., 1] > 0.25) & (hsv[..., 2] > 0.25)
    hist = np.histogram(hsv[..., 0][coloured], bins=bins, range=(0, 1))[0].astype(np.float64)
    hist = np.append(hist, (~coloured).sum())
    return hist / hist.sum()


def _references(folder: str | Path | None) -> list[Path]:
    if not folder:
        return []
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: the references folder does not exist")
    found = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not found:
        raise ConfigError(f"{folder}: no .png, .jpg or .webp images to use as references")
    return found


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _spread(cells: list[dict], key: str) -> float | None:
    """Mean over prompts of the standard deviation across seeds of ``key``."""
    by_prompt: dict[str, list[float]] = {}
    for c in cells:
        by_prompt.setdefault(c["prompt"], []).append(c[key])
    spreads = [float(np.std(v)) for v in by_prompt.values() if len(v) >= 2]
    return float(np.mean(spreads)) if spreads else None


def _fidelity_kinds(cells: list[dict]) -> tuple[str, ...]:
    """The kinds prompt fidelity is judged on: ``new_context`` when the run has such prompts (subjects the style set
    did not show, where a LoRA that overfits stops obeying), else every prompt with the trigger."""
    return ("new_context",) if any(c["kind"] == "new_context" for c in cells) else TRIGGERED


def _discriminative(img: np.ndarray, own: np.ndarray, rivals: np.ndarray, scale: float) -> float:
    """P(the image was drawn from its own prompt rather than one of ``rivals``): a softmax over CLIP's scaled
    cosines. Unlike a raw cosine it does not flatten out as the style grows, and an added style that keeps the
    subject keeps the probability (the rivals carry the same style)."""
    logits = scale * np.concatenate([[img @ own], rivals @ img])
    logits -= logits.max()
    weights = np.exp(logits)
    return float(weights[0] / weights.sum())


def _stats(values: list[float]) -> tuple[float | None, float | None]:
    """(mean, standard error of the mean) of ``values``; the error is None for fewer than two."""
    if not values:
        return None, None
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), (float(arr.std(ddof=1) / np.sqrt(len(arr))) if len(arr) >= 2 else None)


def _clip_scores(cells: list[dict], record: dict, model, processor, refs: list[Path]) -> None:
    """Per cell, from CLIP: ``fidelity`` (discriminative, against counterfactual prompts), ``style`` (likeness to
    the references, else the image's position along the trigger's text direction) and ``emb``."""
    prompts = [p for p in record["prompts"] if isinstance(p, dict) and "plain" in p]
    own_words = set_words(p["plain"] for p in prompts)
    plains = list(dict.fromkeys(p["plain"] for p in prompts if p.get("kind") in TRIGGERED))
    rivals = {p["plain"]: counterfactuals(p["plain"], p.get("variants") or (), own_words,
                                          [q for q in plains if q != p["plain"]]) for p in prompts}
    img = image_embeddings(model, processor, [c["path"] for c in cells])
    texts = [c["prompt"] for c in cells] + [c["plain"] for c in cells] + [r for v in rivals.values() for r in v]
    txt = text_embeddings(model, processor, texts)
    scale = float(model.logit_scale.detach().exp()) if hasattr(model, "logit_scale") else 100.0
    centroid = None
    if refs:
        r = image_embeddings(model, processor, refs).mean(axis=0)
        centroid = r / np.linalg.norm(r)
    for c, e in zip(cells, img, strict=True):
        c["emb"] = e
    rivals = _telling(rivals, [c for c in cells if c["file"] is None], txt, scale)
    for c in cells:
        e = c["emb"]
        others = rivals.get(c["plain"]) or []
        c["fidelity"] = (_discriminative(e, txt[c["plain"]], np.stack([txt[o] for o in others]), scale) if others
                         else float(e @ txt[c["plain"]]))
        c["style"] = float(e @ centroid) if centroid is not None else float(e @ (txt[c["prompt"]] - txt[c["plain"]]))


def _telling(rivals: dict[str, list[str]], base: list[dict], txt: dict, scale: float) -> dict[str, list[str]]:
    """Only the counterfactuals the base's own images tell apart from their prompt (CLIP prefers the prompt with
    probability ``TELLING`` or more on average): one CLIP cannot see in the base's renders (a cream background
    for a white one, on a tiny CLIP) would measure noise, not the LoRA. All of them when none is told apart."""
    out = {}
    for plain, others in rivals.items():
        embs = [c["emb"] for c in base if c["plain"] == plain]
        if not embs or not others or not TELLING:
            out[plain] = others
            continue
        own = np.array([e @ txt[plain] for e in embs])
        kept = [o for o in others
                if float(np.mean(1 / (1 + np.exp(-scale * (own - np.array([e @ txt[o] for e in embs])))))) >= TELLING]
        out[plain] = kept or others
    return out


def probe_measures(folder: str | Path, *, clip_model: str | tuple | None = None, use_clip: bool = True,
                   references: str | Path | None = None, allow_download: bool = False,
                   progress: Progress | None = None) -> dict:
    """Per-epoch style, fidelity, leak and consistency of a probe run, each with its standard error; the shape is
    in docs/measures.md."""
    # 1. The run's cells; the base's by (prompt, seed).
    folder, record = read_probe(folder)
    cells, notes = _cells(folder, record)
    if not cells:
        raise ConfigError(f"{folder}: the probe run has no rendered image")
    base = {(c["prompt"], c["seed"]): c for c in cells if c["file"] is None}
    if not base:
        raise ConfigError(f"{folder}: the probe run has no base images to compare with")
    refs = _references(references)

    # 2. Per image, from CLIP when it is here: fidelity against counterfactual prompts, style, embeddings.
    clip: dict = {"skipped": True, "reason": "turned off (use_clip=False)"}
    if use_clip:
        try:
            model, processor, model_id = (clip_model if isinstance(clip_model, tuple)
                                          else load_clip(clip_model, allow_download))
            if progress:
                progress(0, len(cells), "CLIP image embeddings")
            _clip_scores(cells, record, model, processor, refs)
            clip = {"skipped": False, "model": model_id}
        except ClipUnavailable as exc:
            clip = {"skipped": True, "reason": str(exc)}
    measure = "pixel" if clip["skipped"] else "clip"

    # 3. Per image, the change from the base image of the same prompt and seed (and the pixel fallback's style
    #    and fidelity).
    if measure == "pixel":
        for c in cells:
            c["gray"], c["hist"] = _gray(c["path"]), _hue_histogram(c["path"])
    for c in cells:
        b = base.get((c["prompt"], c["seed"]))
        if measure == "clip":
            c["change"] = 1.0 - float(c["emb"] @ b["emb"]) if b else None
        else:
            c["change"] = pixel_distance(c["gray"], b["gray"]) if b else None
            c["fidelity"] = 1.0 - 0.5 * float(np.abs(c["hist"] - b["hist"]).sum()) if b else None
            c["style"] = c["change"]

    # 4. Per column (the base first, then epochs in order): the measures with their standard errors. Style is
    #    read on every prompt with the trigger, fidelity on ``_fidelity_kinds``.
    fid_kinds = _fidelity_kinds(cells)

    def column(group: list[dict]) -> dict:
        trig = [c for c in group if c["kind"] in TRIGGERED]
        leak = [c for c in group if c["kind"] == "leak"]
        style, style_se = _stats([c["style"] for c in trig if c["style"] is not None])
        fid, fid_se = _stats([c["fidelity"] for c in trig if c["kind"] in fid_kinds and c["fidelity"] is not None])
        return {
            "style_raw": style, "style_se": style_se, "fidelity": fid, "fidelity_se": fid_se,
            "fidelity_by_kind": {k: rounded(_mean(c["fidelity"] for c in trig if c["kind"] == k)) for k in TRIGGERED},
            "leak": _mean(c["change"] for c in leak), "change": _mean(c["change"] for c in trig),
            "consistency": _spread(trig, "style"), "images": len(group),
        }

    base_row = column(list(base.values()))
    files: dict[str, list[dict]] = {}
    for c in cells:
        if c["file"] is not None:
            files.setdefault(c["file"], []).append(c)
    order = sorted(files, key=lambda f: (files[f][0]["epoch"] is None, files[f][0]["epoch"] or 0, f))
    epochs = []
    for f in order:
        row = column(files[f])
        style = None if row["style_raw"] is None else row["style_raw"] - (base_row["style_raw"] or 0.0)
        kept = (row["fidelity"] / base_row["fidelity"] if row["fidelity"] is not None and base_row["fidelity"]
                else None)
        ratio = row["leak"] / row["change"] if row["leak"] is not None and row["change"] else None
        epochs.append({"epoch": files[f][0]["epoch"], "file": f, "style": rounded(style),
                       "style_se": rounded(row["style_se"]), "fidelity": rounded(row["fidelity"]),
                       "fidelity_se": rounded(row["fidelity_se"]), "fidelity_kept": rounded(kept),
                       "fidelity_by_kind": row["fidelity_by_kind"], "leak": rounded(row["leak"]),
                       "leak_ratio": rounded(ratio), "change_from_base": rounded(row["change"]),
                       "consistency": rounded(row["consistency"]), "images": row["images"]})
    if progress:
        progress(len(cells), len(cells), "probe measures done")

    # 5. The grid for the view: every image by (column, prompt, seed), paths relative to the probe folder.
    return {
        "folder": str(folder), "probe_set": record.get("probe_set"), "series": record.get("series"),
        "measure": measure, "definitions": _definitions(measure, bool(refs), fid_kinds), "clip": clip,
        "references": len(refs), "fidelity_kinds": list(fid_kinds),
        "trigger_words": record.get("trigger_words", []), "prompts": record["prompts"],
        "complete": bool(record.get("complete", True)), "notes": notes + list(record.get("notes", [])),
        "base": {"style_raw": rounded(base_row["style_raw"]), "fidelity": rounded(base_row["fidelity"]),
                 "fidelity_se": rounded(base_row["fidelity_se"]), "fidelity_by_kind": base_row["fidelity_by_kind"],
                 "images": base_row["images"]},
        "epochs": epochs,
        "cells": [{"file": c["file"], "epoch": c["epoch"], "prompt": c["prompt"], "kind": c["kind"],
                   "seed": c["seed"], "image": c["image"], "fidelity": rounded(c["fidelity"]),
                   "style": rounded(c["style"])} for c in cells],
    }


def _definitions(measure: str, refs: bool, fid_kinds: tuple[str, ...]) -> dict[str, str]:
    """One sentence per measure, as the views and the report show it."""
    consistency = _("spread (std) of the style score across seeds, mean over prompts")
    on = (_("on the new-context prompts") if fid_kinds == ("new_context",) else _("on the prompts with the trigger"))
    if measure == "clip":
        return {"style": (_("cos(image, reference centroid), minus the base's") if refs else
                          _("cos(image, prompt) - cos(image, prompt without trigger), minus the base's")),
                "fidelity": _("chance CLIP picks the prompt (without trigger) over the same prompt with its subject, "
                              "colour or attribute swapped, {on}").format(on=on),
                "leak": _("1 - cos(image, base image), prompts without the trigger; leak_ratio: over the same "
                          "change on prompts with the trigger"),
                "consistency": consistency}
    return {"style": _("pixel distance from the base image (pixel fallback: no CLIP)"),
            "fidelity": _("1 - hue-histogram distance to the base image (pixel fallback: colours kept)"),
            "leak": _("pixel distance from the base image, prompts without the trigger; leak_ratio: over the "
                      "same change on prompts with the trigger"),
            "consistency": consistency}
