"""Start-up: the configured base, or the offline demo when it cannot load (saying why), with its loras folder.

Nothing here downloads anything or knows about Streamlit; the CLI and the app both start through ``open_engine``.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lora_spectrum import demo
from lora_spectrum.bases.devices import free_memory
from lora_spectrum.bases.families import DEMO_FAMILY
from lora_spectrum.errors import BaseLoadError, ConfigError, LoraSpectrumError
from lora_spectrum.language import N_, _
from lora_spectrum.loras.catalog import READY, Catalog
from lora_spectrum.render.engine import Engine, EngineConfig

if TYPE_CHECKING:
    from lora_spectrum import execution

DEMO_PROMPT = "a red circle on a white background"
# The tiny random demo renders small and fast on a CPU; the family YAML's 1024x1024 x 30 steps is for real bases.
TINY_DEFAULTS = {"width": 64, "height": 64, "steps": 8, "guidance": 5.0, "sampler": "Euler"}
# What the demo takes from the config: how it swaps and renders, not how the configured base loads.
DEMO_KEEPS = ("resident_adapters", "max_queued", "fuse", "prefetch", "compile", "compile_backend")


@dataclass
class EngineChoice:
    """What ``open_engine`` decided: the engine, its loras folder, whether it is the demo, and why."""

    engine: execution.Engine  # this process's, or a Ray pool's (``RemoteEngine``)
    loras_dir: Path
    is_demo: bool
    reason: str = ""
    prompt: str = ""
    logs_dir: Path | None = None  # the demo's training log; None for a real base (the config names one)
    scanned: object = None  # a Catalog of ``loras_dir`` that ``open_engine`` already scanned to decide, if any
    source: str = ""  # the base as asked for (``base:``, or "demo"): what ``switch_base`` loads back on a failure
    generation: int = 0  # how many times ``switch_base`` replaced the engine (other sessions notice the change)

    def catalog(self):
        """The ``Catalog`` of ``loras_dir``: the one already scanned when there is one, else a new one."""
        if self.scanned is None or Path(self.scanned.folder) != Path(self.loras_dir):
            self.scanned = Catalog(self.loras_dir)
        return self.scanned

    def clip_model(self, settings) -> str | None:
        """The CLIP for the image and probe measures: the configured one, else on the trained demo its own tiny
        CLIP (so the CLIP measures run offline), else None (``measures.clip``'s default, if on the machine)."""
        if settings.clip_model:
            return settings.clip_model
        if self.is_demo and self.logs_dir is not None:  # the trained demo (the random one has no log, no CLIP)
            found = demo.assets.demo_clip_dir()
            return str(found) if found else None
        return None

    @property
    def references(self) -> str | None:
        """The style references of the probe's style measure: on the trained demo its own ink drawings (the runs
        trained on the demo base learn that style), else None (the trigger's text direction stands in)."""
        if self.is_demo and self.logs_dir is not None:
            found = demo.assets.demo_style_dir()
            return str(found) if found else None
        return None

    def logs_folder(self, settings, given: str | Path | None = None) -> Path | None:
        """The training log folder for this start-up (``logs_folder``); the app never passes a typed path. The
        demo's own log belongs to the demo's epochs only: other LoRAs rendered on the demo base never read it."""
        own = self.logs_dir if self.logs_dir is not None and _same_folder(
            self.loras_dir, demo.ASSETS_DIR / demo.LORAS_DIRNAME) else None
        return logs_folder(self.loras_dir, given, settings.path(settings.logs) if settings.logs else None, own)


def logs_folder(loras_dir: str | Path, given: str | Path | None = None, configured: str | Path | None = None,
                demo: str | Path | None = None) -> Path | None:
    """The first that exists of: ``given`` (typed on the command line), the configured folder, the demo's log,
    ``<loras>/logs``."""
    candidates = [Path(p) for p in (given, configured, demo) if p] + [Path(loras_dir) / "logs"]
    return next((p for p in candidates if p.is_dir()), None)


def _same_folder(a: str | Path, b: str | Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def demo_engine(settings, reason: str = "") -> EngineChoice:
    """The offline demo engine: the shipped trained demo (a tiny base that draws coloured shapes and the epochs of
    an ink-style LoRA, with its training log), or with ``demo: random`` (or when the assets are missing) the
    random-weight tiny base with its synthetic epochs."""
    # The demo is tiny: it runs anywhere, so a configured device that is missing (the reason the base failed,
    # perhaps) does not stop it.
    device = settings.device if settings.device == "cpu" or torch.cuda.is_available() else "auto"
    config = EngineConfig.from_settings(settings).keeping(*DEMO_KEEPS, family=DEMO_FAMILY, device=device)
    if settings.demo == "trained" and demo.assets_available():
        rec = demo.RECOMMENDED
        defaults = {k: rec[k] for k in ("steps", "guidance", "sampler", "width", "height")}
        engine = Engine.load(str(demo.ASSETS_DIR / demo.BASE_DIRNAME), config, defaults=defaults)
        note = N_("Demo mode: a tiny base trained to draw coloured shapes, and the epochs of an ink-style LoRA "
                "trained on it (overtrained on purpose: its late epochs repaint the shapes), with their training "
                "log. Not a real model.")
        choice = EngineChoice(engine, demo.ASSETS_DIR / demo.LORAS_DIRNAME, True, reason, rec["prompts"][0],
                              demo.ASSETS_DIR / demo.LOGS_DIRNAME)
    else:
        base, loras = demo.ensure_demo(settings.path(settings.demo_dir), DEMO_FAMILY)
        engine = Engine.load(str(base), config, defaults=TINY_DEFAULTS)
        note = N_("Demo mode: a tiny base with random weights and synthetic demo epochs (not a real model).")
        choice = EngineChoice(engine, loras, True, reason, DEMO_PROMPT)
    engine.note = note  # in English; the UI shows it translated, with ``choice.reason`` (why not the base)
    return choice


def open_engine(settings, allow_demo: bool = True, loras_given: bool = False) -> EngineChoice:
    """Load the configured base; when it cannot load and ``allow_demo``, fall back to the demo, saying why.

    ``settings.base == "demo"`` asks for the demo directly; it then uses the configured loras folder when that
    holds LoRA files (or ``loras_given``), else the demo's epochs. A fallback always uses the demo's epochs, since
    LoRAs made for the real base do not fit the tiny one.
    """
    if settings.base != "demo":
        try:
            engine = Engine.from_settings(settings)
            return EngineChoice(engine, settings.path(settings.loras), False, source=settings.base)
        except BaseLoadError as exc:
            if not allow_demo:
                raise
            choice = demo_engine(settings, reason=str(exc))
            choice.source = settings.base  # what was asked for: a failed switch comes back to it, or the demo
            if loras_given:
                choice.loras_dir = settings.path(settings.loras)
            return choice
    choice = demo_engine(settings)
    choice.source = "demo"
    configured = settings.path(settings.loras)
    if loras_given:
        choice.loras_dir = configured
    elif configured.is_dir():
        scanned = Catalog(configured)
        if any(e.state == READY for e in scanned.scan()):
            choice.loras_dir, choice.scanned = configured, scanned  # kept: the caller's catalog, scanned once
    return choice


def switch_base(choice: EngineChoice, settings, source: str, progress=None) -> EngineChoice:
    """Put ``source``'s engine into ``choice`` in place, for every session sharing it: the previous one is freed
    first (a card holds one base); when the new one cannot load, the previous is loaded again and
    ``BaseLoadError`` says why. ``BusyError`` while runs are rendering on the current engine."""
    say = progress or (lambda fraction, text: None)
    old = choice.engine
    if old.executor is not None:
        raise ConfigError("the base of a Ray pool is switched by restarting with another base: in the config")
    previous = choice.source or old.base_id
    with old.admission.exclusive("renders are running (here or in another tab): switch when they finish"):
        # 1. Free the previous engine: every reference to its pipeline dropped, then the allocator's cache.
        say(0.05, _("freeing {base} ...").format(base=old.base_id))
        choice.engine = None
        old.retire()
        gc.collect()
        free_memory()
        # 2. Load the new one (diffusers: seconds for a local SDXL, minutes for a first read from a slow disk).
        say(0.2, _("loading {base} ...").format(base=source))
        try:
            # What is on this machine only: the Base section downloads first, so a load never waits on the network.
            new = open_engine(replace(settings, base=source, family="auto", local_files_only=True), allow_demo=False)
        except LoraSpectrumError as exc:
            say(0.6, _("{base} did not load; loading {previous} back ...").format(base=source, previous=previous))
            _adopt(choice, open_engine(replace(settings, base=previous, family="auto"), allow_demo=True))
            raise BaseLoadError(f"{source} could not be loaded, so {previous} is back: {exc}") from exc
        _adopt(choice, new)
    say(1.0, _("{base} is ready").format(base=choice.engine.base_id))
    return choice


def _adopt(choice: EngineChoice, new: EngineChoice) -> None:
    for name in ("engine", "loras_dir", "is_demo", "reason", "prompt", "logs_dir", "scanned", "source"):
        setattr(choice, name, getattr(new, name))
    choice.generation += 1
