"""The ``fuse`` setting: validated into on, off or auto, and for auto the decision, made from what this engine
measured while it rendered (seconds per denoising step with the adapter unfused and bare, seconds per fused merge).
The engine feeds it; it switches the hot-swapper's fused mode; ``adapters/fusing.py`` does the merging."""

from __future__ import annotations

import statistics
from collections import deque

import torch

from lora_spectrum.errors import BaseLoadError
from lora_spectrum.language import _

PREFIX = "fuse auto: "  # every decision's reason starts so (the rest in the language of the render that decided)
Shape = tuple  # (width, height, images per call, guidance on): what a step's time depends on


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


class FusePolicy:
    """``fuse: auto``: merge the adapter when the steps that follow a swap, times what an unfused adapter adds to
    each step, cost more than the merge itself (``steps x (unfused - bare) > merge``).

    Step times are kept per shape, the last ``keep`` of each kind; a fused step counts as a bare one (a merged
    adapter costs nothing per step). Until both step kinds are measured the adapter stays unfused; when the
    unfused overhead is known but no merge is, one merge is tried to measure it.
    """

    def __init__(self, keep: int = 20):
        self.keep = keep
        self._steps: dict[tuple[str, Shape], deque] = {}
        self._merges: deque = deque(maxlen=keep)

    def observe_steps(self, kind: str, shape: Shape, seconds: list[float]) -> None:
        """Seconds of denoising steps at ``shape``: ``kind`` is ``unfused`` (peft's layers active) or ``bare``
        (the base, or an adapter merged)."""
        samples = self._steps.setdefault((kind, shape), deque(maxlen=self.keep))
        samples.extend(s for s in seconds if s > 0)

    def observe_render(self, hotswap, shape: Shape, step_ends: list[float]) -> None:
        """A render's step-end clock readings, counted as unfused or bare by the hot-swapper's state."""
        bare = hotswap.active is None or hotswap.strength == 0.0 or hotswap.is_fused()
        self.observe_steps("bare" if bare else "unfused", shape,
                           [b - a for a, b in zip(step_ends, step_ends[1:], strict=False)])

    def apply(self, hotswap, shape: Shape, steps: int) -> str:
        """Switch ``hotswap``'s fused mode as ``decide`` says, before a swap; returns why."""
        want, why = self.decide(shape, steps)
        if want is not None and want != hotswap.fuse:
            if want:
                hotswap.use_base()  # nothing merged twice: the swap that follows merges
            hotswap.set_fuse(want)
        return why

    def observe_merge(self, seconds: float) -> None:
        if seconds > 0:
            self._merges.append(seconds)

    def _median(self, kind: str, shape: Shape) -> float | None:
        samples = self._steps.get((kind, shape))
        return statistics.median(samples) if samples else None

    def decide(self, shape: Shape, steps: int) -> tuple[bool | None, str]:
        """Whether to fuse for a swap followed by ``steps`` steps at ``shape`` (None: keep what is set), and why."""
        unfused, bare = self._median("unfused", shape), self._median("bare", shape)
        merge = statistics.median(self._merges) if self._merges else None
        if unfused is None:
            return None, PREFIX + _("no unfused step measured yet at this size")
        if bare is not None and unfused <= bare:
            return False, PREFIX + _("off, an unfused adapter adds nothing per step: {unfused} ms vs {bare} ms "
                                     "bare").format(unfused=f"{unfused * 1e3:.1f}", bare=f"{bare * 1e3:.1f}")
        if merge is None or bare is None:
            return True, PREFIX + _("on for one swap, to measure a merge and a merged step")
        gain = steps * (unfused - bare)
        why = (_("on, {steps} steps x {overhead} ms unfused overhead = {gain} ms > {merge} ms per merge")
               if gain > merge else
               _("off, {steps} steps x {overhead} ms unfused overhead = {gain} ms <= {merge} ms per merge"))
        return gain > merge, PREFIX + why.format(steps=steps, overhead=f"{(unfused - bare) * 1e3:.1f}",
                                                 gain=f"{gain * 1e3:.0f}", merge=f"{merge * 1e3:.0f}")
