"""Model families: one module per family (``sdxl``, ``z_image``, ``flux``), their ``Family`` base class, and the
registry that everything else asks (``get_family``, ``detect_family``, ``FAMILY_NAMES``). No family is named
anywhere outside this package; adding one takes a module here, its ``configs/<name>.yaml`` and its tests."""

from lora_spectrum.bases.families.base import Family
from lora_spectrum.bases.families.registry import (
    DEMO_FAMILY,
    FAMILY_NAMES,
    REGISTRY,
    detect_family,
    family_class,
    family_hint,
    get_family,
    pipeline_families,
)

__all__ = ["DEMO_FAMILY", "FAMILY_NAMES", "REGISTRY", "Family", "detect_family", "family_class", "family_hint",
           "get_family", "pipeline_families"]
