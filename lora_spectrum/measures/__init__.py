"""Epoch measures: weight curves, image measures, training logs and the suggestion; renders nothing (docs/measures.md)."""

from lora_spectrum.measures.insight import series_insight
from lora_spectrum.measures.report import format_insight
from lora_spectrum.measures.suggestion import Suggestion
from lora_spectrum.measures.weight_curves import WeightCache

__all__ = ["Suggestion", "WeightCache", "format_insight", "series_insight"]
