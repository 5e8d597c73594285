"""The strength to recommend with a release, from an epoch x strength sweep's image measures (``image_measures``'
rows, one per file and strength): the same trade-off as the verdict, style gained against prompt fidelity kept,
weighed as the release's preference weighs it. Pure numbers and words; reads no file, renders nothing."""

from __future__ import annotations

import numpy as np

from lora_spectrum.language import _
from lora_spectrum.measures.numbers import number
from lora_spectrum.measures.verdict import DEFAULT_PREFERENCE, PREFERENCES, trade_off


def strength_advice(image: dict | None, file: str, preference: str | None = None) -> dict | None:
    """For ``file`` rendered at two or more strengths in the grid ``image`` measured: every strength with its
    change from the base (how far the style moved the image) and its CLIP prompt score, and the ``recommended``
    strength (``None`` when the grid has no prompt score: no CLIP model, or no base column to compare with).
    ``None`` when the grid holds no sweep of this file."""
    rows = sorted((r for r in (image or {}).get("rows", []) if r.get("file") == file and (r.get("strength") or 0) > 0),
                  key=lambda r: r["strength"])
    if len({r["strength"] for r in rows}) < 2:
        return None
    table = [{"strength": r["strength"], "change_from_base": r.get("distance_from_base"),
              "clip_score": r.get("clip_score")} for r in rows]
    advice = {"strengths": table, "recommended": None, "preference": preference or DEFAULT_PREFERENCE,
              "measure": image.get("measure")}
    # Numbers only (a missing or non-finite value is NaN here, and then no strength is recommended).
    effect = np.array([number(t["change_from_base"]) for t in table], dtype=float)
    score = np.array([number(t["clip_score"]) for t in table], dtype=float)
    base_score = number((image.get("base") or {}).get("clip_score")) or 0.0
    if np.isnan(effect).any() or np.isnan(score).any() or not base_score > 0 or not effect.max() > 0:
        advice["why_none"] = _("the sweep has no prompt score to weigh against the style (no CLIP model, or no base "
                               "column in the grid)")
        return advice
    # Style gained: the change from the base as a share of the sweep's largest; fidelity kept: the prompt's CLIP
    # score as a share of the base's (at most all of it). Weighed by the verdict's own harmonic mean.
    weight = PREFERENCES.get(advice["preference"], PREFERENCES[DEFAULT_PREFERENCE])
    scores = trade_off(effect / effect.max(), np.minimum(score / base_score, 1.0), weight)
    best = np.flatnonzero(np.isclose(scores, scores.max(), rtol=0, atol=1e-9))
    pick = min(best, key=lambda k: (abs(table[k]["strength"] - 1.0), -table[k]["strength"]))  # a tie: nearest 1
    advice["recommended"] = table[pick]["strength"]
    return advice


def strength_lines(advice: dict | None, name: str, preference: str) -> list[str]:
    """The card's "Recommended strength" section as markdown lines ([] without a sweep). ``name``: the release's
    file name without its suffix, as A1111's ``<lora:NAME:STRENGTH>`` spells it; ``preference``: the preference
    in words."""
    if advice is None:
        return []
    shown = ", ".join(f"{t['strength']:g}" for t in advice["strengths"])
    rows = ["| " + _("strength") + " | " + _("change from the base") + " | " + _("CLIP prompt score") + " |",
            "|---:|---:|---:|"]
    for t in advice["strengths"]:
        mark = " **←**" if t["strength"] == advice["recommended"] else ""
        rows.append(f"| {t['strength']:g}{mark} | {_cell(t['change_from_base'], '.3f')} | "
                    f"{_cell(t['clip_score'], '.1f')} |")
    if advice["recommended"] is None:
        head = _("This epoch was rendered at strengths {strengths}; no strength is recommended: {why}.").format(
            strengths=shown, why=advice.get("why_none", ""))
    else:
        head = _("Recommended strength: **{strength}** (in A1111: `<lora:{name}:{strength}>`). Of the strengths "
                 "this epoch was rendered at ({strengths}), it best weighs the change from the base (the style's "
                 "effect) against the prompt's CLIP score kept from the base, as the {preference} preference "
                 "weighs them.").format(strength=f"{advice['recommended']:g}", name=name, strengths=shown,
                                        preference=preference)
    return [head, "\n".join(rows)]


def _cell(v, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)
