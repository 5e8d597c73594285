"""The one MEASURES table: every presenter (the text report, the HTML report, the model card's measures) shows
every measure the table lists, in the table's format, from the same epoch row."""

from __future__ import annotations

import html

from lora_spectrum.decision.model_card import epoch_measures
from lora_spectrum.decision.report_insight import insight_section
from lora_spectrum.measures.columns import CHARTS, MEASURES
from lora_spectrum.measures.report import format_insight
from lora_spectrum.measures.verdict import Verdict

FILE = "ink-000006.safetensors"


def full_row() -> dict:
    """An epoch row holding every measure of the table, each with its own value (0.1, 0.2, ...)."""
    row = {"epoch": 6, "step": None, "file": FILE, "label": "epoch 6", "groups": {}, "epoch_loss": None}
    for i, m in enumerate(MEASURES, start=1):
        if m.key == "score":
            continue
        node = row
        *parents, leaf = m.key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = round(0.1 * i, 3)
    row["image"]["measure"] = "clip"
    return row


def insight() -> dict:
    verdict = Verdict(series="ink", state="measures", file=FILE, epoch=6, reason="epoch 6 keeps the prompt.",
                      front=(6,), tied=(6,), points=({"epoch": 6, "file": FILE, "style": 0.5, "fidelity": 0.9,
                                                      "score": 0.77, "front": True, "share": 1.0},)).to_json()
    image = {"measure": "clip", "measure_description": "1 - cosine", "cells_used": 4, "grid": "g", "notes": [],
             "clip": {"skipped": False, "model": "tiny"}, "text_alignment": {"skipped": False}, "has_base": True,
             "base": {"clip_score": 30.0}, "rows": []}
    return {"series": "ink", "folder": "loras", "epochs": [full_row()], "skipped": [], "loss": None,
            "image": image, "probe": None, "notes": [], "verdict": verdict}


def test_every_measure_of_the_table_reaches_every_presenter():
    result, row = insight(), full_row()
    text = format_insight(result)
    page = html.unescape(insight_section(result))
    flat = epoch_measures(result, FILE, 6)
    for m in MEASURES:
        value = 0.77 if m.key == "score" else m.of(row)
        assert m.label in page, m.key  # the HTML report's table and its charts
        assert format(value, ".4g") in page, m.key
        if m.group != "probe":  # the text report's epoch table: weights and images (the probe has its own)
            assert m.label in text and m.format(value) in text, m.key
        if m.key != "score":  # the release's measures: every measure of the row, by its flat key
            assert flat[m.flat] == value, m.key
    for chart in CHARTS:
        assert chart in page, chart
