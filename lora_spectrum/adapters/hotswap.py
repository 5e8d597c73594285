"""Which adapter is in the denoiser, atomically: the adapter ``Slot``, the LRU of prepared adapters, strength, fused
mode, swap history and the generation counter. Reading, the slot, fusing and routed batches live in their own
modules; the steps are explained in ``docs/adapters.md``. Nothing here chooses devices or knows about Streamlit.

One lock guards all adapter state: ``Engine.lock``, held by the caller. A render reads the slot at every denoising
step, so whatever guards it must be held from the swap to the last step, and only the engine (which holds the
pipeline) can do that; a second lock in here could only ever be taken while that one is held, so it guarded nothing.
"""

from __future__ import annotations

import functools
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from lora_spectrum.adapters.fusing import Fuser, unfusable
from lora_spectrum.adapters.reading import PreparedAdapter
from lora_spectrum.adapters.routing import route, unroutable
from lora_spectrum.adapters.slot import Slot
from lora_spectrum.adapters.store import AdapterStore
from lora_spectrum.errors import LoraLoadError, LoraSpectrumError


@dataclass
class SwapRecord:
    name: str
    kind: str  # cold | prefetched | warm | rebuild | base | strength | routed | routed-peft
    seconds: float
    strength: float = 1.0
    fused: bool = False  # the adapter is merged into the base weights (fused mode) rather than added by peft


