"""Epoch measures: weight curves, image and probe measures, training logs and the verdict; renders nothing
(docs/measures.md)."""

from lora_spectrum.measures.insight import series_insight
from lora_spectrum.measures.report import format_insight
from lora_spectrum.measures.verdict import Verdict
from lora_spectrum.measures.weight_curves import WeightCache

__all__ = ["Verdict", "WeightCache", "format_insight", "series_insight"]
