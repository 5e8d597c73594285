"""Start-up through the configured executor: ``open_workbench`` is ``workbench.open_engine`` for ``executor:
local``, and a Ray pool (``ray_pool.RayPool``) whose ``RemoteEngine`` stands in for the engine for ``ray``."""

from __future__ import annotations

from pathlib import Path

from lora_spectrum.workbench import EngineChoice, open_engine


def open_workbench(settings, allow_demo: bool = True, loras_given: bool = False, say=None) -> EngineChoice:
    """The engine (or the Ray pool's) and its loras folder, as ``open_engine`` decides them on every worker."""
    if settings.executor != "ray":
        return open_engine(settings, allow_demo=allow_demo, loras_given=loras_given)
    from lora_spectrum.execution.ray_pool import RayPool

    pool = RayPool(settings, allow_demo=allow_demo, loras_given=loras_given, say=say)
    facts = pool.start()
    logs = facts["logs_dir"]
    return EngineChoice(pool.engine, Path(facts["loras_dir"]), facts["is_demo"], facts["reason"], facts["prompt"],
                        None if logs is None else Path(logs))