class HotSwapper:
    """Owns the adapter slot in one denoiser. Takes no lock: the caller holds ``Engine.lock`` (see above)."""

    def __init__(self, pipe, family, resident: int = 4, empty_cache: bool = False, fuse: bool = False,
                 compiled: bool = False):
        self.pipe = pipe
        self.family = family
        self.denoiser = family.denoiser(pipe)
        self.empty_cache = empty_cache
        # Files read, kept (LRU) and read ahead (store.py); converted for this pipe, which it only reads.
        self.store = AdapterStore(self.denoiser, family, functools.partial(family.convert_lora, pipe=pipe), resident)
        self.reader = self.store.reader
        # For a compiled denoiser (compilation.py) the slot writes strengths in place: no swap recompiles.
        self.slot = Slot(self.denoiser, family, compiled)
        self.active: str | None = None  # path of the active file, None for the base
        self.strength: float = 0.0
        self.generation = 0  # changes on every swap: stale state is detectable
        self.history: list[SwapRecord] = []
        # Fused mode (docs/adapters.md): merged into reused buffers, the base weights kept by reference.
        self.fuse = bool(fuse)
        self.fuser = Fuser(self.denoiser)
        self.fuse_note = ""  # why the last file in fused mode rendered unfused ("" when it was merged)

    @property
    def compiled(self) -> bool:
        return self.slot.compiled

    # ------------------------------------------------------------------ reading (store.py)
    def load_adapter(self, path: str | Path) -> tuple[PreparedAdapter, bool]:
        """The prepared adapter for ``path`` (``AdapterStore.load``: warm, prefetched or cold). Touches no model."""
        return self.store.load(path)

    # ------------------------------------------------------------------ state changes
    def get_active_adapter(self) -> tuple[str | None, float]:
        return self.active, self.strength

    def activate(self, path: str | Path, strength: float = 1.0, prepared: PreparedAdapter | None = None
                 ) -> SwapRecord:
        """Make ``path`` the active adapter at ``strength``. On any error the previous state stays exactly.
        ``prepared``: the adapter for ``path`` the caller read just now (it is then not read again)."""
        t0 = time.perf_counter()
        strength = float(strength)
        if not math.isfinite(strength):
            raise LoraLoadError(path, f"strength must be a finite number, not {strength}")
        # 1. Prepare (or take from the LRU); raises before anything changed.
        kind = "warm" if prepared is not None and self.store.is_resident(path, prepared) else "cold"
        if prepared is None:
            prepared, _ = self.store.load(path)
            kind = self.store.last_source
        # 2. Install into the slot.
        if prepared is not self.slot.installed or not self.slot.built:
            if self.slot.install(prepared):
                kind = "rebuild"
        else:
            kind = "strength"
        # 3. Strength (0 means the adapter layers are bypassed); in fused mode, merged into the base weights.
        try:
            self._apply_strength(prepared, strength)
        except LoraLoadError:  # a failed merge: the base weights were restored, so the base is what renders
            self.active, self.strength = None, 0.0
            self.generation += 1
            raise
        self.active, self.strength = str(path), strength
        if self.empty_cache and torch.cuda.is_available():
            torch.cuda.empty_cache()
        return self.record(prepared.name, kind, t0, strength, self.fuser.is_fused())

    def use_base(self) -> SwapRecord:
        """Render with the bare base: every adapter layer is bypassed (its forward is the base layer's) and, in
        fused mode, every merged layer points at its base weight again."""
        t0 = time.perf_counter()
        self.fuser.restore_all()
        self.slot.set_strength(0.0)
        self.active, self.strength = None, 0.0
        return self.record("base", "base", t0, 0.0)

    def unload(self) -> None:
        """Remove the adapter slot and the peft wrappers entirely, giving back the original modules."""
        self.fuser.clear()  # the weights are the base again; the merge buffers are freed
        self.slot.remove()
        self.store.clear()
        self.active, self.strength = None, 0.0
        self.generation += 1

    def set_fuse(self, enabled: bool) -> None:
        """Switch fused mode (docs/adapters.md) on or off; the active adapter and strength stay what they are.
        Off: the base weights come back, the merge buffers are freed and the adapter layers are enabled again;
        on: the active adapter is merged now. Renders change slightly (other arithmetic): the generation moves."""
        enabled = bool(enabled)
        if enabled == self.fuse:
            return
        if enabled and self.compiled:
            raise LoraSpectrumError("fused mode cannot be switched on for a compiled denoiser (every switch "
                                    "between merged and added layers would recompile it)")
        self.fuse = enabled
        self.generation += 1
        if not enabled:
            self.fuser.clear()
        installed = self.slot.installed
        if self.active is None or installed is None:
            self.slot.set_strength(0.0)
            return
        try:
            self._apply_strength(installed, self.strength)
        except LoraLoadError:
            self.active, self.strength = None, 0.0
            raise

    def fused_extra_bytes(self) -> int:  # what fused mode costs in memory: the merge buffers (0 unfused)
        return self.fuser.extra_bytes()

    def is_fused(self) -> bool:  # whether an adapter is merged into the base weights now
        return self.fuser.is_fused()

    def record(self, name: str, kind: str, t0: float, strength: float = 1.0, fused: bool = False) -> SwapRecord:
        """A state change done (a swap, or a routed batch set up): the generation moves and the history keeps
        its record (the last 1000)."""
        self.generation += 1
        record = SwapRecord(name, kind, time.perf_counter() - t0, strength, fused)
        self.history.append(record)
        del self.history[:-1000]
        return record

    # ------------------------------------------------------------------ routed batches (routing.py)
    def unroutable(self, prepared: PreparedAdapter) -> str:
        """Why this adapter cannot share a routed batch ("" when it can); see ``routing.unroutable``."""
        return unroutable(prepared, self.family)

    @contextmanager
    def routed(self, blocks: list[tuple[str | None, float]], samples: int, way: str = "auto",
               prepared: dict[str, PreparedAdapter] | None = None):
        """Several adapters in one denoiser batch: each block (file or ``None``, strength) is ``samples``
        consecutive samples of it; on leaving, the slot is exactly as it was (``routing.route`` says how)."""
        with route(self, blocks, samples, way, prepared) as record:
            yield record

    def lend(self) -> PreparedAdapter | None:
        """Before a routed batch: the base weights the base (routed deltas are added unfused) and the slot's
        layers free to change; returns what the slot holds, for ``take_back``."""
        self.fuser.restore_all()
        self.slot.forget_strength()
        return self.slot.installed

    def take_back(self, installed: PreparedAdapter | None, broken: bool) -> Exception | None:
        """After a routed batch: the slot holds ``installed`` again, active at its strength (merged again when
        fused) or bypassed; when ``broken`` (hooks may be left) or this fails, the base is active (returns why)."""
        self.slot.forget_strength()
        self.generation += 1
        failure = None
        if not broken:
            try:
                if installed is not None and self.slot.installed is not installed:
                    self.slot.install(installed)
                self.slot.select()
                if self.active is not None and self.slot.installed is not None:
                    self._apply_strength(self.slot.installed, self.strength)
                else:
                    self.slot.set_strength(0.0)
                return None
            except Exception as exc:  # noqa: BLE001 - a failed reinstall or merge: the base is what renders
                failure = exc
        self.active, self.strength = None, 0.0
        self.fuser.restore_all()
        self.slot.forget_strength()
        self.slot.set_strength(0.0)
        return failure

    # ------------------------------------------------------------------ internals
    def _apply_strength(self, prepared: PreparedAdapter, strength: float) -> None:
        """Unfused: set the adapter layers' scale. Fused: merge the slot into the base weights at ``strength``
        and bypass the adapter layers; a slot that cannot be merged renders unfused (``fuse_note`` says why)."""
        slot = self.slot
        if prepared.deltas is not None:  # LyCORIS/DoRA: always merged, whatever ``fuse`` says (weight_deltas.py)
            slot.set_strength(0.0)
            self.fuser.merge_deltas(prepared.path, prepared.deltas, strength, (slot.serial, strength))
            return
        if not self.fuse or strength == 0.0:
            self.fuser.restore_all()
            slot.set_strength(strength)
            return
        named_layers = list(zip(slot.layer_names, slot.layers, strict=True))
        if slot.unfusable is None:  # checked once per slot
            slot.unfusable = unfusable(slot.adapter_name, named_layers)
        if slot.unfusable:
            self.fuse_note = f"{prepared.name} renders unfused: {slot.unfusable}"
            self.fuser.restore_all()
            slot.set_strength(strength)
            return
        self.fuse_note = ""
        slot.set_strength(0.0)  # bypassed first: the delta lives in the weights, never added twice
        self.fuser.merge(prepared.path, slot.adapter_name, named_layers, strength, (slot.serial, strength))
