"""The ``fuse`` setting: validated into on, off or auto, and for auto the choice, made before a run from its
sampling and what ``bench`` recorded for this machine (seconds per denoiser forward with an adapter unfused and
bare, seconds per merge), never from the renders themselves. ``FuseAuto``, the engine's render hook, applies it
before each swap (switching the swapper's fused mode); ``adapters/fusing.py`` merges.

Fused and unfused renders differ by rounding, so the choice decides pixels: it must not depend on timings taken
while the user's cells render (a busy machine would change them). As ``compile: auto`` reads the verdicts of
``bench --compile``, ``fuse: auto`` reads the measurements ``bench`` recorded, and only a new bench run changes them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from lora_spectrum.errors import BaseLoadError
from lora_spectrum.language import _
from lora_spectrum.render.compilation import denoiser_size, machine_key, write_verdict
from lora_spectrum.render.compilation import read_verdicts as read_compile_style_verdicts
from lora_spectrum.render.compilation import verdicts_path as compile_verdicts_path

log = logging.getLogger(__name__)
PREFIX = "fuse auto: "  # every auto choice's reason starts so (the rest in the language of the render that chose)


def resolve_fuse(fuse: bool | str, device: torch.device, offload: str = "none") -> str:
    """``on``, ``off`` or ``auto``. Sequential and group offload move every weight between devices in their hooks,
    where a merged weight would not stay merged: ``auto`` is then off and ``on`` is refused."""
    value = ("on" if fuse else "off") if isinstance(fuse, bool) else str(fuse).lower()
    if value not in ("auto", "on", "off"):
        raise BaseLoadError(f"unknown fuse setting {fuse!r}; use auto, on or off")
    if offload in ("sequential", "group"):
        if value == "on":
            raise BaseLoadError(f"fuse: on does not work with offload: {offload} (the weights live in offload "
                                f"hooks); use fuse: off, or offload: model")
        return "off"
    return value


# ---------------------------------------------------------------------------------------------- recorded measures
def verdicts_path() -> Path:
    """Where ``bench`` records its fuse measurements: ``$LORA_SPECTRUM_FUSE_VERDICTS``, else ``fuse.json`` beside
    the compile verdicts (``compilation.verdicts_path``)."""
    env = os.environ.get("LORA_SPECTRUM_FUSE_VERDICTS")
    return Path(env) if env else compile_verdicts_path().with_name("fuse.json")


def read_verdicts(path: Path | None = None) -> dict:
    """The recorded fuse measurements by machine key ({} when none are readable)."""
    return read_compile_style_verdicts(path or verdicts_path())


def record_verdict(device: torch.device, family: str, size_m: int, bare_s: float, unfused_s: float, merge_s: float,
                   image: int, batch: int = 1, path: Path | None = None) -> dict:
    """Write what ``bench`` measured on this machine: one denoiser forward of ``batch`` samples at ``image`` x
    ``image`` pixels, bare and with an adapter unfused, and one merge. Returns the verdict."""
    path = path or verdicts_path()
    verdict = {"bare_forward_s": bare_s, "unfused_forward_s": unfused_s, "merge_s": merge_s, "image": image,
               "batch": batch}
    write_verdict(path, machine_key(device, family, size_m), verdict)
    return verdict


def verdict_for(device: torch.device, family: str, denoiser: torch.nn.Module, path: Path | None = None) -> dict | None:
    """This machine's recorded measurements for this denoiser (``compilation.machine_key``), or None."""
    verdict = read_verdicts(path).get(machine_key(device, family, denoiser_size(denoiser)))
    keys = ("bare_forward_s", "unfused_forward_s", "merge_s", "image", "batch")
    if not isinstance(verdict, dict) or not all(isinstance(verdict.get(k), (int, float)) for k in keys):
        return None
    return verdict


# ---------------------------------------------------------------------------------------------- the choice
@dataclass(frozen=True)
class FuseChoice:
    """Whether a run's adapters are merged into the base weights, and why; fixed before the run renders."""

    fused: bool
    why: str


class FusePolicy:
    """``fuse: auto`` on one engine: merge when the steps after a swap, times what an unfused adapter adds to
    each, cost more than the merge (``steps x (unfused - bare) > merge``), on the measurements ``bench`` recorded
    (``verdict``; None: nothing recorded, unfused). The forward times are scaled from bench's forward to the
    run's (pixels x samples per denoiser call). A pure function of its inputs: the same plan gets the same choice
    on an idle and a busy machine."""

    def __init__(self, verdict: dict | None):
        self.verdict = verdict

    def choose(self, steps: int, width: int, height: int, samples: int) -> FuseChoice:
        """For renders of ``steps`` steps at ``width`` x ``height`` with ``samples`` per denoiser call (images,
        doubled under classifier-free guidance)."""
        v = self.verdict
        if v is None:
            return FuseChoice(False, PREFIX + _("off, bench has recorded no fuse measurements for this machine"))
        scale = width * height * samples / (v["image"] ** 2 * max(1, v["batch"]))
        unfused, bare = v["unfused_forward_s"] * scale, v["bare_forward_s"] * scale
        if unfused <= bare:
            return FuseChoice(False, PREFIX + _("off, bench measured a step with the adapter unfused no slower "
                                                "than a bare step ({unfused} ms <= {bare} ms), so an unfused "
                                                "adapter adds nothing per step and a merge cannot pay for itself")
                              .format(unfused=f"{unfused * 1e3:.1f}", bare=f"{bare * 1e3:.1f}"))
        gain, merge = steps * (unfused - bare), v["merge_s"]
        why = (_("on, {steps} steps x {overhead} ms unfused overhead = {gain} ms > {merge} ms per merge")
               if gain > merge else
               _("off, {steps} steps x {overhead} ms unfused overhead = {gain} ms <= {merge} ms per merge"))
        return FuseChoice(gain > merge, PREFIX + why.format(steps=steps, overhead=f"{(unfused - bare) * 1e3:.1f}",
                                                            gain=f"{gain * 1e3:.0f}", merge=f"{merge * 1e3:.0f}"))


# ---------------------------------------------------------------------------------------------- the render hook
class FuseAuto:
    """``fuse: auto`` on one engine, as its render hook: before each swap to an adapter, the swapper merges or not
    as the run chose (``RenderRequest.fuse``) or, for a request alone, as ``choose`` says for the route's seeds; a
    new choice is logged and kept in ``decision``. ``uses_cfg``: whether a guidance doubles each image's samples."""

    def __init__(self, policy: FusePolicy, uses_cfg: Callable[[float], bool]):
        self.policy = policy
        self.uses_cfg = uses_cfg
        self.decision = ""  # why it chose what it did for the last swap ("" until it chose)

    def choose(self, sampling, images: int) -> FuseChoice:
        """The choice for renders of ``sampling`` with ``images`` per denoiser call."""
        samples = images * (2 if self.uses_cfg(sampling.guidance) else 1)
        return self.policy.choose(sampling.steps, sampling.width, sampling.height, samples)

    def before_swap(self, swapper, request, route) -> None:
        """Before ``route`` (file, strength, seeds) is swapped in for ``request``: the swapper's fused mode set."""
        if not route.adapter:
            return
        choice = request.fuse or self.choose(request.sampling, len(route.seeds))
        if choice.fused != swapper.fuse:
            if choice.fused:
                swapper.use_base()  # nothing merged twice: the swap that follows merges
            swapper.set_fuse(choice.fused)
        if choice.why != self.decision:
            log.info(choice.why)
            self.decision = choice.why
