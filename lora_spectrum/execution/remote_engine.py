"""``RemoteEngine``: what the driver of a Ray pool knows of its workers' engines (base, family, defaults, dtype,
device, fuse, compile): the ``execution.Engine`` protocol, as the app, the CLI and ``run_plan`` read it, plus the
pool that renders for it and its admission. It holds no model and renders nothing itself."""

from __future__ import annotations

import torch

from lora_spectrum.bases.families import get_family
from lora_spectrum.render.admission import Admission
from lora_spectrum.render.fuse_policy import FuseChoice

# What must be the same on every worker for their pixels (and cache keys) to be the same.
SAME_ON_EVERY_WORKER = ("base_id", "family", "dtype", "device_type", "fuse_mode", "compiled", "defaults", "is_demo",
                        "loras_dir")
# The engine's attributes that travel as they are (the others are converted to plain values and back).
PLAIN = ("base_id", "defaults", "fuse_mode", "compiled", "compile_note", "prefetch_enabled", "note")


def engine_facts(choice) -> dict:
    """A worker's loaded engine and its start-up choice (``workbench.EngineChoice``) as plain values."""
    e = choice.engine
    return {**{name: getattr(e, name) for name in PLAIN}, "family": e.family.name, "variant": e.family.variant,
            "dtype": str(e.dtype).removeprefix("torch."), "device": str(e.device), "device_type": e.device.type,
            "is_demo": choice.is_demo, "loras_dir": str(choice.loras_dir), "reason": choice.reason,
            "prompt": choice.prompt, "logs_dir": None if choice.logs_dir is None else str(choice.logs_dir)}


def differences(facts: dict, reference: dict) -> str:
    """How a worker's engine differs from the pool's (empty: the same pixels), in one phrase."""
    keys = [k for k in SAME_ON_EVERY_WORKER if facts.get(k) != reference.get(k)]
    if "is_demo" in keys and facts.get("is_demo"):
        return f"loaded the demo instead of {reference['base_id']} ({facts.get('reason') or 'no reason given'})"
    return ", ".join(f"{k} {facts.get(k)!r} where the others have {reference.get(k)!r}" for k in keys
                     if k != "defaults") or ("other render defaults" if keys else "")


class RemoteEngine:
    """The workers' engine as the driver sees it; ``executor`` is the pool (``execution.executor_for``)."""

    fuse_decision = ""  # fuse: auto decides on each worker; the driver does not see those decisions

    def __init__(self, facts: dict, executor, max_queued: int = 2):
        self.executor = executor
        for name in PLAIN:
            setattr(self, name, facts[name])
        self.family = get_family(facts["family"], facts.get("variant", ""))  # Z-Image base, FLUX.1-schnell
        self.dtype = getattr(torch, facts["dtype"])
        self.device = torch.device(facts["device"])
        self.admission = Admission(max_queued)

    def admit(self):
        """Admit one run on the pool: at most ``max_queued_renders`` at once, as for one engine."""
        return self.admission.enter()

    def fuse_choice(self, sampling, images: int) -> FuseChoice:
        """A pool's driver does not know its workers' bench measurements: ``fuse: auto`` is off on every worker
        (the choice travels in the requests), ``on`` and ``off`` are as set."""
        return FuseChoice(self.fuse_mode == "on", "")
