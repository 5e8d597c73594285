"""How every image of a comparison is rendered, apart from its prompt, seed, LoRA and strength: one ``Sampling``.

The family defaults, the plan, the engine's request, the render cache's key, the manifest and the UI all carry
this one value; its validation lives here. Nothing here touches torch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from lora_spectrum.errors import PlanError
from lora_spectrum.language import N_, _


@dataclass(frozen=True)
class Sampling:
    """Negative prompt, steps, guidance (CFG), size and sampler."""

    negative_prompt: str = ""
    steps: int = 8
    guidance: float = 0.0
    width: int = 64
    height: int = 64
    sampler: str = ""

    def override(self, **values) -> Sampling:
        """A copy with the values that are not ``None`` replaced (what a user typed over the defaults)."""
        given = {k: v for k, v in values.items() if v is not None}
        unknown = sorted(set(given) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise PlanError(f"unknown sampling setting(s): {', '.join(unknown)}")
        if "guidance" in given:
            given["guidance"] = float(given["guidance"])
        return dataclasses.replace(self, **given)

    def validate(self, size_factor: int = 8, samplers: list[str] | tuple[str, ...] | None = None) -> Sampling:
        """Raise one ``PlanError`` naming the first bad value; returns itself so calls can chain."""
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1:
            raise PlanError(_("steps must be at least 1, not {steps}").format(steps=repr(self.steps)))
        if not isinstance(self.guidance, (int, float)) or not math.isfinite(self.guidance) or self.guidance < 0:
            raise PlanError(_("guidance must be a finite number >= 0, not {guidance}").format(
                guidance=repr(self.guidance)))
        for name, v in ((N_("width"), self.width), (N_("height"), self.height)):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0 or v % size_factor:
                raise PlanError(_("{name} {value} must be a positive multiple of {factor} for this model").format(
                    name=_(name), value=repr(v), factor=size_factor))
        if samplers is not None and self.sampler not in samplers:
            raise PlanError(_("sampler {sampler} is not offered for this model; choose {samplers}").format(
                sampler=repr(self.sampler), samplers=list(samplers)))
        return self

    def as_dict(self) -> dict:
        """The fields by name, as the manifest's settings and the render cache's key spell them."""
        return dataclasses.asdict(self)
