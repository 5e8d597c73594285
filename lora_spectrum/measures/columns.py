"""The one table of per-epoch measures every presenter iterates (the text report, the HTML report, the model card,
the Insight view): where each sits in an epoch row of ``series_insight``, its label, its number format and the
chart it is drawn in. A new measure is one row here (and its computation); no presenter lists columns itself."""

from __future__ import annotations

from dataclasses import dataclass

from lora_spectrum.language import N_
from lora_spectrum.measures.numbers import number, percent


@dataclass(frozen=True)
class Measure:
    key: str  # the path in an epoch row ("image.clip_score"); "score" is the verdict's point for the epoch's file
    label: str  # marked with N_: presenters translate it where they show it
    spec: str  # a format spec, or "%" for a share shown as a percentage
    chart: str  # the chart it is drawn in (marked with N_)
    group: str  # "weights", "images" (a rendered grid) or "probe"

    @property
    def flat(self) -> str:
        """The key in flat records (the release's ``lora_spectrum.measures``): ``image_clip_score``."""
        return self.key.replace(".", "_")

    def of(self, row: dict, scores: dict | None = None) -> float | None:
        """This measure's number in an epoch ``row`` (None when absent or not a number); ``scores``: the verdict's
        score per file, for the "score" measure."""
        value = (scores or {}).get(row.get("file")) if self.key == "score" else row
        for part in ([] if self.key == "score" else self.key.split(".")):
            value = value.get(part) if isinstance(value, dict) else None
        return number(value)

    def format(self, value) -> str:
        """``value`` in this measure's format; "—" when there is none."""
        if number(value) is None:
            return "—"
        return percent(value) if self.spec == "%" else format(value, self.spec)


MEASURES = (
    Measure("weight_norm", N_("weight norm"), ".4g", N_("Update norm"), "weights"),
    Measure("relative_change", N_("change"), "%", N_("Change between epochs"), "weights"),
    Measure("relative_change_per_epoch", N_("change per epoch"), "%", N_("Change between epochs"), "weights"),
    Measure("cosine_to_previous", N_("cos prev"), ".3f", N_("Cosine similarity"), "weights"),
    Measure("cosine_to_last", N_("cos last"), ".3f", N_("Cosine similarity"), "weights"),
    Measure("relative_change_to_last", N_("to last"), "%", N_("Change between epochs"), "weights"),
    Measure("image.distance_from_base", N_("img from base"), ".3g", N_("Images against the base"), "images"),
    Measure("image.seed_spread", N_("seed spread"), ".2g", N_("Images against the base"), "images"),
    Measure("image.change_from_previous", N_("img change"), ".3g", N_("Images against the base"), "images"),
    Measure("image.clip_score", N_("clip score"), ".1f", N_("CLIP score"), "images"),
    Measure("style", N_("style"), ".3g", N_("Style (probe)"), "probe"),
    Measure("fidelity", N_("fidelity"), ".3g", N_("Prompt fidelity (probe)"), "probe"),
    Measure("fidelity_kept", N_("fidelity kept"), ".3g", N_("Prompt fidelity (probe)"), "probe"),
    Measure("leak", N_("leak"), ".3g", N_("Leak (probe)"), "probe"),
    Measure("consistency", N_("consistency"), ".3g", N_("Consistency (probe)"), "probe"),
    Measure("score", N_("probe score"), ".3g", N_("Probe score"), "probe"),
)
CHARTS = tuple(dict.fromkeys(m.chart for m in MEASURES))  # chart titles, in the table's order

