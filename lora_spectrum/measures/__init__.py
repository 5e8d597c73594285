"""Epoch measures: weight curves, image measures, training logs and the suggestion; renders nothing (docs/measures.md)."""

from lora_spectrum.measures.insight import folder_insight
from lora_spectrum.measures.report import format_insight
from lora_spectrum.measures.weight_curves import WeightCache

__all__ = ["WeightCache", "folder_insight", "format_insight"]
