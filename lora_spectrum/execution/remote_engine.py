"""``RemoteEngine``: what the driver of a Ray pool knows of its workers' engines (base, family, defaults, dtype,
device, fuse, compile), in the shape the app, the CLI and ``run_plan`` read from an ``Engine``, plus the pool
that renders for it and its admission. It holds no model and renders nothing itself."""

from __future__ import annotations

import torch

from lora_spectrum.admission import Admission
from lora_spectrum.families import get_family

# What must be the same on every worker for their pixels (and cache keys) to be the same.
SAME_ON_EVERY_WORKER = ("base_id", "family", "dtype", "device_type", "fuse_mode", "compiled", "defaults", "is_demo",
                        "loras_dir")


def engine_facts(choice) -> dict:
    """A worker's loaded engine and its start-up choice (``workbench.EngineChoice``) as plain values."""
    e = choice.engine
    return {"base_id": e.base_id, "family": e.family.name, "defaults": e.defaults,
            "dtype": str(e.dtype).removeprefix("torch."), "device": str(e.device), "device_type": e.device.type,
            "fuse_mode": e.fuse_mode, "compiled": e.compiled, "compile_note": e.compile_note,
            "prefetch_enabled": e.prefetch_enabled, "note": e.note, "is_demo": choice.is_demo,
            "loras_dir": str(choice.loras_dir), "reason": choice.reason, "prompt": choice.prompt,
            "logs_dir": None if choice.logs_dir is None else str(choice.logs_dir)}


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
        self.base_id = facts["base_id"]
        self.family = get_family(facts["family"])
        self.defaults = facts["defaults"]
        self.dtype = getattr(torch, facts["dtype"])
        self.device = torch.device(facts["device"])
        self.fuse_mode = facts["fuse_mode"]
        self.compiled = facts["compiled"]
        self.compile_note = facts["compile_note"]
        self.prefetch_enabled = facts["prefetch_enabled"]
        self.note = facts["note"]
        self.admission = Admission(max_queued)

    def admit(self):
        """Admit one run on the pool: at most ``max_queued_renders`` at once, as for one engine."""
        return self.admission.enter()
